"""IQ4_XS: IQ4_NL's 16 levels on 256-weight super-blocks with 6-bit sub-block scales, byte-identical to ggml.

A super-block holds 256 weights in eight sub-blocks of 32. Each sub-block has
a 6-bit scale ``ls`` (stored 0..63, meaning ``ls - 32``); one fp16 ``d`` per
super-block turns those into float steps, and weight j decodes as
``d * (ls - 32) * kvalues_iq4nl[q]`` with a 4-bit index ``q``.

====== ==== ==================================== ====================================
type   bits block (bytes)                        decode of weight j (sub-block ib)
====== ==== ==================================== ====================================
IQ4_XS 4    d 2, scales_h 2, scales_l 4, qs 128  ``d*(ls[ib]-32) * kvalues_iq4nl[q]``
====== ==== ==================================== ====================================

The quantizer is ggml's ``quantize_iq4_xs`` (``ggml_quantize_chunk``'s path,
with and without an imatrix): ``quantize_row_iq4_nl_impl`` with a super-block
of 256 and blocks of 32. Each sub-block's scale is searched as IQ4_NL's
(:func:`~qviz.formats.ggml_search.make_iq4nl_quants`, ``ntry = 7``, error
weights ``x**2``, or ``imatrix * sqrt(sigma2 + x**2)`` with ``sigma2`` twice
the mean square of the super-block); ``d = -max_scale / 32`` with
``max_scale`` the first sub-block scale of largest magnitude; each sub-block
scale is rounded to ``l = clamp(nearest_int(scale / d), -32, 31)`` and its
weights are indexed again on ``d * l``, with the float32 ``d`` (not its fp16
value, which only the decoder sees).

qviz stores the codes as the indices 0..15 with ``codebook = kvalues_iq4nl``
and ``scales`` as the float32 products ``d * (ls - 32)`` per sub-block, so
``QuantResult.dequantize()`` repeats ggml's ``dequantize_row_iq4_xs`` bit for bit.

Bit layout of a ``block_iq4_xs`` (ggml-common.h), sub-block ``ib = 0..7``,
weight ``32*ib + j``::

    d         fp16, little-endian
    scales_h  uint16 LE   bit  15 14 | 13 12 | ... | 3 2   | 1 0
                               ls[7]  ls[6]    ...   ls[1]   ls[0]   (bits 5..4)
    scales_l[k]  k = 0..3 bit  7 6 5 4      | 3 2 1 0
                               ls[2k+1] lo4 | ls[2k] lo4
    qs[16*ib + j]  j = 0..15   bit  7 6 5 4    | 3 2 1 0
                               q[32*ib+16+j] | q[32*ib+j]
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.ggml_search import best_index_int8, make_iq4nl_quants, max_by_abs
from qviz.formats.gguf_legacy import KVALUES_IQ4NL
from qviz.formats.rounding import fp16_bits, fp16_field, fp16_from_field, nearest_int
from qviz.formats.spec import FP16, QK, QK_K, Unpacked, register_ggml

# name, ggml_type, block size, bits, sub-block size; general.file_type (MOSTLY_IQ4_XS); fields in order.
# llama.cpp's llama_tensor_get_type quantizes rows that no 256-block divides as IQ4_NL.
register_ggml(__name__, "IQ4_XS", 23, QK_K, 4, QK, file_type=30, fallback="IQ4_NL",
              d=FP16, scales_h=2, scales_l=QK_K // 64, qs=QK_K // 2)

F32 = np.float32
N_SUB = QK_K // QK  # sub-blocks per super-block
NTRY = 7  # quantize_iq4_xs's ntry

_SHIFT_H = 2 * np.arange(N_SUB, dtype=np.uint16)  # (8,): bits of ls[ib] >> 4 in scales_h


# ------------------------------------------------------------ block fields

def _unpack_scales(scales_h: np.ndarray, scales_l: np.ndarray) -> np.ndarray:
    """scales_h (…, 2) and scales_l (…, 4) -> the eight stored 6-bit scales ``ls`` (…, 8), 0..63."""
    h = scales_h[..., 0].astype(np.uint16) | (scales_h[..., 1].astype(np.uint16) << 8)  # (…,)
    hi = (h[..., None] >> _SHIFT_H) & 3  # (…, 8)
    lo = np.stack([scales_l & 0xF, scales_l >> 4], axis=-1).reshape(*scales_l.shape[:-1], N_SUB)
    return (lo | (hi.astype(np.uint8) << 4)).astype(np.uint8)


def _pack_scales(ls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eight stored scales (8,) 0..63 -> scales_h (2,) and scales_l (4,)."""
    ls = ls.astype(np.uint16)
    h = np.bitwise_or.reduce((ls >> 4) << _SHIFT_H)
    scales_h = np.array([h & 0xFF, h >> 8], dtype=np.uint8)
    lo = (ls & 0xF).astype(np.uint8).reshape(4, 2)
    return scales_h, lo[:, 0] | (lo[:, 1] << 4)


def _unpack_codes(qs: np.ndarray) -> np.ndarray:
    """qs (…, 128) -> the indices (…, 256), 0..15."""
    q = qs.reshape(*qs.shape[:-1], N_SUB, 16)
    return np.concatenate([q & 0xF, q >> 4], axis=-1).reshape(*qs.shape[:-1], QK_K)


