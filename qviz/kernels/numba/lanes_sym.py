"""Lane-interleaved twins of ggml's symmetric block searches (IQ4_NL, Q3_K, Q6_K).

ggml searches one block at a time, and each trial scale sums its errors in a
serial float32 chain: every add waits for the one before. Blocks are
independent, so these helpers run ``LANES`` of them in lock-step.

Lane layout: the caller copies ``LANES`` groups of ``n`` weights into work
arrays of shape ``(n, LANES)``, group ``l`` in column ``l`` (:func:`to_lanes`).
Every loop walks the ``n`` elements in ggml's order with the lane loop
innermost, so each lane's sums are ggml's sums, bit for bit, while the CPU
overlaps the ``LANES`` chains and LLVM turns the lane loop into vector
instructions. Per-block decisions (is this trial better?) become per-lane
selects. Unused lanes hold zeros; their results are ignored.

The functions are plain njit code: no fastmath, float32 throughout.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from qviz.formats.gguf_legacy import KVALUES_IQ4NL
from qviz.formats.ggml_search import GROUP_MAX_EPS
from qviz.kernels.numba.search import JIT_OPTIONS

F32 = np.float32

#: groups searched together: four 512-bit vectors of float32 (of 16, 32 and 64 lanes, 64 ran fastest).
LANES = 64

# IQ4_NL's codebook as the midpoints where ggml's nearest-level choice changes.
# best_index_int8 brackets x between levels lo < hi and picks lo when
# ``x - lo < hi - x`` in float32; for these small integer levels both
# differences are exact near the midpoint, so the choice flips exactly at
# ``(lo + hi) / 2`` (tests/test_gguf_legacy.py checks both sides of each).
# Hence index = number of midpoints <= x, and the level = the sum of the
# gaps above the first level for each midpoint passed. Entry 0 is a dummy
# midpoint, -inf, whose "gap" is the first level, so that a sum over all 16
# entries gives the level. ``not x < m`` (rather than ``x >= m``) counts a NaN
# past every midpoint, to level 15, as ggml's bisection ends for NaN.
_LEVELS = KVALUES_IQ4NL.astype(F32)
IQ4NL_MIDPOINTS = np.concatenate([[-np.inf], (_LEVELS[:-1] + _LEVELS[1:]) / F32(2)]).astype(F32)
IQ4NL_GAPS = np.concatenate([_LEVELS[:1], np.diff(_LEVELS)]).astype(F32)


@njit(**JIT_OPTIONS)
def to_lanes(src, start, n, n_lanes, dst):
    """Copy ``n_lanes`` consecutive groups of ``n`` values into lane columns.

    src : float32 (>= start + n * n_lanes,); dst : float32 (n, LANES), out:
    ``dst[i, l] = src[start + n*l + i]``, zeros in lanes ``n_lanes ..``.
    """
    for i in range(n):
        for l in range(LANES):
            dst[i, l] = src[start + n * l + i] if l < n_lanes else F32(0.0)


@njit(**JIT_OPTIONS)
def _gap(al, k):
    """IQ4_NL's gap k if ``al`` is at or past midpoint k, else 0."""
    return IQ4NL_GAPS[k] if not al < IQ4NL_MIDPOINTS[k] else F32(0.0)


@njit(**JIT_OPTIONS)
def iq4nl_level(al):
    """``kvalues_iq4nl[best_index_int8(16, kvalues_iq4nl, al)]`` as float32, branch-free.

    Four partial sums keep the dependency chains short; each is a small
    integer, so their total is exact whatever the order.
    """
    a = F32(0.0)
    b = F32(0.0)
    c = F32(0.0)
    e = F32(0.0)
    for k in range(0, 16, 4):
        a += _gap(al, k)
        b += _gap(al, k + 1)
        c += _gap(al, k + 2)
        e += _gap(al, k + 3)
    return (a + b) + (c + e)


@njit(**JIT_OPTIONS)
def iq4nl_index(al):
    """``best_index_int8(16, kvalues_iq4nl, al)``, branch-free: midpoints passed."""
    count = 0
    for k in range(1, 16):
        count += 0 if al < IQ4NL_MIDPOINTS[k] else 1
    return count


