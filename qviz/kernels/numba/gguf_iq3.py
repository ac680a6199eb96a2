"""Numba twin of :mod:`qviz.formats.gguf_iq3`: IQ3_XXS and IQ3_S.

Same public names and results, bit for bit, as the numpy reference (also
``unpack_<type>``, which returns the reference's very arrays). Rows run in
parallel (``prange``); each row works in scratch arrays allocated once.

The sub-block search is ggml's ``quantize_row_iq3_xxs_impl`` /
``quantize_row_iq3_s_impl`` as scalar float32 loops in ggml's order, one
``xxs`` flag choosing between the two (parity-fixed signs, the skip threshold,
the trial count, which runs the second pass redoes). The lattice's tables
(:func:`qviz.formats.iq_lattice.lattice`) come in as arguments: ``kmap``,
``neighbours``, the odd search coordinates as float32 and the levels. The
bit layout is drawn in the reference module.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_iq3 import (CODEBOOK, D_FUDGE, GROUP_MAX_EPS_IQ3_XXS, KMAXQ, KSIGNS, LATTICE, N_RUNS,
                                   N_SUB, N_TRIALS, RUN)
from qviz.formats.iq_lattice import lattice
from qviz.formats.rounding import fp16_bits, nearest_int
from qviz.formats.spec import FORMATS, QK, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

F32 = np.float32
FLT_MAX = F32(np.finfo(F32).max)
SKIPPED = F32(-1.0)  # _sub_block's scale of a skipped sub-block (a real one is >= 0)
TRIALS_XXS, TRIALS_S = N_TRIALS["IQ3_XXS"], N_TRIALS["IQ3_S"]  # trial steps -n..n


@njit(**JIT_OPTIONS)
def _best_neighbour(neighbours, coords, start, xval, waux, off, scale):
    """ggml's ``iq3_find_best_neighbour``: the grid number, among the list at ``neighbours[start]``, of least
    ``sum waux*(scale*q - xval)**2`` over the run ``xval[off:off+4]`` (``coords`` float32 (n, 4): q = 2l+1)."""
    best_d2 = FLT_MAX
    gi = -1
    for j in range(1, np.int64(neighbours[start]) + 1):
        p = np.int64(neighbours[start + j])
        d2 = F32(0.0)
        for i in range(RUN):
            diff = scale * coords[p, i] - xval[off + i]
            d2 += waux[off + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            gi = p
    return max(gi, 0)  # ggml aborts where no neighbour is finite


@njit(**JIT_OPTIONS)
def _round_run(xval, off, inv, L, lo):
    """Levels ``clamp(nearest_int(0.5*(inv*xval - 1)), 0, 7)`` of the run at ``xval[off]`` into ``L[lo:lo+4]``;
    returns their packed index."""
    u = 0
    for i in range(RUN):
        l = max(0, min(KMAXQ - 1, nearest_int(F32(0.5) * (inv * xval[off + i] - F32(1.0)))))
        L[lo + i] = l
        u |= l << (3 * i)
    return u


@njit(**JIT_OPTIONS)
def _to_grid(kmap, neighbours, coords, levels, xval, waux, k, scale, L, u):
    """Run ``k`` of levels ``L`` (packed ``u``) onto the grid: its grid number (moving ``L`` if off it)."""
    g = np.int64(kmap[u])
    if g >= 0:
        return g
    g = _best_neighbour(neighbours, coords, -g - 1, xval, waux, RUN * k, scale)
    for i in range(RUN):
        L[RUN * k + i] = levels[g, i]
    return g


@njit(**JIT_OPTIONS)
def _sums(weight, xval, L):
    """ggml's ``sumqx = sum w*xval*q``, ``sumq2 = sum w*q*q`` (q = 2L+1), in order."""
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for i in range(QK):
        w = weight[i]
        q = F32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(**JIT_OPTIONS)
