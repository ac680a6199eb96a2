"""Numba twin of :mod:`qviz.formats.gguf_iq2`: IQ2_XXS and IQ2_XS.

Same public names and bytes as the numpy reference (and the same arrays from
``unpack_<type>``). Rows run in parallel (``prange``); each row works in
scratch arrays allocated once. The bit layout and the search are drawn in the
reference module; the lattice tables (:func:`~qviz.formats.iq_lattice.lattice`)
are passed to the kernels as arrays.

The time goes into ggml's ``iq2_find_best_neighbour``: for a run of 8 whose
rounded levels are off the grid, the weighted distance to each listed
neighbour, at every trial scale. The kernel reorders ggml's trials (the result
cannot tell): each run's points at all trials first (:func:`_run_trials`),
then every trial's fit side by side (each sum in ggml's order), then ggml's
choice among the trials in order. A run's rounded levels move one way as the
trial's inverse scale grows, so they stay the same over a stretch of trials (a
segment, about 5 of them); an off-grid segment builds each neighbour's distance
as a quadratic in the scale once (:func:`_quadratic`), drops the neighbours
that a proven bound shows cannot be the least anywhere on the segment's range
of scales (:func:`_prune`: usually one or two are left), and measures exactly,
in ggml's float32 order, only the survivors within a rounding bound of the
least at each trial (none when one is left). The helpers are inlined into the
row kernel (``inline="always"``): a call passing a dozen arrays otherwise costs
their reference counting, more than the work of a small search. Inlining alone
does not remove that counting (numba's pruning gives up inside branchy loops),
so the row's work runs on borrowed views (:func:`_borrowed`: no memory record,
each count a null check) of arrays its caller owns for the whole call.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from qviz.formats.blocks import describe_twins
from qviz.formats.ggml_search import GROUP_MAX_EPS, make_qp_quants
from qviz.formats.gguf_iq2 import ABORTED_D, CODEBOOK, DIMS, KMAXQ, SPECS, missing_imatrix
from qviz.formats.iq_lattice import lattice
from qviz.formats.rounding import fp16_bits, nearest_int
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

F32 = np.float32
FLT_MAX = F32(np.finfo(np.float32).max)
IQ2_XXS_SIZE = FORMATS["IQ2_XXS"].type_size  # 66: d 2, qs 64
IQ2_XS_SIZE = FORMATS["IQ2_XS"].type_size  # 74: d 2, qs 64, scales 8
MAX_NEIGHBOURS = 512  # above any list's count (a list holds grid numbers, at most the grid's size)


#: The sieve's slack (see :func:`_nearest`): a neighbour is measured exactly when its quadratic is within
#: ``2 * (ERR_FACTOR * bound + ERR_FLOOR)`` of the least; the rounding it covers (ggml's float32 sum and
#: the float32 quadratic) is below ``22 * 2**-24 * bound`` (plus underflow, below 2**-149 an operation).
ERR_FACTOR = 2.0 ** -18
ERR_FLOOR = 1e-40
#: Runs whose bound reaches this (or is nan) take the plain search: no float32 sum there can overflow.
BOUND_MAX = 1e30
#: The most trials (IQ2_XS: is = -9..9).
TMAX = 19


def _list_starts(neighbours: np.ndarray) -> np.ndarray:
    """Offsets of the lists in ``neighbours`` (each a count followed by that many grid numbers)."""
    starts = []
    s, m = 0, len(neighbours)
    while s < m:
        starts.append(s)
        s += int(neighbours[s]) + 1
    return np.array(starts, dtype=np.int64)


def neighbour_coordinates(name: str) -> np.ndarray:
    """Each list's neighbours' odd coordinates, coordinate-major: int8 (8 * len(neighbours),).

    The list at ``start`` (count ``n``) keeps coordinate ``i`` of its neighbour ``j`` (grid number
    ``neighbours[start + 1 + j]``) at ``8 * (start + 1) + i * n + j``: a search reads one contiguous
    stretch, one coordinate of every neighbour after another.
    """
    lat = lattice(name)
    nb = lat.neighbours.astype(np.int64)
    starts = _list_starts(nb)
    counts = nb[starts]
    owner = np.repeat(starts, counts)
    count = np.repeat(counts, counts)
    pos = owner + 1 + (np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts))
    points = lat.search[nb[pos]]
    out = np.zeros(DIMS * len(nb), dtype=np.int8)
    for i in range(DIMS):
        out[DIMS * (owner + 1) + i * count + (pos - owner - 1)] = points[:, i]
    return out


def tables(name: str) -> tuple[np.ndarray, ...]:
    """The arrays the quantize kernel takes: kmap, neighbours, neighbour_coordinates, levels."""
    lat = lattice(name)
    return (lat.kmap, lat.neighbours, neighbour_coordinates(name), lat.levels)


# ------------------------------------------------------------------ search

@intrinsic
def _borrowed(typingctx, arr):
    """``arr`` as a view without its memory record (meminfo and parent null): the same data, shape and
    strides, but numba's reference counts on it (and on views of it) become null checks instead of
    atomic operations. Only for arrays that an owner keeps alive while the view is used: here the
    arguments of :func:`_row_work`, whose caller :func:`_quantize_row` holds the owners across the call
    (numba frees an array after its variable's last use, so the owner must be used after the call).
    """
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = ir.Constant(view.meminfo.type, None)
        view.parent = ir.Constant(view.parent.type, None)
        return view._getvalue()
    return arr(arr), codegen


@njit(inline="always", **JIT_OPTIONS)
def _distance(coords, at, n, j, xval, waux, off, scale):
    """ggml's float32 ``d2`` of neighbour ``j`` of the list whose coordinates start at ``at`` (count ``n``)."""
    d2 = F32(0.0)
    for i in range(DIMS):
        diff = scale * F32(coords[at + i * n + j]) - xval[off + i]
        d2 += waux[off + i] * diff * diff
    return d2


@njit(inline="always", **JIT_OPTIONS)
def _best_neighbour(neighbours, coords, start, xval, waux, off, scale):
    """ggml's ``iq2_find_best_neighbour`` for the list at ``start``, every neighbour measured: the grid
    number chosen, or -1 (none below FLT_MAX: ggml asserts). The run is ``xval[off:off+8]``."""
    n = np.int64(neighbours[start])
    best = FLT_MAX
    g = -1
    for j in range(n):
        d2 = _distance(coords, DIMS * (start + 1), n, j, xval, waux, off, scale)
        if d2 < best:
            best = d2
            g = np.int64(neighbours[start + 1 + j])
    return g


@njit(inline="always", **JIT_OPTIONS)
def _quadratic(coords, start, n, xval, waux, off, a, b):
    """``a[j] = sum(waux * q**2)``, ``b[j] = 2 * sum(waux * xval * q)`` (float32) over the ``n`` neighbours
    of the list at ``start``: neighbour ``j``'s distance is ``c + s * (s * a[j] - b[j])`` in exact
    arithmetic, ``c`` the same for all. Loops over the neighbours (contiguous: LLVM vectorizes them)."""
    at = DIMS * (start + 1)
    w = waux[off]
    wx = F32(2.0) * (w * xval[off])
    for j in range(n):
        q = F32(coords[at + j])
        a[j] = w * (q * q)
        b[j] = wx * q
    for i in range(1, DIMS):
        w = waux[off + i]
        wx = F32(2.0) * (w * xval[off + i])
        for j in range(n):
            q = F32(coords[at + i * n + j])
            a[j] += w * (q * q)
            b[j] += wx * q


@njit(inline="always", **JIT_OPTIONS)
def _nearest(neighbours, coords, start, a, b, f, xval, waux, off, scale, bound):
    """``iq2_find_best_neighbour``'s answer from the quadratics ``a``, ``b`` (:func:`_quadratic`).

    ``f[j] = s * (s * a[j] - b[j])`` (float32) differs from ggml's float32 ``d2`` minus ``c`` by less than
    ``ERR_FACTOR * bound + ERR_FLOOR`` (``bound = sum(waux * (|x| + 10*scale)**2)`` >= each term's
    ``waux * (|s*q - x| + s*q)**2``; ggml's rounding of the terms and the sum stays below ``12 * 2**-24``
    of it, that of ``a``, ``b`` and ``f`` below ``10 * 2**-24``).
    A neighbour whose ``f`` exceeds the least by twice that has a larger ``d2`` than the least one's and
    cannot be ggml's first minimum; the rest are measured exactly (:func:`_distance`) in list order.
    """
    n = np.int64(neighbours[start])
    for j in range(n):
        f[j] = scale * (scale * a[j] - b[j])
    m0 = m1 = m2 = m3 = np.inf  # four running minima: no chain of n dependent compares
    j = 0
    while j + 4 <= n:
        m0 = f[j] if f[j] < m0 else m0
        m1 = f[j + 1] if f[j + 1] < m1 else m1
        m2 = f[j + 2] if f[j + 2] < m2 else m2
        m3 = f[j + 3] if f[j + 3] < m3 else m3
        j += 4
    while j < n:
        m0 = f[j] if f[j] < m0 else m0
        j += 1
    m0 = m0 if m0 < m1 else m1
    m2 = m2 if m2 < m3 else m3
    lim = np.float64(m0 if m0 < m2 else m2) + 2.0 * (ERR_FACTOR * bound + ERR_FLOOR)
    best = FLT_MAX
    g = -1
    for j in range(n):
        if f[j] <= lim:
            d2 = _distance(coords, DIMS * (start + 1), n, j, xval, waux, off, scale)
            if d2 < best:
                best = d2
                g = np.int64(neighbours[start + 1 + j])
    return g


@njit(inline="always", **JIT_OPTIONS)
def _prune(n, a, b, G, surv, slo, shi, err):
    """Positions (into ``surv``, in list order; returns their count) of the neighbours that can be ggml's
    choice at some scale in ``[slo, shi]`` (float64, ``0 < slo <= shi``), ``err`` bounding
    :func:`_nearest`'s rounding (``ERR_FACTOR * bound + ERR_FLOOR``, ``bound`` at ``shi``).

    ``F_j(s) = s * G_j(s)`` with ``G_j(s) = s * a[j] - b[j]`` (exact arithmetic on the float32 ``a``,
    ``b``) differs from ggml's ``d2_j(s)`` minus ``c(s)`` by less than ``err`` at every trial scale in
    the range (:func:`_nearest`; ``bound`` grows with the scale). ``G_j - G_i`` is linear in ``s``:
    where it exceeds ``M = 3 * err / slo`` at both ends it does so on the whole range, so there
    ``F_j - F_i > s * M >= 3 * err`` and ``d2_j > d2_i``: ``j`` is never the least. The references
    ``i`` are the least lines at either end (found in the pass that computes the ``G``; any ``i`` would
    be sound, these drop the most); the float64 rounding of the ``G`` (below ``2**-50 *
    bound / slo``) is covered by the third ``err`` in ``M``. Any neighbour with a nan stays.
    """
    glo = G[0]
    ghi = G[1]
    i1 = 0
    i2 = 0
    m1 = np.inf
    m2 = np.inf
    for j in range(n):
        aj = np.float64(a[j])
        bj = np.float64(b[j])
        vl = slo * aj - bj
        vh = shi * aj - bj
        glo[j] = vl
        ghi[j] = vh
        if vl < m1:
            m1 = vl
            i1 = j
        if vh < m2:
            m2 = vh
            i2 = j
    margin = 3.0 * err / slo
    l1 = glo[i1] + margin
    h1 = ghi[i1] + margin
    l2 = glo[i2] + margin
    h2 = ghi[i2] + margin
    c = 0
    for j in range(n):
        gl = glo[j]
        gh = ghi[j]
        surv[c] = j
        c += 0 if ((gl > l1 and gh > h1) or (gl > l2 and gh > h2)) else 1
    return c


@njit(inline="always", **JIT_OPTIONS)
def _run_trials(kmap, neighbours, coords, xval, waux, k, n_trials, isc, sc, sums, ut, gt, ont, segu, qa, qb,
                G, surv, f):
    """ggml's points of run ``k`` at every trial: ``gt[k, t]`` the grid number, ``ont[k, t]`` whether the
    rounded levels were a point. Returns False where a neighbour search found nothing (ggml asserts).

    The levels only move one way as the trial's inverse scale grows, so a run keeps its rounded levels
    ``u`` over a stretch of trials (a segment). An off-grid segment builds its neighbours' quadratics once
    (kept in ``qa/qb[k, t0]``, ``segu[k, t0] = u``, for the last re-levelling); a segment of one trial
    takes :func:`_nearest`, a longer one first drops the neighbours that cannot win on its range of
    scales (:func:`_prune`), then per trial measures exactly only the survivors within the rounding
    bound of the least (none when a single one is left).
    """
    off = DIMS * k
    for t in range(n_trials):
        ut[t] = 0
    for i in range(DIMS):
        x = xval[off + i]
        for t in range(n_trials):
            l = nearest_int(F32(0.5) * (isc[t] * x - F32(1.0)))
            l = max(0, min(KMAXQ - 1, l))
            ut[t] |= l << (2 * i)
    fv = G[2]
    t0 = 0
    while t0 < n_trials:
        u = ut[t0]
        t1 = t0 + 1
        while t1 < n_trials and ut[t1] == u:
            t1 += 1
        for t in range(t0, t1):
            segu[k, t] = -1
        g = np.int64(kmap[u])
        if g >= 0:
            for t in range(t0, t1):
                gt[k, t] = g
                ont[k, t] = True
            t0 = t1
            continue
        for t in range(t0, t1):
            ont[k, t] = False
        start = -g - 1
        n = np.int64(neighbours[start])
        slo = np.float64(sc[t0])
        shi = slo
        for t in range(t0 + 1, t1):
            s = np.float64(sc[t])
            slo = s if s < slo else slo
            shi = s if s > shi else shi
        bound = sums[k, 2] + shi * (20.0 * sums[k, 1] + 100.0 * shi * sums[k, 0])
        if not (bound < BOUND_MAX and slo > 0):
            for t in range(t0, t1):
                g = _best_neighbour(neighbours, coords, start, xval, waux, off, sc[t])
                if g < 0:
                    return False
                gt[k, t] = g
            t0 = t1
            continue
        a = qa[k, t0]
        b = qb[k, t0]
        _quadratic(coords, start, n, xval, waux, off, a, b)
        segu[k, t0] = u
        if t1 - t0 == 1:
            g = _nearest(neighbours, coords, start, a, b, f, xval, waux, off, sc[t0], bound)
            if g < 0:
                return False
            gt[k, t0] = g
            t0 = t1
            continue
        err = ERR_FACTOR * bound + ERR_FLOOR
        c = _prune(n, a, b, G, surv, slo, shi, err)
        if c == 1:
            g = np.int64(neighbours[start + 1 + surv[0]])
            for t in range(t0, t1):
                gt[k, t] = g
            t0 = t1
            continue
        for t in range(t0, t1):
            s = np.float64(sc[t])
            fmin = np.inf
            for r in range(c):
                j = surv[r]
                v = s * (s * np.float64(a[j]) - np.float64(b[j]))
                fv[r] = v
                fmin = v if v < fmin else fmin
            lim = fmin + 3.0 * err
            count = 0
            pick = 0
            for r in range(c):
                if fv[r] <= lim:
                    count += 1
                    pick = r
            if count == 1:
                g = np.int64(neighbours[start + 1 + surv[pick]])
            else:
                best = FLT_MAX
                g = -1
                for r in range(c):
                    if fv[r] <= lim:
                        j = surv[r]
                        d2 = _distance(coords, DIMS * (start + 1), n, j, xval, waux, off, sc[t])
                        if d2 < best:
                            best = d2
                            g = np.int64(neighbours[start + 1 + j])
                if g < 0:
                    return False
            gt[k, t] = g
        t0 = t1
    return True


@njit(inline="always", **JIT_OPTIONS)
def _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, points, signs, work, L, Lqp, trials, qt,
               sums, ut, gt, ont, segu, qa, qb, G, surv, f):
    """One sub-block of ``quantize_row_iq2_{xxs,xs}_impl`` (the reference's ``_sub_block``).

    xb, weight : float32 (n,), n = 32 (``xxs``) or 16. Writes points and signs int64 (n // 8,). Scratch:
    work float32 (2, n) (xval, waux); L int8, Lqp uint8 (n,); trials float32 (4, TMAX) (inverse scale,
    scale, sumqx, sumq2 per trial); qt float32 (n, TMAX) (the trials' q = 2l+1); sums float64 (n // 8, 3);
    ut int64 (TMAX,); gt int64, ont bool (n // 8, TMAX); segu int64 (n // 8, TMAX + 1); qa, qb float32
    (n // 8, TMAX + 1, MAX_NEIGHBOURS); G float64 (3, MAX_NEIGHBOURS); surv int64, f float32
    (MAX_NEIGHBOURS,).
    Returns the scale, or -1 where ggml would abort (a point off the grid).

    The trials are ggml's, reordered: every run's points at all trials first (:func:`_run_trials`), then
    the trials' fits side by side (each fit's sums in ggml's order), then ggml's choice among them in
    trial order.
    """
    n = xb.shape[0]
    n_runs = n // DIMS
    xval = work[0]
    waux = work[1]
    for i in range(n):
        waux[i] = np.sqrt(weight[i])
    for k in range(n_runs):
        nflip = 0
        s = 0
        for i in range(DIMS):
            v = xb[DIMS * k + i]
            if v >= 0:
                xval[DIMS * k + i] = v
            else:
                xval[DIMS * k + i] = -v
                nflip += 1
                s |= 1 << i
        if nflip % 2:
            imin = 0
            vmin = weight[DIMS * k] * xb[DIMS * k] * xb[DIMS * k]
            for i in range(1, DIMS):
                ax = weight[DIMS * k + i] * xb[DIMS * k + i] * xb[DIMS * k + i]
                if ax < vmin:
                    vmin = ax
                    imin = i
            xval[DIMS * k + imin] = -xval[DIMS * k + imin]
            s ^= 1 << imin
        signs[k] = s & 127
        points[k] = 0
    xmax = xval[0]
    for i in range(1, n):
        xmax = xmax if xmax > xval[i] else xval[i]
    if xmax < GROUP_MAX_EPS:
        for k in range(n_runs):
            signs[k] = 0
        return F32(0.0)
    if xxs:
        scale = make_qp_quants(n, KMAXQ + 1, xval, Lqp, weight)
        eff_max = scale * F32(KMAXQ)
        if eff_max <= 0:
            for k in range(n_runs):
                signs[k] = 0
            return F32(0.0)
        lo, hi = -6, 7
    else:
        scale = xmax / F32(2 * KMAXQ - 1)
        eff_max = xmax
        lo, hi = -9, 10
    n_trials = hi - lo
    isc = trials[0]
    sc = trials[1]
    sqx = trials[2]
    sq2 = trials[3]
    for t in range(n_trials):
        iscale = (F32(2 * KMAXQ - 1) + F32(lo + t) * F32(0.1)) / eff_max
        isc[t] = iscale
        sc[t] = F32(1.0) / iscale
    for k in range(n_runs):  # the search's bound sums (:func:`_nearest`)
        sw = 0.0
        swx = 0.0
        swx2 = 0.0
        for i in range(DIMS):
            w = np.float64(waux[DIMS * k + i])
            x = abs(np.float64(xval[DIMS * k + i]))
            sw += w
            swx += w * x
            swx2 += w * x * x
        sums[k, 0] = sw
        sums[k, 1] = swx
        sums[k, 2] = swx2
    for k in range(n_runs):
        if not _run_trials(kmap, neighbours, coords, xval, waux, k, n_trials, isc, sc, sums, ut, gt, ont,
                           segu, qa, qb, G, surv, f):
            return F32(-1.0)
        for t in range(n_trials):
            g = gt[k, t]
            for i in range(DIMS):
                qt[DIMS * k + i, t] = F32(2 * np.int64(levels[g, i]) + 1)
    for t in range(n_trials):
        sqx[t] = F32(0.0)
        sq2[t] = F32(0.0)
    for i in range(n):  # every trial's sums at once, each in ggml's order
        w = weight[i]
        wx = w * xval[i]
        qi = qt[i]
        for t in range(n_trials):
            q = qi[t]
            sqx[t] += wx * q
            sq2[t] += w * q * q
    best = F32(0.0)
    bt = -1
    for t in range(n_trials):
        if sq2[t] > 0 and sqx[t] * sqx[t] > best * sq2[t]:
            scale = sqx[t] / sq2[t]
            best = scale * sqx[t]
            bt = t
    n_redo = 0
    for k in range(n_runs):
        if bt >= 0:
            g = gt[k, bt]
            for i in range(DIMS):
                L[DIMS * k + i] = levels[g, i]
            redo = xxs or not ont[k, bt]  # XXS re-levels every run, XS those that were off the grid
        else:
            for i in range(DIMS):
                L[DIMS * k + i] = 0
            redo = xxs
        n_redo += redo
        ut[k] = redo
    if n_redo > 0 and scale > 0:
        iscale = F32(1.0) / scale
        for k in range(n_runs):
            if not ut[k]:
                continue
            off = DIMS * k
            u = 0
            for i in range(DIMS):
                l = nearest_int(F32(0.5) * (iscale * xval[off + i] - F32(1.0)))
                l = max(0, min(KMAXQ - 1, l))
                u |= l << (2 * i)
            g = np.int64(kmap[u])
            if g < 0:
                start = -g - 1
                s = np.float64(scale)
                bound = sums[k, 2] + s * (20.0 * sums[k, 1] + 100.0 * s * sums[k, 0])
                if bound < BOUND_MAX:
                    slot = n_trials
                    for t in range(n_trials):
                        if segu[k, t] == u:
                            slot = t
                            break
                    if slot == n_trials:
                        _quadratic(coords, start, np.int64(neighbours[start]), xval, waux, off, qa[k, slot],
                                   qb[k, slot])
                    g = _nearest(neighbours, coords, start, qa[k, slot], qb[k, slot], f, xval, waux, off,
                                 scale, bound)
                else:
                    g = _best_neighbour(neighbours, coords, start, xval, waux, off, scale)
                if g < 0:
                    return F32(-1.0)
            for i in range(DIMS):
                L[off + i] = levels[g, i]
        sumqx = F32(0.0)
        sumq2 = F32(0.0)
        for i in range(n):
            w = weight[i]
            q = F32(2 * np.int64(L[i]) + 1)
            sumqx += w * xval[i] * q
            sumq2 += w * q * q
        if sumq2 > 0:
            scale = sumqx / sumq2
    if scale < 0:
        scale = -scale
        for k in range(n_runs):
            signs[k] = ~signs[k] & 127
    for k in range(n_runs):
        u = 0
        for i in range(DIMS):
            u |= np.int64(L[DIMS * k + i]) << (2 * i)
        g = np.int64(kmap[u])
        if g < 0:
            return F32(-1.0)
        points[k] = g
    return scale


