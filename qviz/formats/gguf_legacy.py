"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL: the 32-weight GGUF types, byte-identical to ggml.

Every block holds 32 weights and one fp16 scale ``d``; the ``_1`` types add
an fp16 offset ``m``, IQ4_NL replaces the even grid by 16 fixed levels.

====== ==== ============================== ==============================
type   bits block (bytes)                  decode of weight j
====== ==== ============================== ==============================
Q4_0   4    d 2, qs 16                     ``(q - 8) * d``
Q4_1   4    d 2, m 2, qs 16                ``q * d + m``
Q5_0   5    d 2, qh 4, qs 16               ``(q - 16) * d``
Q5_1   5    d 2, m 2, qh 4, qs 16          ``q * d + m``
Q8_0   8    d 2, qs 32 (int8)              ``q * d``
IQ4_NL 4    d 2, qs 16                     ``d * kvalues_iq4nl[q]``
====== ==== ============================== ==============================

Without an importance matrix the first five round with a max-based scale
(ggml's ``quantize_row_<t>_ref``, written here vectorized over blocks). With
one, ggml's ``quantize_row_<t>_impl`` searches each block's scale with
:func:`~qviz.formats.ggml_search.make_qx_quants` (Q4_0, Q5_0) or
:func:`~qviz.formats.ggml_search.make_qkx3_quants` (Q4_1, Q5_1), weighting
each weight's error by ``imatrix * sqrt(sigma2 + x**2)``; Q8_0 ignores the
imatrix. IQ4_NL always searches (ggml's ``quantize_iq4_nl``, the path
``ggml_quantize_chunk`` takes) with
:func:`~qviz.formats.ggml_search.make_iq4nl_quants`.

qviz stores the codes unsigned (Q8_0: ``qs + 128``) with the implied zero
``2**(bits-1)`` for the symmetric types, ``mins = -m`` for the ``_1`` types
and ``codebook = kvalues_iq4nl`` for IQ4_NL, so ``QuantResult.dequantize()``
repeats ggml's ``dequantize_row_<t>`` bit for bit.

Bit layout of the packed fields (ggml-common.h ``block_q4_0`` … ``block_iq4_nl``);
codes 0..31 of a block are ``q[0..31]``::

    qs[j]  (4-bit types, j = 0..15)   bit  7 6 5 4   | 3 2 1 0
                                           q[j+16]   | q[j]        (low 4 bits)

    qh     (5-bit types, uint32 LE)   bit  31 ... 16      | 15 ... 0
                                           q[31]..q[16]   | q[15]..q[0]   (bit 4)

    qs[j]  (Q8_0, j = 0..31)          int8 q[j] - 128
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.ggml_search import best_index_int8, make_iq4nl_quants, make_qkx3_quants, make_qx_quants
from qviz.formats.rounding import FP16_TABLE, fp16_bits, round_away_array
from qviz.formats.spec import FORMATS, FP16, QK, Unpacked, register_ggml

# name, ggml_type, block size, bits, group size; general.file_type; fields in storage order
register_ggml(__name__, "Q4_0", 2, QK, 4, QK, file_type=2, twins=("numba", "torch"), d=FP16, qs=QK // 2)
register_ggml(__name__, "Q4_1", 3, QK, 4, QK, file_type=3, twins=("numba", "torch"),
              d=FP16, m=FP16, qs=QK // 2)
register_ggml(__name__, "Q5_0", 6, QK, 5, QK, file_type=8, d=FP16, qh=4, qs=QK // 2)
register_ggml(__name__, "Q5_1", 7, QK, 5, QK, file_type=9, d=FP16, m=FP16, qh=4, qs=QK // 2)
register_ggml(__name__, "Q8_0", 8, QK, 8, QK, file_type=7, twins=("numba", "torch"), d=FP16, qs=QK)
register_ggml(__name__, "IQ4_NL", 20, QK, 4, QK, file_type=25, d=FP16, qs=QK // 2)

F32 = np.float32

#: IQ4_NL's 16 levels (ggml-common.h ``kvalues_iq4nl``), ascending.
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                          1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


# ------------------------------------------------------------ block fields

def _blocks(x: np.ndarray) -> np.ndarray:
    """Rows (n_rows, n_cols) -> blocks (n_rows, n_blocks, 32)."""
    return x.reshape(x.shape[0], -1, QK)


def _fields(type_name: str, packed: np.ndarray) -> dict[str, np.ndarray]:
    """Split packed rows into their fields, each (n_rows, n_blocks, nbytes) uint8."""
    lay = FORMATS[type_name]
    blocks = packed.reshape(packed.shape[0], -1, lay.type_size)  # (n_rows, n_blocks, type_size)
    out, off = {}, 0
    for f in lay.fields:
        out[f.name] = blocks[..., off:off + f.nbytes]
        off += f.nbytes
    return out


def _assemble(type_name: str, **fields: np.ndarray) -> np.ndarray:
    """Join fields (n_rows, n_blocks, nbytes) in the spec's order -> (n_rows, row_bytes) uint8."""
    lay = FORMATS[type_name]
    parts = [fields[f.name] for f in lay.fields]
    blocks = np.concatenate(parts, axis=-1)  # (n_rows, n_blocks, type_size)
    return blocks.reshape(blocks.shape[0], -1)


def _fp16_field(v: np.ndarray) -> np.ndarray:
    """float32 values (n_rows, n_blocks) -> their fp16 fields (n_rows, n_blocks, 2) uint8."""
    bits = np.array([fp16_bits(float(t)) for t in v.ravel()], dtype="<u2")
    return bits.view(np.uint8).reshape(*v.shape, 2)


def _fp16_value(field: np.ndarray) -> np.ndarray:
    """fp16 fields (…, 2) uint8 -> float32 (…)."""
    return FP16_TABLE[np.ascontiguousarray(field).view("<u2")[..., 0]]


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Codes (…, 32) -> qs (…, 16): low 4 bits of q[j] | q[j+16] << 4."""
    q = q.astype(np.uint8)
    return (q[..., :16] & 0xF) | ((q[..., 16:] & 0xF) << 4)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """qs (…, 16) -> the low 4 bits of the codes (…, 32)."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=-1)


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """Codes (…, 32) -> qh (…, 4): bit j of the uint32 LE word is bit 4 of q[j]."""
    return np.packbits((q.astype(np.uint8) >> 4) & 1, axis=-1, bitorder="little")


def _unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """qh (…, 4) -> bit 4 of each code, shifted into place (…, 32): 0 or 16."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << 4


def _inverse(d: np.ndarray) -> np.ndarray:
    """``d ? 1/d : 0`` in float32."""
    return np.divide(F32(1), d, out=np.zeros_like(d), where=d != 0)


def _row_weights(x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Error weights of the ``_impl`` quantizers, (n_rows, n_cols) float32.

    ``imatrix * sqrt(sigma2 + x**2)`` with ``sigma2`` the mean square of the
    row, summed sequentially (``cumsum``) as ggml's loop does.
    """
    sum_x2 = np.cumsum(x * x, axis=1, dtype=F32)[:, -1:]  # (n_rows, 1)
    sigma2 = sum_x2 / F32(x.shape[1])
    return imatrix * np.sqrt(sigma2 + x * x)


def _signed_max(xb: np.ndarray) -> np.ndarray:
    """The value of largest magnitude of each block (the first on ties), (…, 32) -> (…).

    An all-zero block gives +0.0, ggml's starting value, whatever the zeros' signs.
    """
    i = np.argmax(np.abs(xb), axis=-1)
    v = np.take_along_axis(xb, i[..., None], axis=-1)[..., 0]
    return np.where(v == 0, F32(0), v)


def _first_min_max(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block minimum and maximum, each the first occurrence (so the sign of a zero is ggml's)."""
    lo = np.take_along_axis(xb, np.argmin(xb, axis=-1)[..., None], axis=-1)[..., 0]
    hi = np.take_along_axis(xb, np.argmax(xb, axis=-1)[..., None], axis=-1)[..., 0]
    return lo, hi


# ------------------------------------------------------- ggml's _ref rules

def _symmetric_ref(xb: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0 without imatrix: ``d = max / -nmax``, ``q = min(2*nmax-1, trunc(x/d + nmax + 0.5))``.

    xb (n_rows, n_blocks, 32) float32 -> d (n_rows, n_blocks) float32, q (…, 32) uint8.
    """
    d = _signed_max(xb) / F32(-nmax)
    q = (xb * _inverse(d)[..., None] + F32(nmax + 0.5)).astype(np.int8)  # C's (int8_t) truncates
    return d, np.minimum(2 * nmax - 1, q).astype(np.uint8)


def _min_ref(xb: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1 without imatrix: ``d = (max - min)/nmax``, ``m = min``, ``q = trunc((x - m)/d + 0.5)``.

    Returns d, m (n_rows, n_blocks) float32 and q (…, 32) uint8. ggml clamps Q4_1's
    codes to 15 and not Q5_1's, whose codes cannot exceed 31; one clamp serves both.
    """
    lo, hi = _first_min_max(xb)
    d = (hi - lo) / F32(nmax)
    q = ((xb - lo[..., None]) * _inverse(d)[..., None] + F32(0.5)).astype(np.int8)
    return d, lo, np.minimum(nmax, q).astype(np.uint8)


# ------------------------------------------------------ ggml's _impl rules

def _symmetric_impl(x: np.ndarray, imatrix: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0 with imatrix: ``make_qx_quants(32, nmax, xb, L, 1, weight)`` per block."""
    xb = _blocks(x)
    wb = _blocks(_row_weights(x, imatrix))
    d = np.zeros(xb.shape[:2], dtype=F32)
    L = np.zeros(xb.shape, dtype=np.int8)
    for r in range(xb.shape[0]):
        for b in range(xb.shape[1]):
            d[r, b] = make_qx_quants(QK, nmax, xb[r, b], L[r, b], 1, wb[r, b])
    return d, L.astype(np.uint8)


def _min_impl(x: np.ndarray, imatrix: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1 with imatrix: ``make_qkx3_quants(32, nmax, xb, weight, …, -0.9, 0.05, 36)`` per block."""
    xb = _blocks(x)
    wb = _blocks(_row_weights(x, imatrix))
    d = np.zeros(xb.shape[:2], dtype=F32)
    m = np.zeros(xb.shape[:2], dtype=F32)
    L = np.zeros(xb.shape, dtype=np.uint8)
    Laux = np.zeros(QK, dtype=np.uint8)
    for r in range(xb.shape[0]):
        for b in range(xb.shape[1]):
            d[r, b], the_min = make_qkx3_quants(QK, nmax, xb[r, b], wb[r, b], L[r, b], Laux,
                                                -0.9, 0.05, 36, False)
            m[r, b] = -the_min
    return d, m, L


# ------------------------------------------------------------ public types

def quantize_q4_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q4_0, exactly as ggml does.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous rows; n_cols a multiple of 32.
    imatrix : ndarray, shape (n_cols,), float32, optional
        Importance of each column (llama-imatrix's mean squared activation).

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 32 * 18), uint8
        ggml's bytes.

    Notes
    -----
    ggml-quants.c ``quantize_row_q4_0_ref`` / ``quantize_row_q4_0_impl``.

    Examples
    --------
    >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[None]
    >>> dequantize_q4_0(quantize_q4_0(x))[0, :3]
    array([-1.   , -0.875, -0.875], dtype=float32)
    """
    if imatrix is None:
        d, q = _symmetric_ref(_blocks(x), 8)
    else:
        d, q = _symmetric_impl(x, imatrix, 8)
    return _assemble("Q4_0", d=_fp16_field(d), qs=_pack_nibbles(q))


def quantize_q4_1(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q4_1, exactly as ggml does.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous rows; n_cols a multiple of 32.
    imatrix : ndarray, shape (n_cols,), float32, optional
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 32 * 20), uint8
        ggml's bytes.

    Notes
    -----
    ggml-quants.c ``quantize_row_q4_1_ref`` / ``quantize_row_q4_1_impl``.

    Examples
    --------
    >>> x = np.linspace(0, 1.5, 32, dtype=np.float32)[None]
    >>> dequantize_q4_1(quantize_q4_1(x))[0, -1]  # d = 0.1 is stored as fp16
    np.float32(1.4996338)
    """
    if imatrix is None:
        d, m, q = _min_ref(_blocks(x), 15)
    else:
        d, m, q = _min_impl(x, imatrix, 15)
    return _assemble("Q4_1", d=_fp16_field(d), m=_fp16_field(m), qs=_pack_nibbles(q))


def quantize_q5_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q5_0, exactly as ggml does.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous rows; n_cols a multiple of 32.
    imatrix : ndarray, shape (n_cols,), float32, optional
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 32 * 22), uint8
        ggml's bytes.

    Notes
    -----
    ggml-quants.c ``quantize_row_q5_0_ref`` / ``quantize_row_q5_0_impl``.

    Examples
    --------
    >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[None]
    >>> quantize_q5_0(x).shape
    (1, 22)
    """
    if imatrix is None:
        d, q = _symmetric_ref(_blocks(x), 16)
    else:
        d, q = _symmetric_impl(x, imatrix, 16)
    return _assemble("Q5_0", d=_fp16_field(d), qh=_pack_high_bits(q), qs=_pack_nibbles(q))


def quantize_q5_1(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q5_1, exactly as ggml does.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous rows; n_cols a multiple of 32.
    imatrix : ndarray, shape (n_cols,), float32, optional
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 32 * 24), uint8
        ggml's bytes.

    Notes
    -----
    ggml-quants.c ``quantize_row_q5_1_ref`` / ``quantize_row_q5_1_impl``.

    Examples
    --------
    >>> x = np.linspace(0, 1.5, 32, dtype=np.float32)[None]
    >>> quantize_q5_1(x).shape
    (1, 24)
    """
    if imatrix is None:
        d, m, q = _min_ref(_blocks(x), 31)
    else:
        d, m, q = _min_impl(x, imatrix, 31)
    return _assemble("Q5_1", d=_fp16_field(d), m=_fp16_field(m),
                     qh=_pack_high_bits(q), qs=_pack_nibbles(q))


def quantize_q8_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q8_0, exactly as ggml does.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous rows; n_cols a multiple of 32.
    imatrix : ndarray, shape (n_cols,), float32, optional
        Ignored, as ggml ignores it.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 32 * 34), uint8
        ggml's bytes.

    Notes
    -----
    ggml-quants.c ``quantize_row_q8_0_ref``: ``d = amax/127``,
    ``q = roundf(x/d)`` (half away from zero).

    Examples
    --------
    >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[None]
    >>> quantize_q8_0(x)[0, 2:5].view(np.int8)
    array([-127, -119, -111], dtype=int8)
    """
    xb = _blocks(x)
    amax = np.abs(xb).max(axis=-1)  # (n_rows, n_blocks)
    d = amax / F32(127)
    x0 = xb * _inverse(d)[..., None]
    # roundf in float64: |x0| + 0.5 is exact there (in float32 0.49999997 + 0.5 rounds up to 1)
    q = round_away_array(x0.astype(np.float64)).astype(np.int8)
    return _assemble("Q8_0", d=_fp16_field(d), qs=q.view(np.uint8))


def quantize_iq4_nl(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to IQ4_NL, exactly as ggml does.

    Each block searches its scale (:func:`~qviz.formats.ggml_search.make_iq4nl_quants`,
    15 trial scales), stores it as fp16 and maps every weight to the nearest
    of the 16 levels ``d * kvalues_iq4nl``.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous rows; n_cols a multiple of 32.
    imatrix : ndarray, shape (n_cols,), float32, optional
        Importance of each column: weights ``imatrix * sqrt(sigma2 + x**2)``
        with ``sigma2 = 2 * mean(x**2)`` of the block; else ``x**2``.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 32 * 18), uint8
        ggml's bytes.

    Notes
    -----
    ggml-quants.c ``quantize_iq4_nl`` -> ``quantize_row_iq4_nl_impl``
    (``ntry = 7``; the path of ``ggml_quantize_chunk``).

    Examples
    --------
    >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[None]
    >>> quantize_iq4_nl(x).shape
    (1, 18)
    """
    xb = _blocks(x)
    qwb = None if imatrix is None else imatrix.reshape(-1, QK)  # (n_blocks, 32)
    d = np.zeros(xb.shape[:2], dtype=F32)
    L = np.zeros(xb.shape, dtype=np.uint8)
    for r in range(xb.shape[0]):
        for b in range(xb.shape[1]):
            d[r, b] = _iq4_nl_block(xb[r, b], None if qwb is None else qwb[b], L[r, b])
    return _assemble("IQ4_NL", d=_fp16_field(d), qs=_pack_nibbles(L))


def _iq4_nl_block(xb: np.ndarray, qw: np.ndarray | None, L: np.ndarray) -> np.float32:
    """One IQ4_NL block: search the scale, then index every weight with it; returns d."""
    sigma2 = np.cumsum(xb * xb, dtype=F32)[-1] * F32(2 / QK)
    weight = xb * xb if qw is None else qw * np.sqrt(sigma2 + xb * xb)
    d = make_iq4nl_quants(QK, xb, L, weight, KVALUES_IQ4NL, 7)
    inv = F32(1) / d if d != 0 else F32(0)
    for j in range(QK):
        L[j] = best_index_int8(16, KVALUES_IQ4NL, inv * xb[j])
    return d


# -------------------------------------------------------------- dequantize

def dequantize_q4_0(packed: np.ndarray) -> np.ndarray:
    """Q4_0 bytes (n_rows, row_bytes) -> float32 (n_rows, n_cols): ``(q - 8) * d``.

    Notes
    -----
    ggml-quants.c ``dequantize_row_q4_0``.

    Examples
    --------
    >>> dequantize_q4_0(quantize_q4_0(np.ones((1, 32), np.float32)))[0, 0]
    np.float32(1.0)
    """
    f = _fields("Q4_0", packed)
    q = (_unpack_nibbles(f["qs"]).astype(np.int32) - 8).astype(F32)
    return _rows(q * _fp16_value(f["d"])[..., None])


def dequantize_q4_1(packed: np.ndarray) -> np.ndarray:
    """Q4_1 bytes (n_rows, row_bytes) -> float32 (n_rows, n_cols): ``q * d + m``.

    Notes
    -----
    ggml-quants.c ``dequantize_row_q4_1``.

    Examples
    --------
    >>> dequantize_q4_1(quantize_q4_1(np.ones((1, 32), np.float32)))[0, 0]
    np.float32(1.0)
    """
    f = _fields("Q4_1", packed)
    q = _unpack_nibbles(f["qs"]).astype(F32)
    return _rows(q * _fp16_value(f["d"])[..., None] + _fp16_value(f["m"])[..., None])


def dequantize_q5_0(packed: np.ndarray) -> np.ndarray:
    """Q5_0 bytes (n_rows, row_bytes) -> float32 (n_rows, n_cols): ``(q - 16) * d``.

    Notes
    -----
    ggml-quants.c ``dequantize_row_q5_0``.

    Examples
    --------
    >>> dequantize_q5_0(quantize_q5_0(np.ones((1, 32), np.float32)))[0, 0]
    np.float32(1.0)
    """
    f = _fields("Q5_0", packed)
    q = ((_unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"])).astype(np.int32) - 16).astype(F32)
    return _rows(q * _fp16_value(f["d"])[..., None])


def dequantize_q5_1(packed: np.ndarray) -> np.ndarray:
    """Q5_1 bytes (n_rows, row_bytes) -> float32 (n_rows, n_cols): ``q * d + m``.

    Notes
    -----
    ggml-quants.c ``dequantize_row_q5_1``.

    Examples
    --------
    >>> dequantize_q5_1(quantize_q5_1(np.ones((1, 32), np.float32)))[0, 0]
    np.float32(1.0)
    """
    f = _fields("Q5_1", packed)
    q = (_unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"])).astype(F32)
    return _rows(q * _fp16_value(f["d"])[..., None] + _fp16_value(f["m"])[..., None])


def dequantize_q8_0(packed: np.ndarray) -> np.ndarray:
    """Q8_0 bytes (n_rows, row_bytes) -> float32 (n_rows, n_cols): ``q * d``.

    Notes
    -----
    ggml-quants.c ``dequantize_row_q8_0``.

    Examples
    --------
    >>> dequantize_q8_0(quantize_q8_0(np.ones((1, 32), np.float32)))[0, 0]  # 127 * fp16(1/127)
    np.float32(0.99993896)
    """
    f = _fields("Q8_0", packed)
    q = np.ascontiguousarray(f["qs"]).view(np.int8).astype(F32)
    return _rows(q * _fp16_value(f["d"])[..., None])


def dequantize_iq4_nl(packed: np.ndarray) -> np.ndarray:
    """IQ4_NL bytes (n_rows, row_bytes) -> float32 (n_rows, n_cols): ``d * kvalues_iq4nl[q]``.

    Notes
    -----
    ggml-quants.c ``dequantize_row_iq4_nl``.

    Examples
    --------
    >>> x = np.linspace(-1, 1, 32, dtype=np.float32)[None]
    >>> float(np.abs(dequantize_iq4_nl(quantize_iq4_nl(x)) - x).max()) < 0.1
    True
    """
    f = _fields("IQ4_NL", packed)
    levels = KVALUES_IQ4NL.astype(F32)[_unpack_nibbles(f["qs"])]
    return _rows(_fp16_value(f["d"])[..., None] * levels)


def _rows(blocks: np.ndarray) -> np.ndarray:
    """Blocks (n_rows, n_blocks, 32) -> rows (n_rows, n_cols)."""
    return blocks.reshape(blocks.shape[0], -1)


# ------------------------------------------------------------------ unpack

def unpack_q4_0(packed: np.ndarray) -> Unpacked:
    """Q4_0 bytes -> codes (n_rows, n_cols) uint8 0..15 and scales ``d`` (n_rows, n_blocks) float32."""
    f = _fields("Q4_0", packed)
    return Unpacked(_rows(_unpack_nibbles(f["qs"])), _fp16_value(f["d"]))


def unpack_q4_1(packed: np.ndarray) -> Unpacked:
    """Q4_1 bytes -> codes 0..15, scales ``d`` and mins ``-m`` (n_rows, n_blocks) float32."""
    f = _fields("Q4_1", packed)
    return Unpacked(_rows(_unpack_nibbles(f["qs"])), _fp16_value(f["d"]), -_fp16_value(f["m"]))


def unpack_q5_0(packed: np.ndarray) -> Unpacked:
    """Q5_0 bytes -> codes (n_rows, n_cols) uint8 0..31 and scales ``d``."""
    f = _fields("Q5_0", packed)
    q = _unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"])
    return Unpacked(_rows(q), _fp16_value(f["d"]))


def unpack_q5_1(packed: np.ndarray) -> Unpacked:
    """Q5_1 bytes -> codes 0..31, scales ``d`` and mins ``-m``."""
    f = _fields("Q5_1", packed)
    q = _unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"])
    return Unpacked(_rows(q), _fp16_value(f["d"]), -_fp16_value(f["m"]))


def unpack_q8_0(packed: np.ndarray) -> Unpacked:
    """Q8_0 bytes -> codes ``qs + 128`` (n_rows, n_cols) uint8 and scales ``d``."""
    f = _fields("Q8_0", packed)
    q = np.ascontiguousarray(f["qs"]) ^ np.uint8(0x80)  # int8 two's complement + 128
    return Unpacked(_rows(q), _fp16_value(f["d"]))


def unpack_iq4_nl(packed: np.ndarray) -> Unpacked:
    """IQ4_NL bytes -> codes 0..15 (indices into ``codebook = kvalues_iq4nl``) and scales ``d``."""
    f = _fields("IQ4_NL", packed)
    return Unpacked(_rows(_unpack_nibbles(f["qs"])), _fp16_value(f["d"]),
                    codebook=KVALUES_IQ4NL.astype(F32))
