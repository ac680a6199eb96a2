"""Numba twin of :mod:`qviz.formats.gguf_iq3`: IQ3_XXS and IQ3_S.

Same public names and results, bit for bit, as the numpy reference (also
``unpack_<type>``, which returns the reference's very arrays). Rows run in
parallel (``prange``); each row works in scratch arrays allocated once.

The sub-block search is ggml's ``quantize_row_iq3_xxs_impl`` /
``quantize_row_iq3_s_impl``, one ``xxs`` flag choosing between the two
(parity-fixed signs, the skip threshold, the trial count, which runs the
second pass redoes). Every float32 operation is ggml's, in ggml's order, but
the loops are turned for speed (about 3.5x ggml on one thread, where a
transcription ran at 0.8x): run after run, all trials of a run at once (the
trials are independent until the best is chosen, so a vector lane is a
trial); the neighbour search over lists laid out as padded float32 vectors,
its argmin an integer minimum of (distance bits, index) keys; no helper
taking arrays in the hot loop (numba would count references atomically on
every call); unsigned indices (no wraparound, so plain vector loads). The
lattice's tables (:func:`_tables`, from :func:`qviz.formats.iq_lattice.lattice`)
come in as arguments. The bit layout is drawn in the reference module.
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
U2, U7, U8, U255 = np.uint64(2), np.uint64(7), np.uint64(8), np.uint64(255)
KEY_FLT_MAX = np.uint64(FLT_MAX.view(np.uint32)) << U8  # search keys from here up: no finite distance
KEY_NONE = np.uint64(1) << np.uint64(62)
SKIPPED = F32(-1.0)  # _sub_block's scale of a skipped sub-block (a real one is >= 0)
TRIALS_XXS, TRIALS_S = N_TRIALS["IQ3_XXS"], N_TRIALS["IQ3_S"]  # trial steps -n..n


@njit(**JIT_OPTIONS)
def _sub_block(xb, weight, xxs, cand_at, cand_n, cand_s, cand_q, cand_g, coords, grid, signs, scr, Q, G, ON, U):
    """One sub-block (32,) with its error weights: writes grid (8,) int64 and signs (4,) int64, returns
    the scale (float32 >= 0; SKIPPED for a sub-block skipped as all zero).

    The other arrays are scratch, one column or row a trial (slot ``t``; slot ``NT = 2n+1`` holds the
    best trial and then the refit): ``scr`` (7, 32) float32 (rows waux, xval, w*xval, then per slot the
    inverse scale, the scale, sumqx, sumq2), ``Q`` (32, 32) float32 (the coordinates q = 2l+1 of weight
    ``i`` in slot ``t`` at ``Q[i, t]``), ``G`` (32, 8) int64 and ``ON`` (32, 8) bool (each run's grid
    number and whether its rounding was on the grid), ``U`` (32,) int64 (packed levels of one run).

    ggml's order, trial after trial, becomes run after run here, every trial of a run at once: the
    trials are independent until the choice of the best, so each lane of a vector (a trial) does the
    very float32 operations ggml does, in its order. Only the neighbour search is a loop per run and
    trial. The trials and the refit share that code (the refit is the second pass, on slot ``NT``),
    written out in full: a helper taking arrays would cost atomic reference counts on every call.
    """
    for i in range(QK):
        scr[0, i] = np.sqrt(weight[i])
    for m in range(4):
        s = 0
        nflip = 0
        for i in range(8):
            v = xb[8 * m + i]
            if v >= 0:
                scr[1, 8 * m + i] = v
            else:
                scr[1, 8 * m + i] = -v
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
            scr[1, 8 * m + imin] = -scr[1, 8 * m + imin]
            s ^= 1 << imin
        signs[m] = s & 127 if xxs else s
    xmax = scr[1, 0]
    for i in range(1, QK):
        xmax = xmax if xmax > scr[1, i] else scr[1, i]
    for k in range(N_RUNS):
        grid[k] = 0
    if (xmax < GROUP_MAX_EPS_IQ3_XXS) if xxs else (xmax == 0):
        for m in range(4):
            signs[m] = 0
        return SKIPPED
    for i in range(QK):
        scr[2, i] = weight[i] * scr[1, i]
    n = TRIALS_XXS if xxs else TRIALS_S
    nt = 2 * n + 1
    for t in range(nt):
        inv = (F32(2 * KMAXQ - 1) + F32(t - n) * F32(0.2)) / xmax
        scr[3, t] = inv
        scr[4, t] = F32(1.0) / inv
    best = F32(0.0)
    scale = xmax / F32(2 * KMAXQ - 1)
    tb = -1
    lo, hi = np.uint64(0), np.uint64(nt)  # unsigned slots: indices that cannot wrap, so vectors
    for refit in (False, True):
        if refit:  # slot nt: the best trial's levels, then (some runs off the grid) rounded again on its scale
            for i in range(QK):
                Q[i, nt] = Q[i, tb] if tb >= 0 else F32(1.0)  # no best trial: levels 0, grid point 0
            for k in range(N_RUNS):
                G[nt, k] = G[tb, k] if tb >= 0 else 0
                ON[nt, k] = ON[tb, k] if tb >= 0 else xxs
            n_off = 0
            for k in range(N_RUNS):
                if not ON[nt, k]:
                    n_off += 1
            if not (n_off > 0 and scale > 0):
                break
            scr[3, nt] = F32(1.0) / scale
            scr[4, nt] = scale
            lo, hi = np.uint64(nt), np.uint64(nt + 1)
        for k in range(N_RUNS):
            if refit and xxs and ON[nt, k]:
                continue
            off = RUN * k
            x0, x1, x2, x3 = scr[1, off], scr[1, off + 1], scr[1, off + 2], scr[1, off + 3]
            w0, w1, w2, w3 = scr[0, off], scr[0, off + 1], scr[0, off + 2], scr[0, off + 3]
            for t in range(lo, lo + ((hi - lo + U7) & ~U7)):  # whole vectors: slots past hi are ignored
                inv = scr[3, t]
                l0 = max(0, min(KMAXQ - 1, nearest_int(F32(0.5) * (inv * x0 - F32(1.0)))))
                l1 = max(0, min(KMAXQ - 1, nearest_int(F32(0.5) * (inv * x1 - F32(1.0)))))
                l2 = max(0, min(KMAXQ - 1, nearest_int(F32(0.5) * (inv * x2 - F32(1.0)))))
                l3 = max(0, min(KMAXQ - 1, nearest_int(F32(0.5) * (inv * x3 - F32(1.0)))))
                U[t] = l0 | (l1 << 3) | (l2 << 6) | (l3 << 9)
            for t in range(lo, hi):
                u = U[t]  # uint64, as are the list's start b, its length npad and j: loads, not gathers
                npad = cand_n[u]
                if not refit:
                    ON[t, k] = npad == 0  # on the grid: an empty list
                # ggml's iq3_find_best_neighbour. A run on the grid has an empty list whose "first candidate"
                # is its own point: the same code, no branch to mispredict.
                sc = scr[4, t]
                b = cand_at[u]
                st = cand_s[u]
                b1 = b + st
                b2 = b1 + st
                b3 = b2 + st
                # The least of keys (bits of d2) << 8 | j is the least d2 and, among equal ones, the first,
                # as ggml's strict d2 < best scan finds it: d2 >= +0 or nan, and the bits of such floats
                # are in their order (nan and inf above FLT_MAX, which ggml's scan never takes either).
                key = KEY_NONE
                for j in range(npad):
                    diff = sc * cand_q[b + j] - x0
                    acc = F32(0.0) + w0 * diff * diff
                    diff = sc * cand_q[b1 + j] - x1
                    acc += w1 * diff * diff
                    diff = sc * cand_q[b2 + j] - x2
                    acc += w2 * diff * diff
                    diff = sc * cand_q[b3 + j] - x3
                    acc += w3 * diff * diff
                    key = min(key, (np.uint64(F32(acc).view(np.uint32)) << U8) | j)
                jm = key & U255  # 0 for an empty list
                if key >= KEY_FLT_MAX and npad > 0:  # no finite distance: ggml aborts; grid point 0
                    G[t, k] = 0
                    for i in range(RUN):
                        Q[off + i, t] = coords[0, i]
                    continue
                G[t, k] = cand_g[(b >> U2) + jm]
                Q[off, t] = cand_q[b + jm]
                Q[off + 1, t] = cand_q[b1 + jm]
                Q[off + 2, t] = cand_q[b2 + jm]
                Q[off + 3, t] = cand_q[b3 + jm]
        for t in range(lo, hi):  # ggml's sum w*xval*q and sum w*q*q, in order: a lane a trial
            scr[5, t] = F32(0.0)
            scr[6, t] = F32(0.0)
        for i in range(QK):
            wx = scr[2, i]
            w = weight[i]
            for t in range(lo, hi):
                q = Q[i, t]
                scr[5, t] += wx * q
                scr[6, t] += w * q * q
        if refit:
            if scr[6, nt] > 0:
                scale = scr[5, nt] / scr[6, nt]
        else:
            for t in range(nt):
                sumqx = scr[5, t]
                sumq2 = scr[6, t]
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    tb = t
    if scale < 0:  # ggml: "should never happen"; the scale is stored unsigned
        scale = -scale
        for m in range(4):
            signs[m] = ~signs[m] & (127 if xxs else 255)
    for k in range(N_RUNS):
        grid[k] = G[nt, k]
    return scale


@njit(parallel=True, **JIT_OPTIONS)
def _quantize(x, imatrix, out, xxs, tabs, fudge):
    """IQ3_XXS (``xxs``) or IQ3_S rows into ``out`` (ggml's ``quantize_iq3_xxs`` / ``quantize_iq3_s``).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32 (n_cols,) or None;
    out : uint8 (n_rows, n_cols // 256 * type_size), zeroed, written; tabs : the lattice's search tables
    (:func:`_tables`); fudge : float32, d's factor.
    """
    n_rows, n_cols = x.shape
    size = 98 if xxs else 110
    cand_at, cand_n, cand_s, cand_q, cand_g, coords = tabs
    for r in prange(n_rows):
        xr = x[r]
        weight = np.empty(QK, dtype=F32)
        scr = np.zeros((7, 40), dtype=F32)  # 40: the rounding's vectors reach past the refit's slot
        Q = np.empty((QK, 32), dtype=F32)
        G = np.empty((32, N_RUNS), dtype=np.int64)
        ON = np.empty((32, N_RUNS), dtype=np.bool_)
        U = np.empty(40, dtype=np.uint64)
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
                s = _sub_block(xb, weight, xxs, cand_at, cand_n, cand_s, cand_q, cand_g, coords, grid[ib], signs[ib],
                               scr, Q, G, ON, U)
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
    """The lattice's search tables: for each packed ``u`` (4096) its neighbour list, ``cand_n[u]`` long
    (padded to a multiple of 4 with infinite coordinates, never chosen; 0 for a point of the grid): the
    coordinates q = 2l+1 of its candidates ``cand_q[cand_at[u] + i * cand_s[u] + j]`` float32 (coordinate
    ``i`` of candidate ``j``) and their grid numbers ``cand_g[cand_at[u] // 4 + j]`` int32; a point of the
    grid has its own coordinates and number there as candidate 0 (``cand_s[u] = 1``). Also coords float32
    (n, 4) of the grid points and their levels int8 (n, 4)."""
    lat = lattice(LATTICE[type_name])
    kmap, nb = lat.kmap, lat.neighbours
    coords = lat.search.astype(F32)
    cand_at = np.zeros(len(kmap), dtype=np.uint64)
    cand_n = np.zeros(len(kmap), dtype=np.uint64)
    cand_s = np.zeros(len(kmap), dtype=np.uint64)
    q_parts, g_parts, at = [], [], 0
    for u in range(len(kmap)):
        if kmap[u] >= 0:  # a point of the grid: an empty list, the point itself as its candidate 0
            q = coords[kmap[u]]
            g = np.array([kmap[u]], dtype=np.int32)
            npad, stride = 0, 1
        else:
            start = -int(kmap[u]) - 1
            g = nb[start + 1:start + 1 + int(nb[start])].astype(np.int32)
            npad = stride = -(-len(g) // 4) * 4
            q = np.full((RUN, npad), np.inf, dtype=F32)
            q[:, :len(g)] = coords[g].T
            g = np.concatenate([g, np.zeros(npad - len(g), dtype=np.int32)])
        cand_at[u], cand_n[u], cand_s[u] = RUN * at, npad, stride
        q_parts.append(q.ravel())
        g_parts.append(g)
        at += len(g)
    assert max(cand_n) < 256  # the index in the low byte of a search key
    tabs = (cand_at, cand_n, cand_s, np.concatenate(q_parts), np.concatenate(g_parts), coords)
    return tabs, lat.levels.astype(np.int8)


def _twins(type_name: str):
    xxs = type_name == "IQ3_XXS"
    assert FORMATS[type_name].type_size == (98 if xxs else 110)
    tabs, levels = _tables(type_name)
    return twins(type_name, (_quantize, xxs, tabs, D_FUDGE[type_name]),
                 (_dequantize, xxs, levels, KSIGNS, CODEBOOK[type_name]),
                 (_unpack, xxs, levels, KSIGNS), codebook=CODEBOOK[type_name])


quantize_iq3_xxs, dequantize_iq3_xxs, unpack_iq3_xxs = _twins("IQ3_XXS")
quantize_iq3_s, dequantize_iq3_s, unpack_iq3_s = _twins("IQ3_S")

describe_twins(__name__, "numba")