@njit(**JIT_OPTIONS)
def _quantize_row(x, imatrix, xxs, kmap, neighbours, coords, levels, out, type_size):
    """One row of ``quantize_iq2_{xxs,xs}`` into ``out`` (uint8 (n_blocks * type_size,)); a super-block
    where ggml would abort gets ``d = +inf`` and zero bits (``ABORTED_D``, as the reference).

    Allocates the row's scratch and hands :func:`_row_work` borrowed views (:func:`_borrowed`) of it and
    of the arguments; :func:`_hold` keeps the scratch alive until that call has returned."""
    n = 32 if xxs else 16
    n_sub = QK_K // n
    n_runs = n // DIMS
    scales = np.empty(n_sub, dtype=F32)
    points = np.zeros((n_sub, n_runs), dtype=np.int64)
    signs = np.zeros((n_sub, n_runs), dtype=np.int64)
    weight = np.empty(n, dtype=F32)
    work = np.empty((2, n), dtype=F32)
    L = np.zeros(n, dtype=np.int8)
    Lqp = np.zeros(n, dtype=np.uint8)
    trials = np.zeros((4, TMAX), dtype=F32)
    qt = np.zeros((n, TMAX), dtype=F32)
    sums = np.empty((n_runs, 3), dtype=np.float64)
    ut = np.zeros(TMAX, dtype=np.int64)
    gt = np.zeros((n_runs, TMAX), dtype=np.int64)
    ont = np.zeros((n_runs, TMAX), dtype=np.bool_)
    segu = np.full((n_runs, TMAX + 1), -1, dtype=np.int64)
    qa = np.empty((n_runs, TMAX + 1, MAX_NEIGHBOURS), dtype=F32)
    qb = np.empty((n_runs, TMAX + 1, MAX_NEIGHBOURS), dtype=F32)
    G = np.empty((3, MAX_NEIGHBOURS), dtype=np.float64)
    surv = np.empty(MAX_NEIGHBOURS, dtype=np.int64)
    f = np.empty(MAX_NEIGHBOURS, dtype=F32)
    _row_work(_borrowed(x), _borrowed(imatrix), xxs, _borrowed(kmap), _borrowed(neighbours),
              _borrowed(coords), _borrowed(levels), _borrowed(out), type_size, _borrowed(scales),
              _borrowed(points), _borrowed(signs), _borrowed(weight), _borrowed(work), _borrowed(L),
              _borrowed(Lqp), _borrowed(trials), _borrowed(qt), _borrowed(sums), _borrowed(ut), _borrowed(gt),
              _borrowed(ont), _borrowed(segu), _borrowed(qa), _borrowed(qb), _borrowed(G), _borrowed(surv),
              _borrowed(f))
    # numba frees a variable's array right after its last use: without this later use, the scratch above
    # would be freed before _row_work ran on the views (a large one unmapped: a crash; others reused)
    _hold(scales, points, signs, weight, work, L, Lqp, trials, qt, sums, ut, gt, ont, segu, qa, qb, G, surv, f)


