"""Q3_K and Q6_K: the symmetric K-quants, byte-identical to ggml.

A super-block holds 256 weights in sixteen sub-blocks of 16. Each sub-block
has a signed integer scale ``sc``; one fp16 ``d`` per super-block turns those
into float steps, and a weight decodes as ``d * sc * q`` with a signed code
``q``. There is no min: the grid is symmetric around zero (one level more on
the negative side).

==== ====== ============================== ===========================
type bits   block (bytes)                  decode of weight j
==== ====== ============================== ===========================
Q3_K 3      hmask 32, qs 64, scales 12, d  ``d*(sc-32) * (q - 4)``
Q6_K 6      ql 128, qh 64, scales 16, d    ``d*sc * (q - 32)``
==== ====== ============================== ===========================

qviz stores the codes unsigned (Q3_K 0..7, Q6_K 0..63) with the implied zero
``2**(bits-1)``, and ``scales`` as the float32 products ``d*(sc-32)`` and
``d*sc`` per sub-block, so ``QuantResult.dequantize()`` repeats ggml's
``dequantize_row_q3_K`` / ``dequantize_row_q6_K`` operation for operation.

The quantizers are readable loops over blocks; the per-sub-block searches
are ggml's ``make_q3_quants`` and ``make_qx_quants``, shared with the other
K-quants in :mod:`qviz.formats.ggml_search`. Everything is float32, in
ggml's order, so the bytes match ``ggml_quantize_chunk``.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.ggml_search import GROUP_MAX_EPS, make_q3_quants, make_qx_quants, max_by_abs
from qviz.formats.rounding import fp16_bits, fp16_field, fp16_from_field, fp16_value
from qviz.formats.spec import FORMATS, FP16, QK_K, Unpacked, register_ggml

# name, ggml_type, block size, bits, sub-block size; general.file_type (the _S mix); fields in order
register_ggml(__name__, "Q3_K", 11, QK_K, 3, 16, file_type=11, fallback="Q4_0",
              hmask=QK_K // 8, qs=QK_K // 4, scales=12, d=FP16)
register_ggml(__name__, "Q6_K", 14, QK_K, 6, 16, file_type=18, fallback="Q8_0", twins=("numba", "torch"),
              ql=QK_K // 2, qh=QK_K // 4, scales=QK_K // 16, d=FP16)

F32 = np.float32
SUB = 16  # weights per sub-block
N_SUB = QK_K // SUB  # sub-blocks per super-block


# ---------------------------------------------------------------- Q3_K bits
#
# Weight j of a super-block (0..255) has a 3-bit code q = lo | hi << 2.
# The low two bits live in qs, four weights 32 apart per byte; the high bit in
# hmask, eight weights 32 apart per byte (h = 0, 1 is the half, l = 0..31):
#
#   qs[32*h + l]   bit  7 6 | 5 4 | 3 2 | 1 0
#                       w96 | w64 | w32 | w0      (w + 128*h + l)
#
#   hmask[l]       bit  7    6    5    4    3   2   1   0
#                       w224 w192 w160 w128 w96 w64 w32 w0   (w + l)
#
# The sixteen 6-bit sub-block scales (stored sc + 32, 0..63) share 12 bytes:
# low nibbles in bytes 0..7, the top two bits in bytes 8..11:
#
#   scales[k]      bit  7 6 5 4      | 3 2 1 0         k = 0..7
#                       sc[k+8] lo4  | sc[k] lo4
#   scales[8 + k]  bit  7 6     | 5 4     | 3 2    | 1 0      k = 0..3
#                       sc[k+12]| sc[k+8] | sc[k+4]| sc[k]  (bits 5..4)

_SHIFT4 = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]  # (4, 1)
_SHIFT8 = np.arange(8, dtype=np.uint8)[:, None]  # (8, 1)


def _unpack_q3_k_scales(scales: np.ndarray) -> np.ndarray:
    """The 12 scale bytes (…, 12) -> the sixteen stored 6-bit scales (…, 16), 0..63."""
    lo = np.concatenate([scales[..., :8] & 0xF, scales[..., :8] >> 4], axis=-1)  # (…, 16)
    hi = (scales[..., None, 8:12] >> _SHIFT4) & 3  # (…, 4, 4): [j // 4, j % 4]
    return lo | (hi.reshape(*scales.shape[:-1], N_SUB) << 4)


def _pack_q3_k_scales(sc: np.ndarray) -> np.ndarray:
    """Sixteen stored 6-bit scales (16,) 0..63 -> the 12 scale bytes (12,)."""
    sc = sc.astype(np.uint8)
    out = np.zeros(12, dtype=np.uint8)
    out[:8] = (sc[:8] & 0xF) | ((sc[8:] & 0xF) << 4)
    hi = (sc >> 4).reshape(4, 4)  # [j // 4, j % 4]
    out[8:] = hi[0] | (hi[1] << 2) | (hi[2] << 4) | (hi[3] << 6)
    return out


def _unpack_q3_k_codes(hmask: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """hmask (…, 32) and qs (…, 64) -> codes (…, 256), 0..7."""
    lead = qs.shape[:-1]
    lo = (qs.reshape(*lead, 2, 1, 32) >> _SHIFT4) & 3  # (…, 2, 4, 32): [half, shift, l]
    hi = (hmask[..., None, :] >> _SHIFT8) & 1  # (…, 8, 32): [bit, l]
    return lo.reshape(*lead, QK_K) | (hi.reshape(*lead, QK_K) << 2)


def _pack_q3_k_codes(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (256,) 0..7 -> hmask (32,) and qs (64,)."""
    L = L.astype(np.uint8)
    hi = (L >> 2).reshape(8, 32)  # [bit, l]
    hmask = np.zeros(32, dtype=np.uint8)
    for bit in range(8):
        hmask |= hi[bit] << bit
    lo = (L & 3).reshape(2, 4, 32)  # [half, shift, l]
    qs = lo[:, 0] | (lo[:, 1] << 2) | (lo[:, 2] << 4) | (lo[:, 3] << 6)  # (2, 32)
    return hmask, qs.reshape(64)


