"""What every ggml type module shares: block sizes, the registration helper, ``Unpacked``.

A type's layout facts are registered by the module that implements it
(:func:`register_ggml`, into :mod:`qviz.registry`): the block size and the
fields of a block, each with its byte count. The type size is the sum of the
fields and the bits per weight are derived from it (Q4_K: (2 + 2 + 12 + 128)
* 8 / 256 = 4.5), never typed by hand. Field names are ggml's (``block_q4_K``
in ggml-common.h). :data:`FORMATS` is the registry's live view of them; the
oracle tests parametrize over it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qviz.registry import TYPES, Field, QuantType, quant_type, register_type

QK_K = 256  # super-block size of the K-quants
QK = 32  # block size of the legacy types and IQ4_NL


def register_ggml(module: str, name: str, ggml_type: int, block_size: int, bits: int, group_size: int,
                  *, file_type: int | None, fallback: str | None = None,
                  twins: tuple[str, ...] = ("numba",), scale_format: str = "fp16",
                  scale_max: float = 65504.0, requires_imatrix: bool = False,
                  **fields: int) -> QuantType:
    """Register a ggml type implemented by ``module`` (a module of ``qviz.formats``).

    ``fields`` are the block's fields in storage order with their byte counts,
    ggml's names (``d=2, qs=16``); the type size and bits per weight follow.
    ``requires_imatrix`` marks the types ``ggml_quantize_requires_imatrix`` names.
    """
    return register_type(QuantType(name, ggml_type, block_size,
                                   tuple(Field(k, v) for k, v in fields.items()),
                                   bits, group_size, module, twins, fallback, file_type,
                                   requires_imatrix=requires_imatrix, scale_format=scale_format,
                                   scale_max=scale_max))


#: bytes of an fp16 field
FP16 = 2

#: name -> QuantType of every registered type (a live view of :mod:`qviz.registry`)
FORMATS = TYPES


def layout(name: str) -> QuantType:
    """Look up a quant type by name (:func:`qviz.registry.quant_type`).

    Raises
    ------
    ValueError
        For an unknown name, naming the closest registered ones.
    """
    return quant_type(name)


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
