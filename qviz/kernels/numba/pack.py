"""Numba twins of :mod:`qviz.formats.pack` (same names, same results, bit for bit).

Rows are packed in parallel (``prange``); each row walks its words once. The
slot order of a word is a small table from the reference, so the bit layout is
defined in one place.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.pack import check_pack_args, slot_order


@njit(parallel=True, cache=True)
def _pack_slots(codes, bits, slots, out):
    """Widths dividing 32: word w, slot i holds code ``w*per + slots[i]`` at bit ``i*bits``.

    codes : uint8 (n_rows, n); slots : int64 (per,); out : uint32 (n_rows, n_words)
    """
    per = slots.shape[0]
    for r in prange(codes.shape[0]):
        for w in range(out.shape[1]):
            acc = np.uint32(0)
            base = w * per
            for i in range(per):
                acc |= np.uint32(codes[r, base + slots[i]]) << np.uint32(i * bits)
            out[r, w] = acc


@njit(parallel=True, cache=True)
def _unpack_slots(words, bits, slots, out):
    """Inverse of :func:`_pack_slots`. words : uint32 (n_rows, n_words); out : uint8 (n_rows, n)."""
    per = slots.shape[0]
    mask = np.uint32((1 << bits) - 1)
    for r in prange(words.shape[0]):
        for w in range(words.shape[1]):
            word = words[r, w]
            base = w * per
            for i in range(per):
                out[r, base + slots[i]] = np.uint8((word >> np.uint32(i * bits)) & mask)


@njit(parallel=True, cache=True)
def _pack_stream(codes, bits, out):
    """Any width: code k at stream bits [k*bits, (k+1)*bits), LSB first (3-bit GPTQ)."""
    for r in prange(codes.shape[0]):
        for w in range(out.shape[1]):
            out[r, w] = 0
        for k in range(codes.shape[1]):
            pos = k * bits
            w, b = pos // 32, pos % 32
            v = np.uint64(codes[r, k]) << np.uint64(b)
            out[r, w] |= np.uint32(v & np.uint64(0xFFFFFFFF))
            if b + bits > 32:
                out[r, w + 1] |= np.uint32(v >> np.uint64(32))


@njit(parallel=True, cache=True)
def _unpack_stream(words, bits, out):
    """Inverse of :func:`_pack_stream`."""
    mask = np.uint64((1 << bits) - 1)
    n_words = words.shape[1]
    for r in prange(words.shape[0]):
        for k in range(out.shape[1]):
            pos = k * bits
            w, b = pos // 32, pos % 32
            v = np.uint64(words[r, w])
            if b + bits > 32 and w + 1 < n_words:
                v |= np.uint64(words[r, w + 1]) << np.uint64(32)
            out[r, k] = np.uint8((v >> np.uint64(b)) & mask)


def pack(codes: np.ndarray, bits: int, order: str = "gptq") -> np.ndarray:
    """Pack codes (n_rows, n) uint8, each < 2**bits, into words (n_rows, n * bits // 32) int32.

    The numba twin of :func:`qviz.formats.pack.pack` (its parameters, bit for
    bit its words): ``bits`` in {2, 3, 4, 8}, ``order`` ``"gptq"`` or ``"awq"``.
    """
    n_words = check_pack_args(codes.shape[-1], bits, order)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    out = np.empty((codes.shape[0], n_words), dtype=np.uint32)
    if 32 % bits:
        _pack_stream(codes, bits, out)
    else:
        _pack_slots(codes, bits, slot_order(bits, order).astype(np.int64), out)
    return out.view(np.int32)


def unpack(words: np.ndarray, bits: int, order: str = "gptq") -> np.ndarray:
    """Inverse of :func:`pack`: words (n_rows, n_words), int32 or uint32 -> codes (n_rows, n), uint8.

    ``n = n_words * 32 // bits``. The numba twin of :func:`qviz.formats.pack.unpack` (its
    parameters, its codes).
    """
    n = words.shape[1] * 32 // bits
    check_pack_args(n, bits, order)
    w = np.ascontiguousarray(words).view(np.uint32) if words.dtype == np.int32 \
        else np.ascontiguousarray(words, dtype=np.uint32)
    out = np.empty((words.shape[0], n), dtype=np.uint8)
    if 32 % bits:
        _unpack_stream(w, bits, out)
    else:
        _unpack_slots(w, bits, slot_order(bits, order).astype(np.int64), out)
    return out