@njit(**JIT_OPTIONS)
def _amax_lanes(xt, amax, xmax):
    """Per lane: the largest magnitude and the first value that has it (ggml's ``max``)."""
    for l in range(LANES):
        amax[l] = F32(0.0)
        xmax[l] = F32(0.0)
    for i in range(xt.shape[0]):
        for l in range(LANES):
            ax = abs(xt[i, l])
            if ax > amax[l]:
                amax[l] = ax
                xmax[l] = xt[i, l]


@njit(**JIT_OPTIONS)
def block_weights_lanes(xt, wt, sigma_scale, sigma2):
    """``wt = wt * sqrt(sigma2 + x**2)`` with each lane's ``sigma2 = sigma_scale * sum(x**2)``.

    xt : float32 (n, LANES); wt : float32 (n, LANES), the imatrix in, the
    weights out; sigma2 : float32 (LANES,) scratch. The ``_impl`` weights of
    IQ4_NL (``sigma_scale = 2/32``).
    """
    for l in range(LANES):
        sigma2[l] = F32(0.0)
    for i in range(xt.shape[0]):
        for l in range(LANES):
            sigma2[l] += xt[i, l] * xt[i, l]
    for l in range(LANES):
        sigma2[l] *= sigma_scale
    for i in range(xt.shape[0]):
        for l in range(LANES):
            wt[i, l] = wt[i, l] * np.sqrt(sigma2[l] + xt[i, l] * xt[i, l])


@njit(**JIT_OPTIONS)
def _iq4nl_sums(xt, wt, inv, sumqx, sumq2):
    """One trial scale per lane: ``sumqx = sum(w*q*x)``, ``sumq2 = sum(w*q*q)``, q the level of ``inv*x``."""
    sumqx[:] = F32(0.0)
    sumq2[:] = F32(0.0)
    for j in range(xt.shape[0]):
        for l in range(LANES):
            x = xt[j, l]
            q = iq4nl_level(inv[l] * x)
            wq = wt[j, l] * q
            sumqx[l] += wq * x
            sumq2[l] += wq * q


@njit(**JIT_OPTIONS)
def iq4nl_quants_lanes(xt, wt, ntry, d, work):
    """The scale search of ``quantize_row_iq4_nl_impl`` on ``LANES`` blocks at once.

    Parameters
    ----------
    xt : ndarray, shape (32, LANES), float32
        The blocks' weights, one block per lane.
    wt : ndarray, shape (32, LANES), float32
        Error weights.
    ntry : int
        Half-width of the trial range (ggml's ``ntry``, > 0).
    d : ndarray, shape (LANES,), float32
        Output: each block's scale; 0 for a block below GROUP_MAX_EPS.
    work : ndarray, shape (6, LANES), float32
        Scratch.

    Notes
    -----
    ggml-quants.c ``quantize_row_iq4_nl_impl`` with one 32-block per super
    block (``quantize_iq4_nl``): start from ``d = -max/kvalues[0]``, refit,
    then keep the best refit over the inverse scales ``(itry + kvalues[0])/max``.
    """
    amax, xmax, inv, sumqx, sumq2, best = work[0], work[1], work[2], work[3], work[4], work[5]
    v0 = IQ4NL_GAPS[0]
    _amax_lanes(xt, amax, xmax)
    for l in range(LANES):
        inv[l] = F32(1.0) / (-xmax[l] / v0)
    _iq4nl_sums(xt, wt, inv, sumqx, sumq2)
    for l in range(LANES):
        d[l] = sumqx[l] / sumq2[l] if sumq2[l] > 0 else F32(0.0)
        best[l] = d[l] * sumqx[l]
    for itry in range(-ntry, ntry + 1):
        for l in range(LANES):
            inv[l] = F32(itry + int(v0)) / xmax[l]
        _iq4nl_sums(xt, wt, inv, sumqx, sumq2)
        for l in range(LANES):
            if sumq2[l] > 0 and sumqx[l] * sumqx[l] > best[l] * sumq2[l]:
                d[l] = sumqx[l] / sumq2[l]
                best[l] = d[l] * sumqx[l]
    for l in range(LANES):
        if amax[l] < GROUP_MAX_EPS:
            d[l] = F32(0.0)


