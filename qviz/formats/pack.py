"""Bit packing of integer codes into int32 words, as real checkpoints store them.

Two orders, both packing along the last axis of ``codes`` (``...``, n) into
(``...``, n * bits / 32) words:

``"gptq"`` — a little-endian bit stream: code k occupies bits
``[k*bits, (k+1)*bits)`` of the stream, cut into 32-bit words, least
significant bit first. For 4 bits, word w holds codes 8w..8w+7::

    bit   31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
    code   8w+7   8w+6   8w+5   8w+4   8w+3   8w+2  8w+1   8w+0

For 3 bits a code may straddle two words (32 codes fill 3 words: word 0
holds codes 0..9 and the low 2 bits of code 10, and so on). GPTQ checkpoints
pack ``qweight`` along the input dimension (pack ``codes``, then transpose to
(in·bits/32, out)) and ``qzeros`` along the output dimension.

``"awq"`` — AutoAWQ's GEMM layout: within each word the codes are
interleaved, even positions first, then odd (for 4 bits the slot order
[0, 2, 4, 6, 1, 3, 5, 7])::

    bit   31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
    code   8w+7   8w+5   8w+3   8w+1   8w+6   8w+4  8w+2   8w+0

AWQ checkpoints pack along the output dimension (``qweight`` is (in, out/8)).
Only widths that divide 32 (2, 4, 8) have an AWQ layout.

This module is the readable reference; ``qviz.kernels.numba.pack`` is the fast
twin with the same names.
"""
from __future__ import annotations

import numpy as np

ORDERS = ("gptq", "awq")


def check_pack_args(n: int, bits: int, order: str) -> int:
    """Validate a packing request; return the number of 32-bit words per row.

    Raises
    ------
    ValueError
        For an unknown order, a width outside {2, 3, 4, 8}, an AWQ width that
        does not divide 32, or a row length that does not fill whole words.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown packing order {order!r}; valid orders: {', '.join(ORDERS)}")
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"bits={bits}: checkpoints pack 2, 3, 4 or 8-bit codes")
    if order == "awq" and 32 % bits:
        raise ValueError(f"bits={bits}: AWQ-GEMM has no {bits}-bit layout (it needs 32 % bits == 0)")
    if (n * bits) % 32:
        per = 32 // np.gcd(32, bits)
        raise ValueError(f"a row of {n} {bits}-bit codes does not fill whole 32-bit words; "
                         f"the row length must be a multiple of {per}")
    return n * bits // 32


def slot_order(bits: int, order: str) -> np.ndarray:
    """Code position stored in each slot of a word (only for widths dividing 32).

    Returns
    -------
    ndarray, shape (32 // bits,), int64
        ``slot_order(4, "awq")`` is [0, 2, 4, 6, 1, 3, 5, 7].
    """
    per = 32 // bits
    if order == "gptq":
        return np.arange(per)
    return np.concatenate([np.arange(0, per, 2), np.arange(1, per, 2)])


def pack(codes: np.ndarray, bits: int, order: str = "gptq") -> np.ndarray:
    """Pack codes along the last axis into int32 words.

    Parameters
    ----------
    codes : ndarray, shape (n_rows, n), unsigned integers < 2**bits
    bits : {2, 3, 4, 8}
    order : {"gptq", "awq"}

    Returns
    -------
    ndarray, shape (n_rows, n * bits // 32), int32

    Examples
    --------
    >>> hex(pack(np.arange(8, dtype=np.uint8)[None], 4).view(np.uint32)[0, 0])
    '0x76543210'
    """
    n_words = check_pack_args(codes.shape[-1], bits, order)
    rows = codes.shape[0]
    if order == "awq":
        per = 32 // bits
        codes = codes.reshape(rows, -1, per)[:, :, slot_order(bits, order)].reshape(rows, -1)
    # the bit stream, least significant bit of each code first: (rows, n * bits)
    stream = ((codes[..., None].astype(np.uint32) >> np.arange(bits, dtype=np.uint32)) & 1)
    stream = stream.reshape(rows, n_words, 32).astype(np.uint64)
    words = (stream << np.arange(32, dtype=np.uint64)).sum(axis=-1)
    return words.astype(np.uint32).view(np.int32)


def unpack(words: np.ndarray, bits: int, order: str = "gptq") -> np.ndarray:
    """Inverse of :func:`pack`.

    Parameters
    ----------
    words : ndarray, shape (n_rows, n_words), int32 or uint32
    bits : {2, 3, 4, 8}
    order : {"gptq", "awq"}

    Returns
    -------
    ndarray, shape (n_rows, n_words * 32 // bits), uint8
    """
    rows, n_words = words.shape
    n = n_words * 32 // bits
    check_pack_args(n, bits, order)
    u = words.view(np.uint32) if words.dtype == np.int32 else words.astype(np.uint32)
    stream = (u[..., None] >> np.arange(32, dtype=np.uint32)) & 1  # (rows, n_words, 32)
    stream = stream.reshape(rows, n, bits)
    codes = (stream << np.arange(bits, dtype=np.uint32)).sum(axis=-1).astype(np.uint8)
    if order == "awq":
        per = 32 // bits
        inverse = np.argsort(slot_order(bits, order))
        codes = codes.reshape(rows, -1, per)[:, :, inverse].reshape(rows, -1)
    return codes
