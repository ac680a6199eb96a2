"""TQ1_0, TQ2_0 and Q1_0: ggml's ternary and 1-bit types, byte-identical to ggml.

====== ===== ====== ============================ ===============================
type   block bits   block (bytes)                decode of weight j
====== ===== ====== ============================ ===============================
TQ1_0  256   1.6875 qs 48, qh 4, d 2             ``(t - 1) * d``, t a trit 0..2
TQ2_0  256   2.0625 qs 64, d 2                   ``(q - 1) * d``, q 2 bits 0..3
Q1_0   128   1.125  d 2, qs 16                   ``d`` if the bit is set, else ``-d``
====== ===== ====== ============================ ===============================

The ternary types (BitNet b1.58, TriLMs) store ``d = max|x|`` and the trits
``t = lroundf(x / d) + 1`` (ggml's ``quantize_row_tq1_0_ref`` /
``quantize_row_tq2_0_ref``); Q1_0 stores ``d = sum|x| / 128`` and the sign of
each weight (``x >= 0`` sets the bit; ``quantize_row_q1_0_ref``). None of the
three looks at an importance matrix: ggml's ``quantize_tq1_0``,
``quantize_tq2_0`` and ``quantize_q1_0`` (the paths of ``ggml_quantize_chunk``)
run the ``_ref`` rows with or without one, and so do these.

qviz keeps the stored values as codes with a codebook, scales ``d``:
TQ1_0 the trits with ``codebook = [-1, 0, 1]``; TQ2_0 the 2-bit fields with
``codebook = [-1, 0, 1, 2]`` (ggml never writes 3, but decodes it as
``2 * d``); Q1_0 the bits with ``codebook = [-1, 1]``. ``d * codebook[q]`` is
ggml's ``(float)(q - 1) * d`` and ``bit ? d : -d`` bit for bit (for a NaN
``d`` Q1_0's ``-d`` flips the NaN's sign where ``d * -1`` keeps it).

Bit layout of the packed fields (ggml-common.h ``block_tq1_0``,
``block_tq2_0``, ``block_q1_0``); ``x[0..255]`` the weights of a block::

    TQ1_0 qs[m],    m = 0..31   trits of x[m + 32n],       n = 0..4
          qs[32+m], m = 0..15   trits of x[160 + m + 16n], n = 0..4
          qh[j],    j = 0..3    trits of x[240 + j + 4n],  n = 0..3
          a byte holds ceil(256 * sum_n t_n * 3**(4-n) / 243) (mod 256): trit n
          (the first the most significant) decodes as (uint8(byte * 3**n) * 3) >> 8

    TQ2_0 qs[32s+m], s = 0..1, m = 0..31   bit  7 6 | 5 4 | 3 2 | 1 0
                                                n=3 | n=2 | n=1 | n=0   q of x[128s + 32n + m]

    Q1_0  qs[k],    k = 0..15   bit i: x[8k + i] >= 0
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.rounding import fp16_field, fp16_from_field, round_away_array
from qviz.formats.spec import FORMATS, FP16, QK_K, Unpacked, register_ggml

#: Q1_0's block size (ggml-common.h ``QK1_0``)
QK1_0 = 128

# name, ggml_type, block size, bits, group size; general.file_type; llama-quantize's fallback
# (llama-quant.cpp ``tensor_type_fallback``: TQ1_0/TQ2_0 -> Q4_0; none for Q1_0, it throws); fields
register_ggml(__name__, "TQ1_0", 34, QK_K, 2, QK_K, file_type=36, fallback="Q4_0",
              qs=(QK_K - 4 * QK_K // 64) // 5, qh=QK_K // 64, d=FP16)
register_ggml(__name__, "TQ2_0", 35, QK_K, 2, QK_K, file_type=37, fallback="Q4_0", qs=QK_K // 4, d=FP16)
register_ggml(__name__, "Q1_0", 41, QK1_0, 1, QK1_0, file_type=40, d=FP16, qs=QK1_0 // 8)

F32 = np.float32

#: decoded value of each code, in units of ``d``
CODEBOOK_TQ1_0 = np.array([-1, 0, 1], dtype=F32)
CODEBOOK_TQ2_0 = np.array([-1, 0, 1, 2], dtype=F32)
CODEBOOK_Q1_0 = np.array([-1, 1], dtype=F32)

#: the bit that makes a float32 NaN quiet
QUIET_BIT = np.uint32(0x00400000)

#: TQ1_0's trit groups of a block: (first weight, bytes, trits per byte), in storage order (qs, then qh)
TQ1_0_GROUPS = ((0, 32, 5), (160, 16, 5), (240, 4, 4))
#: 3**(4-n): the weight of trit n in a TQ1_0 byte before the ceiling division
POW3_DESC = np.array([81, 27, 9, 3, 1], dtype=np.int64)
#: 3**n: the factor that brings trit n to the top of a TQ1_0 byte
POW3 = np.array([1, 3, 9, 27, 81], dtype=np.int64)


# ------------------------------------------------------------ ggml's rules

def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """Rows (n_rows, n_cols) -> blocks (n_rows, n_blocks, size)."""
    return x.reshape(x.shape[0], -1, size)


def _rows(blocks: np.ndarray) -> np.ndarray:
    """Blocks (n_rows, n_blocks, size) -> rows (n_rows, n_cols)."""
    return blocks.reshape(blocks.shape[0], -1)


def _ggml_amax(xb: np.ndarray) -> np.ndarray:
    """ggml's ``amax = MAX(amax, fabsf(v))`` from 0 over each block, (…, 256) -> (…) float32.

    ``MAX(a, b)`` is ``a > b ? a : b``: a NaN replaces the running max and
    the next value replaces the NaN, so the result is the max after a block's
    last NaN, or NaN when that is the block's last value.
    """
    a = np.abs(xb)
    nan = np.isnan(a)
    if not nan.any():
        return a.max(axis=-1)
    idx = np.arange(a.shape[-1])
    last = np.where(nan, idx, -1).max(axis=-1)  # (…)
    amax = np.where(idx <= last[..., None], F32(0), a).max(axis=-1)
    return np.where(last == a.shape[-1] - 1, F32(np.nan), amax).astype(F32)


def _ternary(x: np.ndarray, mask: int) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0/TQ2_0's rule: rows -> d (n_rows, n_blocks) float32, codes (…, 256) int64.

    ``d = amax``, ``id = d ? 1/d : 0``, code ``(int)lroundf(x * id) + 1``,
    kept modulo ``mask + 1`` as ggml's uint8 sums (TQ1_0, mask 255) and
    ``& 3`` (TQ2_0, mask 3) keep it. Beyond 2**31 (and for inf/NaN, from an
    infinite ``id``) glibc's ``lroundf`` gives ``LONG_MIN``, whose low bits
    are 0; so does every float32 beyond 2**31, a multiple of 256.
    """
    xb = _blocks(x, QK_K)
    d = _ggml_amax(xb)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.divide(F32(1), d, out=np.zeros_like(d), where=d != 0)  # NaN d: 1/NaN, as C's ``d ?``
        v = xb * inv[..., None]
        r = np.where(np.abs(v) < 2.0 ** 31, round_away_array(v), 0.0)
    return d, (r.astype(np.int64) + 1) & mask


