"""Numba twin of :mod:`qviz.formats.gguf_iq4_xs`: IQ4_XS.

Same public names and results, bit for bit, as the numpy reference (also
``unpack_iq4_xs``, which returns the reference's very arrays). Rows run in
parallel (``prange``); each row works in scratch arrays allocated once.

The 32-weight sub-block searches are IQ4_NL's, run ``LANES`` sub-blocks at a
time (``LANES / 8`` super-blocks) in lock-step by
:func:`~qviz.kernels.numba.lanes_sym.iq4nl_quants_lanes`; the re-indexing on
each sub-block's step ``d * l`` is
:func:`~qviz.kernels.numba.lanes_sym.iq4nl_codes_lanes` handed those steps.
Only the weights (``sigma2`` is the super-block's, not the sub-block's) and
the 6-bit rounding of the scales are this module's. The bit layout is drawn
in the reference module.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_iq4_xs import N_SUB, NTRY
from qviz.formats.gguf_legacy import KVALUES_IQ4NL
from qviz.formats.rounding import fp16_bits, nearest_int
from qviz.formats.spec import FORMATS, QK, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.lanes_sym import LANES, iq4nl_codes_lanes, iq4nl_quants_lanes, to_lanes
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

F32 = np.float32
IQ4_XS_SIZE = FORMATS["IQ4_XS"].type_size  # 136: d 2, scales_h 2, scales_l 4, qs 128
SUPER_PER_GROUP = LANES // N_SUB  # super-blocks whose sub-blocks are searched together
LEVELS = KVALUES_IQ4NL.astype(F32)


@njit(**JIT_OPTIONS)
def _weights(xt, wt, sigma2, n_lanes):
    """``wt = wt * sqrt(sigma2 + x**2)``, lane l's ``sigma2`` that of its super-block ``l // 8``.

    xt, wt : float32 (32, LANES), wt the imatrix in and the weights out;
    sigma2 : float32 (LANES // 8,); lanes from ``n_lanes`` on are left as they are.
    """
    for j in range(QK):
        for l in range(n_lanes):
            wt[j, l] = wt[j, l] * np.sqrt(sigma2[l // N_SUB] + xt[j, l] * xt[j, l])


@njit(**JIT_OPTIONS)
def _sub_block_steps(scales, n_super, d, ls, dl):
    """Round each super-block's eight sub-block scales to 6 bits (ggml's second pass).

    scales : float32 (LANES,), the searched scales, super-block s in lanes
    8s .. 8s+7. Writes, for ``s < n_super``: d float32 (LANES // 8,)
    ``-max_scale/32``; ls int64 (LANES,) the stored scales ``l + 32``;
    dl float32 (LANES,) the steps ``d * l`` the weights are indexed on.
    """
    for s in range(n_super):
        max_scale = F32(0.0)
        amax = F32(0.0)
        for ib in range(N_SUB):
            a = abs(scales[N_SUB * s + ib])
            if a > amax:
                amax = a
                max_scale = scales[N_SUB * s + ib]
        ds = -max_scale / F32(32.0)
        inv = F32(1.0) / ds if ds != 0 else F32(0.0)
        d[s] = ds
        for ib in range(N_SUB):
            k = N_SUB * s + ib
            l = max(-32, min(31, nearest_int(inv * scales[k])))
            dl[k] = ds * F32(l)
            ls[k] = l + 32


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq4_xs(x, imatrix, out):
    """IQ4_XS rows into ``out`` (ggml's ``quantize_iq4_xs``), ``LANES`` sub-blocks at a time.

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32
    (n_cols,) or None; out : uint8 (n_rows, n_cols // 256 * 136), written.
    """
    n_rows, n_cols = x.shape
    n_blocks = n_cols // QK  # sub-blocks of a row
    for r in prange(n_rows):
        xr = x[r]
        xt = np.empty((QK, LANES), dtype=F32)  # sub-block b0 + l in column l
        wt = np.empty((QK, LANES), dtype=F32)
        Lt = np.empty((QK, LANES), dtype=np.uint8)
        scales = np.empty(LANES, dtype=F32)
        dl = np.empty(LANES, dtype=F32)
        ls = np.empty(LANES, dtype=np.int64)
        d = np.empty(SUPER_PER_GROUP, dtype=F32)
        sigma2 = np.empty(SUPER_PER_GROUP, dtype=F32)
        work = np.empty((6, LANES), dtype=F32)
        for b0 in range(0, n_blocks, LANES):
            n_lanes = min(LANES, n_blocks - b0)
            n_super = n_lanes // N_SUB
            to_lanes(xr, b0 * QK, QK, n_lanes, xt)
            if imatrix is None:
                for j in range(QK):
                    for l in range(LANES):
                        wt[j, l] = xt[j, l] * xt[j, l]
            else:
                for s in range(n_super):  # sum of squares of the super-block, in order
                    acc = F32(0.0)
                    base = (b0 + N_SUB * s) * QK
                    for j in range(QK_K):
                        acc += xr[base + j] * xr[base + j]
                    sigma2[s] = acc * F32(2.0 / QK_K)
                to_lanes(imatrix, b0 * QK, QK, n_lanes, wt)
                _weights(xt, wt, sigma2, n_lanes)
            iq4nl_quants_lanes(xt, wt, NTRY, scales, work)
            _sub_block_steps(scales, n_super, d, ls, dl)
            for l in range(n_lanes, LANES):
                dl[l] = F32(0.0)
            iq4nl_codes_lanes(xt, dl, Lt)
            for s in range(n_super):
                o = out[r, (b0 // N_SUB + s) * IQ4_XS_SIZE:(b0 // N_SUB + s + 1) * IQ4_XS_SIZE]
                write_fp16(o, 0, fp16_bits(d[s]))
                h = 0
                for ib in range(N_SUB):
                    h |= (ls[N_SUB * s + ib] >> 4) << (2 * ib)
                o[2] = h & 0xFF
                o[3] = h >> 8
                for k in range(N_SUB // 2):
                    o[4 + k] = (ls[N_SUB * s + 2 * k] & 0xF) | ((ls[N_SUB * s + 2 * k + 1] & 0xF) << 4)
                for ib in range(N_SUB):
                    l = N_SUB * s + ib
                    for j in range(16):
                        o[8 + 16 * ib + j] = Lt[j, l] | (Lt[j + 16, l] << 4)


@njit(**JIT_OPTIONS)
def _steps(p, dl):
    """The eight steps ``d * (ls - 32)`` of the super-block ``p`` (136,) uint8 into dl (8,) float32."""
    d = read_fp16(p, 0)
    h = np.int64(p[2]) | (np.int64(p[3]) << 8)
    for ib in range(N_SUB):
        ls = ((np.int64(p[4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((h >> (2 * ib)) & 3) << 4)
        dl[ib] = d * F32(ls - 32)


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_iq4_xs(packed, out):
    """IQ4_XS: ``(d * (ls - 32)) * kvalues_iq4nl[q]``.

    packed : uint8 (n_rows, n_super * 136); out : float32 (n_rows, n_super * 256), written.
    """
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        dl = np.empty(N_SUB, dtype=F32)
        for b in range(n_cols // QK_K):
            blk = p[b * IQ4_XS_SIZE:(b + 1) * IQ4_XS_SIZE]
            _steps(blk, dl)
            for ib in range(N_SUB):
                base = b * QK_K + QK * ib
                for j in range(16):
                    q = np.int32(blk[8 + 16 * ib + j])
                    y[base + j] = dl[ib] * LEVELS[q & 0xF]
                    y[base + j + 16] = dl[ib] * LEVELS[q >> 4]


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_iq4_xs(packed, codes, scales, mins):
    """IQ4_XS rows: codes uint8 (n_rows, n_cols) 0..15 and scales float32 (n_rows, n_cols // 32)
    ``d * (ls - 32)``, both written; ``mins`` is None."""
    n_rows, n_cols = codes.shape
    for r in prange(n_rows):
        p = packed[r]
        c = codes[r]
        for b in range(n_cols // QK_K):
            blk = p[b * IQ4_XS_SIZE:(b + 1) * IQ4_XS_SIZE]
            _steps(blk, scales[r, N_SUB * b:N_SUB * (b + 1)])
            for ib in range(N_SUB):
                base = b * QK_K + QK * ib
                for j in range(16):
                    q = blk[8 + 16 * ib + j]
                    c[base + j] = q & 0xF
                    c[base + j + 16] = q >> 4


quantize_iq4_xs, dequantize_iq4_xs, unpack_iq4_xs = twins("IQ4_XS", _quantize_iq4_xs, _dequantize_iq4_xs,
                                                          _unpack_iq4_xs, codebook=LEVELS)

describe_twins(__name__, "numba")
