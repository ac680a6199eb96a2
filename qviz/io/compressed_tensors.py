"""compressed-tensors checkpoints (what vLLM and transformers read) from QuantResults, and back.

A checkpoint folder holds ``model.safetensors`` and ``config.json``, whose
``"quantization_config"`` (``quant_method: "compressed-tensors"``) lists
config groups: the layers each group targets (their names here) and the
``QuantizationArgs`` of their weights (``num_bits``, ``type`` int|float,
``symmetric``, ``strategy`` tensor|channel|group|block|tensor_group,
``group_size``, ``block_structure``, ``dynamic: false``), with the group's
``format``. Every quantized ``nn.Linear`` called ``name`` (out × in, ``G``
groups) becomes a few tensors, as compressed-tensors 0.20's compressors
(``compressed_tensors.compressors``) write them:

``pack-quantized`` (``PackedQuantizationCompressor``; RTN/GPTQ/AWQ int2..int8)::

    name.weight_packed      int32 (out, ⌈in·b/32⌉)  codes as one bit stream per row: code j at
                                                   bits [j·b, (j+1)·b), LSB first; the row is
                                                   padded with 0 to 32 codes (b words)
    name.weight_scale       float (out, G) group, (out, 1) channel, (1,) tensor
    name.weight_zero_point  int32 (⌈out·b/32⌉, G)  asymmetric only: zero points, the same stream
                                                   along the OUTPUT dim (tensor strategy: int8 (1,))
    name.weight_shape       int64 (2,)             [out, in]

    The stored b-bit value is the signed code q + 2**(b-1), which is qviz's
    unsigned code; the signed zero point zp + 2**(b-1) is qviz's zero.
    4-bit word, codes k..k+7 of one row:
    bit   31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
    code   k+7    k+6    k+5    k+4    k+3    k+2   k+1    k+0

``float-quantized`` FP8 (``FloatQuantizationCompressor``; E4M3 only)::

    name.weight        float8_e4m3fn (out, in)   the fp8 bytes
    name.weight_scale  float32 (1,) tensor, (out, 1) channel, (out, G) group,
                       (⌈out/128⌉, ⌈in/128⌉) block (DeepSeek-V3's weight_scale_inv)

``nvfp4-pack-quantized`` (``NVFP4PackedCompressor``)::

    name.weight_packed        uint8 (out, in/2)          E2M1 nibbles, element 2k in bits 3..0,
                                                         2k+1 in bits 7..4 (sign in the nibble's bit 3)
    name.weight_scale         float8_e4m3fn (out, in/16) block scales
    name.weight_global_scale  float32 (1,)               decodes as x · (scale / global_scale)

``mxfp4-pack-quantized`` (nibbles as NVFP4), ``mxfp6-pack-quantized`` (E2M3
only: four 6-bit codes little-endian in three bytes, ``c0 | c1<<6 | c2<<12 |
c3<<18``), ``mxfp8-quantized`` (E4M3 bytes as FP8)::

    name.weight_packed / name.weight   the elements, as above
    name.weight_scale                  uint8 (out, in/32)   E8M0: 2**(e − 127)

Decoding by compressed-tensors (its ``decompress``): it computes in the dtype
of the scales for ``pack-quantized`` and ``float-quantized`` (float32 scales,
the default here: bit for bit :meth:`QuantResult.dequantize`; float16/bfloat16
scales: the loaded result's ``dequantize()`` rounded to that dtype), and in
bfloat16 for the FP4/FP6/MX formats (``dequantize()`` rounded to bfloat16:
exact for MX down to bfloat16's subnormals, 2**-133).

What compressed-tensors 0.20 cannot hold is refused with the fix: FP8 E5M2
and MXFP6 E3M2 elements (its FP8 is E4M3, its FP6 E2M3), act-order groups
(``actorder="group"`` and ``g_idx`` were removed; ``static_groups=True`` is its
``actorder="weight"``; older checkpoints' ``weight_g_idx`` is still read), AWQ
results that keep an input scale (no tensor holds it), groups that do not
divide the layer. The folder is written whole (:func:`qviz.io.export.write_folder`);
reading never unpickles and checks the config against every tensor's shape.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qviz import registry
from qviz.formats.minifloat import E8M0_VALUES, element_format
from qviz.io.export import check_results, check_unrotated, write_folder
from qviz.result import QuantResult

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
QUANT_METHOD = "compressed-tensors"
#: the compressed-tensors release whose layout this module writes (the config's "version")
COMPRESSED_TENSORS_VERSION = "0.20.1"
PACK = "pack-quantized"
FLOAT = "float-quantized"
NVFP4 = "nvfp4-pack-quantized"
MXFP4 = "mxfp4-pack-quantized"
MXFP6 = "mxfp6-pack-quantized"
MXFP8 = "mxfp8-quantized"
#: formats read and written here
FORMATS = (PACK, FLOAT, NVFP4, MXFP4, MXFP6, MXFP8)
#: widths ``pack-quantized`` packs (compressed-tensors' ``pack_to_int32``: 1..8; qviz codes 2..8)
PACK_BITS = (2, 3, 4, 5, 6, 7, 8)
#: scale dtypes ``export_compressed_tensors`` writes for pack-quantized and FP8 layers
SCALE_DTYPES = ("float32", "float16", "bfloat16")
#: safetensors metadata key: JSON {layer: qviz method} so a round trip keeps each result's method
METHODS_KEY = "qviz.methods"
MX_BLOCK = 32
NVFP4_BLOCK = 16
#: float methods -> (format, element format, group size the format fixes)
FLOAT_METHODS = {
    "fp8": (FLOAT, "e4m3", None),
    "mxfp8": (MXFP8, "e4m3", MX_BLOCK),
    "mxfp6_e2m3": (MXFP6, "e2m3", MX_BLOCK),
    "mxfp4": (MXFP4, "e2m1", MX_BLOCK),
    "nvfp4": (NVFP4, "e2m1", NVFP4_BLOCK),
}
#: float methods compressed-tensors has no element format for, and why
UNSUPPORTED = {
    "mxfp6_e3m2": "compressed-tensors' FP6 is E2M3 only (FP6_E2M3_DATA): quantize with 'mxfp6_e2m3'",
}
#: format -> the method a loaded layer gets when the file does not name one
DEFAULT_METHOD = {PACK: "rtn", FLOAT: "fp8", MXFP8: "mxfp8", MXFP6: "mxfp6_e2m3", MXFP4: "mxfp4",
                  NVFP4: "nvfp4"}
_FP8_TORCH = "float8_e4m3fn"


# ----------------------------------------------------------------- element formats

def element_values(fmt: str) -> np.ndarray:
    """Every code's value of element format ``fmt`` (:mod:`qviz.formats.minifloat`), float32."""
    return element_format(fmt).values


# ----------------------------------------------------------------- packing