@njit(**JIT_OPTIONS)
def iq4nl_codes_lanes(xt, d, Lt):
    """Codebook indices of each lane's weights for its scale ``d`` (0 gives the index of 0).

    xt : float32 (32, LANES); d : float32 (LANES,); Lt : uint8 (32, LANES), out.
    """
    for j in range(xt.shape[0]):
        for l in range(LANES):
            inv = F32(1.0) / d[l] if d[l] != 0 else F32(0.0)
            Lt[j, l] = iq4nl_index(inv * xt[j, l])


@njit(**JIT_OPTIONS)
def _qx_sums(nmax, xt, wt, iscale, sumlx, suml2):
    """One trial per lane: ``l = clamp(round(iscale*x))``, ``sumlx = sum(w*x*l)``, ``suml2 = sum(w*l*l)``."""
    lo = F32(-nmax)
    hi = F32(nmax - 1)
    sumlx[:] = F32(0.0)
    suml2[:] = F32(0.0)
    for i in range(xt.shape[0]):
        for l in range(LANES):
            x = xt[i, l]
            # clamping before rounding equals ggml's rounding first: the bounds are integers
            fl = np.rint(min(max(iscale[l] * x, lo), hi))
            w = wt[i, l]
            sumlx[l] += w * x * fl
            suml2[l] += w * fl * fl


@njit(**JIT_OPTIONS)
def qx_quants_lanes(nmax, xt, wt, Lt, scale, work):
    """``make_qx_quants(n, nmax, x, L, 1, w)`` on ``LANES`` groups at once.

    Parameters
    ----------
    nmax : int
        Half the number of levels (4 for Q3_K, 32 for Q6_K).
    xt : ndarray, shape (n, LANES), float32
        The groups' values, one group per lane.
    wt : ndarray, shape (n, LANES), float32
        Error weights (ggml's ``qw``, or ``x*x`` for its NULL with ``rmse_type`` 1).
    Lt : ndarray, shape (n, LANES), int8
        Output: codes ``l + nmax`` in ``[0, 2*nmax)``; 0 for an all-zero group.
    scale : ndarray, shape (LANES,), float32
        Output: each group's scale (0 for an all-zero group).
    work : ndarray, shape (8, LANES), float32
        Scratch.

    Notes
    -----
    ggml-quants.c ``make_qx_quants`` with ``rmse_type = 1``: the least-squares
    refit of the max-based scale, then 18 trial inverse scales
    ``-(nmax + 0.1*is)/max``. ggml rounds the codes again whenever a trial wins;
    rounding once, with the winning inverse scale, gives the same codes.
    """
    amax, xmax, iscale, best_iscale = work[0], work[1], work[2], work[3]
    sumlx, suml2, best = work[4], work[5], work[6]
    _amax_lanes(xt, amax, xmax)
    for l in range(LANES):
        iscale[l] = F32(-nmax) / xmax[l]
    _qx_sums(nmax, xt, wt, iscale, sumlx, suml2)
    for l in range(LANES):
        scale[l] = sumlx[l] / suml2[l] if suml2[l] != 0 else F32(0.0)
        best[l] = scale[l] * sumlx[l]
        best_iscale[l] = iscale[l]
    for step in range(-9, 10):
        if step == 0:
            continue
        for l in range(LANES):
            iscale[l] = -(F32(nmax) + F32(0.1) * F32(step)) / xmax[l]
        _qx_sums(nmax, xt, wt, iscale, sumlx, suml2)
        for l in range(LANES):
            if suml2[l] > 0 and sumlx[l] * sumlx[l] > best[l] * suml2[l]:
                scale[l] = sumlx[l] / suml2[l]
                best[l] = scale[l] * sumlx[l]
                best_iscale[l] = iscale[l]
    lo = F32(-nmax)
    hi = F32(nmax - 1)
    for i in range(xt.shape[0]):
        for l in range(LANES):
            code = np.rint(min(max(best_iscale[l] * xt[i, l], lo), hi)) + F32(nmax)
            Lt[i, l] = np.int8(code) if amax[l] >= GROUP_MAX_EPS else 0
    for l in range(LANES):
        if amax[l] < GROUP_MAX_EPS:
            scale[l] = F32(0.0)