def _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, grid, signs, waux, xval, L, Laux, on, on_aux):
    """One sub-block (32,) with its error weights: writes grid (8,) int64 and signs (4,) int64, returns
    the scale (float32 >= 0; SKIPPED for a sub-block skipped as all zero). The other arrays are scratch."""
    for i in range(QK):
        waux[i] = np.sqrt(weight[i])
    for m in range(4):
        s = 0
        nflip = 0
        for i in range(8):
            v = xb[8 * m + i]
            if v >= 0:
                xval[8 * m + i] = v
            else:
                xval[8 * m + i] = -v
                nflip += 1
                s |= 1 << i
        if xxs and nflip % 2:
            imin = 0
            least = weight[8 * m] * xb[8 * m] * xb[8 * m]
            for i in range(1, 8):
                ax = weight[8 * m + i] * xb[8 * m + i] * xb[8 * m + i]
                if ax < least:
                    least = ax
                    imin = i
            xval[8 * m + imin] = -xval[8 * m + imin]
            s ^= 1 << imin
        signs[m] = s & 127 if xxs else s
    xmax = xval[0]
    for i in range(1, QK):
        xmax = xmax if xmax > xval[i] else xval[i]
    for k in range(N_RUNS):
        grid[k] = 0
    if (xmax < GROUP_MAX_EPS_IQ3_XXS) if xxs else (xmax == 0):
        for m in range(4):
            signs[m] = 0
        return SKIPPED
    for i in range(QK):
        L[i] = 0
    n = TRIALS_XXS if xxs else TRIALS_S
    best = F32(0.0)
    scale = xmax / F32(2 * KMAXQ - 1)
    for k in range(N_RUNS):
        on[k] = xxs
    for step in range(-n, n + 1):
        inv = (F32(2 * KMAXQ - 1) + F32(step) * F32(0.2)) / xmax
        trial = F32(1.0) / inv
        for k in range(N_RUNS):
            u = _round_run(xval, RUN * k, inv, Laux, RUN * k)
            on_aux[k] = kmap[u] >= 0
            _to_grid(kmap, neighbours, coords, levels, xval, waux, k, trial, Laux, u)
        sumqx, sumq2 = _sums(weight, xval, Laux)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(QK):
                L[i] = Laux[i]
            for k in range(N_RUNS):
                on[k] = on_aux[k]
    n_off = 0
    for k in range(N_RUNS):
        if not on[k]:
            n_off += 1
    if n_off > 0 and scale > 0:
        inv = F32(1.0) / scale
        for k in range(N_RUNS):
            if xxs and on[k]:
                continue
            u = _round_run(xval, RUN * k, inv, L, RUN * k)
            _to_grid(kmap, neighbours, coords, levels, xval, waux, k, scale, L, u)
        sumqx, sumq2 = _sums(weight, xval, L)
        if sumq2 > 0:
            scale = sumqx / sumq2
    if scale < 0:  # ggml: "should never happen"; the scale is stored unsigned
        scale = -scale
        for m in range(4):
            signs[m] = ~signs[m] & (127 if xxs else 255)
    for k in range(N_RUNS):
        u = 0
        for i in range(RUN):
            u |= np.int64(L[RUN * k + i]) << (3 * i)
        grid[k] = max(np.int64(kmap[u]), 0)  # every run is on the grid here (ggml aborts otherwise)
    return scale


