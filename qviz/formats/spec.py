"""The one table of ggml block layouts.

Every layout fact lives here: the block size and the fields of a block, each
with its byte count. The type size is the sum of the fields and the bits per
weight are derived from it (Q4_K: (2 + 2 + 12 + 128) * 8 / 256 = 4.5), never
typed by hand. Field names are ggml's (``block_q4_K`` in ggml-common.h).

Adding a GGUF type is one row here plus a numpy reference in ``formats/`` and
a kernel pair in ``kernels/numba/``; the oracle tests parametrize over
:data:`FORMATS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

QK_K = 256  # super-block size of the K-quants
QK = 32  # block size of the legacy types and IQ4_NL


@dataclass(frozen=True)
class Field:
    """One field of a block: ggml's name and its size in bytes."""

    name: str
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """A ggml block layout.

    Attributes
    ----------
    name : str
        Upstream spelling, e.g. ``"Q4_K"``.
    ggml_type : int
        The ``GGMLQuantizationType`` / ``enum ggml_type`` value.
    block_size : int
        Weights per block (32, or 256 for the K-quants).
    fields : tuple of Field
        The block's fields in storage order.
    family : str
        Which module pair implements it: ``"legacy"`` (``formats/gguf_legacy.py``,
        ``kernels/numba/legacy.py``), ``"k_min"`` (Q2_K, Q4_K, Q5_K: scales and
        mins; ``gguf_k_min.py``, ``kquants_min.py``) or ``"k_sym"`` (Q3_K, Q6_K:
        signed scales, no mins; ``gguf_k_sym.py``, ``kquants_sym.py``).
    bits : int
        Code width in bits of one weight.
    group_size : int
        Weights that share one effective scale (a block or a sub-block).
    fallback : str or None
        The type llama-quantize uses when a row is not a multiple of
        ``block_size`` (llama.cpp ``llama_tensor_get_type``).
    """

    name: str
    ggml_type: int
    block_size: int
    fields: tuple[Field, ...]
    family: str
    bits: int
    group_size: int
    fallback: str | None = None

    @property
    def type_size(self) -> int:
        """Bytes per block: the sum of the fields."""
        return sum(f.nbytes for f in self.fields)

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight, derived from the type size."""
        return self.type_size * 8 / self.block_size

    def row_bytes(self, n_cols: int) -> int:
        """Bytes of one row of ``n_cols`` weights (a multiple of ``block_size``)."""
        return n_cols // self.block_size * self.type_size


def _layout(name, ggml_type, block_size, family, bits, group_size, fallback=None, **fields):
    return Layout(name, ggml_type, block_size,
                  tuple(Field(k, v) for k, v in fields.items()),
                  family, bits, group_size, fallback)


_FP16 = 2

FORMATS: dict[str, Layout] = {
    lay.name: lay
    for lay in (
        _layout("Q4_0", 2, QK, "legacy", 4, QK, d=_FP16, qs=QK // 2),
        _layout("Q4_1", 3, QK, "legacy", 4, QK, d=_FP16, m=_FP16, qs=QK // 2),
        _layout("Q5_0", 6, QK, "legacy", 5, QK, d=_FP16, qh=4, qs=QK // 2),
        _layout("Q5_1", 7, QK, "legacy", 5, QK, d=_FP16, m=_FP16, qh=4, qs=QK // 2),
        _layout("Q8_0", 8, QK, "legacy", 8, QK, d=_FP16, qs=QK),
        _layout("IQ4_NL", 20, QK, "legacy", 4, QK, d=_FP16, qs=QK // 2),
        _layout("Q2_K", 10, QK_K, "k_min", 2, 16, "Q4_0",
                scales=QK_K // 16, qs=QK_K // 4, d=_FP16, dmin=_FP16),
        _layout("Q3_K", 11, QK_K, "k_sym", 3, 16, "Q4_0",
                hmask=QK_K // 8, qs=QK_K // 4, scales=12, d=_FP16),
        _layout("Q4_K", 12, QK_K, "k_min", 4, 32, "Q5_0",
                d=_FP16, dmin=_FP16, scales=12, qs=QK_K // 2),
        _layout("Q5_K", 13, QK_K, "k_min", 5, 32, "Q5_1",
                d=_FP16, dmin=_FP16, scales=12, qh=QK_K // 8, qs=QK_K // 2),
        _layout("Q6_K", 14, QK_K, "k_sym", 6, 16, "Q8_0",
                ql=QK_K // 2, qh=QK_K // 4, scales=QK_K // 16, d=_FP16),
    )
}


#: family -> (numpy reference module, numba kernel module), relative to qviz.
MODULES = {
    "legacy": ("formats.gguf_legacy", "kernels.numba.legacy"),
    "k_min": ("formats.gguf_k_min", "kernels.numba.kquants_min"),
    "k_sym": ("formats.gguf_k_sym", "kernels.numba.kquants_sym"),
}


def layout(name: str) -> Layout:
    """Look up a GGUF type by its upstream name.

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown GGUF type {name!r}; valid types: {', '.join(FORMATS)}") from None


class Unpacked(NamedTuple):
    """Packed GGUF rows decoded into the arrays a :class:`QuantResult` holds.

    codes : uint8, (n_rows, n_cols)            the stored integer of each weight
    scales : float32, (n_rows, n_groups)       effective step of each (sub-)block
    mins : float32, (n_rows, n_groups) or None subtracted offset (min-formats)
    codebook : float32, (n_levels,) or None    non-uniform levels (IQ4_NL)
    """

    codes: np.ndarray
    scales: np.ndarray
    mins: np.ndarray | None = None
    codebook: np.ndarray | None = None
