"""Torch dequantization by type name, through the registry.

The torch twins live beside their references under the same module names
(:mod:`qviz.kernels.torch.gguf_legacy`, :mod:`~qviz.kernels.torch.gguf_k_min`,
:mod:`~qviz.kernels.torch.gguf_k_sym`); a type has one when its record's
``twins`` include ``"torch"``, and :func:`dequantize` finds it there.
"""
from __future__ import annotations

import torch

from qviz.registry import quant_type, types

__all__ = ["dequantize", "torch_types"]


def torch_types() -> list[str]:
    """The registered types with a torch twin, in the registry's order.

    Examples
    --------
    >>> torch_types()
    ['Q4_0', 'Q4_1', 'Q8_0', 'Q4_K', 'Q6_K']
    """
    return [n for n, t in types().items() if "torch" in t.twins]


def dequantize(packed: torch.Tensor, type_name: str) -> torch.Tensor:
    """``dequantize_<type>`` of the type's torch twin.

    Parameters
    ----------
    packed : torch.Tensor, shape (n_rows, n_blocks * type_size), uint8
    type_name : str
        A registered type with a torch twin (:func:`torch_types`).

    Returns
    -------
    torch.Tensor, shape (n_rows, n_cols), float32
        On ``packed``'s device.

    Raises
    ------
    ValueError
        For an unknown type, or one without a torch twin, listing those that have one.

    Examples
    --------
    >>> dequantize(torch.zeros((1, 34), dtype=torch.uint8), "Q8_0").shape
    torch.Size([1, 32])
    """
    t = quant_type(type_name)
    if "torch" not in t.twins:
        raise ValueError(f"no torch dequantizer for {t.name!r}; types with one: "
                         f"{', '.join(torch_types())} (decode others with QuantResult.dequantize())")
    return t.function("dequantize", "torch")(packed)