@njit(parallel=True, **JIT_OPTIONS)
def _quantize(x, imatrix, out, xxs, kmap, neighbours, coords, levels, fudge):
    """IQ3_XXS (``xxs``) or IQ3_S rows into ``out`` (ggml's ``quantize_iq3_xxs`` / ``quantize_iq3_s``).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32 (n_cols,) or None;
    out : uint8 (n_rows, n_cols // 256 * type_size), zeroed, written; the lattice's kmap int32,
    neighbours uint16, coords float32 (n, 4) and levels int8 (n, 4); fudge : float32, d's factor.
    """
    n_rows, n_cols = x.shape
    size = 98 if xxs else 110
    for r in prange(n_rows):
        xr = x[r]
        weight = np.empty(QK, dtype=F32)
        waux = np.empty(QK, dtype=F32)
        xval = np.empty(QK, dtype=F32)
        L = np.empty(QK, dtype=np.int64)
        Laux = np.empty(QK, dtype=np.int64)
        on = np.empty(N_RUNS, dtype=np.bool_)
        on_aux = np.empty(N_RUNS, dtype=np.bool_)
        grid = np.zeros((N_SUB, N_RUNS), dtype=np.int64)
        signs = np.zeros((N_SUB, 4), dtype=np.int64)
        scales = np.empty(N_SUB, dtype=F32)
        kept = np.empty(N_SUB, dtype=np.bool_)
        for b in range(n_cols // QK_K):
            xbl = xr[b * QK_K:(b + 1) * QK_K]
            sumx2 = F32(0.0)
            for i in range(QK_K):
                sumx2 += xbl[i] * xbl[i]
            sigma2 = F32(2.0) * sumx2 / F32(QK_K)
            max_scale = F32(0.0)
            for ib in range(N_SUB):
                xb = xbl[QK * ib:QK * (ib + 1)]
                if imatrix is None:
                    for i in range(QK):
                        weight[i] = xb[i] * xb[i]
                else:
                    for i in range(QK):
                        weight[i] = imatrix[b * QK_K + QK * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                s = _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, grid[ib], signs[ib],
                               waux, xval, L, Laux, on, on_aux)
                kept[ib] = s != SKIPPED
                s = max(s, F32(0.0))
                scales[ib] = s
                max_scale = max_scale if max_scale > s else s
            o = out[r, b * size:(b + 1) * size]
            if max_scale == 0:  # IQ3_XXS: the block stays zero; IQ3_S: d and scales do
                if not xxs:
                    _write_runs(o, grid, signs, kept, xxs)
                continue
            d = max_scale / F32(31.0)
            write_fp16(o, 0, fp16_bits(d * fudge))
            inv = F32(1.0) / d
            for ib in range(N_SUB):
                l = max(0, min(15, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))))
                if xxs:
                    w = np.int64(l) << 28
                    for m in range(4):
                        w |= signs[ib, m] << (7 * m)
                    for j in range(4):
                        o[2 + QK_K // RUN + 4 * ib + j] = (w >> (8 * j)) & 0xFF
                else:
                    o[106 + ib // 2] |= l << (4 * (ib % 2))
            _write_runs(o, grid, signs, kept, xxs)


@njit(**JIT_OPTIONS)
def _write_runs(o, grid, signs, kept, xxs):
    """Grid numbers (8, 8) and, for IQ3_S, their high bits and the sign bytes (8, 4) into the block ``o``.

    IQ3_S as ggml writes it: its qs and signs pointers pass only the ``kept`` (not all-zero) sub-blocks,
    so after a skipped one the next sub-blocks' bytes move up a slot; qh does not move.
    """
    slot = 0
    for ib in range(N_SUB):
        if not xxs:
            if not kept[ib]:
                continue
            for k in range(N_RUNS):
                o[66 + ib] |= (grid[ib, k] >> 8) << k
            for m in range(4):
                o[74 + 4 * slot + m] = signs[ib, m]
        for k in range(N_RUNS):
            o[2 + N_RUNS * slot + k] = grid[ib, k] & 0xFF
        slot += 1


@njit(**JIT_OPTIONS)
def _decode_block(p, xxs, levels, ksigns, codes, scales):
    """One block ``p`` (uint8): codes (256,) uint8 into the signed codebook and sub-block steps (8,) float32."""
    d = read_fp16(p, 0)
    for ib in range(N_SUB):
        if xxs:
            w = (np.int64(p[66 + 4 * ib]) | (np.int64(p[67 + 4 * ib]) << 8) | (np.int64(p[68 + 4 * ib]) << 16)
                 | (np.int64(p[69 + 4 * ib]) << 24))
            scales[ib] = d * (F32(0.5) + F32(w >> 28)) * F32(0.5)
        else:
            w = 0
            ls = (np.int64(p[106 + ib // 2]) >> (4 * (ib % 2))) & 15
            scales[ib] = d * F32(1 + 2 * ls)
        for k in range(N_RUNS):
            g = np.int64(p[2 + N_RUNS * ib + k])
            if not xxs:
                g |= ((np.int64(p[66 + ib]) >> k) & 1) << 8
            m = k // 2
            sb = ksigns[(w >> (7 * m)) & 127] if xxs else p[74 + 4 * ib + m]
            for i in range(RUN):
                j = RUN * (k % 2) + i
                lv = np.int64(levels[g, i])
                codes[QK * ib + RUN * k + i] = 7 - lv if (sb >> j) & 1 else 8 + lv


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize(packed, out, xxs, levels, ksigns, codebook):
    """IQ3_XXS / IQ3_S rows: ``scale[ib] * codebook[code]``, ggml's ``(scale * value) * (±1)``.

    packed : uint8 (n_rows, n_blocks * type_size); out : float32 (n_rows, n_blocks * 256), written.
    """
    n_rows, n_cols = out.shape
    size = 98 if xxs else 110
    for r in prange(n_rows):
        codes = np.empty(QK_K, dtype=np.uint8)
        scales = np.empty(N_SUB, dtype=F32)
        for b in range(n_cols // QK_K):
            _decode_block(packed[r, b * size:(b + 1) * size], xxs, levels, ksigns, codes, scales)
            for j in range(QK_K):
                out[r, b * QK_K + j] = scales[j // QK] * codebook[codes[j]]


@njit(parallel=True, **JIT_OPTIONS)
def _unpack(packed, codes, scales, mins, xxs, levels, ksigns):
    """IQ3_XXS / IQ3_S rows: codes uint8 (n_rows, n_cols) 0..15 and scales float32 (n_rows, n_cols // 32),
    both written; ``mins`` is None."""
    n_rows, n_cols = codes.shape
    size = 98 if xxs else 110
    for r in prange(n_rows):
        for b in range(n_cols // QK_K):
            _decode_block(packed[r, b * size:(b + 1) * size], xxs, levels, ksigns,
                          codes[r, b * QK_K:(b + 1) * QK_K], scales[r, N_SUB * b:N_SUB * (b + 1)])


def _tables(type_name: str):
    """kmap, neighbours, coords float32 (n, 4), levels int8 (n, 4) of the type's lattice."""
    lat = lattice(LATTICE[type_name])
    return lat.kmap, lat.neighbours, lat.search.astype(F32), lat.levels.astype(np.int8)


def _twins(type_name: str):
    xxs = type_name == "IQ3_XXS"
    assert FORMATS[type_name].type_size == (98 if xxs else 110)
    kmap, neighbours, coords, levels = _tables(type_name)
    return twins(type_name, (_quantize, xxs, kmap, neighbours, coords, levels, D_FUDGE[type_name]),
                 (_dequantize, xxs, levels, KSIGNS, CODEBOOK[type_name]),
                 (_unpack, xxs, levels, KSIGNS), codebook=CODEBOOK[type_name])


quantize_iq3_xxs, dequantize_iq3_xxs, unpack_iq3_xxs = _twins("IQ3_XXS")
quantize_iq3_s, dequantize_iq3_s, unpack_iq3_s = _twins("IQ3_S")

describe_twins(__name__, "numba")
