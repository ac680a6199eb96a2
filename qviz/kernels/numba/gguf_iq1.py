"""Numba twin of :mod:`qviz.formats.gguf_iq1`: IQ1_S and IQ1_M.

Same public names and results, bit for bit, as the numpy reference. Rows run
in parallel (``prange``); each row works in scratch arrays allocated once. The
lattice's tables (:func:`~qviz.formats.iq_lattice.lattice` ``("iq1s")``:
levels, point map, neighbour lists) are passed in as arguments.

Where it saves work without changing a single float32 operation, the kernels
share partial results between the candidate splits that ggml computes afresh:

* IQ1_S: the products of the prefix sums with the shifted level values that
  depend on one split boundary only are computed once per boundary, and the
  down-shifted middle term is the up-shifted one negated (the shifts are
  ``±1/8``: ``fl(-a*b) = -fl(a*b)``);
* IQ1_M: ggml accumulates each split's sums element by element in sorted
  order (level-0 run, level-1 run, level-2 run). Every split with the same
  first boundary shares the level-0 partial sums, and each split's sums up to
  its second boundary are the previous split's plus one term, so only the
  level-2 tail is added per split, in the same order as ggml adds it. The
  per-weight products ``(w*v)*x`` and ``(w*v)*v`` are computed once.

The sort is an insertion sort, stable like glibc's merge sort behind ggml's
``qsort``. The bit layout is drawn in the reference module.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_iq1 import (CODEBOOK, EPS_M, EPS_S, FLT_MAX, M_BLOCK, M_FUDGE, M_MASKS, S_BLOCK, S_FUDGE,
                                   X_M, X_P)
from qviz.formats.iq_lattice import lattice
from qviz.formats.rounding import fp16_bits, nearest_int
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

F32 = np.float32
IQ1_S_SIZE = FORMATS["IQ1_S"].type_size  # 50: d 2, qs 32, qh 16
IQ1_M_SIZE = FORMATS["IQ1_M"].type_size  # 56: qs 32, qh 16, scales 8
_LAT = lattice("iq1s")
LEVELS = np.ascontiguousarray(_LAT.levels)  # (2048, 8) uint8
KMAP = np.ascontiguousarray(_LAT.kmap)  # (43692,) int32
NEIGHBOURS = np.ascontiguousarray(_LAT.neighbours)  # uint16
#: each grid point's 8 levels packed 2 bits each (level j at bits 2j, 2j+1)
GCODES = (LEVELS.astype(np.int32) << (2 * np.arange(8, dtype=np.int32))).sum(axis=1, dtype=np.int32)
#: ``GCODES`` of each entry of ``NEIGHBOURS`` (meaningless at the lists' lengths), 16 bits each, padded by 8
NBCODES = np.concatenate([GCODES[NEIGHBOURS], np.zeros(8, np.int32)]).astype(np.uint16)
MAX_NEIGHBOURS = int(NEIGHBOURS[-KMAP[KMAP < 0] - 1].max())  # the longest neighbour list
SHIFTED = np.stack([X_P, X_M]).astype(F32)  # (2, 3): row 0 up, row 1 down
MASKS = M_MASKS.astype(np.int64)


# ------------------------------------------------------------ shared steps

@njit(**JIT_OPTIONS)
def _sigma2(x, base):
    """``2*sum(x**2)/256`` of the super-block at ``x[base:base+256]``, summed in order."""
    acc = F32(0.0)
    for j in range(QK_K):
        acc += x[base + j] * x[base + j]
    return (F32(2.0) * acc) / F32(QK_K)


@njit(**JIT_OPTIONS)
def _sort(xb, n, order):
    """Stable ascending order of ``xb[:n]`` into ``order[:n]``.

    Weight ``i`` goes to position ``#{j: x_j < x_i} + #{j < i: x_j == x_i}``
    (counted in vectorisable loops): the stable order for any rows without NaN
    (-0.0 and +0.0 compare equal and keep their order). A run with a NaN takes
    the insertion sort instead.
    """
    nan = False
    for j in range(n):
        nan |= xb[j] != xb[j]
    if nan:
        _insertion_sort(xb, n, order)
        return
    for i in range(n):
        v = xb[i]
        cnt = np.int32(0)
        for j in range(n):
            xj = xb[j]
            cnt += np.int32(xj < v) + np.int32((xj == v) & (j < i))
        order[cnt] = i


@njit(**JIT_OPTIONS)
def _insertion_sort(xb, n, order):
    """Stable ascending order of ``xb[:n]`` into ``order[:n]`` (insertion sort)."""
    for j in range(n):
        order[j] = j
    for j in range(1, n):
        k = order[j]
        v = xb[k]
        i = j - 1
        while i >= 0 and xb[order[i]] > v:
            order[i + 1] = order[i]
            i -= 1
        order[i + 1] = k


@njit(**JIT_OPTIONS)
def _run_error(levels, g, e):
    """Error of grid point ``g``: ``sum_i e[i, l_i]`` in order."""
    d2 = F32(0.0)
    for i in range(8):
        d2 += e[i, levels[g, i]]
    return d2


@njit(**JIT_OPTIONS)
def _pick(lev, a, b, c):
    """``(a, b, c)[lev]`` for ``lev`` 0, 1, 2, as a select."""
    return a if lev == 0 else (b if lev == 1 else c)


@njit(**JIT_OPTIONS)
def _best_neighbour(levels, neighbours, nbcodes, start, xb, w, off, scale, xg, s, e, d2):
    """ggml's ``iq1_find_best_neighbour2`` on the run at ``xb[off:off+8]``; neighbour list at ``start``.

    ``e[i, l] = (w_i*diff)*diff`` with ``diff = scale*xg[s, l] - x_i`` are the
    products ggml computes afresh for every candidate; each candidate's error
    is the sum of its eight entries in order, the same float32 sum, computed for
    all candidates before the first-smallest is picked. ``nbcodes[p]`` holds the
    levels of grid point ``neighbours[p]``, 2 bits each, so the candidates are
    read contiguously and the entry of each level is a select (no gather): the
    loop runs over whole vectors of 8 candidates. The up to 7 lanes past the
    list read the next list's entries (or ``NBCODES``'s zero padding) and are
    never looked at: the first-smallest is taken over ``d2[:n]`` only. e float32
    (8, 3) and d2 float32 (>= the longest list + 8) are scratch.
    """
    for i in range(8):
        xi = xb[off + i]
        wi = w[off + i]
        for lev in range(3):
            diff = scale * xg[s, lev] - xi
            e[i, lev] = wi * diff * diff
    n = np.int64(neighbours[start])
    first = start + 1
    # the 24 entries as locals: loop-invariant registers (stores into d2 might alias the array e)
    a0, b0, c0 = e[0, 0], e[0, 1], e[0, 2]
    a1, b1, c1 = e[1, 0], e[1, 1], e[1, 2]
    a2, b2, c2 = e[2, 0], e[2, 1], e[2, 2]
    a3, b3, c3 = e[3, 0], e[3, 1], e[3, 2]
    a4, b4, c4 = e[4, 0], e[4, 1], e[4, 2]
    a5, b5, c5 = e[5, 0], e[5, 1], e[5, 2]
    a6, b6, c6 = e[6, 0], e[6, 1], e[6, 2]
    a7, b7, c7 = e[7, 0], e[7, 1], e[7, 2]
    n8 = (n + 7) & -8  # whole vectors: no scalar remainder (NBCODES is padded)
    codes = nbcodes[first:first + n8]  # a slice: its index c >= 0 needs no wraparound select
    for c in range(n8):
        code = np.int32(codes[c])
        d = F32(0.0)
        d += _pick(code & 3, a0, b0, c0)
        d += _pick((code >> 2) & 3, a1, b1, c1)
        d += _pick((code >> 4) & 3, a2, b2, c2)
        d += _pick((code >> 6) & 3, a3, b3, c3)
        d += _pick((code >> 8) & 3, a4, b4, c4)
        d += _pick((code >> 10) & 3, a5, b5, c5)
        d += _pick((code >> 12) & 3, a6, b6, c6)
        d += _pick((code >> 14) & 3, a7, b7, c7)
        d2[c] = d
    best = FLT_MAX
    found = -1
    for c in range(n):
        if d2[c] < best:
            best = d2[c]
            found = c
    if found >= 0:
        return np.int64(neighbours[first + found])
    for g in range(levels.shape[0]):  # ggml's full-grid fallback (out of bounds there; the run's own weights here)
        dd = _run_error(levels, g, e)
        if dd < best:
            best = dd
            found = g
    return found


@njit(**JIT_OPTIONS)
def _grid_runs(L, n_runs, xb, w, scale, shift_of_run, levels, kmap, neighbours, nbcodes, index, e, d2):
    """Grid numbers of the runs of 8 levels ``L`` into ``index``; returns whether all were on the grid."""
    on_grid = True
    for k in range(n_runs):
        u = 0
        for j in range(8):
            u |= np.int64(L[8 * k + j]) << (2 * j)
        g = np.int64(kmap[u])
        if g < 0:
            on_grid = False
            g = _best_neighbour(levels, neighbours, nbcodes, -g - 1, xb, w, 8 * k, scale, SHIFTED, shift_of_run[k],
                                e, d2)
        index[k] = g
    return on_grid


@njit(**JIT_OPTIONS)
def _refit(index, n_runs, xb, w, shift_of_run, levels, factor, sums):
    """Add ``(w*q)*x`` and ``(w*q)*q`` over the runs' grid points, in order, to ``sums`` (2,).

    ``q = SHIFTED[shift_of_run[k], l] * factor`` (``factor`` 1 leaves it unmultiplied).
    """
    sqx = sums[0]
    sq2 = sums[1]
    for k in range(n_runs):
        g = index[k]
        s = shift_of_run[k]
        for j in range(8):
            q = SHIFTED[s, levels[g, j]]
            if factor != F32(1.0):
                q = q * factor
            wq = w[8 * k + j] * q
            sqx += wq * xb[8 * k + j]
            sq2 += wq * q
    sums[0] = sqx
    sums[1] = sq2


@njit(**JIT_OPTIONS)
def _split_levels(order, n, i1, i2, L):
    for j in range(n):
        L[order[j]] = 0 if j < i1 else (1 if j < i2 else 2)


# ------------------------------------------------------------ IQ1_S

@njit(**JIT_OPTIONS)
def _iq1_s_search(xb, w, order, sumx, sumw, cp, tr, res):
    """ggml's split search of a 32-weight sub-block (sorted by ``order``).

    Writes res[0] = i1, res[1] = i2, res[2] = shift (1, -1; 0 when none found);
    returns the scale. ``sumx``, ``sumw`` float32 (33,), ``cp`` and ``tr`` float32 (4, 33) are scratch.

    For each first boundary ``i1`` the trials of every ``i2`` are computed at
    once (independent float32 expressions, each in ggml's order) together with
    whether any of them passes ggml's test against the best so far; only a row
    with a pass is scanned in ggml's order (a row without one leaves the best
    unchanged, so skipping it cannot change the result).
    """
    n = S_BLOCK
    p0, p1, p2 = X_P[0], X_P[1], X_P[2]
    m0, m2 = X_M[0], X_M[2]
    sumx[0] = F32(0.0)
    sumw[0] = F32(0.0)
    for j in range(n):
        i = order[j]
        sumx[j + 1] = sumx[j] + w[i] * xb[i]
        sumw[j + 1] = sumw[j] + w[i]
    for i2 in range(n + 1):  # terms of the level-2 run, by its start
        c = sumx[n] - sumx[i2]
        cw = sumw[n] - sumw[i2]
        cp[0, i2] = c * p2
        cp[1, i2] = c * m2
        cp[2, i2] = (cw * p2) * p2
        cp[3, i2] = (cw * m2) * m2
    best = -FLT_MAX
    scale = F32(0.0)
    res[2] = 0
    for i1 in range(n + 1):
        x1 = sumx[i1]
        w1 = sumw[i1]
        a = x1 - sumx[0]
        aw = w1 - sumw[0]
        ap = a * p0
        am = a * m0
        awp = (aw * p0) * p0
        awm = (aw * m0) * m0
        hit = False
        for i2 in range(i1, n + 1):
            bp = (sumx[i2] - x1) * p1  # the down-shifted term is -bp
            bw = ((sumw[i2] - w1) * p1) * p1  # the same for both shifts
            qx = (ap + bp) + cp[0, i2]
            q2 = (awp + bw) + cp[2, i2]
            mx = (am - bp) + cp[1, i2]
            mq = (awm + bw) + cp[3, i2]
            tr[0, i2] = qx
            tr[1, i2] = q2
            tr[2, i2] = mx
            tr[3, i2] = mq
            hit |= ((q2 > 0) & (qx * qx > best * q2)) | ((mq > 0) & (mx * mx > best * mq))
        if not hit:
            continue
        for i2 in range(i1, n + 1):
            qx = tr[0, i2]
            q2 = tr[1, i2]
            if q2 > 0 and qx * qx > best * q2:
                scale = qx / q2
                best = scale * qx
                res[0] = i1
                res[1] = i2
                res[2] = 1
            qx = tr[2, i2]
            q2 = tr[3, i2]
            if q2 > 0 and qx * qx > best * q2:
                scale = qx / q2
                best = scale * qx
                res[0] = i1
                res[1] = i2
                res[2] = -1
    return scale


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq1_s(x, imatrix, out, levels, kmap, neighbours, nbcodes):
    """IQ1_S rows into ``out`` (ggml's ``quantize_iq1_s``; the imatrix is required).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32
    (n_cols,); out : uint8 (n_rows, n_cols // 256 * 50), zeroed, written.
    """
    n_rows, n_cols = x.shape
    n_sub = QK_K // S_BLOCK
    for r in prange(n_rows):
        xr = x[r]
        w = np.empty(S_BLOCK, dtype=F32)
        order = np.empty(S_BLOCK, dtype=np.int64)
        sumx = np.empty(S_BLOCK + 1, dtype=F32)
        sumw = np.empty(S_BLOCK + 1, dtype=F32)
        cp = np.empty((4, S_BLOCK + 1), dtype=F32)
        tr = np.empty((4, S_BLOCK + 1), dtype=F32)
        e = np.empty((8, 3), dtype=F32)
        d2 = np.empty(MAX_NEIGHBOURS + 8, dtype=F32)
        res = np.zeros(3, dtype=np.int64)
        L = np.empty(S_BLOCK, dtype=np.int64)
        index = np.empty(4, dtype=np.int64)
        shift_of_run = np.empty(4, dtype=np.int64)
        scales = np.empty(n_sub, dtype=F32)
        shifts = np.empty(n_sub, dtype=np.int64)
        sums = np.empty(2, dtype=F32)
        for b in range(n_cols // QK_K):
            o = out[r, b * IQ1_S_SIZE:(b + 1) * IQ1_S_SIZE]
            base = b * QK_K
            sigma2 = _sigma2(xr, base)
            max_scale = F32(0.0)
            for ib in range(n_sub):
                xb = xr[base + S_BLOCK * ib:base + S_BLOCK * (ib + 1)]
                amax = F32(0.0)
                for i in range(S_BLOCK):
                    w[i] = imatrix[base + S_BLOCK * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                    amax = max(amax, abs(xb[i]))
                scales[ib] = F32(0.0)
                shifts[ib] = 1
                if amax < EPS_S:
                    continue
                _sort(xb, S_BLOCK, order)
                scale = _iq1_s_search(xb, w, order, sumx, sumw, cp, tr, res)
                if res[2] == 0:
                    continue
                shift = res[2]
                _split_levels(order, S_BLOCK, res[0], res[1], L)
                if scale < 0:
                    for j in range(S_BLOCK):
                        L[j] = 2 - L[j]
                    scale = -scale
                    shift = -shift
                for k in range(4):
                    shift_of_run[k] = 0 if shift == 1 else 1
                if not _grid_runs(L, 4, xb, w, scale, shift_of_run, levels, kmap, neighbours, nbcodes, index, e, d2):
                    sums[0] = F32(0.0)
                    sums[1] = F32(0.0)
                    _refit(index, 4, xb, w, shift_of_run, levels, F32(1.0), sums)
                    if sums[0] > 0 and sums[1] > 0:
                        scale = sums[0] / sums[1]
                h = 0
                for k in range(4):
                    o[2 + 4 * ib + k] = index[k] & 255
                    h |= (index[k] >> 8) << (3 * k)
                o[34 + 2 * ib] = h & 0xFF
                o[35 + 2 * ib] = h >> 8
                scales[ib] = scale
                shifts[ib] = shift
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == 0:
                continue
            d = max_scale / F32(15.0)
            write_fp16(o, 0, fp16_bits(d * S_FUDGE))
            inv = F32(1.0) / d
            for ib in range(n_sub):
                l = max(0, min(7, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))))
                if shifts[ib] == -1:
                    l |= 8
                o[35 + 2 * ib] |= l << 4


# ------------------------------------------------------------ IQ1_M

@njit(**JIT_OPTIONS)
def _iq1_m_search(xb, w, order, tx, t2, res):
    """ggml's split search of a 16-weight sub-block (sorted by ``order``), sharing partial sums.

    tx, t2 : float32 (16, 3, 4) scratch: the terms ``(w*v)*x`` and ``(w*v)*v`` of sorted
    weight j at level ``lev`` for shift choice k. Writes res[0] = i1, res[1] = i2,
    res[2] = k (-1 when none found); returns the scale.
    """
    n = M_BLOCK
    half = n // 2
    for j in range(n):
        i = order[j]
        for k in range(4):
            down = (k >> 1) if i < half else (k & 1)
            for lev in range(3):
                v = SHIFTED[down, lev]
                wv = w[i] * v
                tx[j, lev, k] = wv * xb[i]
                t2[j, lev, k] = wv * v
    p0x = np.zeros(4, dtype=F32)  # level-0 run's sums over sorted j < i1
    p02 = np.zeros(4, dtype=F32)
    cx = np.empty(4, dtype=F32)
    c2 = np.empty(4, dtype=F32)
    best = -FLT_MAX
    scale = F32(0.0)
    res[2] = -1
    for i1 in range(n + 1):
        if i1 > 0:
            for k in range(4):
                p0x[k] += tx[i1 - 1, 0, k]
                p02[k] += t2[i1 - 1, 0, k]
        for k in range(4):
            cx[k] = p0x[k]
            c2[k] = p02[k]
        for i2 in range(i1, n + 1):
            if i2 > i1:
                for k in range(4):
                    cx[k] += tx[i2 - 1, 1, k]
                    c2[k] += t2[i2 - 1, 1, k]
            sx0, sx1, sx2, sx3 = cx[0], cx[1], cx[2], cx[3]
            s20, s21, s22, s23 = c2[0], c2[1], c2[2], c2[3]
            for j in range(i2, n):
                sx0 += tx[j, 2, 0]
                sx1 += tx[j, 2, 1]
                sx2 += tx[j, 2, 2]
                sx3 += tx[j, 2, 3]
                s20 += t2[j, 2, 0]
                s21 += t2[j, 2, 1]
                s22 += t2[j, 2, 2]
                s23 += t2[j, 2, 3]
            if s20 > 0 and sx0 * sx0 > best * s20:
                scale = sx0 / s20
                best = scale * sx0
                res[0], res[1], res[2] = i1, i2, 0
            if s21 > 0 and sx1 * sx1 > best * s21:
                scale = sx1 / s21
                best = scale * sx1
                res[0], res[1], res[2] = i1, i2, 1
            if s22 > 0 and sx2 * sx2 > best * s22:
                scale = sx2 / s22
                best = scale * sx2
                res[0], res[1], res[2] = i1, i2, 2
            if s23 > 0 and sx3 * sx3 > best * s23:
                scale = sx3 / s23
                best = scale * sx3
                res[0], res[1], res[2] = i1, i2, 3
    return scale


@njit(**JIT_OPTIONS)
def _iq1_m_weights(xr, imatrix, base, sigma2, w):
    for i in range(M_BLOCK):
        xv = xr[base + i]
        if imatrix is None:
            w[i] = xv * xv
        else:
            w[i] = imatrix[base + i] * np.sqrt(sigma2 + xv * xv)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq1_m(x, imatrix, out, levels, kmap, neighbours, nbcodes):
    """IQ1_M rows into ``out`` (ggml's ``quantize_iq1_m``).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32
    (n_cols,) or None; out : uint8 (n_rows, n_cols // 256 * 56), zeroed, written.
    """
    n_rows, n_cols = x.shape
    n_sub = QK_K // M_BLOCK
    for r in prange(n_rows):
        xr = x[r]
        w = np.empty(M_BLOCK, dtype=F32)
        order = np.empty(M_BLOCK, dtype=np.int64)
        tx = np.empty((M_BLOCK, 3, 4), dtype=F32)
        t2 = np.empty((M_BLOCK, 3, 4), dtype=F32)
        e = np.empty((8, 3), dtype=F32)
        d2 = np.empty(MAX_NEIGHBOURS + 8, dtype=F32)
        res = np.zeros(3, dtype=np.int64)
        L = np.empty(M_BLOCK, dtype=np.int64)
        index = np.zeros((n_sub, 2), dtype=np.int64)
        shift_of_run = np.empty(2, dtype=np.int64)
        scales = np.empty(n_sub, dtype=F32)
        shifts = np.empty(n_sub, dtype=np.int64)
        sums = np.empty(2, dtype=F32)
        for b in range(n_cols // QK_K):
            o = out[r, b * IQ1_M_SIZE:(b + 1) * IQ1_M_SIZE]
            base = b * QK_K
            sigma2 = _sigma2(xr, base)
            max_scale = F32(0.0)
            for ib in range(n_sub):
                sb = base + M_BLOCK * ib
                xb = xr[sb:sb + M_BLOCK]
                _iq1_m_weights(xr, imatrix, sb, sigma2, w)
                amax = F32(0.0)
                for i in range(M_BLOCK):
                    amax = max(amax, abs(xb[i]))
                scales[ib] = F32(0.0)
                shifts[ib] = 0
                index[ib, 0] = 0
                index[ib, 1] = 0
                if amax < EPS_M:
                    continue
                _insertion_sort(xb, M_BLOCK, order)
                scale = _iq1_m_search(xb, w, order, tx, t2, res)
                k = res[2]
                if k < 0:
                    continue
                _split_levels(order, M_BLOCK, res[0], res[1], L)
                if scale < 0:
                    for j in range(M_BLOCK):
                        L[j] = 2 - L[j]
                    scale = -scale
                    k = 3 - k
                shift_of_run[0] = k >> 1
                shift_of_run[1] = k & 1
                if not _grid_runs(L, 2, xb, w, scale, shift_of_run, levels, kmap, neighbours, nbcodes, index[ib],
                                  e, d2):
                    sums[0] = F32(0.0)
                    sums[1] = F32(0.0)
                    _refit(index[ib], 2, xb, w, shift_of_run, levels, F32(1.0), sums)
                    if sums[0] > 0 and sums[1] > 0:
                        scale = sums[0] / sums[1]
                o[2 * ib] = index[ib, 0] & 255
                o[2 * ib + 1] = index[ib, 1] & 255
                o[32 + ib] = (index[ib, 0] >> 8) | ((index[ib, 1] >> 8) << 4)
                scales[ib] = scale
                shifts[ib] = k
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == 0:
                continue
            d = max_scale / F32(15.0)
            inv = F32(1.0) / d
            sums[0] = F32(0.0)
            sums[1] = F32(0.0)
            sc0 = 0
            sc1 = 0
            sc2 = 0
            sc3 = 0
            for ib in range(n_sub):
                l = max(0, min(7, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))))
                bits = l << (3 * (ib % 4))
                if ib < 4:
                    sc0 |= bits
                elif ib < 8:
                    sc1 |= bits
                elif ib < 12:
                    sc2 |= bits
                else:
                    sc3 |= bits
                o[32 + ib] |= MASKS[shifts[ib]]
                sb = base + M_BLOCK * ib
                _iq1_m_weights(xr, imatrix, sb, sigma2, w)
                shift_of_run[0] = shifts[ib] >> 1
                shift_of_run[1] = shifts[ib] & 1
                _refit(index[ib], 2, xr[sb:sb + M_BLOCK], w, shift_of_run, levels, F32(2 * l + 1), sums)
            if sums[1] > 0:
                d = sums[0] / sums[1]
            s = fp16_bits(d * M_FUDGE)
            sc0 |= (s & 0xF) << 12
            sc1 |= ((s >> 4) & 0xF) << 12
            sc2 |= ((s >> 8) & 0xF) << 12
            sc3 |= ((s >> 12) & 0xF) << 12
            o[48] = sc0 & 0xFF
            o[49] = sc0 >> 8
            o[50] = sc1 & 0xFF
            o[51] = sc1 >> 8
            o[52] = sc2 & 0xFF
            o[53] = sc2 >> 8
            o[54] = sc3 & 0xFF
            o[55] = sc3 >> 8


# ------------------------------------------------------- dequantize, unpack

@njit(**JIT_OPTIONS)
def _levels_of(levels, g, neg, c, off):
    """Codes ``level + 3*neg`` of grid point ``g`` into ``c[off:off+8]``."""
    for j in range(8):
        c[off + j] = levels[g, j] + 3 * neg


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_iq1_s(packed, codes, scales, mins, levels):
    """IQ1_S rows: codes uint8 (n_rows, n_cols) 0..5 and scales float32 (n_rows, n_cols // 32)
    ``d * (2*s + 1)``, both written; ``mins`` is None."""
    n_rows, n_cols = codes.shape
    for r in prange(n_rows):
        p = packed[r]
        for b in range(n_cols // QK_K):
            blk = p[b * IQ1_S_SIZE:(b + 1) * IQ1_S_SIZE]
            d = read_fp16(blk, 0)
            for ib in range(QK_K // S_BLOCK):
                h = np.int64(blk[34 + 2 * ib]) | (np.int64(blk[35 + 2 * ib]) << 8)
                scales[r, b * 8 + ib] = d * F32(2 * ((h >> 12) & 7) + 1)
                neg = (h >> 15) & 1
                for k in range(4):
                    g = np.int64(blk[2 + 4 * ib + k]) | (((h >> (3 * k)) & 7) << 8)
                    _levels_of(levels, g, neg, codes[r], b * QK_K + S_BLOCK * ib + 8 * k)


@njit(**JIT_OPTIONS)
def _iq1_m_d(blk):
    """fp16 ``d`` of an IQ1_M block, as float32."""
    bits = 0
    for m in range(4):
        w = np.int64(blk[48 + 2 * m]) | (np.int64(blk[49 + 2 * m]) << 8)
        bits |= (w >> 12) << (4 * m)
    tmp = np.empty(2, dtype=np.uint8)
    tmp[0] = bits & 0xFF
    tmp[1] = bits >> 8
    return read_fp16(tmp, 0)


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_iq1_m(packed, codes, scales, mins, levels):
    """IQ1_M rows: codes uint8 (n_rows, n_cols) 0..5 and scales float32 (n_rows, n_cols // 16)
    ``d * (2*s + 1)``, both written; ``mins`` is None."""
    n_rows, n_cols = codes.shape
    for r in prange(n_rows):
        p = packed[r]
        for b in range(n_cols // QK_K):
            blk = p[b * IQ1_M_SIZE:(b + 1) * IQ1_M_SIZE]
            d = _iq1_m_d(blk)
            for ib in range(QK_K // M_BLOCK):
                w = np.int64(blk[48 + 2 * (ib // 4)]) | (np.int64(blk[49 + 2 * (ib // 4)]) << 8)
                scales[r, b * 16 + ib] = d * F32(2 * ((w >> (3 * (ib % 4))) & 7) + 1)
                h = np.int64(blk[32 + ib])
                for k in range(2):
                    g = np.int64(blk[2 * ib + k]) | (((h >> (4 * k)) & 7) << 8)
                    _levels_of(levels, g, (h >> (4 * k + 3)) & 1, codes[r], b * QK_K + M_BLOCK * ib + 8 * k)


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_iq1_s(packed, out, levels):
    """IQ1_S: ``(d * (2*s + 1)) * (grid + delta)``; out float32 (n_rows, n_cols), written."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        for b in range(n_cols // QK_K):
            blk = p[b * IQ1_S_SIZE:(b + 1) * IQ1_S_SIZE]
            d = read_fp16(blk, 0)
            for ib in range(QK_K // S_BLOCK):
                h = np.int64(blk[34 + 2 * ib]) | (np.int64(blk[35 + 2 * ib]) << 8)
                dl = d * F32(2 * ((h >> 12) & 7) + 1)
                neg = (h >> 15) & 1
                for k in range(4):
                    g = np.int64(blk[2 + 4 * ib + k]) | (((h >> (3 * k)) & 7) << 8)
                    for j in range(8):
                        y[b * QK_K + S_BLOCK * ib + 8 * k + j] = dl * CODEBOOK[levels[g, j] + 3 * neg]


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_iq1_m(packed, out, levels):
    """IQ1_M: ``(d * (2*s + 1)) * (grid + delta)``; out float32 (n_rows, n_cols), written."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        for b in range(n_cols // QK_K):
            blk = p[b * IQ1_M_SIZE:(b + 1) * IQ1_M_SIZE]
            d = _iq1_m_d(blk)
            for ib in range(QK_K // M_BLOCK):
                w = np.int64(blk[48 + 2 * (ib // 4)]) | (np.int64(blk[49 + 2 * (ib // 4)]) << 8)
                dl = d * F32(2 * ((w >> (3 * (ib % 4))) & 7) + 1)
                h = np.int64(blk[32 + ib])
                for k in range(2):
                    g = np.int64(blk[2 * ib + k]) | (((h >> (4 * k)) & 7) << 8)
                    neg = (h >> (4 * k + 3)) & 1
                    for j in range(8):
                        y[b * QK_K + M_BLOCK * ib + 8 * k + j] = dl * CODEBOOK[levels[g, j] + 3 * neg]


_quantize_s, dequantize_iq1_s, unpack_iq1_s = twins(
    "IQ1_S", (_quantize_iq1_s, LEVELS, KMAP, NEIGHBOURS, NBCODES), (_dequantize_iq1_s, LEVELS),
    (_unpack_iq1_s, LEVELS), codebook=CODEBOOK)
quantize_iq1_m, dequantize_iq1_m, unpack_iq1_m = twins(
    "IQ1_M", (_quantize_iq1_m, LEVELS, KMAP, NEIGHBOURS, NBCODES), (_dequantize_iq1_m, LEVELS),
    (_unpack_iq1_m, LEVELS), codebook=CODEBOOK)


def quantize_iq1_s(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:  # noqa: D103 (described below)
    if imatrix is None:
        raise ValueError("IQ1_S needs an importance matrix: ggml's quantize_row_iq1_s_impl asserts "
                         "'missing quantization weights'")
    return _quantize_s(x, np.ascontiguousarray(imatrix, dtype=F32))


quantize_iq1_s.__module__ = __name__

describe_twins(__name__, "numba")