@njit(**JIT_OPTIONS)
def _hold(*arrays):
    """Nothing: a last use of ``arrays``, so their owner frees them only after this call."""
    return len(arrays)


@njit(**JIT_OPTIONS)
def _row_work(x, imatrix, xxs, kmap, neighbours, coords, levels, out, type_size, scales, points, signs,
              weight, work, L, Lqp, trials, qt, sums, ut, gt, ont, segu, qa, qb, G, surv, f):
    """The work of :func:`_quantize_row` on borrowed views (all arrays, scratch included)."""
    n = 32 if xxs else 16
    n_sub = QK_K // n
    n_runs = n // DIMS
    for b in range(x.shape[0] // QK_K):
        xbl = x[b * QK_K:(b + 1) * QK_K]
        qw = imatrix[b * QK_K:(b + 1) * QK_K]
        o = out[b * type_size:(b + 1) * type_size]
        sumx2 = F32(0.0)
        for i in range(QK_K):
            sumx2 += xbl[i] * xbl[i]
        sigma2 = sumx2 / F32(QK_K)
        max_scale = F32(0.0)
        aborted = False
        for ib in range(n_sub):
            xb = xbl[n * ib:n * (ib + 1)]
            for i in range(n):
                weight[i] = qw[n * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            s = _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, points[ib], signs[ib], work, L,
                           Lqp, trials, qt, sums, ut, gt, ont, segu, qa, qb, G, surv, f)
            if s < 0:
                aborted = True
                break
            scales[ib] = s
            max_scale = max_scale if max_scale > s else s
        for j in range(type_size):
            o[j] = 0
        if aborted:
            write_fp16(o, 0, ABORTED_D)
            continue
        if max_scale == 0:
            continue
        d = max_scale / F32(31.0)
        write_fp16(o, 0, fp16_bits(d))
        inv = F32(1.0) / d
        for ib in range(n_sub):
            ls = max(0, min(15, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))))
            if xxs:
                sign_word = np.int64(ls) << 28
                for k in range(n_runs):
                    o[2 + 8 * ib + k] = points[ib, k]
                    sign_word |= signs[ib, k] << (7 * k)
                for j in range(4):
                    o[6 + 8 * ib + j] = (sign_word >> (8 * j)) & 0xFF
            else:
                for k in range(n_runs):
                    q = points[ib, k] | (signs[ib, k] << 9)
                    o[2 + 4 * ib + 2 * k] = q & 0xFF
                    o[3 + 4 * ib + 2 * k] = q >> 8
                o[66 + ib // 2] |= ls << (4 * (ib % 2))


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq2_xxs(x, imatrix, out, kmap, neighbours, coords, levels):
    """IQ2_XXS rows into ``out`` (ggml's ``quantize_iq2_xxs``).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32 (n_cols,) (never None);
    out : uint8 (n_rows, n_cols // 256 * 66), written; the rest are :func:`tables`.
    """
    for r in prange(x.shape[0]):
        _quantize_row(x[r], imatrix, True, kmap, neighbours, coords, levels, out[r], IQ2_XXS_SIZE)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq2_xs(x, imatrix, out, kmap, neighbours, coords, levels):
    """IQ2_XS rows into ``out`` (ggml's ``quantize_iq2_xs``); as :func:`_quantize_iq2_xxs`, 74-byte blocks."""
    for r in prange(x.shape[0]):
        _quantize_row(x[r], imatrix, False, kmap, neighbours, coords, levels, out[r], IQ2_XS_SIZE)


# ------------------------------------------------------- unpack, dequantize

@njit(**JIT_OPTIONS)
def _run(blk, xxs, k):
    """(grid number, 8 sign bits with the parity bit, ls) of run ``k`` (0..31) of one block."""
    if xxs:
        ib = k // 4
        g = np.int64(blk[2 + 8 * ib + k % 4])
        w = np.int64(0)
        for j in range(4):
            w |= np.int64(blk[6 + 8 * ib + j]) << (8 * j)
        s = (w >> (7 * (k % 4))) & 127
        ls = w >> 28
    else:
        q = np.int64(blk[2 + 2 * k]) | (np.int64(blk[3 + 2 * k]) << 8)
        g = q & 511
        s = q >> 9
        ls = (np.int64(blk[66 + k // 4]) >> (4 * ((k // 2) % 2))) & 0xF
    parity = 0
    for i in range(7):
        parity ^= (s >> i) & 1
    return g, s | (parity << 7), ls


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize(packed, y, xxs, type_size, values):
    """``(d * (0.5 + ls) * 0.25) * grid[point][j] * (+-1)``; values int8 (n_grid, 8) the decoded grid."""
    n_rows, n_cols = y.shape
    for r in prange(n_rows):
        for b in range(n_cols // QK_K):
            blk = packed[r, b * type_size:(b + 1) * type_size]
            d = read_fp16(blk, 0)
            for k in range(QK_K // DIMS):
                g, s, ls = _run(blk, xxs, k)
                db = d * (F32(0.5) + F32(ls)) * F32(0.25)
                for j in range(DIMS):
                    v = db * F32(values[g, j])
                    y[r, b * QK_K + DIMS * k + j] = -v if (s >> j) & 1 else v


@njit(parallel=True, **JIT_OPTIONS)
def _unpack(packed, codes, scales, mins, xxs, type_size, levels):
    """codes uint8 (n_rows, n_cols) 0..5 into ``CODEBOOK``, scales float32 (n_rows, n_groups) the steps
    ``d * (0.5 + ls) * 0.25``, both written; ``mins`` is None; levels uint8 (n_grid, 8)."""
    n_rows, n_cols = codes.shape
    group = 32 if xxs else 16
    for r in prange(n_rows):
        for b in range(n_cols // QK_K):
            blk = packed[r, b * type_size:(b + 1) * type_size]
            d = read_fp16(blk, 0)
            for k in range(QK_K // DIMS):
                g, s, ls = _run(blk, xxs, k)
                col = b * QK_K + DIMS * k
                scales[r, col // group] = d * (F32(0.5) + F32(ls)) * F32(0.25)
                for j in range(DIMS):
                    c = 3 + np.int64(levels[g, j])
                    codes[r, col + j] = 5 - c if (s >> j) & 1 else c


def _twins(type_name: str, quantize_kernel):
    name = SPECS[type_name][0]
    xxs, size = type_name == "IQ2_XXS", FORMATS[type_name].type_size
    lat = lattice(name)
    return twins(type_name, (quantize_kernel, *tables(name)), (_dequantize, xxs, size, lat.values),
                 (_unpack, xxs, size, lat.levels), codebook=CODEBOOK)


def _requiring_imatrix(type_name: str, quantize):
    """``quantize`` that raises the reference's error for a None imatrix (ggml asserts one)."""
    def checked(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        if imatrix is None:
            raise missing_imatrix(type_name)
        return quantize(x, imatrix)
    checked.__name__ = checked.__qualname__ = quantize.__name__
    checked.__module__ = quantize.__module__
    return checked


_quantize_xxs, dequantize_iq2_xxs, unpack_iq2_xxs = _twins("IQ2_XXS", _quantize_iq2_xxs)
_quantize_xs, dequantize_iq2_xs, unpack_iq2_xs = _twins("IQ2_XS", _quantize_iq2_xs)
quantize_iq2_xxs = _requiring_imatrix("IQ2_XXS", _quantize_xxs)
quantize_iq2_xs = _requiring_imatrix("IQ2_XS", _quantize_xs)

describe_twins(__name__, "numba")
