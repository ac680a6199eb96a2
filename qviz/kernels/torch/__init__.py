"""The torch twins of the kernels: the CUDA path (they run on CPU tensors too).

* :mod:`~qviz.kernels.torch.gguf_legacy`, :mod:`~qviz.kernels.torch.gguf_k_min`,
  :mod:`~qviz.kernels.torch.gguf_k_sym` — ``dequantize_<type>`` for the types
  whose registry record lists a ``"torch"`` twin (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K),
  bit-exact with ggml; same module and function names as the numpy references
  and the numba kernels;
* :mod:`~qviz.kernels.torch.blocks` — what they share: block fields, fp16 fields, nibbles;
* :mod:`~qviz.kernels.torch.dequant` — ``dequantize(packed, type_name)`` through the registry;
* :mod:`~qviz.kernels.torch.pack` — ``pack`` / ``unpack`` of int32 words (GPTQ and AWQ orders);
* :mod:`~qviz.kernels.torch.triton_int4` — the fused int4 dequantize-and-matmul
  (Triton; imports cleanly without it).

Nothing is imported here, so ``import qviz`` never loads torch; import the submodules.
"""
