"""Numba twins of :mod:`qviz.formats.minifloat`: ``encode``, ``group_amax``, ``encode_groups``.

Same names, arguments and results as the reference, bit for bit. Rows run
in parallel (``prange``); every value is scaled and rounded while its tile's
factor is in a register, without the reference's full-size temporaries.

The rounding is the reference's formula (see :mod:`qviz.formats.minifloat`),
per value: ``E = max(exponent of |x|, emin)``, ``m = rint(|x| * 2**(M - E))``
(the factor ``2**(M - E)`` built from its bits: ``M - E + 127`` lies in
1..254 for every float32 ``x``), code ``((E - emin) << M) + m``, or the
largest code past ``max``. Division and multiplication by the tile's factor
are single float32 operations, as in the reference (no fastmath: no
reciprocal is substituted).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.minifloat import OPS, ZERO_SIGNS, element_format

F32 = np.float32
JIT_OPTIONS = {"cache": True, "error_model": "numpy"}


@njit(parallel=True, **JIT_OPTIONS)
def _encode(x, mbits, emin, max_value, max_code, sign_bit):
    n, chunk = x.shape[0], 4096
    codes = np.empty(n, dtype=np.uint8)
    beyond = np.zeros((n + chunk - 1) // chunk, dtype=np.int64)
    for c in prange(beyond.shape[0]):
        lo, hi = c * chunk, min((c + 1) * chunk, n)
        beyond[c] = _encode_row(x[lo:hi].copy(), codes[lo:hi], mbits, emin, max_value, max_code, sign_bit)
    return codes, beyond


@njit(parallel=True, **JIT_OPTIONS)
def _row_amax(wb, group_size):
    """Per row and group, the largest ``bits & 0x7FFFFFFF`` of ``wb`` (int32 bits of finite float32s).

    Finite floats' magnitudes order like these integers, and an integer max
    reduction vectorizes without fastmath; the result is viewed back as float32.
    """
    n_rows, n_cols = wb.shape
    gb = (n_cols + group_size - 1) // group_size
    out = np.zeros((n_rows, gb), dtype=np.int32)
    mask = np.int32(0x7FFFFFFF)
    for i in prange(n_rows):
        row = wb[i]
        for g in range(gb):
            block = row[g * group_size:(g + 1) * group_size]  # the last one may be shorter
            top = np.int32(0)
            for j in range(block.shape[0]):
                top = max(top, block[j] & mask)
            out[i, g] = top
    return out


@njit(inline="always", **JIT_OPTIONS)
def _encode_row(v, codes, mbits, emin, max_value, max_code, sign_bit):
    """Codes of the float32 row ``v`` into ``codes``; the count beyond ``±max_value``.

    Branch-free passes over the row so that LLVM vectorizes them: the bits of
    ``v``, the factor ``2**(mbits - E)`` built from bits, the rounding as the
    low bits of ``|v| * 2**(mbits - E) + 2**23`` (exact round half to even:
    the product is below 2**(mbits + 1) <= 16, where float32's step at 2**23 is 1).
    """
    n = v.shape[0]
    mb, lo = np.int32(mbits), np.int32(emin)
    top, sign, low = np.int32(max_code), np.int32(sign_bit), np.int32(0x7FFFFF)
    vb = v.view(np.int32)
    eb = np.empty(n, dtype=np.int32)  # E of each value
    pb = np.empty(n, dtype=np.int32)  # bits of 2**(mbits - E)
    for j in range(n):
        E = max(((vb[j] >> np.int32(23)) & np.int32(0xFF)) - np.int32(127), lo)
        eb[j] = E
        pb[j] = (mb - E + np.int32(127)) << np.int32(23)
    pf = pb.view(F32)
    s = np.empty(n, dtype=F32)
    for j in range(n):
        s[j] = abs(v[j]) * pf[j] + F32(8388608.0)
    sb = s.view(np.int32)
    limit = np.int32(F32(max_value).view(np.int32))  # |v| > max_value, compared as bits
    count = np.int32(0)
    for j in range(n):
        a = vb[j] & np.int32(0x7FFFFFFF)
        beyond = np.int32(a > limit)
        count += beyond
        mag = top if beyond else ((eb[j] - lo) << mb) + (sb[j] & low)
        codes[j] = np.uint8(mag | ((vb[j] >> np.int32(31)) & sign))
    return count


@njit(parallel=True, **JIT_OPTIONS)
def _encode_groups(w, factor, row_block, group_size, mbits, emin, max_value, max_code, sign_bit,
                   multiply, zero_positive):
    n_rows, n_cols = w.shape
    codes = np.empty((n_rows, n_cols), dtype=np.uint8)
    beyond = np.zeros(n_rows, dtype=np.int64)
    for i in prange(n_rows):
        t = i // row_block
        v = np.empty(n_cols, dtype=F32)
        for g in range((n_cols + group_size - 1) // group_size):
            f = factor[t, g]
            lo, hi = g * group_size, min((g + 1) * group_size, n_cols)
            if multiply:
                for j in range(lo, hi):
                    v[j] = w[i, j] * f
            else:
                for j in range(lo, hi):
                    v[j] = w[i, j] / f
        beyond[i] = _encode_row(v, codes[i], mbits, emin, max_value, max_code, sign_bit)
        if zero_positive:
            for j in range(n_cols):
                if w[i, j] == 0:
                    codes[i, j] = 0
    return codes, beyond


def _params(fmt):
    f = element_format(fmt)
    return f.mbits, f.emin, F32(f.max), f.max_code, f.sign_bit


def encode(x, fmt):
    """Numba twin of :func:`qviz.formats.minifloat.encode`: (codes uint8 shape of ``x``, saturated int)."""
    x = np.asarray(x, dtype=F32)
    codes, beyond = _encode(np.ascontiguousarray(x).reshape(-1), *_params(fmt))
    return codes.reshape(x.shape), int(beyond.sum())


def group_amax(w, row_block, group_size):
    """Numba twin of :func:`qviz.formats.minifloat.group_amax`: (rb, gb) float32."""
    bits = np.ascontiguousarray(w, dtype=F32).view(np.int32)
    per_row = _row_amax(bits, int(group_size)).view(F32)  # (n_rows, gb)
    n_rows = per_row.shape[0]
    rb = -(-n_rows // row_block)
    if row_block == 1:
        return per_row
    out = np.zeros((rb, per_row.shape[1]), dtype=F32)
    for t in range(rb):
        out[t] = per_row[t * row_block:(t + 1) * row_block].max(axis=0)
    return out


def encode_groups(w, factor, row_block, group_size, fmt, op="divide", zero_sign="keep"):
    """Numba twin of :func:`qviz.formats.minifloat.encode_groups`: (codes (n_rows, n_cols) uint8, saturated int)."""
    if op not in OPS or zero_sign not in ZERO_SIGNS:
        raise ValueError(f"op={op!r}, zero_sign={zero_sign!r}; valid: {OPS}, {ZERO_SIGNS}")
    codes, beyond = _encode_groups(np.ascontiguousarray(w, dtype=F32),
                                   np.ascontiguousarray(factor, dtype=F32), int(row_block),
                                   int(group_size), *_params(fmt), op == "multiply",
                                   zero_sign == "positive")
    return codes, int(beyond.sum())
