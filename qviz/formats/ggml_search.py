"""ggml's shared scale searches, as scalar loops numba compiles unchanged.

Every GGUF quantizer picks a block's scale (and min) with one of a few
searches from ggml-quants.c. They are written here once, as plain loops over
float32 numpy arrays, so that:

* the numpy references in ``formats/`` call them interpreted, on numpy
  float32 scalars (slow, but readable and exact);
* ``kernels/numba/search.py`` registers them with numba and the kernels call
  the very same code compiled.

Conventions (they decide whether bytes match ggml's):

* Signatures mirror ggml's: ``n`` and ``nmax`` first, inputs are 1-D array
  slices holding at least ``n`` values, the code array ``L`` is written in
  place, scratch arrays (``Laux``) come from the caller, and ggml's pointer
  outputs (``the_min``) become return values.
* Arithmetic is float32 in ggml's order: every literal and every int that
  meets a float is made ``np.float32`` first (numba would widen
  float32 * int64 to float64), and sums run sequentially.
* Integers read from ``int8``/``uint8`` arrays are widened with ``int()``
  before integer arithmetic, so numpy scalars cannot wrap around.
* A ``None`` weight array is ggml's NULL pointer; numba prunes the branch.

In a numba kernel, import :mod:`qviz.kernels.numba.search` first: it registers
these functions (and ``formats/rounding.py``) with numba, after which njit code
may call them directly, or call its dispatchers of the same names.
"""
from __future__ import annotations

import numpy as np

from qviz.formats.rounding import nearest_int

#: ggml's GROUP_MAX_EPS: a group whose largest magnitude is below it is all zero.
GROUP_MAX_EPS = np.float32(1e-15)


def max_by_abs(n, x):
    """The first of ``x[:n]`` with the largest magnitude, and that magnitude: ``(xmax, amax)``.

    ggml's scan ``if (ax > amax) { amax = ax; max = x[i]; }`` from zero, so an
    all-zero (or all-NaN) group gives ``(0.0, 0.0)``; float32 values.
    """
    xmax = np.float32(0.0)
    amax = np.float32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            xmax = x[i]
    return xmax, amax


def _qx_weight(qw, x, i, rmse_type):
    """Weight of ``x[i]`` in :func:`make_qx_quants`'s error: ``qw[i]`` or a power of ``|x[i]|``."""
    if qw is not None:
        return qw[i]
    if rmse_type == 1:
        return x[i] * x[i]
    if rmse_type == 2:
        return np.float32(1.0)
    if rmse_type == 3:
        return abs(x[i])
    return np.sqrt(abs(x[i]))


def _add_lx_l2(sumlx, suml2, w, xi, l):
    """ggml's ``sumlx += w*x[i]*l; suml2 += w*l*l;`` in float32: the two sums, updated."""
    fl = np.float32(l)
    return sumlx + w * xi * fl, suml2 + w * fl * fl


def make_qx_quants(n, nmax, x, L, rmse_type, qw=None):
    """Symmetric codes in ``[0, 2*nmax)`` and the scale that fits them best.

    Starts from the scale that maps the largest-magnitude value to ``-nmax``;
    with ``rmse_type != 0`` refits the scale by weighted least squares and
    tries 18 nearby starting scales ``-(nmax + 0.1*is)/max``, keeping the one
    with the largest ``sumlx**2 / suml2`` (the smallest weighted error).

    Parameters
    ----------
    n : int
        Values in the group.
    nmax : int
        Half the number of levels: codes are ``l + nmax`` with
        ``l`` in ``[-nmax, nmax - 1]``.
    x : ndarray, shape (>= n,), float32
        The group's values.
    L : ndarray, shape (>= n,), int8
        Output: the codes, written in place.
    rmse_type : int
        0: plain round-to-nearest with the max-based scale. Otherwise the
        error weight when ``qw`` is None: 1 ``x**2``, 2 one, 3 ``|x|``,
        else ``sqrt(|x|)``. Negative: refit once and return the mean of
        the refit and the start scale, without the search.
    qw : ndarray, shape (>= n,), float32, or None
        Error weights (ggml's ``qw``); None is ggml's NULL.

    Returns
    -------
    float32
        The scale ``d``: values decode as ``d * (L - nmax)``.

    Notes
    -----
    ggml-quants.c ``make_qx_quants``. Used by Q4_0/Q5_0 with an imatrix
    (``rmse_type=1``), Q3_K and Q6_K.
    """
    xmax, amax = max_by_abs(n, x)
    if amax < GROUP_MAX_EPS:  # all zero
        L[:n] = 0
        return np.float32(0.0)
    iscale = np.float32(-nmax) / xmax
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale * x[i])
            L[i] = nmax + max(-nmax, min(nmax - 1, l))
        return np.float32(1.0) / iscale
    return_early = rmse_type < 0
    if return_early:
        rmse_type = -rmse_type
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l + nmax
        w = _qx_weight(qw, x, i, rmse_type)
        sumlx, suml2 = _add_lx_l2(sumlx, suml2, w, x[i], l)
    scale = sumlx / suml2 if suml2 != 0 else np.float32(0.0)
    if return_early:
        if suml2 > 0:
            return np.float32(0.5) * (scale + np.float32(1.0) / iscale)
        return np.float32(1.0) / iscale
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / xmax
        sumlx = np.float32(0.0)
        suml2 = np.float32(0.0)
        for i in range(n):
            # nearest_int of the level clamped first: the same value (the bounds
            # are integers and |iscale * x| <= nmax + 1, where nearest_int is
            # rint), but compiled branch-free, which this hot loop needs
            fl = np.rint(min(max(iscale * x[i], np.float32(-nmax)), np.float32(nmax - 1)))
            w = _qx_weight(qw, x, i, rmse_type)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


