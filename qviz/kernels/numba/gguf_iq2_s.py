"""Numba twin of :mod:`qviz.formats.gguf_iq2_s`: IQ2_S.

Same public names and results, bit for bit, as the numpy reference. Rows run
in parallel (``prange``); each row works in scratch arrays allocated once.
The lattice tables of ``lattice("iq2s")`` are passed to the kernels as
arguments (the grid as float32 odd coordinates ``2l+1``, the point map and the
neighbour lists as ggml lays them out).

The sub-block search is ggml's, loop for loop, every float32 operation in
ggml's order, one sub-block at a time; on one thread it runs at about the
speed of ggml's C (rows in parallel give the rest).

The bit layout is drawn in the reference module.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_iq2_s import CODEBOOK, GROUP_MAX_EPS_IQ2_S, K_MAX_Q, LATTICE, N_RUN, N_SUB, N_TRIALS, RUN, SUB
from qviz.formats.iq_lattice import lattice
from qviz.formats.rounding import fp16_bits, nearest_int
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

F32 = np.float32
IQ2_S_SIZE = FORMATS["IQ2_S"].type_size  # 82: d 2, qs 64, qh 8, scales 8

_LAT = lattice(LATTICE)
GRID = _LAT.search.astype(F32)  # (1024, 8) odd coordinates 2l+1
LEVELS = _LAT.levels.astype(np.uint8)  # (1024, 8)
KMAP = _LAT.kmap.astype(np.int32)  # (43692,)
NEIGHBOURS = _LAT.neighbours.astype(np.int32)  # count, then grid numbers, at each offset
LEVEL_VALUES = np.array([8, 25, 43], dtype=F32)



@njit(**JIT_OPTIONS)
def _best_neighbour(neighbours, start, grid, xval, waux, o, scale, L, lo):
    """ggml's ``iq2_find_best_neighbour`` for the run ``xval[o:o+8]``: writes its levels to ``L[lo:lo+8]``.

    neighbours : int32, the list (count, grid numbers…) at ``start``; grid : float32 (1024, 8), the
    odd coordinates ``2l+1``. Each candidate's distance is summed in ggml's order; the first strict
    minimum wins. Returns the chosen grid number.
    """
    n = neighbours[start]
    best_d2 = F32(np.finfo(np.float32).max)
    best = -1
    for j in range(1, n + 1):
        g = neighbours[start + j]
        d2 = F32(0.0)
        for i in range(RUN):
            diff = scale * grid[g, i] - xval[o + i]
            d2 += waux[o + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = g
    for i in range(RUN):
        L[lo + i] = np.int8((np.int64(grid[best, i]) - 1) // 2)
    return best


@njit(**JIT_OPTIONS)
def _round_run(id_, xval, o, L, lo):
    """Levels ``clamp(nearest_int(0.5*(id*x - 1)), 0, 2)`` of ``xval[o:o+8]`` into ``L[lo:lo+8]``;
    returns their packed index ``sum(l << 2i)``."""
    u = 0
    for i in range(RUN):
        l = nearest_int(F32(0.5) * (id_ * xval[o + i] - F32(1.0)))
        l = max(0, min(K_MAX_Q - 1, l))
        L[lo + i] = l
        u |= l << (2 * i)
    return u


@njit(**JIT_OPTIONS)
def _sums(L, xval, weight, o):
    """``sumqx, sumq2`` over the 16 weights from ``o``, ``q = 2L+1``, in ggml's order."""
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for i in range(SUB):
        w = weight[o + i]
        q = F32(2 * np.int64(L[i]) + 1)
        sumqx += w * xval[o + i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(**JIT_OPTIONS)
def _search_sub_block(xval, weight, waux, o, kmap, neighbours, grid, L, Laux):
    """One sub-block of 16 from ``o`` (ggml ``quantize_row_iq2_s_impl``'s inner loop, before the signs).

    Writes its levels (0..2, int8) to ``L`` (16,); returns the fitted scale
    (float32, possibly negative), 0 for a sub-block below GROUP_MAX_EPS_IQ2_S.
    """
    vmax = xval[o]
    for i in range(1, SUB):
        v = xval[o + i]
        vmax = vmax if vmax > v else v
    for i in range(SUB):
        L[i] = 0
    if vmax < GROUP_MAX_EPS_IQ2_S:
        return F32(0.0)
    best = F32(0.0)
    scale = vmax / F32(2 * K_MAX_Q - 1)
    on0 = True
    on1 = True
    for is_ in range(-N_TRIALS, N_TRIALS + 1):
        id_ = (F32(2 * K_MAX_Q - 1) + F32(is_) * F32(0.1)) / vmax
        this_scale = F32(1.0) / id_
        a0 = True
        a1 = True
        u = _round_run(id_, xval, o, Laux, 0)
        k = kmap[u]
        if k < 0:
            a0 = False
            _best_neighbour(neighbours, -k - 1, grid, xval, waux, o, this_scale, Laux, 0)
        u = _round_run(id_, xval, o + RUN, Laux, RUN)
        k = kmap[u]
        if k < 0:
            a1 = False
            _best_neighbour(neighbours, -k - 1, grid, xval, waux, o + RUN, this_scale, Laux, RUN)
        sumqx, sumq2 = _sums(Laux, xval, weight, o)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(SUB):
                L[i] = Laux[i]
            on0 = a0
            on1 = a1
    if (not on0 or not on1) and scale > 0:
        id_ = F32(1.0) / scale
        if not on0:
            u = _round_run(id_, xval, o, L, 0)
            k = kmap[u]
            if k < 0:
                _best_neighbour(neighbours, -k - 1, grid, xval, waux, o, scale, L, 0)
        if not on1:
            u = _round_run(id_, xval, o + RUN, L, RUN)
            k = kmap[u]
            if k < 0:
                _best_neighbour(neighbours, -k - 1, grid, xval, waux, o + RUN, scale, L, RUN)
        sumqx, sumq2 = _sums(L, xval, weight, o)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq2_s(x, imatrix, out, kmap, neighbours, grid):
    """IQ2_S rows into ``out`` (ggml's ``quantize_iq2_s``).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32
    (n_cols,) or None; out : uint8 (n_rows, n_cols // 256 * 82), zeroed, written;
    kmap, neighbours : int32, grid : float32 (1024, 8): the ``iq2s`` tables as ggml lays them out.
    """
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        xr = x[r]
        xval = np.empty(QK_K, dtype=F32)
        weight = np.empty(QK_K, dtype=F32)
        waux = np.empty(QK_K, dtype=F32)
        scales = np.empty(N_SUB, dtype=F32)
        L = np.empty(SUB, dtype=np.int8)
        Laux = np.empty(SUB, dtype=np.int8)
        for b in range(n_cols // QK_K):
            xb = xr[b * QK_K:(b + 1) * QK_K]
            o = out[r, b * IQ2_S_SIZE:(b + 1) * IQ2_S_SIZE]
            sumx2 = F32(0.0)
            for i in range(QK_K):
                sumx2 += xb[i] * xb[i]
            sigma2 = F32(2.0) * sumx2 / F32(QK_K)
            for i in range(QK_K):
                if imatrix is None:
                    weight[i] = F32(0.25) * sigma2 + xb[i] * xb[i]
                else:
                    weight[i] = imatrix[b * QK_K + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                waux[i] = np.sqrt(weight[i])
                xval[i] = xb[i] if xb[i] >= 0 else -xb[i]
            max_scale = F32(0.0)
            for ib in range(N_SUB):
                scale = _search_sub_block(xval, weight, waux, SUB * ib, kmap, neighbours, grid, L, Laux)
                scales[ib] = scale
                vmax = xval[SUB * ib]
                for i in range(1, SUB):
                    v = xval[SUB * ib + i]
                    vmax = vmax if vmax > v else v
                if vmax < GROUP_MAX_EPS_IQ2_S:
                    continue  # ggml skips the sub-block: its bytes stay zero
                flip = 0
                if scale < 0:
                    scale = -scale
                    flip = 0xFF
                for k in range(2):
                    g8 = 2 * ib + k
                    u = 0
                    s = 0
                    for i in range(RUN):
                        u |= np.int64(L[RUN * k + i]) << (2 * i)
                        if xb[SUB * ib + RUN * k + i] < 0:
                            s |= 1 << i
                    gi = kmap[u]
                    o[2 + g8] = gi & 0xFF
                    o[2 + 64 + g8 // 4] |= (gi >> 8) << (2 * (g8 % 4))
                    o[2 + 32 + g8] = s ^ flip
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if not max_scale:
                continue
            d = max_scale / F32(31.0)
            write_fp16(o, 0, fp16_bits(d * F32(0.9875)))
            id_ = F32(1.0) / d
            for ib in range(N_SUB):
                l = nearest_int(F32(0.5) * (id_ * scales[ib] - F32(1.0)))
                l = max(0, min(15, l))
                o[2 + 64 + 8 + ib // 2] |= l << (4 * (ib % 2))


@njit(**JIT_OPTIONS)
def _steps(p, dl):
    """The sixteen steps ``d * (0.5 + ls) * 0.25`` of the super-block ``p`` (82,) uint8 into dl (16,) float32."""
    d = read_fp16(p, 0)
    for ib in range(N_SUB):
        ls = (np.int64(p[74 + ib // 2]) >> (4 * (ib % 2))) & 0xF
        dl[ib] = d * (F32(0.5) + F32(ls)) * F32(0.25)


@njit(**JIT_OPTIONS)
def _grid_number(p, g):
    """Grid number of run ``g`` (0..31) of the super-block ``p``."""
    return np.int64(p[2 + g]) | (((np.int64(p[66 + g // 4]) >> (2 * (g % 4))) & 3) << 8)


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_iq2_s(packed, out, levels):
    """IQ2_S: ``(d * (0.5 + ls) * 0.25) * ±value``.

    packed : uint8 (n_rows, n_super * 82); out : float32 (n_rows, n_super * 256), written;
    levels : uint8 (1024, 8), the lattice points' levels.
    """
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        dl = np.empty(N_SUB, dtype=F32)
        for b in range(n_cols // QK_K):
            blk = p[b * IQ2_S_SIZE:(b + 1) * IQ2_S_SIZE]
            _steps(blk, dl)
            for g in range(N_RUN):
                gi = _grid_number(blk, g)
                s = blk[34 + g]
                for j in range(RUN):
                    v = dl[g // 2] * LEVEL_VALUES[levels[gi, j]]
                    y[b * QK_K + RUN * g + j] = -v if (s >> j) & 1 else v


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_iq2_s(packed, codes, scales, mins, levels):
    """IQ2_S rows: codes uint8 (n_rows, n_cols) 0..5 (``3 + l``, or ``2 - l`` when negative) and scales
    float32 (n_rows, n_cols // 16) ``d * (0.5 + ls) * 0.25``, both written; ``mins`` is None."""
    n_rows, n_cols = codes.shape
    for r in prange(n_rows):
        p = packed[r]
        c = codes[r]
        for b in range(n_cols // QK_K):
            blk = p[b * IQ2_S_SIZE:(b + 1) * IQ2_S_SIZE]
            _steps(blk, scales[r, N_SUB * b:N_SUB * (b + 1)])
            for g in range(N_RUN):
                gi = _grid_number(blk, g)
                s = blk[34 + g]
                for j in range(RUN):
                    lv = levels[gi, j]
                    c[b * QK_K + RUN * g + j] = 2 - lv if (s >> j) & 1 else 3 + lv


quantize_iq2_s, dequantize_iq2_s, unpack_iq2_s = twins(
    "IQ2_S", (_quantize_iq2_s, KMAP, NEIGHBOURS, GRID), (_dequantize_iq2_s, LEVELS),
    (_unpack_iq2_s, LEVELS), codebook=CODEBOOK)

describe_twins(__name__, "numba")
