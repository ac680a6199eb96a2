"""Numba twin of :mod:`qviz.formats.gguf_iq2`: IQ2_XXS and IQ2_XS.

Same public names and bytes as the numpy reference (and the same arrays from
``unpack_<type>``). Rows run in parallel (``prange``); each row works in
scratch arrays allocated once. The bit layout and the search are drawn in the
reference module; the lattice tables (:func:`~qviz.formats.iq_lattice.lattice`)
are passed to the kernels as arrays.

The time goes into ggml's ``iq2_find_best_neighbour``: for a run of 8 whose
rounded levels are off the grid, the weighted distance to each listed
neighbour. ggml sums the 8 terms of one neighbour, then the next. Here the
listed neighbours' odd coordinates are laid out transposed
(:func:`neighbour_coordinates`, ``(8, len(neighbours))``, one row per
coordinate), and the kernel adds coordinate ``i``'s term to every neighbour's
running sum before coordinate ``i + 1``'s: each sum still adds its 8 terms in
ggml's order (so every float32 result is the same), but the loop over the
neighbours is contiguous and LLVM vectorizes it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

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


def neighbour_coordinates(name: str) -> np.ndarray:
    """The odd coordinates of every listed neighbour, transposed: int8 (8, len(neighbours)).

    Column ``p`` holds ``lattice(name).search[neighbours[p]]`` where ``neighbours[p]`` is a grid number
    (at a list's count the column is unused).
    """
    lat = lattice(name)
    nb = np.minimum(lat.neighbours.astype(np.int64), len(lat.search) - 1)
    return np.ascontiguousarray(lat.search[nb].T)


def tables(name: str) -> tuple[np.ndarray, ...]:
    """The arrays the quantize kernel takes: kmap, neighbours, neighbour_coordinates, levels."""
    lat = lattice(name)
    return (lat.kmap, lat.neighbours, neighbour_coordinates(name), lat.levels)


# ------------------------------------------------------------------ search

@njit(**JIT_OPTIONS)
def _best_neighbour(neighbours, coords, start, xval, waux, off, scale, d2):
    """ggml's ``iq2_find_best_neighbour`` for the list at ``start``: the grid number chosen, or -1.

    xval, waux : float32 (n,), the run is ``off .. off+7``; d2 : float32 scratch (>= the list's count).
    Coordinate 0's term is stored, not added to 0 (``0 + t == t``: a term is never -0.0).
    """
    n = np.int64(neighbours[start])
    base = start + 1
    x0 = xval[off]
    w0 = waux[off]
    for j in range(n):
        diff = scale * F32(coords[0, base + j]) - x0
        d2[j] = w0 * diff * diff
    for i in range(1, DIMS):
        xi = xval[off + i]
        wi = waux[off + i]
        for j in range(n):
            diff = scale * F32(coords[i, base + j]) - xi
            d2[j] += wi * diff * diff
    best = FLT_MAX
    g = -1
    for j in range(n):
        if d2[j] < best:
            best = d2[j]
            g = np.int64(neighbours[base + j])
    return g


@njit(**JIT_OPTIONS)
def _level_runs(kmap, neighbours, coords, levels, xval, waux, n, iscale, scale, redo, out, on_grid, d2):
    """Levels of the runs ``k`` with ``redo[k]`` on inverse scale ``iscale`` into ``out`` (int8 (n,));
    off-grid runs take their best neighbour at ``scale``. ``on_grid[k]``: the rounded levels were a point.
    Returns False when a neighbour search found nothing (ggml asserts)."""
    for k in range(n // DIMS):
        if not redo[k]:
            continue
        u = 0
        for i in range(DIMS):
            l = nearest_int(F32(0.5) * (iscale * xval[DIMS * k + i] - F32(1.0)))
            l = max(0, min(KMAXQ - 1, l))
            out[DIMS * k + i] = l
            u |= l << (2 * i)
        g = np.int64(kmap[u])
        on_grid[k] = g >= 0
        if g < 0:
            g = _best_neighbour(neighbours, coords, -g - 1, xval, waux, DIMS * k, scale, d2)
            if g < 0:
                return False
            for i in range(DIMS):
                out[DIMS * k + i] = levels[g, i]
    return True


@njit(**JIT_OPTIONS)
def _fit(weight, xval, L, n):
    """``(sum(w*x*q), sum(w*q*q))`` with ``q = 2L+1``, in order, float32."""
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for i in range(n):
        w = weight[i]
        q = F32(2 * np.int64(L[i]) + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(**JIT_OPTIONS)
def _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, points, signs, work, flags, L, Laux, Lqp, d2):
    """One sub-block of ``quantize_row_iq2_{xxs,xs}_impl`` (the reference's ``_sub_block``).

    xb, weight : float32 (n,), n = 32 (``xxs``) or 16. Writes points and signs int64 (n // 8,);
    work : float32 (2, n) scratch (xval, waux); flags : bool (3, n // 8) scratch; L, Laux, Lqp : int8/uint8
    (n,) scratch.
    Returns the scale, or -1 where ggml would abort (a point off the grid).
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
    on_grid = flags[0]
    aux_on_grid = flags[1]
    every = flags[2]
    for k in range(n_runs):
        on_grid[k] = True
        every[k] = True
    for i in range(n):
        L[i] = 0
    best = F32(0.0)
    for step in range(lo, hi):
        iscale = (F32(2 * KMAXQ - 1) + F32(step) * F32(0.1)) / eff_max
        if not _level_runs(kmap, neighbours, coords, levels, xval, waux, n, iscale, F32(1.0) / iscale,
                           every, Laux, aux_on_grid, d2):
            return F32(-1.0)
        sumqx, sumq2 = _fit(weight, xval, Laux, n)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(n):
                L[i] = Laux[i]
            for k in range(n_runs):
                on_grid[k] = aux_on_grid[k]
    n_redo = 0
    for k in range(n_runs):  # XXS re-levels every run, XS those that were off the grid
        every[k] = xxs or not on_grid[k]
        n_redo += every[k]
    if n_redo > 0 and scale > 0:
        if not _level_runs(kmap, neighbours, coords, levels, xval, waux, n, F32(1.0) / scale, scale,
                           every, L, aux_on_grid, d2):
            return F32(-1.0)
        sumqx, sumq2 = _fit(weight, xval, L, n)
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
    where ggml would abort gets ``d = +inf`` and zero bits (``ABORTED_D``, as the reference)."""
    n = 32 if xxs else 16
    n_sub = QK_K // n
    n_runs = n // DIMS
    scales = np.empty(n_sub, dtype=F32)
    points = np.zeros((n_sub, n_runs), dtype=np.int64)
    signs = np.zeros((n_sub, n_runs), dtype=np.int64)
    weight = np.empty(n, dtype=F32)
    work = np.empty((2, n), dtype=F32)
    flags = np.empty((3, n_runs), dtype=np.bool_)
    L = np.zeros(n, dtype=np.int8)
    Laux = np.zeros(n, dtype=np.int8)
    Lqp = np.zeros(n, dtype=np.uint8)
    d2 = np.empty(MAX_NEIGHBOURS, dtype=F32)
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
            s = _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, points[ib], signs[ib],
                           work, flags, L, Laux, Lqp, d2)
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