def make_q3_quants(n, nmax, x, L, do_rmse):
    """Symmetric codes in ``[0, 2*nmax)`` refined one weight at a time.

    With ``do_rmse``, starts from the max-based scale and then, for up to 5
    passes, moves single codes to their least-squares level when that lowers
    the ``x**2``-weighted error.

    Parameters
    ----------
    n : int
        Values in the group.
    nmax : int
        Half the number of levels (4 for Q3_K).
    x : ndarray, shape (>= n,), float32
        The group's values.
    L : ndarray, shape (>= n,), int8
        Output: the codes ``l + nmax``, written in place (it holds the signed
        ``l`` while the search runs).
    do_rmse : bool
        Refine the codes (True) or round with the max-based scale (False).

    Returns
    -------
    float32
        The scale ``d`` of the codes ``L`` (0 for an all-zero group), as
        :func:`make_qx_quants` returns it.

    Notes
    -----
    ggml-quants.c ``make_q3_quants`` (quantize_row_q3_K_ref).
    """
    xmax, amax = max_by_abs(n, x)
    if amax < GROUP_MAX_EPS:  # all zero
        L[:n] = 0
        return np.float32(0.0)
    iscale = np.float32(-nmax) / xmax
    if not do_rmse:
        for i in range(n):
            L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        return np.float32(1.0) / iscale
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l
        w = x[i] * x[i]
        sumlx, suml2 = _add_lx_l2(sumlx, suml2, w, x[i], l)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fl = np.float32(L[i])
            slx = sumlx - w * x[i] * fl
            if slx > 0:
                sl2 = suml2 - w * fl * fl
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new_l != int(L[i]):
                    slx, sl2 = _add_lx_l2(slx, sl2, w, x[i], new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] = int(L[i]) + nmax
    return sumlx / suml2 if suml2 > 0 else np.float32(0.0)


def _min_weight(weights, x, i):
    """Weight of ``x[i]`` in :func:`make_qkx3_quants`'s error: ``weights[i]``, or ``x[i]**2``."""
    if weights is not None:
        return weights[i]
    return x[i] * x[i]


