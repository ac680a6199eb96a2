"""The torch twins of the kernels: the CUDA path (they run on CPU tensors too).

* :mod:`~qviz.kernels.torch.pack` — ``pack`` / ``unpack`` of int32 words (GPTQ and AWQ orders);
* :mod:`~qviz.kernels.torch.dequant` — ``dequantize_q4_0``, ``dequantize_q4_1``,
  ``dequantize_q8_0``, ``dequantize_q4_k``, ``dequantize_q6_k``, bit-exact with ggml;
* :mod:`~qviz.kernels.torch.triton_int4` — the fused int4 dequantize-and-matmul
  (Triton; imports cleanly without it).

Same function names and shapes as :mod:`qviz.kernels.numba`. Nothing is imported
here, so ``import qviz`` never loads torch; import the submodules.
"""
