"""llama-quantize in a process of its own, for the recipe end-to-end tests.

``python tests/llama_quantize_child.py JOB.json`` runs llama.cpp's
``llama_model_quantize`` (llama-cpp-python's binding) once, with the options
in the JSON file: ``src``, ``dst``, ``ftype`` (a ``LlamaFileType`` id),
``nthread``, ``pure``, ``allow_requantize``, ``quantize_output_tensor``,
``output_tensor_type`` / ``token_embedding_type`` (ggml type ids or null),
``tt_overrides`` (``[[pattern, ggml type id], ...]``) and ``imatrix`` (the
path of an ``.npz`` of tensor name -> float32 vector, or null). It prints one
JSON line: ``{"rc": <return code>}``. llama.cpp runs in a child because it
crashed in long test processes here (see ``tests/llama_child.py``).
"""
from __future__ import annotations

import ctypes
import json
import sys

import numpy as np


def quantize(job: dict) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = job.get("nthread", 1)
    params.ftype = job["ftype"]
    params.pure = job.get("pure", False)
    params.allow_requantize = job.get("allow_requantize", False)
    params.quantize_output_tensor = job.get("quantize_output_tensor", True)
    if job.get("output_tensor_type") is not None:
        params.output_tensor_type = job["output_tensor_type"]
    if job.get("token_embedding_type") is not None:
        params.token_embedding_type = job["token_embedding_type"]
    keep = []  # the buffers the C structs point into
    if job.get("tt_overrides"):
        pairs = job["tt_overrides"]
        arr = (llama_cpp.llama_model_tensor_override * (len(pairs) + 1))()
        for i, (pattern, type_id) in enumerate(pairs):
            arr[i].pattern = pattern.encode()
            arr[i].type = type_id
        arr[len(pairs)].pattern = None
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(arr)
    if job.get("imatrix"):
        data = dict(np.load(job["imatrix"]))
        arr = (llama_cpp.llama_model_imatrix_data * (len(data) + 1))()
        for i, (name, v) in enumerate(data.items()):
            v = np.ascontiguousarray(v, dtype=np.float32)
            keep.append(v)
            arr[i].name = name.encode()
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(data)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    return llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), ctypes.byref(params))


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        rc = quantize(json.load(fh))
    print(json.dumps({"rc": int(rc)}))