def make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """Codes in ``[0, nmax]`` with a scale and a min, by a weighted grid search.

    Starts from ``scale = (max - min)/nmax`` with ``min = min(x, 0)``, then for
    each of ``nstep + 1`` trial inverse scales ``(rmin + rdelta*is + nmax)/(max - min)``
    rounds the codes and solves the weighted least-squares problem for scale
    and min (min clamped to <= 0). The trial with the smallest weighted error
    (absolute with ``use_mad``, else squared) wins.

    Parameters
    ----------
    n : int
        Values in the group.
    nmax : int
        The largest code (15 for 4 bits, 31 for 5 bits, 3 for 2 bits).
    x : ndarray, shape (>= n,), float32
        The group's values.
    weights : ndarray, shape (>= n,), float32, or None
        Error weights; None (ggml's NULL) means ``x**2``.
    L : ndarray, shape (>= n,), uint8
        Output: the codes, written in place.
    Laux : ndarray, shape (>= n,), uint8
        Scratch of the trial codes.
    rmin, rdelta : float
        First trial offset and step, in code units (ggml passes e.g.
        ``-0.9f, 0.05f``); rounded to float32 here, as C's ``f`` literals are.
    nstep : int
        Trials after the first: ``is`` runs over ``0 .. nstep``; below 1 no
        search is done.
    use_mad : bool
        Absolute (True) or squared (False) error.

    Returns
    -------
    scale : float32
        Step ``d`` of the codes.
    the_min : float32
        ``-min`` >= 0: values decode as ``d * L - the_min``.

    Notes
    -----
    ggml-quants.c ``make_qkx3_quants`` (Q4_1/Q5_1 with an imatrix, K-quants'
    ``_impl`` functions).
    """
    xmin = x[0]
    xmax = x[0]
    sum_w = _min_weight(weights, x, 0)
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < xmin:
            xmin = x[i]
        if x[i] > xmax:
            xmax = x[i]
        w = _min_weight(weights, x, i)
        sum_w += w
        sum_x += w * x[i]
    if xmin > 0:
        xmin = np.float32(0.0)
    if xmax <= xmin:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0), -xmin
    iscale = np.float32(nmax) / (xmax - xmin)
    scale = np.float32(1.0) / iscale
    best_error = np.float32(0.0)
    for i in range(n):
        l = max(0, min(nmax, nearest_int(iscale * (x[i] - xmin))))
        L[i] = l
        diff = scale * np.float32(l) + xmin - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += _min_weight(weights, x, i) * diff
    if nstep < 1:
        return scale, -xmin
    rmin32 = np.float32(rmin)
    rdelta32 = np.float32(rdelta)
    for step in range(nstep + 1):
        iscale = (rmin32 + rdelta32 * np.float32(step) + np.float32(nmax)) / (xmax - xmin)
        changed = step == 0
        for i in range(n):
            l = max(0, min(nmax, nearest_int(iscale * (x[i] - xmin))))
            changed |= l != Laux[i]
            Laux[i] = l
        if not changed:
            # The previous trial's codes: the same fit and the same error, which
            # did not beat best_error then and cannot now (ggml recomputes it).
            continue
        sum_l = np.float32(0.0)
        sum_l2 = np.float32(0.0)
        sum_xl = np.float32(0.0)
        for i in range(n):
            w = _min_weight(weights, x, i)
            fl = np.float32(Laux[i])
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = np.float32(0.0)
                this_scale = sum_xl / sum_l2
            cur_error = np.float32(0.0)
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += _min_weight(weights, x, i) * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                xmin = this_min
    return scale, -xmin


def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """:func:`make_qkx3_quants` with required weights.

    ggml keeps two copies of this search; they differ only in that qkx3
    accepts NULL weights (meaning ``x**2``), so one body serves both.

    Parameters
    ----------
    n, nmax, x, L, Laux, rmin, rdelta, nstep, use_mad
        As in :func:`make_qkx3_quants`.
    weights : ndarray, shape (>= n,), float32
        Error weights (ggml passes ``|x|`` for Q2_K, ``av_x + |x|`` for Q4_K/Q5_K).

    Returns
    -------
    scale : float32
    the_min : float32
        ``-min`` >= 0: values decode as ``scale * L - the_min``.

    Notes
    -----
    ggml-quants.c ``make_qkx2_quants`` (quantize_row_q2_K_ref, q4_K_ref,
    q5_K_ref). ggml's pointer argument ``the_min`` is the second return value;
    the argument order is ggml's with ``the_min`` dropped.
    """
    return make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad)