def _pack_codes(L: np.ndarray) -> np.ndarray:
    """Indices (256,) 0..15 -> qs (128,)."""
    q = L.astype(np.uint8).reshape(N_SUB, 2, 16)  # [ib, half, j]
    return (q[:, 0] | (q[:, 1] << 4)).reshape(QK_K // 2)


# ------------------------------------------------------------ ggml's rule

def _iq4_xs_block(x: np.ndarray, qw: np.ndarray | None) -> tuple[int, np.ndarray, np.ndarray]:
    """One super-block (ggml ``quantize_row_iq4_nl_impl(256, 32, …, ntry=7)``).

    Parameters
    ----------
    x : ndarray, shape (256,), float32
    qw : ndarray, shape (256,), float32, or None
        The imatrix slice of this super-block.

    Returns
    -------
    d_bits : int
        fp16 bits of ``d``.
    ls : ndarray, shape (8,), int
        Stored sub-block scales ``l + 32``, 0..63.
    L : ndarray, shape (256,), uint8
        Indices into ``kvalues_iq4nl``.
    """
    sigma2 = np.cumsum(x * x, dtype=F32)[-1] * F32(2 / QK_K)
    L = np.zeros(QK_K, dtype=np.uint8)
    scales = np.zeros(N_SUB, dtype=F32)
    for ib in range(N_SUB):
        xb = x[QK * ib:QK * (ib + 1)]
        if qw is None:
            weight = xb * xb
        else:
            weight = qw[QK * ib:QK * (ib + 1)] * np.sqrt(sigma2 + xb * xb)
        scales[ib] = make_iq4nl_quants(QK, xb, L[QK * ib:], weight, KVALUES_IQ4NL, NTRY)
    max_scale, _ = max_by_abs(N_SUB, scales)
    d = -max_scale / F32(32)
    inv = F32(1) / d if d != 0 else F32(0)
    ls = np.zeros(N_SUB, dtype=np.int64)
    for ib in range(N_SUB):
        l = max(-32, min(31, nearest_int(inv * scales[ib])))
        dl = d * F32(l)
        idl = F32(1) / dl if dl != 0 else F32(0)
        for j in range(QK * ib, QK * (ib + 1)):
            L[j] = best_index_int8(16, KVALUES_IQ4NL, idl * x[j])
        ls[ib] = l + 32
    return fp16_bits(d), ls, L


@describe(QUANTIZE, "IQ4_XS",
          summary="Each 32-weight sub-block searches its scale as IQ4_NL does\n"
                  "(:func:`~qviz.formats.ggml_search.make_iq4nl_quants`); the eight scales are\n"
                  "rounded to 6 bits on ``d = -max_scale/32`` and every weight is indexed again\n"
                  "on its sub-block's ``d * (ls - 32)``.",
          imatrix="Importance of each column: weights ``imatrix * sqrt(sigma2 + x**2)``\n"
                  "    with ``sigma2 = 2 * mean(x**2)`` of the super-block; else ``x**2``.",
          notes="ggml-quants.c ``quantize_iq4_xs`` -> ``quantize_row_iq4_nl_impl(256, 32, …)``\n"
                "(``ntry = 7``; the path of ``ggml_quantize_chunk``, with or without imatrix).",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> quantize_iq4_xs(x).shape\n(2, 136)")
def quantize_iq4_xs(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    n_rows, n_blocks = x.shape[0], x.shape[1] // QK_K
    blocks = x.reshape(n_rows, n_blocks, QK_K)
    d = np.zeros((n_rows, n_blocks), dtype=np.uint16)
    scales_h = np.zeros((n_rows, n_blocks, 2), dtype=np.uint8)
    scales_l = np.zeros((n_rows, n_blocks, 4), dtype=np.uint8)
    qs = np.zeros((n_rows, n_blocks, QK_K // 2), dtype=np.uint8)
    with np.errstate(all="ignore"):  # huge or tiny rows overflow and divide to inf/NaN, as in C
        for r, i in np.ndindex(n_rows, n_blocks):
            qw = None if imatrix is None else imatrix[QK_K * i:QK_K * (i + 1)]
            d_bits, ls, L = _iq4_xs_block(blocks[r, i], qw)
            d[r, i] = d_bits
            scales_h[r, i], scales_l[r, i] = _pack_scales(ls)
            qs[r, i] = _pack_codes(L)
    return assemble("IQ4_XS", d=fp16_field(d), scales_h=scales_h, scales_l=scales_l, qs=qs)


# ------------------------------------------------------- unpack, dequantize

@describe(UNPACK, "IQ4_XS", codes="0..15, indices into ``codebook = kvalues_iq4nl``",
          scales="``d * (ls - 32)``",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> u = unpack_iq4_xs(quantize_iq4_xs(x))\n"
                   ">>> u.codes.shape, u.scales.shape, u.codebook[:3]\n"
                   "((2, 256), (2, 8), array([-127., -104.,  -83.], dtype=float32))")
def unpack_iq4_xs(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("IQ4_XS", packed)
    n_rows = packed.shape[0]
    ls = _unpack_scales(f["scales_h"], f["scales_l"]).astype(F32) - F32(32)  # (n_rows, n_blocks, 8)
    scales = fp16_from_field(f["d"])[..., None] * ls
    codes = _unpack_codes(f["qs"])
    return Unpacked(codes.reshape(n_rows, -1), scales.reshape(n_rows, -1),
                    codebook=KVALUES_IQ4NL.astype(F32))


@describe(DEQUANTIZE, "IQ4_XS", formula="``(d * (ls - 32)) * kvalues_iq4nl[q]`` per weight",
          examples=">>> x = np.linspace(-1, 1, 256, dtype=np.float32)[None]\n"
                   ">>> float(np.abs(dequantize_iq4_xs(quantize_iq4_xs(x)) - x).max()) < 0.1\nTrue")
def dequantize_iq4_xs(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    u = unpack_iq4_xs(packed)
    n_rows = u.codes.shape[0]
    levels = u.codebook[u.codes].reshape(n_rows, -1, QK)  # (n_rows, n_sub, 32)
    return (u.scales[..., None] * levels).reshape(n_rows, -1)