@njit(**JIT_OPTIONS)
def from_lanes(src, lane0, n_groups, dst):
    """Copy lane columns ``lane0 ..`` back to consecutive groups: ``dst[n*g + i] = src[i, lane0 + g]``.

    src : (n, LANES); dst : (>= n * n_groups,), same dtype.
    """
    n = src.shape[0]
    for g in range(n_groups):
        for i in range(n):
            dst[n * g + i] = src[i, lane0 + g]


@njit(**JIT_OPTIONS)
def q3_quants_lanes(nmax, xt, Lt, scale, work, moved):
    """``make_q3_quants(n, nmax, x, L, True)`` on ``LANES`` groups at once.

    Parameters
    ----------
    nmax : int
        Half the number of levels (4 for Q3_K).
    xt : ndarray, shape (n, LANES), float32
        The groups' values, one group per lane.
    Lt : ndarray, shape (n, LANES), int8
        Output: codes ``l + nmax`` in ``[0, 2*nmax)``; 0 for an all-zero group.
    scale : ndarray, shape (LANES,), float32
        Output: each group's scale (0 for an all-zero group).
    work : ndarray, shape (>= 5, LANES), float32
        Scratch.
    moved : ndarray, shape (LANES,), bool
        Scratch.

    Notes
    -----
    ggml-quants.c ``make_q3_quants`` (quantize_row_q3_K_ref): round with the
    max-based scale, then up to 5 passes that move single codes to their
    least-squares level while the ``x*x``-weighted error drops. ggml stops a
    group after a pass without a move; here the passes go on while any lane
    moves, which changes nothing for the others: a pass without a move leaves
    the state as it was, so the next one repeats it. Rounding is clamped
    first, which gives ggml's codes: the bounds are integers, and a code that
    is not 0 needs ``|x| >= max/8``, which keeps ``x*sl2/slx`` small.
    """
    amax, xmax, iscale, sumlx, suml2 = work[0], work[1], work[2], work[3], work[4]
    n = xt.shape[0]
    lo = F32(-nmax)
    hi = F32(nmax - 1)
    _amax_lanes(xt, amax, xmax)
    for l in range(LANES):
        iscale[l] = F32(-nmax) / xmax[l]
        sumlx[l] = F32(0.0)
        suml2[l] = F32(0.0)
    for i in range(n):
        for l in range(LANES):
            x = xt[i, l]
            fl = np.rint(min(max(iscale[l] * x, lo), hi))
            Lt[i, l] = np.int8(fl)
            w = x * x
            sumlx[l] += w * x * fl
            suml2[l] += w * fl * fl
    for _ in range(5):
        moved[:] = False
        for i in range(n):
            for l in range(LANES):
                x = xt[i, l]
                w = x * x
                fl = F32(Lt[i, l])
                slx = sumlx[l] - w * x * fl
                sl2 = suml2[l] - w * fl * fl
                fnew = np.rint(min(max(x * sl2 / slx, lo), hi))
                slx_new = slx + w * x * fnew
                sl2_new = sl2 + w * fnew * fnew
                if (slx > 0 and fnew != fl and sl2_new > 0
                        and slx_new * slx_new * suml2[l] > sumlx[l] * sumlx[l] * sl2_new):
                    Lt[i, l] = np.int8(fnew)
                    sumlx[l] = slx_new
                    suml2[l] = sl2_new
                    moved[l] = True
        if not moved.any():
            break
    for i in range(n):
        for l in range(LANES):
            Lt[i, l] = Lt[i, l] + nmax if not amax[l] < GROUP_MAX_EPS else 0
    for l in range(LANES):
        scale[l] = sumlx[l] / suml2[l] if suml2[l] > 0 and not amax[l] < GROUP_MAX_EPS else F32(0.0)