def make_qp_quants(n, nmax, x, L, quant_weights):
    """Codes in ``[0, nmax]`` for non-negative values, no min (quantizing scales).

    Picks the best of 9 inverse scales ``(nmax + 0.1*is)/max``, then moves
    single codes for up to 5 passes while the weighted error drops.

    A negative value (a sub-block fit can return a negative scale) gets a
    negative code, which ggml stores in its ``uint8_t`` array as ``code & 0xFF``
    (-6 is stored as 250); later passes read the stored byte, and so do
    ggml's callers.

    Parameters
    ----------
    n : int
        Values in the group.
    nmax : int
        The largest code.
    x : ndarray, shape (>= n,), float32
        Sub-block scales or mins; meant to be >= 0.
    L : ndarray, shape (>= n,), uint8
        Output: the codes, written in place; ``0..nmax``, or above ``nmax``
        for a negative value's wrapped code.
    quant_weights : ndarray, shape (>= n,), float32
        Error weights.

    Returns
    -------
    float32
        The scale ``d``: values decode as ``d * L``.

    Notes
    -----
    ggml-quants.c ``make_qp_quants`` (Q2_K, Q4_K and Q5_K ``_impl`` functions,
    for the 6-bit / 4-bit sub-block scales).
    """
    xmax = np.float32(0.0)
    for i in range(n):
        if not xmax > x[i]:  # ggml's MAX(max, x[i]): a nan x[i] is taken
            xmax = x[i]
    if xmax < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return np.float32(0.0)
    iscale = np.float32(nmax) / xmax
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = np.float32(1.0) / iscale
    best_mse = np.float32(0.0)
    for i in range(n):
        diff = x[i] - scale * np.float32(L[i])
        best_mse += quant_weights[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (np.float32(0.1) * np.float32(step) + np.float32(nmax)) / xmax
        scale_is = np.float32(1.0) / iscale_is
        mse = np.float32(0.0)
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * np.float32(l)
            mse += quant_weights[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        w = quant_weights[i]
        sumlx, suml2 = _add_lx_l2(sumlx, suml2, w, x[i], l)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            fl = np.float32(L[i])
            slx = sumlx - w * x[i] * fl
            sl2 = suml2 - w * fl * fl
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != int(L[i]):
                    slx, sl2 = _add_lx_l2(slx, sl2, w, x[i], new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else np.float32(0.0)


def best_index_int8(n, val, x):
    """Index of the entry of the ascending table ``val`` nearest to ``x``.

    Parameters
    ----------
    n : int
        Table length.
    val : ndarray, shape (>= n,), int8
        Ascending levels (e.g. ``kvalues_iq4nl``).
    x : float32
        The value to place.

    Returns
    -------
    int
        Bisection result; a tie goes to the upper entry.

    Notes
    -----
    ggml-quants.c ``best_index_int8``.
    """
    if x <= val[0]:
        return 0
    if x >= val[n - 1]:
        return n - 1
    ml = 0
    mu = n - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    if x - np.float32(val[mu - 1]) < np.float32(val[mu]) - x:
        return mu - 1
    return mu


def make_iq4nl_quants(n, x, L, weight, values, ntry):
    """Codebook indices and the scale of one IQ4_NL-style block.

    Starts from ``d = max/values[0]`` (sign chosen by ``ntry``), refits ``d``
    by weighted least squares, and with ``ntry > 0`` tries the inverse
    scales ``(itry + values[0])/max`` for ``itry`` in ``-ntry .. ntry``,
    keeping the best refit. ``L`` holds the codes of the starting scale.

    Parameters
    ----------
    n : int
        Values in the block.
    x : ndarray, shape (>= n,), float32
        The block's values.
    L : ndarray, shape (>= n,), uint8
        Output: codebook indices for the starting scale (ggml recomputes
        them from the returned scale when ``ntry > 0``).
    weight : ndarray, shape (>= n,), float32
        Error weights.
    values : ndarray, shape (16,), int8
        The ascending codebook (``kvalues_iq4nl``).
    ntry : int
        Half-width of the scale search; <= 0 skips it.

    Returns
    -------
    float32
        The scale ``d`` (0 for an all-zero block, then ``L`` is untouched).

    Notes
    -----
    The per-block part of ggml-quants.c ``quantize_row_iq4_nl_impl``.
    """
    xmax, amax = max_by_abs(n, x)
    if amax < GROUP_MAX_EPS:
        return np.float32(0.0)
    v0 = np.float32(values[0])
    d = -xmax / v0 if ntry > 0 else xmax / v0
    inv = np.float32(1.0) / d
    sumqx = np.float32(0.0)
    sumq2 = np.float32(0.0)
    for j in range(n):
        l = best_index_int8(16, values, inv * x[j])
        L[j] = l
        q = np.float32(values[l])
        w = weight[j]
        sumqx += w * q * x[j]
        sumq2 += w * q * q
    d = sumqx / sumq2 if sumq2 > 0 else np.float32(0.0)
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        inv = np.float32(itry + int(values[0])) / xmax
        sumqx = np.float32(0.0)
        sumq2 = np.float32(0.0)
        for j in range(n):
            q = np.float32(values[best_index_int8(16, values, inv * x[j])])
            w = weight[j]
            sumqx += w * q * x[j]
            sumq2 += w * q * q
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d
