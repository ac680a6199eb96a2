"""Torch twin of :mod:`qviz.formats.gguf_k_sym`: ``dequantize_q6_k``.

Packed rows (n_rows, row_bytes) uint8 in, float32 (n_rows, n_cols) out, on
the input's device, bit-exact with ggml's ``dequantize_row_q6_K`` on the CPU:
``d * sc`` first, then ``* (q - 32)``, each one torch op. Weight
``128h + 32k + l`` (half h, quarter k, l < 32) takes the low nibble (k = 0, 1)
or high nibble (k = 2, 3) of ``ql[64h + 32(k % 2) + l]`` and bits ``2k, 2k+1``
of ``qh[32h + l]`` (the map is drawn in the reference).
"""
from __future__ import annotations

import torch

from qviz.formats.blocks import TORCH_EXAMPLES, describe_twins
from qviz.formats.spec import QK_K
from qviz.kernels.torch.blocks import fields, fp16_from_field, rows

__all__ = ["dequantize_q6_k"]


def dequantize_q6_k(packed: torch.Tensor) -> torch.Tensor:
    f = fields("Q6_K", packed)
    ql = f["ql"].to(torch.int32).reshape(-1, 2, 2, 32)  # (n, h, k % 2, l), n = n_rows * n_blocks
    qh = f["qh"].to(torch.int32).reshape(-1, 2, 1, 32)  # (n, h, 1, l)
    lo = torch.cat([ql & 0xF, ql >> 4], dim=2)  # (n, h, k, l)
    hi = (qh >> (2 * torch.arange(4, device=packed.device, dtype=torch.int32))[:, None]) & 3
    q = ((lo | (hi << 4)) - 32).float().reshape(-1, QK_K // 16, 16)  # (n, sub-block 8h+2k+l//16, 16)
    s = (fp16_from_field(f["d"]) * f["scales"].contiguous().view(torch.int8).float()).reshape(-1, 16)  # (n, 16)
    return rows("Q6_K", packed, s[:, :, None] * q)


describe_twins(__name__, "torch", examples=TORCH_EXAMPLES)
