"""GGUF files in and out: the public names of :mod:`~qviz.io.gguf_reader` and :mod:`~qviz.io.gguf_writer`.

``qviz.gguf`` is this module. :func:`read` is the validating, memory-mapped
reader (:mod:`qviz.io.gguf_reader`: its costs, its large numeric metadata
arrays as numpy arrays, and what it does when the file changes under it are
described there); :func:`requantize` writes a copy of a file with its weight
matrices re-quantized by qviz (:mod:`qviz.io.gguf_writer`), returning a
:class:`Requantized` dict, one type for all weights or a llama-quantize
recipe (``"Q4_K_M"``); :func:`plan` shows a recipe's per-tensor types and
why, without writing (:mod:`qviz.io.gguf_recipes`). :func:`read_imatrix` and
:func:`write_imatrix` read and write llama.cpp's imatrix files, both formats
(:mod:`qviz.io.imatrix`). The reader knows nothing of the writer.

Examples
--------
>>> storage_type("Q8_0"), FILE_TYPES["Q8_0"]
(StorageType(name='Q8_0', ggml_type=8, block_size=32, type_size=34), 7)
>>> check_types({"*ffn_down*": "q6_k", "*": "Q4_K"})
{'*ffn_down*': 'Q6_K', '*': 'Q4_K'}
"""
from __future__ import annotations

from qviz.io.gguf_reader import (LIST_MAX_ITEMS, MAX_DIMS, MAX_NESTING, PLAIN_DTYPES, SUPPORTED_VERSIONS,
                                 GGUFError, GGUFFile, StorageType, TensorInfo, read, storage_type)
from qviz.io.gguf_recipes import (ALIASES, RECIPES, Recipe, RecipePlan, TensorPlan, plan,
                                  recipe)
from qviz.io.gguf_writer import (FILE_TYPES, FLOAT_FILE_TYPES, FLOAT_TYPES, NEVER_QUANTIZED, Requantized,
                                 check_types, file_type, requantize, requested_type, type_names)
from qviz.io.imatrix import (Imatrix, ImatrixError, check_imatrix_for, collect, from_vectors, read_imatrix,
                             write_imatrix)

__all__ = ["read", "requantize", "Requantized", "GGUFError", "GGUFFile", "TensorInfo", "StorageType",
           "storage_type", "PLAIN_DTYPES", "SUPPORTED_VERSIONS", "MAX_DIMS", "MAX_NESTING",
           "LIST_MAX_ITEMS", "FLOAT_TYPES",
           "FLOAT_FILE_TYPES", "FILE_TYPES", "NEVER_QUANTIZED", "check_types", "file_type",
           "requested_type", "type_names", "plan", "recipe", "Recipe", "RecipePlan", "TensorPlan",
           "RECIPES", "ALIASES", "Imatrix", "ImatrixError", "check_imatrix_for", "collect",
           "from_vectors", "read_imatrix", "write_imatrix"]
