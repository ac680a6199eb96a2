"""Torch twins of :mod:`qviz.formats.gguf_legacy`: ``dequantize_q4_0``, ``dequantize_q4_1``, ``dequantize_q8_0``.

Packed rows (n_rows, row_bytes) uint8 in, float32 (n_rows, n_cols) out, on
the input's device, bit-exact with ggml's ``dequantize_row_*`` on the CPU:
every product is one torch op in ggml's order, so nothing is fused into an
FMA. The bit maps are drawn in the reference.
"""
from __future__ import annotations

import torch

from qviz.formats.blocks import TORCH_EXAMPLES, describe_twins
from qviz.kernels.torch.blocks import fields, fp16_from_field, nibbles, rows

__all__ = ["dequantize_q4_0", "dequantize_q4_1", "dequantize_q8_0"]


def dequantize_q4_0(packed: torch.Tensor) -> torch.Tensor:
    f = fields("Q4_0", packed)
    return rows("Q4_0", packed, (nibbles(f["qs"]) - 8).float() * fp16_from_field(f["d"]))


def dequantize_q4_1(packed: torch.Tensor) -> torch.Tensor:
    f = fields("Q4_1", packed)
    return rows("Q4_1", packed, nibbles(f["qs"]).float() * fp16_from_field(f["d"]) + fp16_from_field(f["m"]))


def dequantize_q8_0(packed: torch.Tensor) -> torch.Tensor:
    f = fields("Q8_0", packed)
    q = f["qs"].contiguous().view(torch.int8)  # the bytes read as int8, (n_rows, n_blocks, 32)
    return rows("Q8_0", packed, q.float() * fp16_from_field(f["d"]))


describe_twins(__name__, "torch", examples=TORCH_EXAMPLES)
