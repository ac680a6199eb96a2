"""Torch twin of :mod:`qviz.formats.gguf_k_min`: ``dequantize_q4_k``.

Packed rows (n_rows, row_bytes) uint8 in, float32 (n_rows, n_cols) out, on
the input's device, bit-exact with ggml's ``dequantize_row_q4_K`` on the CPU:
``d * sc`` first, then ``* q``, then ``- dmin * m``, each one torch op, so
nothing is fused into an FMA. The bit maps are drawn in the reference.
"""
from __future__ import annotations

import torch

from qviz.formats.blocks import TORCH_EXAMPLES, describe_twins
from qviz.kernels.torch.blocks import fields, fp16_from_field, rows

__all__ = ["dequantize_q4_k", "scale_min_k4"]


def scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's ``get_scale_min_k4`` for all eight sub-blocks at once.

    ``scales`` (..., 12) uint8 -> sc, m (..., 8) int32, each 0..63 (bit map in
    :func:`qviz.formats.gguf_k_min.unpack_scale_min_k4`): sub-blocks 0..3 keep
    their low 6 bits in bytes 0..3 (sc) and 4..7 (m); sub-blocks 4..7 take the
    nibbles of bytes 8..11 as low bits and the top 2 bits of bytes 0..7.
    """
    s = scales.to(torch.int32)
    lo, mid, hi = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], dim=-1)
    m = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=-1)
    return sc, m


def dequantize_q4_k(packed: torch.Tensor) -> torch.Tensor:
    f = fields("Q4_K", packed)
    sc, m = scale_min_k4(f["scales"])
    d_sub = (fp16_from_field(f["d"]) * sc.float()).reshape(-1, 8)  # (n, 8), n = n_rows * n_blocks
    min_sub = (fp16_from_field(f["dmin"]) * m.float()).reshape(-1, 8)
    q = f["qs"].to(torch.int32).reshape(-1, 4, 1, 32)  # (n, chunk c, 1, l): bytes 32c + l
    codes = torch.cat([q & 0xF, q >> 4], dim=2).reshape(-1, 8, 32)  # sub-block 2c: low, 2c+1: high
    return rows("Q4_K", packed, d_sub[:, :, None] * codes.float() - min_sub[:, :, None])


describe_twins(__name__, "torch", examples=TORCH_EXAMPLES)