# ---------------------------------------------------------------- Q6_K bits
#
# Weight j of a super-block has a 6-bit code q = lo4 | hi2 << 4. Per half
# h = 0, 1 (weights 128*h ..) and l = 0..31:
#
#   ql[64*h + l]        bit  7 6 5 4   | 3 2 1 0
#                            w64 lo4   | w0 lo4          (w + 128*h + l)
#   ql[64*h + 32 + l]   bit  7 6 5 4   | 3 2 1 0
#                            w96 lo4   | w32 lo4
#   qh[32*h + l]        bit  7 6 | 5 4 | 3 2 | 1 0
#                            w96 | w64 | w32 | w0        (top two bits)
#
# scales[k] is the int8 scale of sub-block k (weights 16*k .. 16*k + 15).

_SHIFT2 = np.array([0, 4], dtype=np.uint8)[:, None, None]  # (2, 1, 1)


def _unpack_q6_k_codes(ql: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """ql (…, 128) and qh (…, 64) -> codes (…, 256), 0..63."""
    lead = ql.shape[:-1]
    lo = (ql.reshape(*lead, 2, 1, 2, 32) >> _SHIFT2) & 0xF  # (…, 2, 2, 2, 32): [half, nibble, byte row, l]
    hi = (qh.reshape(*lead, 2, 1, 32) >> _SHIFT4) & 3  # (…, 2, 4, 32): [half, quarter, l]
    return lo.reshape(*lead, QK_K) | (hi.reshape(*lead, QK_K) << 4)


def _pack_q6_k_codes(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (256,) 0..63 -> ql (128,) and qh (64,)."""
    L = L.astype(np.uint8).reshape(2, 4, 32)  # [half, quarter, l]
    lo, hi = L & 0xF, L >> 4
    ql = lo[:, :2] | (lo[:, 2:] << 4)  # (2, 2, 32): [half, byte row, l]
    qh = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)  # (2, 32)
    return ql.reshape(128), qh.reshape(64)


# ------------------------------------------------------- dequantize, unpack

def _unpacked(f: dict[str, np.ndarray], codes: np.ndarray, sc: np.ndarray) -> Unpacked:
    """Codes (n_rows, n_blocks, 256) and signed sub-block scales ``sc`` (n_rows, n_blocks, 16)
    of the rows whose fields are ``f``, with ``scales = d * sc`` in float32."""
    n_rows = f["d"].shape[0]
    scales = fp16_from_field(f["d"])[..., None] * sc
    return Unpacked(codes.reshape(n_rows, -1), scales.reshape(n_rows, -1))


_UNPACK_EXAMPLE = (">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> u = unpack_{lower}(quantize_{lower}(x))\n"
                   ">>> u.codes.shape, u.scales.shape, int(u.codes.max()) <= {nmax}\n"
                   "((2, 256), (2, 16), True)")


@describe(UNPACK, "Q3_K", codes="0..7 (implied zero 4)", scales="``d * (sc - 32)``", examples=_UNPACK_EXAMPLE)
def unpack_q3_k(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q3_K", packed)
    sc = _unpack_q3_k_scales(f["scales"]).astype(F32) - F32(32)  # (n_rows, n_blocks, 16)
    return _unpacked(f, _unpack_q3_k_codes(f["hmask"], f["qs"]), sc)


@describe(UNPACK, "Q6_K", codes="0..63 (implied zero 32)", scales="``d * sc``", examples=_UNPACK_EXAMPLE)
def unpack_q6_k(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q6_K", packed)
    sc = f["scales"].view(np.int8).astype(F32)  # (n_rows, n_blocks, 16)
    return _unpacked(f, _unpack_q6_k_codes(f["ql"], f["qh"]), sc)


def _decode(u: Unpacked, zero: int) -> np.ndarray:
    """``scale * (code - zero)`` per weight, float32, the step repeated over its sub-block."""
    step = np.repeat(u.scales, SUB, axis=1)  # (n_rows, n_cols)
    return step * (u.codes.astype(F32) - F32(zero))


_DEQUANTIZE_EXAMPLE = (">>> x = np.linspace(-1, 1, 256, dtype=np.float32)[None]\n"
                       ">>> float(np.abs(dequantize_{lower}(quantize_{lower}(x)) - x).max()) < {tol}\nTrue")


@describe(DEQUANTIZE, "Q3_K", formula="``(d * (sc - 32)) * (q - 4)`` per weight",
          examples=_DEQUANTIZE_EXAMPLE.replace("{tol}", "0.2"))
def dequantize_q3_k(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _decode(unpack_q3_k(packed), zero=4)


@describe(DEQUANTIZE, "Q6_K", formula="``(d * sc) * (q - 32)`` per weight",
          examples=_DEQUANTIZE_EXAMPLE.replace("{tol}", "0.02"))
def dequantize_q6_k(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _decode(unpack_q6_k(packed), zero=32)


# ------------------------------------------------------------- quantizers

def _requantize(x: np.ndarray, d: np.float32, sc: np.ndarray, L: np.ndarray, nmax: int) -> None:
    """Round each sub-block again on its final step ``d * sc`` (in place into ``L``).

    ``x`` (256,) float32, ``sc`` (16,) signed sub-block scales, ``L`` (256,)
    codes. A sub-block whose step is 0 keeps the codes of its search, as ggml
    does. Codes are ``clamp(nearest_int(x / step), -nmax, nmax - 1) + nmax``
    (``np.rint`` is ggml's nearest_int, round half to even, vectorized).
    """
    step = d * sc.astype(F32)  # (16,)
    for j in np.flatnonzero(step != 0):
        xs = x[SUB * j:SUB * (j + 1)]
        L[SUB * j:SUB * (j + 1)] = np.clip(np.rint(xs / step[j]), -nmax, nmax - 1) + nmax


def _q3_k_block_ref(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """One Q3_K super-block without imatrix (ggml ``quantize_row_q3_K_ref``).

    Returns the fp16 bits of ``d``, the 16 stored scales (sc + 32, 0..63) and
    the 256 codes (0..7).
    """
    L = np.zeros(QK_K, dtype=np.int8)
    scales = np.zeros(N_SUB, dtype=F32)
    for j in range(N_SUB):
        scales[j] = make_q3_quants(SUB, 4, x[SUB * j:], L[SUB * j:], True)
    max_scale, _ = max_by_abs(N_SUB, scales)
    if max_scale != 0:
        iscale = F32(-32) / max_scale
        sc = np.clip(np.rint(iscale * scales), -32, 31).astype(np.int32) + 32
        d_bits = fp16_bits(F32(1) / iscale)
    else:
        sc = np.zeros(N_SUB, dtype=np.int32)
        d_bits = 0
    _requantize(x, F32(fp16_value(d_bits)), sc - 32, L, 4)
    return d_bits, sc, L


def _q3_k_block_impl(x: np.ndarray, qw: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """One Q3_K super-block with importance weights ``qw`` (256,) (ggml ``quantize_row_q3_K_impl``)."""
    sumx2 = F32(0)
    for v in x:
        sumx2 += v * v
    sigma2 = F32(2) * sumx2 / F32(QK_K)
    weight = qw * np.sqrt(sigma2 + x * x)  # (256,)
    L = np.zeros(QK_K, dtype=np.int8)
    scales = np.zeros(N_SUB, dtype=F32)
    sw = np.zeros(N_SUB, dtype=F32)
    for j in range(N_SUB):
        w = weight[SUB * j:SUB * (j + 1)]
        for v in w:
            sw[j] += v
        scales[j] = make_qx_quants(SUB, 4, x[SUB * j:], L[SUB * j:], 1, w)
    sc = np.zeros(N_SUB, dtype=np.int8)
    d_bits = fp16_bits(make_qx_quants(N_SUB, 32, scales, sc, 1, sw))
    _requantize(x, F32(fp16_value(d_bits)), sc.astype(np.int32) - 32, L, 4)
    return d_bits, sc, L


def _q6_k_block(x: np.ndarray, qw: np.ndarray | None) -> tuple[int, np.ndarray, np.ndarray]:
    """One Q6_K super-block (ggml ``quantize_row_q6_K_ref`` / ``_impl``).

    Returns the fp16 bits of ``d``, the 16 int8 scales and the 256 codes
    (0..63); an all-zero block comes back as zeros throughout.
    """
    L = np.zeros(QK_K, dtype=np.int8)
    scales = np.zeros(N_SUB, dtype=F32)
    for j in range(N_SUB):
        w = None if qw is None else qw[SUB * j:]
        scales[j] = make_qx_quants(SUB, 32, x[SUB * j:], L[SUB * j:], 1, w)
    max_scale, _ = max_by_abs(N_SUB, scales)
    if abs(max_scale) < GROUP_MAX_EPS:
        return 0, np.zeros(N_SUB, dtype=np.int32), np.zeros(QK_K, dtype=np.int32)
    iscale = F32(-128) / max_scale
    d_bits = fp16_bits(F32(1) / iscale)
    sc = np.minimum(127, np.rint(iscale * scales)).astype(np.int32)
    _requantize(x, F32(fp16_value(d_bits)), sc, L, 32)
    return d_bits, sc, L


def _pack_q3_k(d_bits: int, sc: np.ndarray, L: np.ndarray) -> dict[str, np.ndarray]:
    """One Q3_K super-block's fields from d's fp16 bits, the stored scales and the codes."""
    hmask, qs = _pack_q3_k_codes(L)
    return {"hmask": hmask, "qs": qs, "scales": _pack_q3_k_scales(sc), "d": fp16_field(np.uint16(d_bits))}


def _pack_q6_k(d_bits: int, sc: np.ndarray, L: np.ndarray) -> dict[str, np.ndarray]:
    """One Q6_K super-block's fields from d's fp16 bits, the int8 scales and the codes."""
    ql, qh = _pack_q6_k_codes(L)
    return {"ql": ql, "qh": qh, "scales": sc.astype(np.int8).view(np.uint8), "d": fp16_field(np.uint16(d_bits))}


def _q3_k_block(x: np.ndarray, qw: np.ndarray | None) -> tuple[int, np.ndarray, np.ndarray]:
    """One Q3_K super-block: ggml's ``_ref`` rule without importance, its ``_impl`` with."""
    return _q3_k_block_ref(x) if qw is None else _q3_k_block_impl(x, qw)


#: per type: (one super-block's d bits, scales, codes from x and its importance; its fields from those)
_BLOCK_RULES = {"Q3_K": (_q3_k_block, _pack_q3_k), "Q6_K": (_q6_k_block, _pack_q6_k)}


def _quantize(x: np.ndarray, imatrix: np.ndarray | None, name: str) -> np.ndarray:
    """The row driver: every super-block of every row, (n_rows, n_blocks * type_size) uint8."""
    n_rows, n_blocks = x.shape[0], x.shape[1] // QK_K
    quantize_block, pack_block = _BLOCK_RULES[name]
    blocks = x.reshape(n_rows, n_blocks, QK_K)
    out = {f.name: np.zeros((n_rows, n_blocks, f.nbytes), dtype=np.uint8) for f in FORMATS[name].fields}
    for r, i in np.ndindex(n_rows, n_blocks):
        qw = None if imatrix is None else imatrix[QK_K * i:QK_K * (i + 1)]
        with np.errstate(over="ignore"):  # huge rows overflow float32 products to inf, as in C
            for k, v in pack_block(*quantize_block(blocks[r, i], qw)).items():
                out[k][r, i] = v
    return assemble(name, **out)


_QUANTIZE_EXAMPLE = (">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                     ">>> quantize_{lower}(x).shape\n(2, {type_size})")


@describe(QUANTIZE, "Q3_K", examples=_QUANTIZE_EXAMPLE,
          notes="ggml's ``quantize_row_q3_K_ref`` without imatrix (``make_q3_quants`` per\n"
                "sub-block, then the sixteen scales rounded to 6 bits on ``-32 / max``);\n"
                "``quantize_row_q3_K_impl`` with one (``make_qx_quants`` weighted by\n"
                "``qw * sqrt(sigma2 + x²)``, and again for the scales weighted by each\n"
                "sub-block's total weight). Both round every weight once more on its final\n"
                "step ``d * (sc - 32)``.")
def quantize_q3_k(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    return _quantize(x, imatrix, "Q3_K")


@describe(QUANTIZE, "Q6_K", examples=_QUANTIZE_EXAMPLE,
          notes="ggml's ``quantize_row_q6_K_ref`` without imatrix and ``quantize_row_q6_K_impl``\n"
                "with one: ``make_qx_quants`` (nmax 32) per sub-block, weighted by ``x²`` or by\n"
                "the imatrix itself; the scales rounded to int8 on ``-128 / max``; every weight\n"
                "rounded once more on ``d * sc``.")
def quantize_q6_k(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    return _quantize(x, imatrix, "Q6_K")