def pack_int32(values: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors' ``pack_to_int32`` along rows: a dense bit stream per row.

    Parameters
    ----------
    values : ndarray, shape (n_rows, n), unsigned integers < 2**bits
        The stored values (qviz's unsigned codes).
    bits : int
        1..8.

    Returns
    -------
    ndarray, shape (n_rows, ceil(n·bits/32)), int32
        Value ``j`` at bits ``[j·bits, (j+1)·bits)`` of the row's stream, LSB
        first (it may straddle two words); the row is padded with zeros to a
        multiple of 32 values, then cut to the words it needs.

    Examples
    --------
    >>> hex(int(pack_int32(np.arange(8, dtype=np.uint8)[None], 4).view(np.uint32)[0, 0]))
    '0x76543210'
    """
    values = np.asarray(values)
    n_rows, n = values.shape
    n_words = -(-n * bits // 32)
    n_pad = -(-n // 32) * 32
    v = np.zeros((n_rows, n_pad), np.uint8)
    v[:, :n] = values
    if bits == 8:
        return np.ascontiguousarray(v.view("<i4")[:, :n_words])
    if bits == 4:
        b = v[:, 0::2] | (v[:, 1::2] << 4)
        return np.ascontiguousarray(b.view("<i4")[:, :n_words])
    v = v.reshape(n_rows, n_pad // 32, 32).astype(np.uint64)
    out = np.zeros((n_rows, n_pad // 32, bits), np.uint64)
    for i in range(32):
        start = i * bits
        w, off = divmod(start, 32)
        out[:, :, w] |= (v[:, :, i] << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        if off + bits > 32:
            out[:, :, w + 1] |= v[:, :, i] >> np.uint64(32 - off)
    words = out.astype(np.uint32).reshape(n_rows, -1)[:, :n_words]
    return np.ascontiguousarray(words).view("<i4")


def unpack_int32(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The inverse of :func:`pack_int32` (compressed-tensors' ``unpack_from_int32`` + offset).

    Parameters
    ----------
    words : ndarray, shape (n_rows, ceil(n·bits/32)), int32
    bits : int
    n : int
        Values per row.

    Returns
    -------
    ndarray, shape (n_rows, n), uint8
    """
    words = np.ascontiguousarray(words).view("<u4")
    n_rows, n_words = words.shape
    n_pad = -(-n // 32) * 32
    full = np.zeros((n_rows, n_pad * bits // 32), np.uint32)
    full[:, :n_words] = words
    if bits == 8:
        return np.ascontiguousarray(full.view(np.uint8)[:, :n])
    if bits == 4:
        b = full.view(np.uint8)
        out = np.empty((n_rows, b.shape[1] * 2), np.uint8)
        out[:, 0::2] = b & 0xF
        out[:, 1::2] = b >> 4
        return np.ascontiguousarray(out[:, :n])
    w = full.reshape(n_rows, n_pad // 32, bits).astype(np.uint64)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((n_rows, n_pad // 32, 32), np.uint8)
    for i in range(32):
        wi, off = divmod(i * bits, 32)
        v = w[:, :, wi] >> np.uint64(off)
        if off + bits > 32:
            v = v | (w[:, :, wi + 1] << np.uint64(32 - off))
        out[:, :, i] = v & mask
    return np.ascontiguousarray(out.reshape(n_rows, n_pad)[:, :n])


def pack_fp4(codes: np.ndarray) -> np.ndarray:
    """Two E2M1 nibbles per byte: element 2k low, 2k+1 high (``pack_fp4_to_uint8``).

    Parameters
    ----------
    codes : ndarray, shape (n_rows, n), uint8 < 16, n even

    Returns
    -------
    ndarray, shape (n_rows, n/2), uint8
    """
    codes = np.asarray(codes, np.uint8)
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))


def unpack_fp4(packed: np.ndarray) -> np.ndarray:
    """The nibbles of :func:`pack_fp4`: (n_rows, n/2) uint8 -> (n_rows, n) uint8."""
    out = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    out[:, 0::2] = packed & 0xF
    out[:, 1::2] = packed >> 4
    return out


def pack_fp6(codes: np.ndarray) -> np.ndarray:
    """Four 6-bit codes in three bytes, little-endian (``pack_fp6_to_uint8``).

    Parameters
    ----------
    codes : ndarray, shape (n_rows, n), uint8 < 64, n a multiple of 4

    Returns
    -------
    ndarray, shape (n_rows, 3n/4), uint8
        Bytes ``word & 0xFF, word >> 8 & 0xFF, word >> 16`` of
        ``word = c0 | c1 << 6 | c2 << 12 | c3 << 18``.
    """
    c = np.asarray(codes, np.uint32).reshape(codes.shape[0], -1, 4)
    word = c[..., 0] | (c[..., 1] << 6) | (c[..., 2] << 12) | (c[..., 3] << 18)
    out = np.stack([word & 0xFF, (word >> 8) & 0xFF, word >> 16], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(out.reshape(codes.shape[0], -1))


def unpack_fp6(packed: np.ndarray) -> np.ndarray:
    """The codes of :func:`pack_fp6`: (n_rows, 3n/4) uint8 -> (n_rows, n) uint8."""
    b = packed.reshape(packed.shape[0], -1, 3).astype(np.uint32)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    out = np.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], axis=-1).astype(np.uint8)
    return np.ascontiguousarray(out.reshape(packed.shape[0], -1))


def e8m0_exponents(scales: np.ndarray) -> np.ndarray | None:
    """E8M0 bytes of power-of-two float32 scales (``2**(e − 127)``), or None if one is not.

    Returns
    -------
    ndarray, shape like ``scales``, uint8, or None
    """
    s = np.asarray(scales, np.float32)
    mant, exp = np.frexp(s)
    if not (np.isfinite(s).all() and (mant == 0.5).all()):
        return None
    e = exp.astype(np.int64) - 1 + 127
    if (e < 0).any() or (e > 254).any():
        return None
    return e.astype(np.uint8)


# ----------------------------------------------------------------- export

def exporters() -> list[str]:
    """Methods whose results export here: those whose registry records list ``"compressed-tensors"``.

    Examples
    --------
    >>> {"rtn", "gptq", "awq"} <= set(exporters())
    True
    """
    return [n for n, m in registry.methods().items() if QUANT_METHOD in m.exports]


def _refuse(name: str, r: QuantResult) -> None:
    kind = (" (with mins)" if r.mins is not None else
            " (with a codebook)" if r.codebook is not None else "")
    raise ValueError(
        f"layer {name!r} is a {r.method!r} result{kind}; compressed-tensors checkpoints hold affine "
        f"integer codes (pack-quantized) and the FP8/NVFP4/MX float formats. Quantize it with one of "
        f"{', '.join(exporters())} (GGUF types are written as GGUF files: qviz.gguf.requantize)")


def _scale_tensor(name: str, scales: np.ndarray, scale_dtype: str):
    """Scales as stored, checked to be finite and in the dtype's range."""
    if scale_dtype != "float32":
        limit = 65504.0 if scale_dtype == "float16" else 3.3895313892515355e38
        if (np.abs(scales) > limit).any():
            raise ValueError(f"layer {name!r} has scales beyond {scale_dtype}'s range (±{limit:g}); "
                             f"write scale_dtype='float32'")
    return np.ascontiguousarray(scales, np.float32), scale_dtype


def _pack_layer(name: str, r: QuantResult, scale_dtype: str) -> tuple[dict, dict, str]:
    """pack-quantized tensors and weight args of an affine result."""
    method = registry.METHODS.get(r.method)
    if r.mins is not None or r.codebook is not None or method is None or QUANT_METHOD not in method.exports:
        _refuse(name, r)
    if r.bits not in PACK_BITS:
        raise ValueError(f"layer {name!r} has {r.bits}-bit codes; pack-quantized packs "
                         f"{PACK_BITS[0]}..{PACK_BITS[-1]} bits: quantize with one of those")
    if r.input_scale is not None:
        raise ValueError(
            f"layer {name!r} keeps an AWQ input scale s (its codes are those of W·diag(s)); "
            f"compressed-tensors checkpoints have no tensor for s, so the layer would decode to "
            f"Q(W·diag(s)) instead of its weight. Fold 1/s into the op before the layer and export "
            f"dataclasses.replace(result, input_scale=None) (with that op's new weights in extra=), "
            f"write it with qviz.io.export.export_awq (which stores s in a ScaledActivation), or "
            f"quantize it with 'gptq'/'rtn'")
    if r.g_idx is not None:
        raise ValueError(
            f"layer {name!r} has act-order groups (a g_idx per column); compressed-tensors 0.20 "
            f"removed actorder='group' and its weight_g_idx (its decompressor reads groups of "
            f"consecutive columns): quantize with act_order=True, static_groups=True (its "
            f"actorder='weight'), or write a GPTQ checkpoint (qviz.io.export.export_gptq)")
    n_rows, n_cols = r.shape
    bits = int(r.bits)
    scales = np.asarray(r.scales, np.float32)
    if not np.isfinite(scales).all():
        raise ValueError(f"layer {name!r} has non-finite scales; nothing finite can be written")
    if scales.shape == (1, 1) and n_rows > 1:
        strategy, group_size = "tensor", None
        stored_scales = scales.reshape(1)
    elif r.n_groups == 1:
        strategy, group_size = "channel", None
        stored_scales = np.broadcast_to(scales, (n_rows, 1))
    else:
        if n_cols % r.group_size:
            raise ValueError(f"layer {name!r} has {n_cols} input columns, not a multiple of its group "
                             f"size {r.group_size}; compressed-tensors' group strategy needs whole groups "
                             f"(choose a group size that divides {n_cols}, or -1 for per channel)")
        strategy, group_size = "group", int(r.group_size)
        stored_scales = np.broadcast_to(scales, (n_rows, r.n_groups))
    sym = r.zeros is None
    tensors = {
        f"{name}.weight_packed": (pack_int32(r.codes, bits), "int32"),
        f"{name}.weight_scale": _scale_tensor(name, stored_scales, scale_dtype),
        f"{name}.weight_shape": (np.array([n_rows, n_cols], np.int64), "int64"),
    }
    if not sym:
        z = np.broadcast_to(np.asarray(r.zeros, np.float32), stored_scales.shape if strategy != "tensor"
                            else (1, 1))
        if not np.array_equal(z, np.rint(z)) or (z < 0).any() or (z > (1 << bits) - 1).any():
            bad = z[(z != np.rint(z)) | (z < 0) | (z > (1 << bits) - 1)]
            raise ValueError(f"layer {name!r} has zero point {float(bad[0]):g}; compressed-tensors stores "
                             f"whole {bits}-bit zero points in [0, {(1 << bits) - 1}] (as signed "
                             f"zp = zero − {1 << (bits - 1)})")
        z = z.astype(np.int64)
        if strategy == "tensor":
            tensors[f"{name}.weight_zero_point"] = ((z.reshape(1) - (1 << (bits - 1))).astype(np.int8), "int8")
        else:  # packed along the output dim: the stream runs down each group's column
            tensors[f"{name}.weight_zero_point"] = (
                np.ascontiguousarray(pack_int32(np.ascontiguousarray(z.T.astype(np.uint8)), bits).T), "int32")
    args = {"num_bits": bits, "type": "int", "symmetric": sym, "group_size": group_size,
            "strategy": strategy, "dynamic": False}
    if r.info.get("act_order"):
        args["actorder"] = "weight"  # static groups: the order only guided the rounding
    return tensors, args, PACK


def _float_codes(name: str, r: QuantResult, fmt: str) -> np.ndarray:
    """The codes, checked to be ``fmt`` bit patterns of finite values (the codebook says so)."""
    want = element_values(fmt)
    cb = None if r.codebook is None else np.asarray(r.codebook, np.float32)
    if cb is None or cb.ndim != 1 or cb.shape != want.shape or not np.array_equal(cb, want, equal_nan=True):
        raise ValueError(f"layer {name!r} ({r.method!r}) does not have {fmt.upper()}'s {want.size} element "
                         f"values as its codebook, so its codes are not {fmt.upper()} bit patterns; "
                         f"quantize it with qviz.quantize(w, {r.method!r})")
    codes = np.asarray(r.codes)
    if codes.shape != tuple(r.shape) or (codes >= want.size).any():
        raise ValueError(f"layer {name!r} has codes outside 0..{want.size - 1} or of shape {codes.shape}")
    if fmt == "e4m3" and (codes & 0x7F == 0x7F).any():
        raise ValueError(f"layer {name!r} holds NaN codes (0x7F/0xFF); finite weights never give them")
    return codes.astype(np.uint8)


def _stored(r: QuantResult, *keys):
    for k in keys:
        if k in r.stored:
            return np.asarray(r.stored[k])
    return None


def _fp8_layer(name: str, r: QuantResult, scale_dtype: str) -> tuple[dict, dict, str]:
    fmt = r.info.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"layer {name!r} is FP8 {str(fmt).upper()}; compressed-tensors' FP8 is E4M3 only "
                         f"(FP8_E4M3_DATA): quantize with fmt='e4m3'")
    codes = _float_codes(name, r, "e4m3")
    n_rows, n_cols = r.shape
    scales = np.asarray(r.scales, np.float32)
    if not np.isfinite(scales).all():
        raise ValueError(f"layer {name!r} has non-finite scales; nothing finite can be written")
    args = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None}
    granularity = r.info.get("granularity")
    if granularity == "block" or (granularity is None and "block" in r.info):
        br, bc = (int(v) for v in r.info.get("block", (128, 128)))
        n_cb = -(-n_cols // bc)
        full = np.broadcast_to(scales, (n_rows, n_cb)) if scales.shape[1] == n_cb else None
        block = None if full is None else full[::br]
        if full is None or r.group_size != bc or not np.array_equal(np.repeat(block, br, axis=0)[:n_rows], full):
            raise ValueError(f"layer {name!r}: its scales (shape {scales.shape}, group size {r.group_size}) "
                             f"are not one per {br}×{bc} block; FP8 block checkpoints store one scale "
                             f"per block")
        given = _stored(r, "weight_scale", "weight_scale_inv")
        if given is not None and not np.array_equal(np.asarray(given, np.float32), block):
            raise ValueError(f"layer {name!r}: stored block scales disagree with its scales")
        stored_scales, args = block, {**args, "strategy": "block", "block_structure": [br, bc]}
    elif scales.shape == (1, 1) and n_rows > 1:
        stored_scales, args = scales.reshape(1), {**args, "strategy": "tensor"}
    elif r.n_groups == 1:
        stored_scales, args = np.broadcast_to(scales, (n_rows, 1)), {**args, "strategy": "channel"}
    else:
        if n_cols % r.group_size:
            raise ValueError(f"layer {name!r} has {n_cols} input columns, not a multiple of its group size "
                             f"{r.group_size}; compressed-tensors' group strategy needs whole groups")
        stored_scales = np.broadcast_to(scales, (n_rows, r.n_groups))
        args = {**args, "group_size": int(r.group_size), "strategy": "group"}
    args["dynamic"] = False
    tensors = {f"{name}.weight": (np.ascontiguousarray(codes), _FP8_TORCH),
               f"{name}.weight_scale": _scale_tensor(name, stored_scales, scale_dtype)}
    return tensors, args, FLOAT


def _check_block_groups(name: str, r: QuantResult, block: int, fmt_name: str) -> np.ndarray:
    n_rows, n_cols = r.shape
    if r.group_size != block or n_cols % block or r.g_idx is not None:
        raise ValueError(f"layer {name!r} has {n_cols} input columns in groups of {r.group_size}; "
                         f"{fmt_name} checkpoints hold whole blocks of {block} columns: the layer's "
                         f"input size must be a multiple of {block}")
    scales = np.broadcast_to(np.asarray(r.scales, np.float32), (n_rows, n_cols // block))
    if not np.isfinite(scales).all():
        raise ValueError(f"layer {name!r} has non-finite scales; nothing finite can be written")
    return np.ascontiguousarray(scales)


def _mx_layer(name: str, r: QuantResult, fmt_name: str, elem: str) -> tuple[dict, dict, str]:
    if r.info.get("fmt", elem) != elem:
        raise ValueError(f"layer {name!r} has {str(r.info['fmt']).upper()} elements; compressed-tensors' "
                         f"{fmt_name} holds {elem.upper()} only: quantize with fmt={elem!r}")
    codes = _float_codes(name, r, elem)
    scales = _check_block_groups(name, r, MX_BLOCK, fmt_name)
    e = e8m0_exponents(scales)
    if e is None:
        raise ValueError(f"layer {name!r} has scales that are not powers of two in [2**-127, 2**127]; "
                         f"MX block scales are E8M0")
    given = _stored(r, "scale", "weight_scale")
    if given is not None and not np.array_equal(np.asarray(given).astype(np.int64), e.astype(np.int64)):
        raise ValueError(f"layer {name!r}: stored E8M0 scales disagree with its scales")
    if fmt_name == MXFP4:
        weight = (f"{name}.weight_packed", (pack_fp4(codes), "uint8"))
    elif fmt_name == MXFP6:
        weight = (f"{name}.weight_packed", (pack_fp6(codes), "uint8"))
    else:
        weight = (f"{name}.weight", (np.ascontiguousarray(codes), _FP8_TORCH))
    tensors = dict([weight, (f"{name}.weight_scale", (e, "uint8"))])
    args = {"num_bits": element_format(elem).bits, "type": "float", "symmetric": True, "group_size": MX_BLOCK,
            "strategy": "group", "dynamic": False, "scale_dtype": "torch.uint8"}
    return tensors, args, fmt_name


def _global_scale_for(block_values: np.ndarray, scales: np.ndarray, candidates) -> np.float32 | None:
    """The float32 ``g`` among ``candidates`` with ``fl32(block / g) == scales`` everywhere."""
    for g in candidates:
        g = np.float32(g)
        if np.isfinite(g) and g != 0 and np.array_equal((block_values / g).astype(np.float32), scales):
            return g
    return None


def _nvfp4_layer(name: str, r: QuantResult) -> tuple[dict, dict, str]:
    codes = _float_codes(name, r, "e2m1")
    scales = _check_block_groups(name, r, NVFP4_BLOCK, NVFP4)
    block = _stored(r, "block_scale", "weight_scale")
    if block is None or block.shape != scales.shape or block.dtype != np.uint8:
        raise ValueError(f"layer {name!r}: an nvfp4 result carries its E4M3 block scales as uint8 bytes "
                         f"of shape {scales.shape} in stored['block_scale']; quantize it with "
                         f"qviz.quantize(w, 'nvfp4')")
    if (block & 0x7F == 0x7F).any():
        raise ValueError(f"layer {name!r} has NaN E4M3 block scales")
    block_values = element_values("e4m3")[block]
    global_ct = _stored(r, "weight_global_scale")
    per_tensor = _stored(r, "per_tensor_scale")
    if global_ct is not None:
        first = np.float32(np.asarray(global_ct, np.float32).reshape(-1)[0])
    elif per_tensor is not None:
        p = np.float32(np.asarray(per_tensor, np.float32).reshape(-1)[0])
        first = np.float32(1) / p if p != 0 else np.float32(np.inf)
    else:
        raise ValueError(f"layer {name!r}: an nvfp4 result carries its float32 per-tensor scale in "
                         f"stored['per_tensor_scale'] (or compressed-tensors' 'weight_global_scale')")
    if not (np.isfinite(first) and first > 0):
        raise ValueError(f"layer {name!r}: its compressed-tensors global scale would be {float(first):g} "
                         f"(compressed-tensors divides by it; it is the reciprocal of a per-tensor scale): "
                         f"a per-tensor scale of 0, or one below 1/float32-max (weights too small), has no "
                         f"finite global scale; this layer cannot be an NVFP4 compressed-tensors layer")
    # compressed-tensors decodes x·(scale / global_scale): find the global scale that gives the
    # result's own float32 factors (1/p, rounded, and its neighbours for a multiplying per-tensor scale)
    up = np.nextafter(first, np.float32(np.inf))
    down = np.nextafter(first, np.float32(0))
    near = [first, up, down, np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))]
    g = _global_scale_for(block_values, scales, near)
    if g is None:
        g = first
        diff = int(((block_values / g).astype(np.float32) != scales).sum())
        warnings.warn(f"layer {name!r}: compressed-tensors decodes NVFP4 as x·(scale / global_scale), and no "
                      f"float32 global scale reproduces this result's factors (scale × per-tensor scale) "
                      f"exactly: {diff} block factor(s) differ by float32 rounding before its bfloat16 "
                      f"output. For a bit-exact checkpoint quantize with qviz.quantize(w, 'nvfp4', "
                      f"convention='compressed-tensors')", stacklevel=3)
    tensors = {f"{name}.weight_packed": (pack_fp4(codes), "uint8"),
               f"{name}.weight_scale": (np.ascontiguousarray(block), _FP8_TORCH),
               f"{name}.weight_global_scale": (np.array([g], np.float32), "float32")}
    args = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": NVFP4_BLOCK,
            "strategy": "tensor_group", "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
    return tensors, args, NVFP4


def layer_tensors(name: str, r: QuantResult, scale_dtype: str = "float32") -> tuple[dict, dict, str]:
    """One layer's compressed-tensors tensors, weight ``QuantizationArgs`` and format.

    Parameters
    ----------
    name : str
        Layer name, the prefix of the tensor names.
    r : QuantResult
        An affine result ("rtn", "gptq", "awq") or one of the float formats
        ("fp8" E4M3, "nvfp4", "mxfp4", "mxfp6_e2m3", "mxfp8" E4M3).
    scale_dtype : {"float32", "float16", "bfloat16"}
        Storage of pack-quantized and FP8 scales.

    Returns
    -------
    tensors : dict
        Tensor name -> (array, dtype name): the array holds the values
        (float32 for float16/bfloat16 scales) or, for ``float8_e4m3fn``, the bytes (uint8).
    args : dict
        The weights' ``QuantizationArgs`` as compressed-tensors serializes them.
    format : str
        One of :data:`FORMATS`.

    Examples
    --------
    >>> codes = np.arange(8, dtype=np.uint8)[None].repeat(2, 0)
    >>> r = QuantResult("rtn", (2, 8), 4, 8, codes, np.ones((2, 1), np.float32))
    >>> t, args, fmt = layer_tensors("fc", r)
    >>> fmt, args["strategy"], hex(int(t["fc.weight_packed"][0].view(np.uint32)[0, 0]))
    ('pack-quantized', 'channel', '0x76543210')
    """
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype={scale_dtype!r}; valid: {', '.join(SCALE_DTYPES)}")
    if r.method in UNSUPPORTED:
        raise ValueError(f"layer {name!r} is {r.method!r}: {UNSUPPORTED[r.method]}")
    check_unrotated(name, r, "compressed-tensors")
    if r.method in FLOAT_METHODS:
        fmt_name, elem, _ = FLOAT_METHODS[r.method]
        if r.g_idx is not None or r.input_scale is not None:
            raise ValueError(f"layer {name!r} has a g_idx or an input scale; {fmt_name} has no place for them")
        if fmt_name == FLOAT:
            return _fp8_layer(name, r, scale_dtype)
        if fmt_name == NVFP4:
            return _nvfp4_layer(name, r)
        return _mx_layer(name, r, fmt_name, elem)
    return _pack_layer(name, r, scale_dtype)


def _torch_tensor(array: np.ndarray, dtype: str):
    import torch

    if dtype == _FP8_TORCH:
        return torch.from_numpy(np.array(array, np.uint8, order="C")).view(torch.float8_e4m3fn)
    if dtype in ("bfloat16", "float16"):
        return torch.from_numpy(np.array(array, np.float32, order="C")).to(getattr(torch, dtype))
    return torch.from_numpy(np.array(array, np.dtype(dtype), order="C"))  # a copy: never the caller's


def _extra_tensor(key: str, value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"extra tensor {key!r} is {arr.dtype}; safetensors holds numbers")
    return torch.from_numpy(np.array(arr, order="C"))


def quantization_config(groups: dict[str, dict], formats: set[str]) -> dict:
    """The ``quantization_config`` entry, as compressed-tensors' ``ModelCompressor.update_config`` writes it."""
    return {
        "config_groups": groups,
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "global_compression_ratio": None,
        "ignore": [],
        "kv_cache_scheme": None,
        "quant_method": QUANT_METHOD,
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": COMPRESSED_TENSORS_VERSION,
    }


def export_compressed_tensors(results: Mapping[str, QuantResult], folder: str | os.PathLike, *,
                              model_config: Mapping | None = None, overwrite: bool = False,
                              scale_dtype: str = "float32", extra: Mapping | None = None) -> Path:
    """Write a compressed-tensors checkpoint: ``model.safetensors`` and ``config.json``.

    Parameters
    ----------
    results : dict of str to QuantResult
        Layer name (``".weight"`` is dropped) -> result, shape (out, in):
        affine RTN/GPTQ/AWQ results (2..8 bits, per tensor, per channel or
        groups that divide ``in``; ``pack-quantized``), "fp8" E4M3 (tensor,
        channel, group or block scales; ``float-quantized``), "nvfp4",
        "mxfp4", "mxfp6_e2m3" and "mxfp8" E4M3 (``in`` a multiple of their
        block). Layers of different schemes become separate config groups
        (format ``"mixed-precision"`` when their formats differ), each
        targeting its layers by name.
    folder : str or path
        A new or empty folder, written whole: into a temporary folder beside
        it, then renamed into place (a failed export leaves nothing).
    model_config : dict, optional
        The model's Hugging Face config; ``config.json`` holds it with
        ``"quantization_config"`` set (without it, only that entry).
    overwrite : bool
        Replace a non-empty ``folder`` whole (a folder with sub-folders is refused).
    scale_dtype : {"float32", "float16", "bfloat16"}
        Storage of pack-quantized and FP8 scales. float32 (default) keeps the
        results' scales, so compressed-tensors decodes ``dequantize()`` bit
        for bit; float16/bfloat16 (the model's dtype, as llm-compressor writes
        them) round the scales, and compressed-tensors then decodes in that dtype.
    extra : dict of str to array, optional
        Unquantized tensors stored as given (biases, norms, embeddings).

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    ValueError
        A result compressed-tensors cannot hold, with the fix: other methods
        (GGUF types, k-means), FP8 E5M2 or MXFP6 E3M2 elements, act-order
        ``g_idx``, an AWQ input scale, groups that do not divide the layer,
        non-power-of-two MX scales, NVFP4 results without their E4M3 block
        scales (``stored``), scales beyond ``scale_dtype``'s range.

    Examples
    --------
    >>> import tempfile, qviz
    >>> w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    >>> r = qviz.quantize(w, "rtn", bits=4, group_size=32, sym=True)
    >>> folder = export_compressed_tensors({"fc": r}, tempfile.mkdtemp())
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors']
    >>> np.array_equal(load_compressed_tensors(folder)["fc"].dequantize(), r.dequantize())
    True
    """
    from safetensors.torch import save_file

    results = check_results(results)
    if model_config is not None and not isinstance(model_config, Mapping):
        raise TypeError(f"model_config must be a dict (e.g. model.config.to_dict()), "
                        f"got {type(model_config).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict {{tensor name: array}}, got {type(extra).__name__}")
    arrays, schemes = {}, {}
    for name, r in results.items():
        tensors, args, fmt = layer_tensors(name, r, scale_dtype)
        arrays.update(tensors)
        schemes.setdefault((fmt, json.dumps(args, sort_keys=True)), (fmt, args, []))[2].append(name)
    tensors = {key: _torch_tensor(a, dt) for key, (a, dt) in arrays.items()}
    for key, value in (extra or {}).items():
        if key in tensors:
            raise ValueError(f"extra tensor {key!r} has the name of a quantized tensor")
        tensors[key] = _extra_tensor(key, value)
    groups = {f"group_{i}": {"targets": layers, "weights": args, "input_activations": None,
                             "output_activations": None, "format": fmt}
              for i, (fmt, args, layers) in enumerate(schemes.values())}
    config = {**(model_config or {}),
              "quantization_config": quantization_config(groups, {fmt for fmt, _, _ in schemes.values()})}
    text = json.dumps(config, indent=2) + "\n"
    meta = {"format": "pt", METHODS_KEY: json.dumps({n: r.method for n, r in results.items()})}
    files = {WEIGHTS_FILE: lambda path: save_file(tensors, str(path), metadata=meta),
             CONFIG_FILE: lambda path: path.write_text(text)}
    return write_folder(folder, files, overwrite)


# ----------------------------------------------------------------- load

def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: not a compressed-tensors checkpoint")
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds a {type(cfg).__name__}, not a JSON object")
    qc = cfg.get("quantization_config")
    if qc is None and isinstance(cfg.get("text_config"), dict):
        qc = cfg["text_config"].get("quantization_config")
    if qc is None:
        qc = cfg.get("compression_config")
    if not isinstance(qc, dict):
        raise ValueError(f"{path} has no quantization_config object: not a quantized checkpoint")
    if qc.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{path}: quant_method is {qc.get('quant_method')!r}, not {QUANT_METHOD!r}; "
                         f"GPTQ/AWQ checkpoints are read with qviz.io.export.load_gptq / load_awq")
    if not isinstance(qc.get("config_groups"), dict) or not qc["config_groups"]:
        raise ValueError(f"{path}: quantization_config.config_groups must be a non-empty object")
    return qc


def _field(args: dict, key: str, where: str, ok, want: str):
    value = args.get(key)
    if not ok(value):
        raise ValueError(f"{where}: {key}={value!r} is not valid; {want}")
    return value


def _infer_format(w: dict) -> str | None:
    """The format compressed-tensors infers for weight args without one (``infer_module_format``)."""
    bits, typ, g = w.get("num_bits"), w.get("type"), w.get("group_size")
    if typ == "int":
        return PACK
    if typ != "float":
        return None
    if bits == 4:
        return {MX_BLOCK: MXFP4, NVFP4_BLOCK: NVFP4}.get(g)
    if bits == 6 and g == MX_BLOCK:
        return MXFP6
    if bits == 8:
        return MXFP8 if g == MX_BLOCK and str(w.get("scale_dtype")).removeprefix("torch.") == "uint8" else FLOAT
    return None


def _scheme(group: str, scheme, top_format) -> dict:
    """A config group's weights args, checked, with its format."""
    where = f"{CONFIG_FILE} config_groups.{group}"
    if not isinstance(scheme, dict):
        raise ValueError(f"{where} is a {type(scheme).__name__}; preset names (e.g. 'W4A16') are not "
                         f"read here: write the scheme out")
    targets = scheme.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{where}: targets must be a list of layer names, 're:' patterns or class names")
    w = scheme.get("weights")
    if not isinstance(w, dict):
        raise ValueError(f"{where}: weights must be an object (QuantizationArgs); this group quantizes "
                         f"no weights")
    fmt = scheme.get("format") or (top_format if top_format != "mixed-precision" else None) or _infer_format(w)
    if fmt not in FORMATS:
        raise ValueError(f"{where}: format {fmt!r} is not read here; readable: {', '.join(FORMATS)}")
    bits = _field(w, "num_bits", where, lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8,
                  "an integer 1..8")
    typ = _field(w, "type", where, lambda v: v in ("int", "float"), "'int' or 'float'")
    sym = w.get("symmetric", True)
    if not isinstance(sym, bool):
        raise ValueError(f"{where}: symmetric={sym!r} is not valid; it must be true or false")
    strategy = _field(w, "strategy", where,
                      lambda v: v in ("tensor", "channel", "group", "block", "tensor_group"),
                      "one of tensor, channel, group, block, tensor_group")
    if w.get("dynamic", False) not in (False, None):
        raise ValueError(f"{where}: dynamic={w['dynamic']!r}; weights with dynamic scales hold no scales to read")
    group_size = w.get("group_size")
    if strategy in ("group", "tensor_group"):
        _field(w, "group_size", where, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
               f"strategy {strategy!r} needs a positive group_size")
    block = None
    if strategy == "block":
        block = _field(w, "block_structure", where,
                       lambda v: isinstance(v, list) and len(v) == 2 and all(
                           isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v),
                       "strategy 'block' needs block_structure [rows, cols]")
    want = {PACK: (typ == "int", "type int"),
            FLOAT: (typ == "float" and bits == 8, "type float, num_bits 8"),
            MXFP8: (typ == "float" and bits == 8 and strategy == "group" and group_size == MX_BLOCK,
                    f"type float, num_bits 8, strategy group, group_size {MX_BLOCK}"),
            MXFP6: (typ == "float" and bits == 6 and strategy == "group" and group_size == MX_BLOCK,
                    f"type float, num_bits 6, strategy group, group_size {MX_BLOCK}"),
            MXFP4: (typ == "float" and bits == 4 and strategy == "group" and group_size == MX_BLOCK,
                    f"type float, num_bits 4, strategy group, group_size {MX_BLOCK}"),
            NVFP4: (typ == "float" and bits == 4 and group_size == NVFP4_BLOCK
                    and strategy in ("tensor_group", "group"),
                    f"type float, num_bits 4, strategy tensor_group, group_size {NVFP4_BLOCK}")}[fmt]
    if not want[0]:
        raise ValueError(f"{where}: format {fmt!r} holds weights with {want[1]}; the group says type={typ!r}, "
                         f"num_bits={bits}, strategy={strategy!r}, group_size={group_size!r}")
    if fmt != PACK and not sym:
        raise ValueError(f"{where}: asymmetric {fmt} weights are not read here (zero points of float formats)")
    if fmt == PACK and strategy not in ("tensor", "channel", "group"):
        raise ValueError(f"{where}: pack-quantized with strategy {strategy!r} is not read here")
    return {"targets": targets, "format": fmt, "bits": bits, "sym": sym, "strategy": strategy,
            "group_size": group_size, "block": block, "actorder": w.get("actorder"), "group": group}


def _matches(name: str, target: str) -> int:
    """0: no match; 3: the name; 2: a 're:' pattern; 1: a class name (every layer here is a Linear)."""
    if target == name:
        return 3
    if target.startswith("re:"):
        return 2 if re.match(target[3:], name) else 0
    return 1 if re.fullmatch(r"[A-Z]\w*", target) else 0


def _scheme_of(name: str, schemes: list[dict], ignore: list) -> dict | None:
    for ign in ignore:
        if isinstance(ign, str) and _matches(name, ign) >= 2:
            return None
    best, rank = None, 0
    for s in schemes:
        r = max((_matches(name, t) for t in s["targets"]), default=0)
        if r > rank:
            best, rank = s, r
    return best


def _read_tensors(folder: Path) -> tuple[dict, dict, dict]:
    """Tensor name -> (numpy array, dtype name), the file of each, the merged metadata."""
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors file")
    tensors, where, metadata = {}, {}, {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata.update(f.metadata() or {})
                read = {key: f.get_tensor(key) for key in f.keys()}
        except FileNotFoundError:
            raise
        except Exception as exc:  # safetensors' own error type is not an OSError
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
        for key, t in read.items():
            if key in tensors:
                raise ValueError(f"tensor {key!r} is in both {where[key]} and {path.name}")
            dtype = str(t.dtype).removeprefix("torch.")
            if t.dtype == torch.bfloat16:
                a = t.float().numpy()
            elif t.dtype.is_floating_point and t.element_size() == 1:  # the float8 kinds: their bytes
                a = t.view(torch.uint8).numpy()
            else:
                a = t.numpy()
            tensors[key], where[key] = (a, dtype), path.name
    return tensors, where, metadata


class _Layer:
    """One layer's tensors with checks that name the tensor, its file and the fix."""

    def __init__(self, name: str, tensors: dict, where: dict, scheme: dict):
        self.name, self.tensors, self.where, self.scheme = name, tensors, where, scheme

    def get(self, part: str, dtypes: tuple, shape: tuple | None = None, why: str = "") -> np.ndarray:
        key = f"{self.name}.{part}"
        s = self.scheme
        if key not in self.tensors:
            raise ValueError(f"layer {self.name!r} ({s['format']}, config group {s['group']!r}) has no {key}")
        a, dtype = self.tensors[key]
        if dtype not in dtypes or (shape is not None and a.shape != tuple(shape)):
            want = f"{' or '.join(dtypes)}{'' if shape is None else ' ' + str(tuple(shape))}"
            raise ValueError(f"{key} (in {self.where.get(key, '?')}) is {dtype} {a.shape}, expected {want}"
                             f"{why or ' (from config group ' + repr(s['group']) + ')'}")
        return a

    def has(self, part: str) -> bool:
        return f"{self.name}.{part}" in self.tensors

    def finite(self, part: str, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        if not np.isfinite(a).all():
            key = f"{self.name}.{part}"
            raise ValueError(f"{key} (in {self.where.get(key, '?')}) holds {int((~np.isfinite(a)).sum())} "
                             f"non-finite value(s): the checkpoint is damaged")
        return a


_FLOAT_SCALES = ("float32", "float16", "bfloat16")


def _shape_from(layer: _Layer) -> tuple[int, int]:
    shape = layer.get("weight_shape", ("int64", "int32"))
    if shape.shape != (2,) or (shape <= 0).any():
        raise ValueError(f"{layer.name}.weight_shape is {shape.tolist()}; expected [out, in] (two positive "
                         f"numbers): this reader takes 2-D Linear weights")
    return int(shape[0]), int(shape[1])


def _load_pack(layer: _Layer, method: str) -> QuantResult:
    s = layer.scheme
    bits, strategy = s["bits"], s["strategy"]
    n_rows, n_cols = _shape_from(layer)
    words = layer.get("weight_packed", ("int32",), (n_rows, -(-n_cols * bits // 32)),
                      f" ({n_rows}×{n_cols} {bits}-bit codes, from {layer.name}.weight_shape and num_bits)")
    codes = unpack_int32(words, bits, n_cols)
    if strategy == "group":
        g = s["group_size"]
        n_groups = -(-n_cols // g)
        shape = (n_rows, n_groups)
    else:
        g, n_groups = n_cols, 1
        shape = (1,) if strategy == "tensor" else (n_rows, 1)
    scales = layer.finite("weight_scale", layer.get("weight_scale", _FLOAT_SCALES, shape))
    scales = scales.reshape(1, 1) if strategy == "tensor" else scales
    g_idx = None
    if s["actorder"] == "group" or layer.has("weight_g_idx"):
        g_idx = layer.get("weight_g_idx", ("int32", "int64"), (n_cols,)).astype(np.int32)
        if (g_idx < 0).any() or (g_idx >= n_groups).any():
            raise ValueError(f"{layer.name}.weight_g_idx holds group ids outside [0, {n_groups})")
        if np.array_equal(g_idx, np.arange(n_cols) // g):
            g_idx = None
    zeros = None
    if not s["sym"]:
        if strategy == "tensor":
            zp = layer.get("weight_zero_point", ("int8", "int32", "int64"), (1,)).astype(np.int64)
            zeros = (zp + (1 << (bits - 1))).reshape(1, 1)
            if (zeros < 0).any() or (zeros >= 1 << bits).any():
                raise ValueError(f"{layer.name}.weight_zero_point is {int(zp[0])}, outside the signed "
                                 f"{bits}-bit range")
        else:
            zw = layer.get("weight_zero_point", ("int32",), (-(-n_rows * bits // 32), n_groups),
                           f" ({n_rows} outputs × {n_groups} groups of {bits}-bit zero points packed along "
                           f"the outputs)")
            zeros = unpack_int32(np.ascontiguousarray(zw.T), bits, n_rows).T
        zeros = zeros.astype(np.float32)
    info = {"checkpoint": QUANT_METHOD, "format": PACK, "strategy": strategy, "sym": s["sym"]}
    if s["actorder"] is not None:
        info["actorder"] = s["actorder"]
    return QuantResult(method, (n_rows, n_cols), bits, g, codes, np.ascontiguousarray(scales), zeros,
                       g_idx=g_idx, info=info)


def _fp8_codes(layer: _Layer, part: str, dtypes=(_FP8_TORCH,)) -> np.ndarray:
    a = layer.get(part, dtypes)
    if a.ndim != 2:
        raise ValueError(f"{layer.name}.{part} has shape {a.shape}; expected a 2-D (out, in) weight")
    if (a & 0x7F == 0x7F).any():
        raise ValueError(f"{layer.name}.{part} holds NaN elements (0x7F/0xFF): the checkpoint is damaged")
    return np.ascontiguousarray(a, np.uint8)


def _load_fp8(layer: _Layer, method: str) -> QuantResult:
    s = layer.scheme
    if layer.tensors.get(f"{layer.name}.weight", (None, None))[1] not in (None, _FP8_TORCH):
        dtype = layer.tensors[f"{layer.name}.weight"][1]
        raise ValueError(f"{layer.name}.weight is {dtype}; float-quantized weights here are float8_e4m3fn "
                         f"(compressed-tensors' FP8 is E4M3)")
    codes = _fp8_codes(layer, "weight")
    n_rows, n_cols = codes.shape
    info = {"checkpoint": QUANT_METHOD, "format": FLOAT, "fmt": "e4m3"}
    strategy = s["strategy"]
    if strategy == "block":
        br, bc = s["block"]
        shape = (-(-n_rows // br), -(-n_cols // bc))
        block = layer.finite("weight_scale", layer.get("weight_scale", _FLOAT_SCALES, shape))
        scales, g = np.ascontiguousarray(np.repeat(block, br, axis=0)[:n_rows]), bc
        info.update(granularity="block", block=(br, bc))
        stored = {"weight_scale": block}
    else:
        if strategy == "tensor":
            shape, g = (1,), n_cols
        elif strategy == "channel":
            shape, g = (n_rows, 1), n_cols
        elif strategy == "group":
            g = s["group_size"]
            shape = (n_rows, -(-n_cols // g))
        else:
            raise ValueError(f"{CONFIG_FILE} config_groups.{s['group']}: FP8 with strategy {strategy!r} is not read")
        stored_scale = layer.finite("weight_scale", layer.get("weight_scale", _FLOAT_SCALES, shape))
        scales = stored_scale.reshape(1, 1) if strategy == "tensor" else stored_scale
        info["granularity"] = strategy
        stored = {"weight_scale": stored_scale}
    return QuantResult(method, (n_rows, n_cols), 8, g, codes, np.ascontiguousarray(scales, np.float32),
                       codebook=element_values("e4m3"), stored=stored, info=info)


def _load_fp4_fp6(layer: _Layer, fmt: str) -> tuple[np.ndarray, str]:
    packed = layer.get("weight_packed", ("uint8",))
    if packed.ndim != 2:
        raise ValueError(f"{layer.name}.weight_packed has shape {packed.shape}; expected 2-D (out, packed in)")
    if fmt == MXFP6:
        if packed.shape[1] % 3:
            raise ValueError(f"{layer.name}.weight_packed has {packed.shape[1]} bytes per row; FP6 packs four "
                             f"codes in three bytes (a multiple of 3)")
        return unpack_fp6(packed), "e2m3"
    return unpack_fp4(packed), "e2m1"


def _load_mx(layer: _Layer, method: str) -> QuantResult:
    fmt = layer.scheme["format"]
    if fmt == MXFP8:
        codes, elem = _fp8_codes(layer, "weight"), "e4m3"
    else:
        codes, elem = _load_fp4_fp6(layer, fmt)
    n_rows, n_cols = codes.shape
    if n_cols % MX_BLOCK:
        raise ValueError(f"layer {layer.name!r} has {n_cols} input columns; {fmt} holds whole blocks of "
                         f"{MX_BLOCK}")
    e = layer.get("weight_scale", ("uint8",), (n_rows, n_cols // MX_BLOCK),
                  f" (E8M0 exponents, one per {MX_BLOCK} columns)")
    if (e == 255).any():
        raise ValueError(f"{layer.name}.weight_scale holds the E8M0 NaN (255): the checkpoint is damaged")
    info = {"checkpoint": QUANT_METHOD, "format": fmt, "fmt": elem, "granularity": "block"}
    return QuantResult(method, (n_rows, n_cols), element_format(elem).bits, MX_BLOCK, codes, E8M0_VALUES[e],
                       codebook=element_values(elem), stored={"scale": np.ascontiguousarray(e)}, info=info)


def _load_nvfp4(layer: _Layer, method: str) -> QuantResult:
    codes, _ = _load_fp4_fp6(layer, NVFP4)
    n_rows, n_cols = codes.shape
    if n_cols % NVFP4_BLOCK:
        raise ValueError(f"layer {layer.name!r} has {n_cols} input columns; NVFP4 holds whole blocks of "
                         f"{NVFP4_BLOCK}")
    block = layer.get("weight_scale", (_FP8_TORCH,), (n_rows, n_cols // NVFP4_BLOCK),
                      f" (E4M3 block scales, one per {NVFP4_BLOCK} columns)")
    if (block & 0x7F == 0x7F).any():
        raise ValueError(f"{layer.name}.weight_scale holds NaN E4M3 block scales: the checkpoint is damaged")
    gs = layer.finite("weight_global_scale", layer.get("weight_global_scale", ("float32",)))
    if gs.size != 1 or gs.reshape(-1)[0] == 0:
        raise ValueError(f"{layer.name}.weight_global_scale must be one non-zero float32, got {gs.tolist()}")
    g = np.float32(gs.reshape(-1)[0])
    scales = (element_values("e4m3")[block] / g).astype(np.float32)
    if not np.isfinite(scales).all():
        raise ValueError(f"{layer.name}: block scale / global scale overflows float32")
    info = {"checkpoint": QUANT_METHOD, "format": NVFP4, "fmt": "e2m1", "granularity": "block"}
    stored = {"weight_scale": np.ascontiguousarray(block, np.uint8),
              "weight_global_scale": np.array(g, np.float32)}
    return QuantResult(method, (n_rows, n_cols), 4, NVFP4_BLOCK, codes, scales,
                       codebook=element_values("e2m1"), stored=stored, info=info)


_LOADERS = {PACK: _load_pack, FLOAT: _load_fp8, MXFP8: _load_mx, MXFP6: _load_mx, MXFP4: _load_mx,
            NVFP4: _load_nvfp4}


def _method(name: str, fmt: str, recorded: dict) -> str:
    m = recorded.get(name)
    if isinstance(m, str) and m in registry.METHODS:
        if (fmt == PACK and QUANT_METHOD in registry.METHODS[m].exports) or \
                (fmt != PACK and FLOAT_METHODS.get(m, (None,))[0] == fmt):
            return m
    return DEFAULT_METHOD[fmt]


def load_compressed_tensors(folder: str | os.PathLike) -> dict[str, QuantResult]:
    """Read a compressed-tensors checkpoint's quantized Linear weights into QuantResults.

    Parameters
    ----------
    folder : str or path
        Holds ``config.json`` (``quantization_config``, or
        ``text_config.quantization_config``, or ``compression_config``, as
        vLLM looks them up) and ``*.safetensors``.

    Returns
    -------
    dict of str to QuantResult
        Layer name -> result, shape (out, in):

        * pack-quantized: affine codes uint8, scales float32 (the stored
          values), zeros float32 (None when symmetric), ``g_idx`` from an
          older checkpoint's ``weight_g_idx``; method "rtn" (or the method
          qviz recorded when it wrote the file);
        * float-quantized: "fp8" E4M3 codes (the bytes), the 256 E4M3 values
          as codebook, scales float32 per tensor (1, 1), channel, group or
          block (``info["block"]``, one row per weight row);
        * MX: "mxfp4"/"mxfp6_e2m3"/"mxfp8", scales ``2**(e − 127)`` and
          ``stored["scale"]`` the E8M0 bytes;
        * NVFP4: "nvfp4", scales ``fl32(e4m3 / global_scale)`` (the factor
          compressed-tensors decodes with), ``stored`` its
          ``weight_scale`` bytes and ``weight_global_scale``.

        ``dequantize()`` is compressed-tensors' decode before its cast to the
        scale's dtype (bfloat16 for FP4/FP6/MX).

    Raises
    ------
    ValueError
        A config that is not compressed-tensors', fields that are missing or
        invalid, tensors whose dtype or shape contradicts the config (the
        message names the tensor, its file and what was expected), NaN
        elements or scales, layers whose tensors no config group targets.
    FileNotFoundError
        No ``config.json`` or no ``.safetensors`` file.
    """
    folder = Path(folder)
    qc = _read_config(folder)
    top = qc.get("format")
    schemes = [_scheme(g, s, top) for g, s in qc["config_groups"].items()]
    ignore = qc.get("ignore") or []
    tensors, where, metadata = _read_tensors(folder)
    try:
        recorded = json.loads(metadata.get(METHODS_KEY, "{}"))
    except ValueError:
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    roots = {}
    for key in tensors:
        layer, _, part = key.rpartition(".")
        if part == "weight_packed" or (part == "weight" and f"{layer}.weight_scale" in tensors):
            roots[layer] = part
    out = {}
    untargeted = []
    for name in sorted(roots):
        scheme = _scheme_of(name, schemes, ignore)
        if scheme is None:
            untargeted.append(name)
            continue
        want_root = "weight" if scheme["format"] in (FLOAT, MXFP8) else "weight_packed"
        if roots[name] != want_root:
            raise ValueError(f"layer {name!r} has {name}.{roots[name]}, but its config group "
                             f"{scheme['group']!r} ({scheme['format']}) stores {name}.{want_root}")
        layer = _Layer(name, tensors, where, scheme)
        out[name] = _LOADERS[scheme["format"]](layer, _method(name, scheme["format"], recorded))
    if untargeted and not out:
        raise ValueError(f"no config group targets the quantized layers ({', '.join(untargeted[:4])} …), or "
                         f"they are ignored: the config does not describe these tensors")
    if untargeted:
        warnings.warn(f"{len(untargeted)} layer(s) with quantized tensors are ignored or untargeted by the "
                      f"config and were not read: {', '.join(untargeted[:4])}", stacklevel=2)
    if not out:
        raise ValueError(f"{folder} holds no quantized layer (no '<layer>.weight_packed' or '<layer>.weight' "
                         f"with a weight_scale)")
    return out
