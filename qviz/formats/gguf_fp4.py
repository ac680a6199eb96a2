"""MXFP4 and NVFP4: ggml's 4-bit float (E2M1) types, byte-identical to ggml.

Every weight is one of the 16 E2M1 values, stored as a 4-bit code; a scale
shared by a group of weights is stored as an 8-bit float without sign bit.
ggml keeps the E2M1 values doubled as integers (ggml-common.h
``kvalues_mxfp4`` = ``0, 1, 2, 3, 4, 6, 8, 12`` and their negatives) and folds
the factor 0.5 into the decoded scale (ggml-impl.h ``ggml_e8m0_to_fp32_half``,
``ggml_ue4m3_to_fp32``); qviz does the same, so the codebook is
:data:`KVALUES_MXFP4` and the scales are ggml's halved ones.

===== ==== ======= ===================== =================================
type  bits weights block (bytes)         decode of weight j
===== ==== ======= ===================== =================================
MXFP4 4    32      e 1, qs 16            ``kvalues_mxfp4[q] * e8m0_half(e)``
NVFP4 4    64      d 4, qs 32            ``kvalues_mxfp4[q] * ue4m3_half(d[j // 16])``
===== ==== ======= ===================== =================================

Scales (ggml-quants.c ``quantize_row_mxfp4_ref``, ``quantize_row_nvfp4_ref``):

* MXFP4, per 32 weights: ``e = (uint8_t)(floorf(log2f(amax)) - 2 + 127)``
  (0 for ``amax == 0``), an E8M0 exponent decoded as ``2**(e - 128)``
  (``e < 2``: the float32 subnormals ``2**-128``, ``2**-127``). C's float to
  ``uint8_t`` conversion wraps modulo 256 on x86 (``amax < 2**-125`` gives
  ``e`` of 232..255, ``amax = inf`` gives 0); :func:`e8m0_exponent` repeats it.
* NVFP4, per 16 weights: ``d = ggml_fp32_to_ue4m3(amax / 6)``, a UE4M3 byte
  (4 exponent bits, bias 7, 3 mantissa bits, rounded half up on the
  mantissa; 448 for every value from 256 up), decoded as half its value;
  ``0x00`` and ``0x7F`` decode to 0. :func:`ue4m3_byte` repeats it.

Each weight takes the first of the 16 levels ``kvalues_mxfp4[i] * d`` nearest
to it (``best_index_mxfp4``: float32 errors, strict ``<``). ggml ignores an
importance matrix for both types (``quantize_mxfp4`` / ``quantize_nvfp4``:
``GGML_UNUSED(quant_weights)``), so the imatrix path gives the same bytes;
neither needs one.

Bit layout (ggml-common.h ``block_mxfp4``, ``block_nvfp4``); a code is
``sign << 3 | magnitude index`` into ``0, 1, 2, 3, 4, 6, 8, 12``::

    MXFP4  byte 0       e       E8M0 exponent of the block
           qs[j]  (j = 0..15)   bit  7 6 5 4   | 3 2 1 0
                                     q[j+16]   | q[j]

    NVFP4  bytes 0..3   d[s]    UE4M3 scale of weights 16s..16s+15
                                bit 7 (ignored) | 6 5 4 3 exponent | 2 1 0 mantissa
           qs[8s+j]  (s = 0..3, j = 0..7)
                                bit  7 6 5 4       | 3 2 1 0
                                     q[16s+j+8]    | q[16s+j]
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.spec import QK, Unpacked, register_ggml

QK_NVFP4 = 64  # weights of an NVFP4 block
QK_NVFP4_SUB = 16  # weights sharing one NVFP4 scale

# name, ggml_type, block size, bits, group size; general.file_type; fields in storage order.
# llama-quantize defines no fallback for either (tensor_type_fallback throws); MXFP4's only
# file type is the MoE mix MOSTLY_MXFP4_MOE.
register_ggml(__name__, "MXFP4", 39, QK, 4, QK, file_type=38, scale_format="E8M0", scale_max=2.0 ** 127,
              e=1, qs=QK // 2)
register_ggml(__name__, "NVFP4", 40, QK_NVFP4, 4, QK_NVFP4_SUB, file_type=39, scale_format="UE4M3",
              scale_max=448.0, d=QK_NVFP4 // QK_NVFP4_SUB, qs=QK_NVFP4 // 2)

F32 = np.float32

#: ggml-common.h ``kvalues_mxfp4``: the E2M1 values doubled, by code (index 8 is a second zero).
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)


def _e8m0_half_table() -> np.ndarray:
    """ggml-impl.h ``ggml_e8m0_to_fp32_half`` of every byte, float32 (256,): ``2**(e - 128)``."""
    e = np.arange(256, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).astype(np.uint32)
    return bits.view(F32)


def _ue4m3_half_table() -> np.ndarray:
    """ggml-impl.h ``ggml_ue4m3_to_fp32`` of every byte, float32 (256,): half the UE4M3 value.

    Bit 7 is ignored, except that only ``0x7F`` (not ``0xFF``) decodes to 0.
    """
    x = np.arange(256)
    exp, man = (x >> 3) & 0xF, x & 0x7
    raw = np.where(exp == 0, np.ldexp(man.astype(np.float64), -9),
                   np.ldexp(1.0 + man / 8.0, exp - 7))  # exact in float32 too
    return np.where((x == 0) | (x == 0x7F), 0.0, raw * 0.5).astype(F32)


#: decoded (halved) scale of every E8M0 byte
E8M0_HALF = _e8m0_half_table()
#: decoded (halved) scale of every UE4M3 byte
UE4M3_HALF = _ue4m3_half_table()


def _log2f_thresholds() -> np.ndarray:
    """int32 (278,): for ``k = -149 .. 128``, the float32 bits from which ``log2f`` rounds up to ``k + 1``.

    ``floorf(log2f(v))`` is the exponent ``k`` of ``v``, plus one where
    ``log2(v)``, rounded to float32, reaches ``k + 1``: near the top of a
    binade for ``|k + 1| >= 4`` or so. The rounding is monotone in ``v``, so
    each binade has one threshold, found by bisection over its float32 bit
    patterns with the correctly rounded ``log2`` (float64, then float32). A
    binade that never rounds up gets the bits of its top + 1.
    """
    out = np.empty(278, dtype=np.int64)
    for i, k in enumerate(range(-149, 129)):
        lo = np.float32(2.0 ** k).view(np.int32).item() if k < 128 else 0x7F800000
        hi = np.float32(2.0 ** (k + 1)).view(np.int32).item() if k < 127 else 0x7F800000  # first above
        if k >= 128:
            out[i] = hi
            continue
        while lo < hi:  # first bits in [lo, hi) whose log2 rounds to k + 1
            mid = (lo + hi) // 2
            v = np.int32(mid).view(F32)
            if np.float32(np.log2(np.float64(v))) >= k + 1:
                hi = mid
            else:
                lo = mid + 1
        out[i] = lo
    return out.astype(np.int64)


#: per binade k = -149..128 (index k + 149), the first float32 bits whose ``log2f`` is k + 1
LOG2F_UP = _log2f_thresholds()


def floor_log2f(v: np.ndarray) -> np.ndarray:
    """``floorf(log2f(v))`` for positive finite float32 ``v``, as int64 (same shape)."""
    bits = np.asarray(v, dtype=F32).view(np.int32).astype(np.int64)
    exp_field = bits >> 23
    # normal: the exponent; subnormal: the position of the top mantissa bit, minus 149
    k = np.where(exp_field > 0, exp_field - 127,
                 np.floor(np.log2(np.maximum(bits, 1).astype(np.float64))).astype(np.int64) - 149)
    return k + (bits >= LOG2F_UP[np.clip(k + 149, 0, LOG2F_UP.size - 1)])


def e8m0_exponent(amax: np.ndarray) -> np.ndarray:
    """MXFP4's ``e`` of each block maximum ``amax >= 0`` (float32), uint8 (same shape).

    ``(uint8_t)(floorf(log2f(amax)) - 2 + 127)``, 0 for ``amax == 0``; C's
    conversion truncates to int32 and keeps the low byte (x86), so a
    negative value wraps and ``inf`` (int32's ``INT_MIN``) gives 0.
    """
    amax = np.asarray(amax, dtype=F32)
    finite = np.isfinite(amax) & (amax > 0)
    e = (floor_log2f(np.where(finite, amax, F32(1))) + 125) & 0xFF
    return np.where(finite, e, 0).astype(np.uint8)


def ue4m3_byte(x: np.ndarray) -> np.ndarray:
    """ggml-impl.h ``ggml_fp32_to_ue4m3`` of float32 ``x``, uint8 (same shape)."""
    x = np.minimum(np.asarray(x, dtype=F32), F32(448))  # NaN stays NaN, caught below
    bits = x.view(np.int32).astype(np.int64)
    ue_exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = ((bits >> 20) & 0x7) + ((bits >> 19) & 1)  # round half up on the 4th mantissa bit
    carry = man > 7
    ue_exp = np.where(carry, ue_exp + 1, ue_exp)
    normal = np.where(ue_exp >= 15, 0x7E, (ue_exp << 3) | np.where(carry, 0, man))
    with np.errstate(invalid="ignore"):
        sub = (x * F32(512) + F32(0.5)).astype(np.int64)  # C's (int) truncates; float32 sum
    sub = np.where(sub < 1, 0, np.minimum(sub, 7))
    out = np.where(((bits >> 23) & 0xFF) - 127 + 7 <= 0, sub, normal)
    return np.where(x > 0, out, 0).astype(np.uint8)


# ------------------------------------------------------------------ fields

def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Codes (…, 2n) -> bytes (…, n): low 4 bits q[j], high 4 bits q[j + n]."""
    n = q.shape[-1] // 2
    return (q[..., :n] | (q[..., n:] << 4)).astype(np.uint8)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes (…, n) -> codes (…, 2n), the inverse of :func:`_pack_nibbles`."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=-1)


def best_index(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ggml's ``best_index_mxfp4`` of every weight: the first nearest level, uint8.

    x : float32 (…, g) weights; d : float32 (…) the group's halved scale.
    Errors ``|kvalues_mxfp4[i] * d - x|`` in float32 (the product is exact),
    the first smallest winning (NaN errors never win: index 0).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        levels = KVALUES_MXFP4.astype(F32) * d[..., None, None]  # (…, 1, 16)
        err = np.abs(levels - x[..., None])  # (…, g, 16)
    return np.argmin(np.where(np.isnan(err), np.inf, err), axis=-1).astype(np.uint8)


def _group_amax(xg: np.ndarray) -> np.ndarray:
    """``amax`` of ggml's scan (start 0, ``amax < fabsf(v)``: NaN skipped), (…, g) -> (…)."""
    a = np.abs(xg)
    return np.where(np.isnan(a), F32(0), a).max(axis=-1)


# ------------------------------------------------------------------ quantize

_NOTES = ("ggml-quants.c ``quantize_{ggml}`` -> ``quantize_row_{ggml}_ref`` (the path of "
          "``ggml_quantize_chunk``, which ignores the imatrix).")
_IGNORED = "Ignored, as ggml ignores it: the same bytes with or without."


@describe(QUANTIZE, "MXFP4", imatrix=_IGNORED, notes=_NOTES,
          summary="Each 32-weight block stores ``e = floor(log2(amax)) + 125`` (E8M0) and every\n"
                  "weight's nearest level ``kvalues_mxfp4 * 2**(e - 128)``.",
          examples=">>> x = np.linspace(-1, 1, 32, dtype=np.float32)[None]\n"
                   ">>> quantize_mxfp4(x)[0, 0], dequantize_mxfp4(quantize_mxfp4(x))[0, :2]\n"
                   "(np.uint8(125), array([-1., -1.], dtype=float32))")
def quantize_mxfp4(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    xb = x.reshape(x.shape[0], -1, QK)  # (n_rows, n_blocks, 32)
    e = e8m0_exponent(_group_amax(xb))
    q = best_index(xb, E8M0_HALF[e])
    return assemble("MXFP4", e=e[..., None], qs=_pack_nibbles(q))


@describe(QUANTIZE, "NVFP4", imatrix=_IGNORED, notes=_NOTES,
          summary="Each 16 weights store ``d = ue4m3(amax / 6)`` and every weight's nearest level\n"
                  "``kvalues_mxfp4 * ue4m3_half(d)``; four such groups make a 64-weight block.",
          examples=">>> x = np.linspace(-1, 1, 64, dtype=np.float32)[None]\n"
                   ">>> quantize_nvfp4(x)[0, :4]  # group 0: amax / 6 = 0.1667 -> 0x23 = 0.171875\n"
                   "array([35, 26, 26, 35], dtype=uint8)")
def quantize_nvfp4(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    n_rows = x.shape[0]
    xg = x.reshape(n_rows, -1, QK_NVFP4 // QK_NVFP4_SUB, QK_NVFP4_SUB)  # (n_rows, n_blocks, 4, 16)
    d = ue4m3_byte(_group_amax(xg) / F32(6))  # (n_rows, n_blocks, 4)
    q = best_index(xg, UE4M3_HALF[d])
    return assemble("NVFP4", d=d, qs=_pack_nibbles(q).reshape(n_rows, -1, QK_NVFP4 // 2))


# -------------------------------------------------------------------- unpack

def _unpack_example(lower: str, n: int, code: int, scales: str) -> str:
    """The example of an unpacker: a ramp from -1 to 1, its first codes and its scales."""
    return (f">>> u = unpack_{lower}(quantize_{lower}(np.linspace(-1, 1, {n}, dtype=np.float32)[None]))\n"
            f">>> u.codes[0, :2], u.scales[0]\n"
            f"(array([{code}, {code}], dtype=uint8), array({scales}, dtype=float32))")


@describe(UNPACK, "MXFP4", codes="0..15, indices into ``codebook = kvalues_mxfp4`` (E2M1 doubled)",
          scales="``e8m0_half(e) = 2**(e - 128)``",
          examples=_unpack_example("mxfp4", 32, 14, "[0.125]"))
def unpack_mxfp4(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("MXFP4", packed)
    codes = _unpack_nibbles(f["qs"])  # (n_rows, n_blocks, 32)
    return Unpacked(codes.reshape(codes.shape[0], -1), E8M0_HALF[f["e"][..., 0]],
                    codebook=KVALUES_MXFP4.astype(F32))


@describe(UNPACK, "NVFP4", codes="0..15, indices into ``codebook = kvalues_mxfp4`` (E2M1 doubled)",
          scales="``ue4m3_half(d[s])``, half the UE4M3 value",
          examples=_unpack_example("nvfp4", 64, 15, "[0.0859375, 0.0390625, 0.0390625, 0.0859375]"))
def unpack_nvfp4(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("NVFP4", packed)
    n_rows = packed.shape[0]
    qs = f["qs"].reshape(n_rows, -1, QK_NVFP4 // QK_NVFP4_SUB, QK_NVFP4_SUB // 2)  # (…, 4, 8)
    codes = _unpack_nibbles(qs).reshape(n_rows, -1)
    return Unpacked(codes, UE4M3_HALF[f["d"]].reshape(n_rows, -1), codebook=KVALUES_MXFP4.astype(F32))


# ---------------------------------------------------------------- dequantize

def _decode(u: Unpacked, group: int) -> np.ndarray:
    """``kvalues_mxfp4[q] * d`` in float32 (exact: the product fits; overflow gives inf as in C)."""
    n_rows = u.codes.shape[0]
    vals = KVALUES_MXFP4.astype(F32)[u.codes].reshape(n_rows, -1, group)
    with np.errstate(over="ignore"):
        return (vals * u.scales[..., None]).reshape(n_rows, -1)


@describe(DEQUANTIZE, "MXFP4", formula="``kvalues_mxfp4[q] * e8m0_half(e)``",
          examples=">>> dequantize_mxfp4(quantize_mxfp4(np.full((1, 32), 3, np.float32)))[0, 0]\n"
                   "np.float32(3.0)")
def dequantize_mxfp4(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    return _decode(unpack_mxfp4(packed), QK)


@describe(DEQUANTIZE, "NVFP4", formula="``kvalues_mxfp4[q] * ue4m3_half(d[j // 16])``",
          examples=">>> dequantize_nvfp4(quantize_nvfp4(np.full((1, 64), 3, np.float32)))[0, 0]\n"
                   "np.float32(3.0)")
def dequantize_nvfp4(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    return _decode(unpack_nvfp4(packed), QK_NVFP4_SUB)
