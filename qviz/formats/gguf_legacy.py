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

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.ggml_search import best_index_int8, make_iq4nl_quants, make_qkx3_quants, make_qx_quants
from qviz.formats.rounding import fp16_field, fp16_from_field, round_away_array
from qviz.formats.spec import FP16, QK, Unpacked, register_ggml

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


# ------------------------------------------------------------ ggml's rules

def _symmetric(x: np.ndarray, imatrix: np.ndarray | None, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 (nmax 8) and Q5_0 (nmax 16): rows -> d (n_rows, n_blocks) float32, q (…, 32) uint8.

    Without imatrix, ggml's ``_ref``: ``d = max / -nmax``,
    ``q = min(2*nmax-1, trunc(x/d + nmax + 0.5))``. With one, its ``_impl``:
    ``make_qx_quants(32, nmax, xb, L, 1, weight)`` per block.
    """
    xb = _blocks(x)
    if imatrix is None:
        d = _signed_max(xb) / F32(-nmax)
        q = (xb * _inverse(d)[..., None] + F32(nmax + 0.5)).astype(np.int8)  # C's (int8_t) truncates
        return d, np.minimum(2 * nmax - 1, q).astype(np.uint8)
    wb = _blocks(_row_weights(x, imatrix))
    d = np.zeros(xb.shape[:2], dtype=F32)
    L = np.zeros(xb.shape, dtype=np.int8)
    for r, b in np.ndindex(*xb.shape[:2]):
        d[r, b] = make_qx_quants(QK, nmax, xb[r, b], L[r, b], 1, wb[r, b])
    return d, L.astype(np.uint8)


def _min(x: np.ndarray, imatrix: np.ndarray | None, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 (nmax 15) and Q5_1 (nmax 31): rows -> d, m (n_rows, n_blocks) float32, q (…, 32) uint8.

    Without imatrix, ggml's ``_ref``: ``d = (max - min)/nmax``, ``m = min``,
    ``q = trunc((x - m)/d + 0.5)`` (ggml clamps Q4_1's codes to 15 and not
    Q5_1's, which cannot exceed 31; one clamp serves both). With one, its
    ``_impl``: ``make_qkx3_quants(32, nmax, xb, weight, …, -0.9, 0.05, 36)`` per block.
    """
    xb = _blocks(x)
    if imatrix is None:
        lo, hi = _first_min_max(xb)
        d = (hi - lo) / F32(nmax)
        q = ((xb - lo[..., None]) * _inverse(d)[..., None] + F32(0.5)).astype(np.int8)
        return d, lo, np.minimum(nmax, q).astype(np.uint8)
    wb = _blocks(_row_weights(x, imatrix))
    d = np.zeros(xb.shape[:2], dtype=F32)
    m = np.zeros(xb.shape[:2], dtype=F32)
    L = np.zeros(xb.shape, dtype=np.uint8)
    Laux = np.zeros(QK, dtype=np.uint8)
    for r, b in np.ndindex(*xb.shape[:2]):
        d[r, b], the_min = make_qkx3_quants(QK, nmax, xb[r, b], wb[r, b], L[r, b], Laux,
                                            -0.9, 0.05, 36, False)
        m[r, b] = -the_min
    return d, m, L


def _iq4_nl_block(xb: np.ndarray, qw: np.ndarray | None, L: np.ndarray) -> np.float32:
    """One IQ4_NL block: search the scale, then index every weight with it; returns d."""
    sigma2 = np.cumsum(xb * xb, dtype=F32)[-1] * F32(2 / QK)
    weight = xb * xb if qw is None else qw * np.sqrt(sigma2 + xb * xb)
    d = make_iq4nl_quants(QK, xb, L, weight, KVALUES_IQ4NL, 7)
    inv = F32(1) / d if d != 0 else F32(0)
    for j in range(QK):
        L[j] = best_index_int8(16, KVALUES_IQ4NL, inv * xb[j])
    return d


# ------------------------------------------------------------------ quantize

_LINSPACE = ">>> x = np.linspace({lo}, {hi}, 32, dtype=np.float32)[None]\n"


@describe(QUANTIZE, "Q4_0", examples=_LINSPACE.format(lo=-1, hi=1) + ">>> dequantize_q4_0(quantize_q4_0(x))"
          "[0, :3]\narray([-1.   , -0.875, -0.875], dtype=float32)")
def quantize_q4_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, q = _symmetric(x, imatrix, 8)
    return assemble("Q4_0", d=fp16_field(d), qs=_pack_nibbles(q))


@describe(QUANTIZE, "Q4_1", examples=_LINSPACE.format(lo=0, hi=1.5) + ">>> dequantize_q4_1(quantize_q4_1(x))"
          "[0, -1]  # d = 0.1 is stored as fp16\nnp.float32(1.4996338)")
def quantize_q4_1(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, m, q = _min(x, imatrix, 15)
    return assemble("Q4_1", d=fp16_field(d), m=fp16_field(m), qs=_pack_nibbles(q))


@describe(QUANTIZE, "Q5_0", examples=_LINSPACE.format(lo=-1, hi=1) + ">>> quantize_q5_0(x).shape\n(1, 22)")
def quantize_q5_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, q = _symmetric(x, imatrix, 16)
    return assemble("Q5_0", d=fp16_field(d), qh=_pack_high_bits(q), qs=_pack_nibbles(q))


@describe(QUANTIZE, "Q5_1", examples=_LINSPACE.format(lo=0, hi=1.5) + ">>> quantize_q5_1(x).shape\n(1, 24)")
def quantize_q5_1(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, m, q = _min(x, imatrix, 31)
    return assemble("Q5_1", d=fp16_field(d), m=fp16_field(m), qh=_pack_high_bits(q), qs=_pack_nibbles(q))


@describe(QUANTIZE, "Q8_0", imatrix="Ignored, as ggml ignores it.",
          notes="ggml-quants.c ``quantize_row_q8_0_ref``: ``d = amax/127``, ``q = roundf(x/d)`` "
                "(half away from zero).",
          examples=_LINSPACE.format(lo=-1, hi=1) + ">>> quantize_q8_0(x)[0, 2:5].view(np.int8)\n"
                   "array([-127, -119, -111], dtype=int8)")
def quantize_q8_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    xb = _blocks(x)
    amax = np.abs(xb).max(axis=-1)  # (n_rows, n_blocks)
    d = amax / F32(127)
    x0 = xb * _inverse(d)[..., None]
    # roundf in float64: |x0| + 0.5 is exact there (in float32 0.49999997 + 0.5 rounds up to 1)
    q = round_away_array(x0.astype(np.float64)).astype(np.int8)
    return assemble("Q8_0", d=fp16_field(d), qs=q.view(np.uint8))


@describe(QUANTIZE, "IQ4_NL",
          summary="Each block searches its scale (:func:`~qviz.formats.ggml_search.make_iq4nl_quants`,\n"
                  "15 trial scales), stores it as fp16 and maps every weight to the nearest\n"
                  "of the 16 levels ``d * kvalues_iq4nl``.",
          imatrix="Importance of each column: weights ``imatrix * sqrt(sigma2 + x**2)``\n"
                  "    with ``sigma2 = 2 * mean(x**2)`` of the block; else ``x**2``.",
          notes="ggml-quants.c ``quantize_iq4_nl`` -> ``quantize_row_iq4_nl_impl``\n"
                "(``ntry = 7``; the path of ``ggml_quantize_chunk``).",
          examples=_LINSPACE.format(lo=-1, hi=1) + ">>> quantize_iq4_nl(x).shape\n(1, 18)")
def quantize_iq4_nl(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    xb = _blocks(x)
    qwb = None if imatrix is None else imatrix.reshape(-1, QK)  # (n_blocks, 32)
    d = np.zeros(xb.shape[:2], dtype=F32)
    L = np.zeros(xb.shape, dtype=np.uint8)
    for r, b in np.ndindex(*xb.shape[:2]):
        d[r, b] = _iq4_nl_block(xb[r, b], None if qwb is None else qwb[b], L[r, b])
    return assemble("IQ4_NL", d=fp16_field(d), qs=_pack_nibbles(L))


# -------------------------------------------------------------- dequantize

def _round_trip(lower: str, one: str = "1.0", comment: str = "") -> str:
    """The example of a dequantizer: ones, quantized and decoded."""
    return (f">>> dequantize_{lower}(quantize_{lower}(np.ones((1, 32), np.float32)))[0, 0]{comment}\n"
            f"np.float32({one})")


@describe(DEQUANTIZE, "Q4_0", formula="``(q - 8) * d``", examples=_round_trip("q4_0"))
def dequantize_q4_0(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    f = fields("Q4_0", packed)
    q = (_unpack_nibbles(f["qs"]).astype(np.int32) - 8).astype(F32)
    return _rows(q * fp16_from_field(f["d"])[..., None])


@describe(DEQUANTIZE, "Q4_1", formula="``q * d + m``", examples=_round_trip("q4_1"))
def dequantize_q4_1(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    f = fields("Q4_1", packed)
    q = _unpack_nibbles(f["qs"]).astype(F32)
    return _rows(q * fp16_from_field(f["d"])[..., None] + fp16_from_field(f["m"])[..., None])


@describe(DEQUANTIZE, "Q5_0", formula="``(q - 16) * d``", examples=_round_trip("q5_0"))
def dequantize_q5_0(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    f = fields("Q5_0", packed)
    q = ((_unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"])).astype(np.int32) - 16).astype(F32)
    return _rows(q * fp16_from_field(f["d"])[..., None])


@describe(DEQUANTIZE, "Q5_1", formula="``q * d + m``", examples=_round_trip("q5_1"))
def dequantize_q5_1(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    f = fields("Q5_1", packed)
    q = (_unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"])).astype(F32)
    return _rows(q * fp16_from_field(f["d"])[..., None] + fp16_from_field(f["m"])[..., None])


@describe(DEQUANTIZE, "Q8_0", formula="``q * d`` with int8 ``q``",
          examples=_round_trip("q8_0", "0.99993896", "  # 127 * fp16(1/127)"))
def dequantize_q8_0(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    f = fields("Q8_0", packed)
    q = np.ascontiguousarray(f["qs"]).view(np.int8).astype(F32)
    return _rows(q * fp16_from_field(f["d"])[..., None])


@describe(DEQUANTIZE, "IQ4_NL", formula="``d * kvalues_iq4nl[q]``",
          examples=_LINSPACE.format(lo=-1, hi=1) + ">>> float(np.abs(dequantize_iq4_nl(quantize_iq4_nl(x)) - x)"
                   ".max()) < 0.1\nTrue")
def dequantize_iq4_nl(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    f = fields("IQ4_NL", packed)
    levels = KVALUES_IQ4NL.astype(F32)[_unpack_nibbles(f["qs"])]
    return _rows(fp16_from_field(f["d"])[..., None] * levels)


def _rows(blocks: np.ndarray) -> np.ndarray:
    """Blocks (n_rows, n_blocks, 32) -> rows (n_rows, n_cols)."""
    return blocks.reshape(blocks.shape[0], -1)


# ------------------------------------------------------------------ unpack

def _unpack_example(lo: float, top: int) -> str:
    """The example of an unpacker: two rows of a ramp from ``lo`` to 1; ``top`` the largest code."""
    return (f">>> u = unpack_{{lower}}(quantize_{{lower}}(np.linspace({lo}, 1, 64, dtype=np.float32)"
            f".reshape(2, 32)))\n>>> u.codes.shape, u.scales.shape, int(u.codes.max())\n((2, 32), (2, 1), {top})")


def _unpack(type_name: str, packed: np.ndarray, codes: np.ndarray) -> Unpacked:
    """``codes`` (n_rows, n_blocks, 32) as rows, with ``d`` and, where the type has ``m``, mins ``-m``."""
    f = fields(type_name, packed)
    mins = -fp16_from_field(f["m"]) if "m" in f else None
    return Unpacked(_rows(codes), fp16_from_field(f["d"]), mins)


@describe(UNPACK, "Q4_0", codes="0..15 (implied zero 8)", scales="``d``",
          examples=_unpack_example(-1, 8))
def unpack_q4_0(packed: npt.NDArray[np.uint8]) -> Unpacked:
    return _unpack("Q4_0", packed, _unpack_nibbles(fields("Q4_0", packed)["qs"]))


@describe(UNPACK, "Q4_1", scales="``d``", mins="``-m``", examples=_unpack_example(0, 15))
def unpack_q4_1(packed: npt.NDArray[np.uint8]) -> Unpacked:
    return _unpack("Q4_1", packed, _unpack_nibbles(fields("Q4_1", packed)["qs"]))


@describe(UNPACK, "Q5_0", codes="0..31 (implied zero 16)", scales="``d``",
          examples=_unpack_example(-1, 16))
def unpack_q5_0(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q5_0", packed)
    return _unpack("Q5_0", packed, _unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"]))


@describe(UNPACK, "Q5_1", scales="``d``", mins="``-m``", examples=_unpack_example(0, 31))
def unpack_q5_1(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q5_1", packed)
    return _unpack("Q5_1", packed, _unpack_nibbles(f["qs"]) | _unpack_high_bits(f["qh"]))


@describe(UNPACK, "Q8_0", codes="``qs + 128`` (int8 ``qs``, implied zero 128)", scales="``d``",
          examples=_unpack_example(-1, 255))
def unpack_q8_0(packed: npt.NDArray[np.uint8]) -> Unpacked:
    qs = np.ascontiguousarray(fields("Q8_0", packed)["qs"]) ^ np.uint8(0x80)  # int8 two's complement + 128
    return _unpack("Q8_0", packed, qs)


@describe(UNPACK, "IQ4_NL", codes="0..15, indices into ``codebook = kvalues_iq4nl``", scales="``d``",
          examples=_unpack_example(-1, 8) + "\n>>> u.codebook[:3]\n"
                   "array([-127., -104.,  -83.], dtype=float32)")
def unpack_iq4_nl(packed: npt.NDArray[np.uint8]) -> Unpacked:
    u = _unpack("IQ4_NL", packed, _unpack_nibbles(fields("IQ4_NL", packed)["qs"]))
    return u._replace(codebook=KVALUES_IQ4NL.astype(F32))