def _tq1_0_bytes(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trits (…, 256) -> qs (…, 48) and qh (…, 4) uint8, ggml's base-3 packing with its uint8 wraps."""
    out = []
    for start, width, k in TQ1_0_GROUPS:
        g = t[..., start:start + width * k].reshape(*t.shape[:-1], k, width)  # trit n of byte m at [n, m]
        q = np.zeros(g.shape[:-2] + (width,), dtype=np.int64)
        for n in range(k):
            q = (q * 3 + g[..., n, :]) & 0xFF
        if k == 4:
            q = (q * 3) & 0xFF  # the first trit moved to the most significant place
        out.append(((q * 256 + 242) // 243) & 0xFF)  # ceiling division by 243
    return np.concatenate(out[:2], axis=-1).astype(np.uint8), out[2].astype(np.uint8)


def _tq1_0_trits(qs: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """qs (…, 48) and qh (…, 4) -> trits (…, 256) uint8, as ggml's ``dequantize_row_tq1_0`` reads them."""
    parts = []
    for (start, width, k), b in zip(TQ1_0_GROUPS, (qs[..., :32], qs[..., 32:], qh)):
        q = (b[..., None, :].astype(np.int64) * POW3[:k, None]) & 0xFF  # (…, k, width)
        parts.append(((q * 3) >> 8).reshape(*b.shape[:-1], k * width))
    return np.concatenate(parts, axis=-1).astype(np.uint8)


# ------------------------------------------------------------------ quantize

_IGNORED = "Ignored, as ggml ignores it."
_NOTES = ("ggml-quants.c ``quantize_row_{ggml}_ref``, which ``quantize_{ggml}`` (the path of "
          "``ggml_quantize_chunk``)\nruns with or without an imatrix.")
_RAMP = ">>> x = np.linspace(-1, 1, {n}, dtype=np.float32)[None]\n"


@describe(QUANTIZE, "TQ1_0", imatrix=_IGNORED, notes=_NOTES,
          summary="``d = max|x|`` of each 256-weight block; every weight becomes the trit\n"
                  "``lroundf(x / d) + 1``, five to a byte (four in ``qh``).",
          examples=_RAMP.format(n=256) + ">>> unpack_tq1_0(quantize_tq1_0(x)).codes[0, ::64]\n"
                   "array([0, 1, 1, 2], dtype=uint8)")
def quantize_tq1_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, t = _ternary(x, 0xFF)
    qs, qh = _tq1_0_bytes(t)
    return assemble("TQ1_0", qs=qs, qh=qh, d=fp16_field(d))


@describe(QUANTIZE, "TQ2_0", imatrix=_IGNORED, notes=_NOTES,
          summary="``d = max|x|`` of each 256-weight block; every weight becomes\n"
                  "``lroundf(x / d) + 1`` in 2 bits, four to a byte.",
          examples=_RAMP.format(n=256) + ">>> quantize_tq2_0(x)[0, :2]  # q = 0, 0, 1, 1 of x[0], x[32], …\n"
                   "array([80, 80], dtype=uint8)")
def quantize_tq2_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, q = _ternary(x, 3)
    q = q.reshape(*q.shape[:2], 2, 4, 32)  # (n_rows, n_blocks, s, n, m): x[128s + 32n + m]
    qs = (q[..., 0, :] | (q[..., 1, :] << 2) | (q[..., 2, :] << 4) | (q[..., 3, :] << 6)).astype(np.uint8)
    return assemble("TQ2_0", qs=qs.reshape(*q.shape[:2], 64), d=fp16_field(d))


@describe(QUANTIZE, "Q1_0", imatrix=_IGNORED, notes=_NOTES,
          summary="``d = sum|x| / 128`` of each 128-weight block (summed in order, in float32);\n"
                  "every weight keeps its sign, one bit (``x >= 0``).",
          examples=_RAMP.format(n=128) + ">>> dequantize_q1_0(quantize_q1_0(x))[0, [0, -1]]\n"
                   "array([-0.50390625,  0.50390625], dtype=float32)")
def quantize_q1_0(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    xb = _blocks(x, QK1_0)
    d = np.cumsum(np.abs(xb), axis=-1, dtype=F32)[..., -1] / F32(QK1_0)  # cumsum: ggml's order
    qs = np.packbits(xb >= 0, axis=-1, bitorder="little")
    return assemble("Q1_0", d=fp16_field(d), qs=qs)


# -------------------------------------------------------------- dequantize

def _decode(type_name: str, u: Unpacked) -> np.ndarray:
    """``d * codebook[code]`` of unpacked rows, float32 (n_rows, n_cols)."""
    vals = u.codebook[_blocks(u.codes, FORMATS[type_name].block_size)]
    return _rows(u.scales[..., None] * vals)


@describe(DEQUANTIZE, "TQ1_0", formula="``(t - 1) * d`` for each trit ``t``",
          examples=_RAMP.format(n=256) + ">>> dequantize_tq1_0(quantize_tq1_0(x))[0, [0, 128, 255]]\n"
                   "array([-1.,  0.,  1.], dtype=float32)")
def dequantize_tq1_0(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    return _decode("TQ1_0", unpack_tq1_0(packed))


@describe(DEQUANTIZE, "TQ2_0", formula="``(q - 1) * d`` for each 2-bit ``q``",
          examples=_RAMP.format(n=256) + ">>> dequantize_tq2_0(quantize_tq2_0(x))[0, [0, 128, 255]]\n"
                   "array([-1.,  0.,  1.], dtype=float32)")
def dequantize_tq2_0(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    return _decode("TQ2_0", unpack_tq2_0(packed))


@describe(DEQUANTIZE, "Q1_0", formula="``d`` where the bit is set, else ``-d``",
          examples=">>> dequantize_q1_0(quantize_q1_0(np.ones((1, 128), np.float32)))[0, 0]\n"
                   "np.float32(1.0)")
def dequantize_q1_0(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    f = fields("Q1_0", packed)
    d = fp16_from_field(f["d"])[..., None]
    d = np.where(np.isnan(d), (d.view(np.uint32) | QUIET_BIT).view(F32), d)  # ggml's fp16 -> fp32 quiets NaN
    bits = np.unpackbits(f["qs"], axis=-1, bitorder="little").astype(bool)
    return _rows(np.where(bits, d, -d))


# ------------------------------------------------------------------ unpack

_UNPACK_EXAMPLE = (">>> u = unpack_{lower}(quantize_{lower}(np.linspace(-1, 1, 2 * {block_size}, "
                   "dtype=np.float32).reshape(2, {block_size})))\n"
                   ">>> u.codes.shape, u.scales.shape, u.codebook.tolist()\n")


@describe(UNPACK, "TQ1_0", codes="the trits 0..2, indices into ``codebook = [-1, 0, 1]``", scales="``d``",
          examples=_UNPACK_EXAMPLE + "((2, 256), (2, 1), [-1.0, 0.0, 1.0])")
def unpack_tq1_0(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("TQ1_0", packed)
    return Unpacked(_rows(_tq1_0_trits(f["qs"], f["qh"])), fp16_from_field(f["d"]), None, CODEBOOK_TQ1_0.copy())


@describe(UNPACK, "TQ2_0", codes="the 2-bit fields 0..3, indices into ``codebook = [-1, 0, 1, 2]``",
          scales="``d``", examples=_UNPACK_EXAMPLE + "((2, 256), (2, 1), [-1.0, 0.0, 1.0, 2.0])")
def unpack_tq2_0(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("TQ2_0", packed)
    qs = f["qs"].reshape(*f["qs"].shape[:2], 2, 1, 32)  # (n_rows, n_blocks, s, 1, m)
    q = (qs >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3  # (…, s, n, m): x[128s + 32n + m]
    return Unpacked(_rows(q.reshape(*qs.shape[:2], QK_K)), fp16_from_field(f["d"]), None, CODEBOOK_TQ2_0.copy())


@describe(UNPACK, "Q1_0", codes="the sign bits 0..1, indices into ``codebook = [-1, 1]``", scales="``d``",
          examples=_UNPACK_EXAMPLE + "((2, 128), (2, 1), [-1.0, 1.0])")
def unpack_q1_0(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q1_0", packed)
    bits = np.unpackbits(f["qs"], axis=-1, bitorder="little")
    return Unpacked(_rows(bits), fp16_from_field(f["d"]), None, CODEBOOK_Q1_0.copy())
