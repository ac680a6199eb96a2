"""QuantLinear: an ``nn.Linear`` that keeps its weight quantized and decodes it on the fly.

A :class:`QuantLinear` holds exactly what a checkpoint stores, as buffers.
It holds the results of every method whose registry record says
``quantlinear`` (:func:`qviz.registry.method`): the affine int-k methods and
the quant types with a torch twin.

Affine int-k results (``"rtn"``, ``"gptq"``, ``"awq"``), ``order="gptq"``
(AutoGPTQ / GPTQModel v2, the layout of :mod:`qviz.io.export`)::

    qweight  int32 (in·bits/32, out)   codes packed along the input dim
    qzeros   int32 (G, out·bits/32)    zero points packed along the output dim (stored as is)
    scales   fp16 or fp32 (G, out)
    g_idx    int32 (in,) or None       group of each input column (act-order only)

``order="awq"`` (AutoAWQ GEMM, bits 2/4/8): ``qweight`` is (in, out·bits/32)
and ``qzeros`` (G, out·bits/32), both packed along the output dim with AWQ's
interleaved slots. A quant type's result keeps ggml's bytes instead, decoded
by the type's torch twin (``registry.quant_type(name).function("dequantize", "torch")``)::

    packed   uint8 (out, row_bytes)    ggml blocks (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)

``forward`` multiplies with the fused Triton kernel
(:func:`qviz.kernels.torch.triton_int4.matmul_int4`) for 4-bit GPTQ-order
weights on CUDA with at most 16 input rows, and otherwise dequantizes the
whole weight with torch ops (:mod:`qviz.kernels.torch`) and calls
``F.linear``: on the CPU that weight is bit-identical to
``QuantResult.dequantize()`` (with float32 scales; fp16 scales round them).

This is an inspection tool: it makes a quantized model *run* so its outputs
and memory can be measured; it is not an inference engine.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qviz import registry
from qviz.formats.pack import ORDERS  # the packing orders: GPTQ's and AWQ's
from qviz.kernels.torch import pack as tpack
from qviz.result import QuantResult

__all__ = ["QuantLinear", "memory_bytes", "memory_report", "to_quantized_modules"]


#: forward implementations: "auto" picks the fused kernel where it applies
KERNELS = ("auto", "triton", "torch")


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantized (see the module docstring).

    Build it with :meth:`from_result`; the constructor only allocates empty
    buffers of the right shapes (as checkpoint loaders do).

    Parameters
    ----------
    in_features, out_features : int
    bits : int
        Code width: 2, 3, 4 or 8 (3 only in GPTQ order).
    group_size : int
        Input columns per group (the last group may be shorter).
    bias : bool
        Whether a float32 ``bias`` buffer (out,) is held.
    order : {"gptq", "awq"}
    act_order : bool
        Hold a ``g_idx`` buffer (groups not in column order).
    scale_dtype : torch.dtype
        ``torch.float16`` (as checkpoints store scales) or ``torch.float32``.
    gguf_type : str, optional
        Hold ggml bytes of this quant type (one with a torch twin) instead of
        int-k codes.
    kernel : {"auto", "triton", "torch"}
        Forward path; ``"triton"`` raises where the fused kernel cannot run.
    input_scale : bool
        Hold an ``input_scale`` buffer (in,) float32 that divides the input
        first: AWQ quantizes ``W·diag(s)``, so the layer computes
        ``(x / s) @ Q(W·diag(s))ᵀ`` (AutoAWQ folds ``1/s`` into the previous
        layer instead; qviz keeps each layer self-contained).

    Examples
    --------
    >>> import numpy as np, qviz
    >>> w = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    >>> layer = QuantLinear.from_result(qviz.quantize(w, "rtn", bits=4, group_size=128))
    >>> layer(torch.ones(2, 256)).shape
    torch.Size([2, 16])
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group_size: int = 128, *,
                 bias: bool = False, order: str = "gptq", act_order: bool = False,
                 scale_dtype: torch.dtype = torch.float16, gguf_type: str | None = None,
                 kernel: str = "auto", input_scale: bool = False, device=None):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order={order!r}; valid orders: {', '.join(ORDERS)}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}; valid kernels: {', '.join(KERNELS)}")
        if scale_dtype not in (torch.float16, torch.float32):
            raise ValueError(f"scale_dtype={scale_dtype}; use torch.float16 or torch.float32")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bits, self.group_size, self.order = int(bits), int(group_size), order
        self.gguf_type, self.kernel = gguf_type, kernel
        if gguf_type is not None:
            t = registry.quant_type(gguf_type)
            if "torch" not in t.twins:
                raise ValueError(f"no torch dequantizer for quant type {t.name!r}; supported: "
                                 f"{', '.join(_torch_types())}")
            self.gguf_type = t.name
            row_bytes = t.row_bytes(self.in_features)
            self.register_buffer("packed", torch.zeros((self.out_features, row_bytes),
                                                       dtype=torch.uint8, device=device))
        else:
            from qviz.formats.pack import check_pack_args

            n_groups = -(-self.in_features // self.group_size)
            try:
                if order == "gptq":  # codes along the input dim, zero points along the output dim
                    qweight_shape = (check_pack_args(self.in_features, self.bits, order), self.out_features)
                else:
                    qweight_shape = (self.in_features, check_pack_args(self.out_features, self.bits, order))
                qzeros_shape = (n_groups, check_pack_args(self.out_features, self.bits, order))
            except ValueError as exc:
                raise ValueError(f"a {self.out_features}×{self.in_features} layer has no {self.bits}-bit "
                                 f"{order} layout: {exc}") from None
            self.register_buffer("qweight", torch.zeros(qweight_shape, dtype=torch.int32, device=device))
            self.register_buffer("qzeros", torch.zeros(qzeros_shape, dtype=torch.int32, device=device))
            self.register_buffer("scales", torch.zeros((n_groups, self.out_features), dtype=scale_dtype,
                                                       device=device))
            self.register_buffer("g_idx", torch.zeros(self.in_features, dtype=torch.int32, device=device)
                                 if act_order else None)
        self.register_buffer("bias", torch.zeros(self.out_features, dtype=torch.float32, device=device)
                             if bias else None)
        self.register_buffer("input_scale", torch.ones(self.in_features, dtype=torch.float32, device=device)
                             if input_scale else None)

    # ------------------------------------------------------------------ build

    @classmethod
    def from_result(cls, result: QuantResult, bias=None, *, order: str = "gptq",
                    scale_dtype: torch.dtype = torch.float16, kernel: str = "auto",
                    device=None) -> QuantLinear:
        """A QuantLinear holding ``result``'s codes (packed), scales, zeros and ``bias``.

        Parameters
        ----------
        result : QuantResult
            Of a method whose record says ``quantlinear``: ``"rtn"``,
            ``"gptq"`` or ``"awq"`` with 2/3/4/8-bit codes, or a quant type
            with a torch twin (``"Q4_K"`` …).
        bias : array_like or torch.Tensor, shape (out,), optional
            Copied (float32).
        order : {"gptq", "awq"}
            Packing of int-k codes (ignored for GGUF).
        scale_dtype : torch.dtype
            float16 (checkpoint size; rounds the scales) or float32 (exact).
        kernel : {"auto", "triton", "torch"}
        device : torch.device, optional

        Returns
        -------
        QuantLinear

        Raises
        ------
        TypeError
            ``result`` is not a QuantResult.
        ValueError
            A method or type without a packed layout here, a rotated result, zero
            points that are not whole codes, or a bias of the wrong length or on
            the meta device.
        """
        if not isinstance(result, QuantResult):
            raise TypeError(f"from_result takes a QuantResult (from qviz.quantize), got {type(result).__name__}")
        n_out, n_in = result.shape
        b = _bias(bias, n_out)
        method = registry.METHODS.get(result.method)
        if method is None or not method.quantlinear:
            held = [n for n, m in registry.methods().items() if m.quantlinear and m.quant_type is None]
            raise ValueError(f"QuantLinear holds {', '.join(held)} results and the quant types "
                             f"{', '.join(_torch_types())}; got method {result.method!r}")
        if result.rotation is not None:
            raise ValueError(f"this {result.method} result was quantized after a rotation (rotate="
                             f"{result.rotation.kind!r}), which QuantLinear does not apply to its input; "
                             f"quantize without rotate= to hold it here, or use result.dequantize()")
        if method.quant_type is not None:
            if result.packed is None:
                raise ValueError(f"this {result.method} result has no packed bytes to hold")
            layer = cls(n_in, n_out, result.bits, result.group_size, bias=b is not None,
                        gguf_type=result.method, kernel=kernel)
            layer.packed.copy_(torch.from_numpy(np.array(result.packed)))
        else:
            if result.codebook is not None or result.mins is not None:
                raise ValueError(f"a {result.method!r} result with a codebook or mins has no int-k layout")
            s_in = result.input_scale
            layer = cls(n_in, n_out, result.bits, result.group_size, bias=b is not None, order=order,
                        act_order=result.g_idx is not None, scale_dtype=scale_dtype, kernel=kernel,
                        input_scale=s_in is not None)
            if s_in is not None:
                layer.input_scale.copy_(torch.from_numpy(np.array(s_in, dtype=np.float32).reshape(n_in)))
            codes, scales, zeros = _affine_arrays(result)  # (out, in), (G, out), (G, out)
            codes_t = torch.from_numpy(codes)
            if order == "gptq":  # along the input dim: pack rows of (out, in), then transpose
                layer.qweight.copy_(tpack.pack(codes_t, result.bits, order).T)
            else:  # along the output dim: pack rows of (in, out)
                layer.qweight.copy_(tpack.pack(codes_t.T.contiguous(), result.bits, order))
            layer.qzeros.copy_(tpack.pack(torch.from_numpy(zeros), result.bits, order))
            layer.scales.copy_(torch.from_numpy(np.array(scales)))
            if result.g_idx is not None:
                layer.g_idx.copy_(torch.from_numpy(result.g_idx.astype(np.int32)))
        if b is not None:
            layer.bias.copy_(b)
        return layer.to(device) if device is not None else layer

    # ------------------------------------------------------------------ decode

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The stored weight decoded, shape (out, in), on the buffers' device.

        Decoded in float32 as ``scale * (code - zero)`` (or ggml's rule for
        GGUF bytes), then cast to ``dtype``: ``QuantResult.dequantize()`` of
        the result it was built from. (An AWQ layer multiplies it with
        ``x / input_scale``.)
        """
        if self.gguf_type is not None:
            w = registry.quant_type(self.gguf_type).function("dequantize", "torch")(self.packed)
        else:
            if self.order == "gptq":
                codes = tpack.unpack(self.qweight.T.contiguous(), self.bits, "gptq")  # (out, in)
            else:
                codes = tpack.unpack(self.qweight, self.bits, "awq").T  # (in, out) -> (out, in)
            zeros = tpack.unpack(self.qzeros, self.bits, self.order)  # (G, out)
            g = self._groups()  # (in,) int64
            s = self.scales.float()[g].T  # (out, in)
            z = zeros[g].T.float()
            w = s * (codes.float() - z)
        return w.to(dtype).contiguous()

    def _groups(self) -> torch.Tensor:
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.in_features, device=self.qweight.device) // self.group_size

    def _fused_ok(self, x2: torch.Tensor) -> bool:
        return (self.gguf_type is None and self.bits == 4 and self.order == "gptq" and x2.is_cuda
                and 1 <= x2.shape[0] <= 16 and x2.dtype in (torch.float16, torch.bfloat16, torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + bias`` with ``W`` decoded on the fly; ``x`` (…, in) -> (…, out), dtype of ``x``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features; this layer takes {self.in_features}")
        x2 = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            x2 = (x2.float() / self.input_scale).to(x.dtype)
        fused = _fused_kernel() if self.kernel != "torch" and self._fused_ok(x2) else None
        if self.kernel == "triton" and fused is None:
            raise RuntimeError("kernel='triton' needs a CUDA input of 1-16 rows, 4-bit GPTQ-order "
                               "weights and Triton installed; use kernel='auto' to fall back to torch")
        if fused is not None:  # buffers are contiguous and shaped by __init__: skip the checks
            y = fused(x2.contiguous(), self.qweight, self.scales, self.qzeros, self.group_size, self.g_idx)
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
        else:
            y = F.linear(x2, self.dequantized_weight(x.dtype),
                         None if self.bias is None else self.bias.to(x.dtype))
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = self.gguf_type or f"int{self.bits} g{self.group_size} {self.order}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}, " \
               f"bias={self.bias is not None}"


@functools.lru_cache(maxsize=1)
def _fused_kernel():
    """The fused int4 matmul where Triton and CUDA are present, else None (decided once)."""
    from qviz.kernels.torch import triton_int4

    return triton_int4.matmul_int4_unchecked if triton_int4.available() else None


def _torch_types() -> list[str]:
    """The quant types with a torch twin (their bytes decode on any torch device)."""
    return [n for n, t in registry.types().items() if "torch" in t.twins]


def _bias(bias, n_out: int) -> torch.Tensor | None:
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor) and bias.is_meta:
        raise ValueError("bias is on the meta device and holds no values; load the model's weights "
                         "before building QuantLinear layers (or pass bias=None)")
    b = bias.detach().float().cpu() if isinstance(bias, torch.Tensor) else \
        torch.from_numpy(np.asarray(bias, dtype=np.float32))
    if b.shape != (n_out,):
        raise ValueError(f"bias has shape {tuple(b.shape)}; the layer has {n_out} outputs")
    return b


def _affine_arrays(result: QuantResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes (out, in) uint8, scales and zeros (G, out) float32 / uint8 of an affine result."""
    n_out, _ = result.shape
    n_groups = result.n_groups
    scales = np.broadcast_to(result.scales.astype(np.float32), (n_out, n_groups))
    if result.zeros is None:  # symmetric: the implied zero
        zeros = np.full((n_out, n_groups), 1 << (result.bits - 1), dtype=np.float32)
    else:
        zeros = np.broadcast_to(result.zeros.astype(np.float32), (n_out, n_groups))
        if not (np.all(zeros == np.round(zeros)) and zeros.min() >= 0 and zeros.max() < 1 << result.bits):
            raise ValueError(f"{result.method} zero points must be whole codes in 0..{(1 << result.bits) - 1} "
                             f"to be packed; got values from {zeros.min():g} to {zeros.max():g}")
    return (np.ascontiguousarray(result.codes, dtype=np.uint8), np.ascontiguousarray(scales.T),
            np.ascontiguousarray(zeros.T.astype(np.uint8)))


# ---------------------------------------------------------------------- models

def _module_name(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


def to_quantized_modules(model: nn.Module, results: Mapping[str, QuantResult], *, strict: bool = True,
                         order: str = "gptq", scale_dtype: torch.dtype = torch.float16,
                         kernel: str = "auto") -> nn.Module:
    """A copy of ``model`` with each ``nn.Linear`` named in ``results`` replaced by a QuantLinear.

    Parameters
    ----------
    model : nn.Module
        Never modified. The replaced layers' weights are not copied.
    results : mapping of str to QuantResult
        Module name (as ``model.named_modules()`` spells it; a trailing
        ``".weight"`` is accepted) -> the quantized weight of that layer.
    strict : bool
        Raise when some ``nn.Linear`` of the model has no result.
    order, scale_dtype, kernel
        Passed to :meth:`QuantLinear.from_result`.

    Returns
    -------
    nn.Module
        The copy, on the device of each replaced layer's weight.

    Raises
    ------
    ValueError
        Names that are not ``nn.Linear`` modules of ``model``, results whose
        shape differs from the layer's weight, layers on the meta device, or
        (``strict``) layers left out.
    """
    wanted = {_module_name(k): v for k, v in results.items()}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = sorted(set(wanted) - set(linears))
    if unknown:
        raise ValueError(f"{len(unknown)} result name(s) are not nn.Linear modules of the model: "
                         f"{', '.join(unknown[:8])}{' …' if len(unknown) > 8 else ''}; "
                         f"its Linear layers are e.g. {', '.join(list(linears)[:4])}")
    missing = [n for n in linears if n not in wanted]
    if strict and missing:
        raise ValueError(f"{len(missing)} nn.Linear layer(s) have no result: {', '.join(missing)}; "
                         f"quantize them too or pass strict=False to keep them in float")
    for name, res in wanted.items():
        lin = linears[name]
        if lin.weight.is_meta:
            raise ValueError(f"layer {name!r} is on the meta device: its QuantLinear would hold no values; "
                             f"load the model's weights first (e.g. model.to_empty(device='cpu') then "
                             f"load_state_dict)")
        if tuple(res.shape) != tuple(lin.weight.shape):
            raise ValueError(f"result for {name!r} has shape {tuple(res.shape)} but the layer's weight "
                             f"is {tuple(lin.weight.shape)} (out × in)")
    # copy everything except the weights that are about to be replaced
    memo = {id(linears[name].weight): None for name in wanted}
    new = copy.deepcopy(model, memo)
    for name, res in wanted.items():
        lin = linears[name]
        q = QuantLinear.from_result(res, lin.bias, order=order, scale_dtype=scale_dtype, kernel=kernel)
        q = q.to(lin.weight.device)
        if lin.bias is not None:
            q.bias = q.bias.to(lin.bias.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent_name) if parent_name else new, child, q)
    return new


def memory_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers of ``model``, each storage counted once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def memory_report(before: nn.Module, after: nn.Module) -> dict:
    """Parameter + buffer bytes of two models, e.g. the original and :func:`to_quantized_modules`'s copy.

    Returns
    -------
    dict
        ``before_bytes``, ``after_bytes``, ``saved_bytes`` and ``ratio`` (after / before).
    """
    b, a = memory_bytes(before), memory_bytes(after)
    return {"before_bytes": b, "after_bytes": a, "saved_bytes": b - a, "ratio": a / b if b else float("nan")}
