"""The seed article's quantizer API, backed by qviz's exact methods.

The article "LLM Quantization: GPTQ, AWQ and GGUF" sketches four classes:
``GPTQQuantizer``, ``AWQQuantizer``, ``GGUFQuantizer`` and ``QuantizedModel``.
This module keeps their names, constructor arguments and returned dict keys,
so code written against the article runs, but every number comes from the
real algorithm (:func:`qviz.quantize`). Where the sketch differs:

* its "GPTQ" is symmetric round-to-nearest per group, with no Hessian and no
  error feedback; here it is GPTQ (Frantar et al. 2022, Algorithm 1) when
  calibration activations are given;
* its "AWQ" multiplies weights by an importance before rounding, with no
  scale search; here it is AWQ's activation-aware scale search when
  activations are given;
* its K-quants are k-means clustering of the whole tensor; ggml's Q2_K … Q6_K
  are 256-weight super-blocks with 16/32-weight sub-blocks, each with its own
  scale (and min), chosen by ggml's weighted searches, and here they are
  byte-identical to llama.cpp;
* its memory counts only the int32 code tensors (4 bytes per weight, whatever
  ``bits`` says); here it counts the true bytes: packed codes, scales, zeros
  (``QuantResult.nbytes``) plus every parameter left unquantized.

Each ``quantize`` returns the article's keys with real values, plus a few
more (``"zeros"``, ``"result"``: the :class:`~qviz.result.QuantResult`, for
qviz's plots, metrics and checkpoint export). ``dequantize`` accepts what
``quantize`` returned: the dict itself or its pieces.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import numpy as np

from qviz.result import QuantResult

#: article constant -> ggml type name
GGUF_TYPES = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0", 16: "F16", 32: "F32"}
#: pass-through types and their storage dtype
PLAIN_TYPES = {"F16": np.float16, "F32": np.float32}


def _check_bits(bits, cls: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"{cls}(bits={bits!r}): choose an integer from 2 to 8")
    return int(bits)


def _check_group_size(group_size, cls: str) -> int:
    if (isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer))
            or not (group_size == -1 or group_size > 0)):
        raise ValueError(f"{cls}(group_size={group_size!r}): use a positive number of input "
                         f"columns per group, or -1 for one group per output row")
    return int(group_size)


def _tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.array(a))  # a private, writable copy


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class _AffineQuantizer:
    """Shared body of the GPTQ and AWQ quantizers: affine int codes per group.

    Subclasses set ``method`` and implement :meth:`quantize_result`.
    """

    method = ""

    def __init__(self, bits: int = 4, group_size: int = 128, *, sym: bool = False):
        name = type(self).__name__
        self.bits = _check_bits(bits, name)
        self.group_size = _check_group_size(group_size, name)
        self.sym = bool(sym)

    def quantize_result(self, weights, calib=None) -> QuantResult:
        """The :class:`QuantResult` of one weight (each subclass runs its method)."""
        raise NotImplementedError

    def _fallback(self, weights) -> QuantResult:
        from qviz.api import quantize

        warnings.warn(f"{type(self).__name__}: no calibration activations (calib=), so this is "
                      f"round-to-nearest with the GPTQ reference's conventions, not "
                      f"{self.method.upper()}; pass the layer's inputs to get {self.method.upper()}",
                      stacklevel=4)
        return quantize(weights, "rtn", bits=self.bits, group_size=self.group_size, sym=self.sym)

    def quantize(self, weights, calib=None) -> dict:
        """Quantize one weight; the article's keys with real values.

        Parameters
        ----------
        weights : torch.Tensor or ndarray, shape (out, in), float
            Never modified.
        calib : array_like, shape (n_samples, in), optional
            The layer's input activations. Without them the result is
            round-to-nearest (a warning says so).

        Returns
        -------
        dict
            ``"quantized"`` torch.int32 (out, in): codes 0 … 2**bits − 1;
            ``"scales"`` torch.float32 (out, n_groups); ``"zeros"``
            torch.float32 (out, n_groups) (the implied ``2**(bits-1)`` when
            symmetric); ``"bits"``; ``"group_size"``; ``"g_idx"`` torch.int32
            (in,) or None (GPTQ act_order groups); ``"result"`` QuantResult;
            for AWQ ``"input_scale"`` torch.float32 (in,), the searched ``s``.
            A weight decodes as ``scales · (quantized − zeros)``, divided by
            ``input_scale`` per input column for AWQ (whose codes are those of
            ``W·diag(s)``, the weight an AWQ checkpoint stores).
        """
        return self._as_dict(self.quantize_result(weights, calib))

    def _as_dict(self, r: QuantResult) -> dict:
        zeros = np.full_like(r.scales, r.implied_zero) if r.zeros is None else r.zeros
        d = {
            "quantized": _tensor(r.codes.astype(np.int32)),
            "scales": _tensor(r.scales),
            "zeros": _tensor(np.broadcast_to(zeros, r.scales.shape)),
            "bits": self.bits,
            "group_size": self.group_size,
            "g_idx": None if r.g_idx is None else _tensor(r.g_idx),
            "result": r,
        }
        if r.input_scale is not None:  # AWQ: the codes are those of W·diag(s)
            d["input_scale"] = _tensor(r.input_scale)
        return d

    def dequantize(self, quantized, scales=None, zeros=None, g_idx=None, input_scale=None):
        """Decode ``scales · (quantized − zeros)`` per group (÷ ``input_scale`` per column).

        Parameters
        ----------
        quantized : dict or torch.Tensor/ndarray, shape (out, in), int
            What :meth:`quantize` returned, or its ``"quantized"`` codes.
        scales : torch.Tensor/ndarray, shape (out, n_groups), optional
            Required unless ``quantized`` is the dict.
        zeros : torch.Tensor/ndarray, shape (out, n_groups), optional
            Needed for asymmetric quantizers; symmetric ones use ``2**(bits-1)``.
        g_idx : torch.Tensor/ndarray, shape (in,), int, optional
            Group of every input column (GPTQ act_order).
        input_scale : torch.Tensor/ndarray, shape (in,), optional
            AWQ's ``s``: the decoded ``Q(W·diag(s))`` is divided by it, giving
            the layer's own weight.

        Returns
        -------
        torch.Tensor, shape (out, in), float32
        """
        if isinstance(quantized, Mapping):
            d = quantized
            quantized, scales, zeros = d["quantized"], d["scales"], d.get("zeros")
            g_idx, input_scale = d.get("g_idx"), d.get("input_scale")
        if scales is None:
            raise ValueError("dequantize needs scales: pass the dict quantize returned, "
                             "or dequantize(d['quantized'], d['scales'], d['zeros'])")
        codes = _numpy(quantized)
        if codes.ndim != 2 or codes.dtype.kind not in "iu":
            raise ValueError(f"quantized must be 2-D integer codes (out, in), "
                             f"got {codes.dtype} {codes.shape}")
        if codes.min() < 0 or codes.max() >= 1 << self.bits:
            raise ValueError(f"quantized holds values outside 0 … {(1 << self.bits) - 1}, the "
                             f"{self.bits}-bit codes this quantizer writes")
        if zeros is None and not self.sym:
            raise ValueError(f"this {type(self).__name__} is asymmetric: pass zeros=d['zeros'] "
                             f"(or the whole dict quantize returned)")
        n_rows, n_cols = codes.shape
        g = n_cols if self.group_size == -1 else min(self.group_size, n_cols)
        g_idx = None if g_idx is None else _numpy(g_idx).astype(np.int32)
        scales = np.ascontiguousarray(_numpy(scales), dtype=np.float32)
        n_groups = -(-n_cols // g) if g_idx is None else int(g_idx.max()) + 1
        if scales.shape != (n_rows, n_groups):
            raise ValueError(f"scales has shape {scales.shape}; codes {codes.shape} in groups of "
                             f"{g} need ({n_rows}, {n_groups})")
        z = None if zeros is None else np.broadcast_to(_numpy(zeros).astype(np.float32), scales.shape)
        s = None
        if input_scale is not None:
            s = _numpy(input_scale).astype(np.float32).reshape(-1)
            if s.shape != (n_cols,):
                raise ValueError(f"input_scale has {s.shape[0]} values; the codes have {n_cols} columns")
        r = QuantResult(self.method, (n_rows, n_cols), self.bits, g, codes.astype(np.uint8),
                        scales, z, g_idx=g_idx, input_scale=s)
        return _tensor(r.dequantize())


class GPTQQuantizer(_AffineQuantizer):
    """GPTQ: Hessian-guided rounding with error feedback (Frantar et al. 2022, Algorithm 1).

    Parameters
    ----------
    bits : int
        2..8.
    group_size : int
        Input columns per scale/zero; -1 for per channel.
    sym : bool
        Symmetric grid (zero fixed at ``2**(bits-1)``), AutoGPTQ's default
        and the article's choice.
    act_order : bool
        Visit columns by descending Hessian diagonal (``desc_act``).
    damp : float
        Damping as a fraction of mean(diag(H)).

    Notes
    -----
    The article's ``GPTQQuantizer`` rounds each group to nearest with a
    symmetric max-abs scale: it has no Hessian and no error feedback, so it is
    RTN. This class runs :func:`qviz.quantize` ``(w, "gptq", calib=…)``.
    Without calibration it falls back to round-to-nearest with the GPTQ
    reference's grid (``qviz.quantize(w, "rtn")``), which is exactly what
    GPTQ gives with an identity Hessian (no error is spread to other columns),
    and it warns.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    >>> x = np.random.default_rng(1).standard_normal((256, 64)).astype(np.float32)
    >>> q = GPTQQuantizer(bits=4, group_size=32)
    >>> d = q.quantize(w, calib=x)
    >>> sorted(d)
    ['bits', 'g_idx', 'group_size', 'quantized', 'result', 'scales', 'zeros']
    >>> tuple(q.dequantize(d).shape)
    (8, 64)
    """

    method = "gptq"

    def __init__(self, bits: int = 4, group_size: int = 128, *, sym: bool = True,
                 act_order: bool = False, damp: float = 0.01):
        super().__init__(bits, group_size, sym=sym)
        self.act_order = bool(act_order)
        self.damp = damp

    def quantize_result(self, weights, calib=None, hessian=None) -> QuantResult:
        """The :class:`QuantResult` behind :meth:`quantize`.

        Parameters
        ----------
        weights : torch.Tensor or ndarray, shape (out, in)
        calib : array_like, shape (n_samples, in), optional
        hessian : array_like, shape (in, in), optional
            A precomputed ``(2/n)·XᵀX`` instead of ``calib``.
        """
        if calib is None and hessian is None:
            return self._fallback(weights)
        from qviz.api import quantize

        return quantize(weights, "gptq", bits=self.bits, group_size=self.group_size, sym=self.sym,
                        act_order=self.act_order, damp=self.damp, calib=calib, hessian=hessian)

    def quantize(self, weights, calib=None, hessian=None) -> dict:
        """Quantize one weight; see :meth:`_AffineQuantizer.quantize` (``hessian`` may replace ``calib``)."""
        return self._as_dict(self.quantize_result(weights, calib, hessian))


class AWQQuantizer(_AffineQuantizer):
    """AWQ: activation-aware per-channel scaling, searched, then RTN (Lin et al. 2023).

    Parameters
    ----------
    bits : int
        2..8 (AutoAWQ's checkpoints take 4).
    group_size : int
        Input columns per scale/zero; -1 for per channel.
    sym : bool
        Symmetric grid; the default is AutoAWQ's ``zero_point=True`` (asymmetric).

    Notes
    -----
    The article's ``AWQQuantizer`` multiplies |w| by a given importance and
    rounds with one max scale per group: there is no search over scaling
    factors, and activations never enter. This class runs :func:`qviz.quantize`
    ``(w, "awq", calib=X)``: AWQ searches the per-input-channel scale
    ``s = mean|x|^α`` that minimizes the layer's output error. Without
    calibration it falls back to round-to-nearest (asymmetric, the GPTQ
    reference's grid) and warns. The article's per-weight ``importance``
    argument is replaced by ``calib``, the activations AWQ really uses.
    """

    method = "awq"

    def quantize_result(self, weights, calib=None) -> QuantResult:
        """The :class:`QuantResult` behind :meth:`quantize`.

        Parameters
        ----------
        weights : torch.Tensor or ndarray, shape (out, in)
        calib : array_like, shape (n_samples, in), optional
        """
        if calib is None:
            return self._fallback(weights)
        from qviz.api import quantize

        options = {"sym": True} if self.sym else {}
        return quantize(weights, "awq", bits=self.bits, group_size=self.group_size, calib=calib,
                        **options)


def _gguf_type_name(quant_type) -> str:
    """The ggml type of an article constant (``GGUFQuantizer.Q4_K == 4``) or a type name."""
    from qviz import registry

    names = [*registry.types(), *PLAIN_TYPES]
    if isinstance(quant_type, (int, np.integer)) and not isinstance(quant_type, bool):
        name = GGUF_TYPES.get(int(quant_type))
    elif isinstance(quant_type, str):
        try:  # exact, else a unique case-insensitive match
            name = registry.resolve_name(quant_type, names, "quant type")
        except ValueError:
            name = None
    else:
        name = None
    if name is None:
        constants = ", ".join(f"{v}={k}" for k, v in GGUF_TYPES.items())
        raise ValueError(f"unknown quant_type {quant_type!r}; valid: the constants {constants} "
                         f"(GGUFQuantizer.Q4_K, …) or a type name: {', '.join(names)}")
    return name


def _centroids(r: QuantResult) -> np.ndarray:
    """Every code's value in every group: (n_rows, n_groups, n_levels) float32.

    Computed with the same float32 operations as :meth:`QuantResult.dequantize`,
    so looking codes up in it reproduces ggml's dequantization bit for bit.
    """
    s = np.broadcast_to(r.scales.astype(np.float32), (r.shape[0], r.n_groups))[..., None]
    if r.codebook is not None:
        cb = r.codebook.astype(np.float32)
        return s * (cb[None, None, :] if cb.ndim == 1 else cb[:, None, :])
    q = np.arange(1 << r.bits, dtype=np.float32)
    if r.mins is not None:
        m = np.broadcast_to(r.mins.astype(np.float32), s.shape[:2])[..., None]
        return s * q - m
    z = np.float32(r.implied_zero) if r.zeros is None else r.zeros.astype(np.float32)[..., None]
    return s * (q - z)


class GGUFQuantizer:
    """llama.cpp's GGUF types, byte-identical to ggml's ``ggml_quantize_chunk``.

    Parameters
    ----------
    quant_type : int or str
        An article constant (``GGUFQuantizer.Q4_K`` … ``Q8_0``, ``F16``,
        ``F32``) or any qviz GGUF type name (``"Q4_0"``, ``"IQ4_NL"``, …).
    fallback : bool
        For rows that are not a multiple of the type's block (K-quants: 256),
        use llama-quantize's fallback type (Q4_K → Q5_0, Q6_K → Q8_0, …), as
        llama.cpp does, instead of raising.

    Notes
    -----
    The article's K-quants are k-means clustering of the whole tensor into
    2**bits centroids. ggml's Q2_K … Q6_K are super-blocks of 256 weights
    whose 16- or 32-weight sub-blocks each get a scale (and a min for
    Q2_K/Q4_K/Q5_K) chosen by ggml's weighted error searches, the scales
    themselves quantized to 6 or 8 bits under an fp16 super-block scale.
    The article's ``"centroids"`` are therefore given per sub-block: the
    value of each code in each group, ``(out, n_groups, 2**bits)``.
    F16 and F32 pass the weights through at that precision.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    >>> d = GGUFQuantizer(GGUFQuantizer.Q4_K).quantize(w)
    >>> d["type_name"], d["bits"], tuple(d["centroids"].shape)
    ('Q4_K', 4, (4, 8, 16))
    """

    Q2_K = 2
    Q3_K = 3
    Q4_K = 4
    Q5_K = 5
    Q6_K = 6
    Q8_0 = 8
    F16 = 16
    F32 = 32

    def __init__(self, quant_type: int | str = Q4_K, *, fallback: bool = True):
        self.type_name = _gguf_type_name(quant_type)
        self.quant_type = quant_type
        self.fallback = bool(fallback)

    def quantize_result(self, weights, imatrix=None) -> QuantResult | None:
        """The :class:`QuantResult` behind :meth:`quantize` (None for F16/F32)."""
        if self.type_name in PLAIN_TYPES:
            return None
        from qviz.api import quantize

        return quantize(weights, self.type_name, imatrix=imatrix, fallback=self.fallback)

    def quantize(self, weights, imatrix=None) -> dict:
        """Quantize one weight; the article's keys with real values.

        Parameters
        ----------
        weights : torch.Tensor or ndarray, shape (out, in), float
            Never modified.
        imatrix : array_like, shape (in,), optional
            llama.cpp importance (mean squared activation per input column).

        Returns
        -------
        dict
            ``"quantized"`` torch.int32 (out, in): ggml's codes (for F16/F32
            the weights themselves, torch.float16/float32); ``"quant_type"``
            as given; ``"bits"`` of the type really used; ``"type_name"``
            (after any fallback); ``"centroids"`` torch.float32 (out, n_groups,
            2**bits) for every quantized type; ``"scale"`` torch.float32
            (out, n_blocks) for Q8_0 (the article's integer path:
            ``scale · (quantized − 128)``); ``"packed"`` torch.uint8, ggml's
            bytes; ``"result"`` QuantResult.
        """
        if self.type_name in PLAIN_TYPES:
            from qviz.arrays import as_weight

            w = as_weight(weights).astype(PLAIN_TYPES[self.type_name])
            return {"quantized": _tensor(w), "quant_type": self.quant_type,
                    "bits": w.dtype.itemsize * 8, "type_name": self.type_name}
        r = self.quantize_result(weights, imatrix)
        d = {"quantized": _tensor(r.codes.astype(np.int32)), "centroids": _tensor(_centroids(r)),
             "quant_type": self.quant_type, "bits": r.bits, "type_name": r.method,
             "packed": _tensor(r.packed), "result": r}
        if r.method == "Q8_0":
            d["scale"] = _tensor(r.scales)
        return d

    def dequantize(self, quantized, centroids=None, scale=None):
        """Decode what :meth:`quantize` returned, exactly as ggml does.

        Parameters
        ----------
        quantized : dict or torch.Tensor/ndarray, shape (out, in)
            The dict, or its ``"quantized"`` codes (F16/F32: the weights).
        centroids : torch.Tensor/ndarray, shape (out, n_groups, n_levels), optional
            Per-group code values; group of column j is ``j // (in / n_groups)``.
        scale : torch.Tensor/ndarray, shape (out, in / 32), optional
            Q8_0 block scales: ``scale · (quantized − 128)``.

        Returns
        -------
        torch.Tensor, shape (out, in), float32
        """
        if isinstance(quantized, Mapping):
            d = quantized
            quantized, centroids, scale = d["quantized"], d.get("centroids"), d.get("scale")
        q = _numpy(quantized)
        if q.ndim != 2:
            raise ValueError(f"quantized must be 2-D (out, in), got shape {q.shape}")
        if q.dtype.kind == "f":  # F16/F32 pass-through
            return _tensor(q.astype(np.float32))
        n_rows, n_cols = q.shape
        if centroids is not None:
            c = _numpy(centroids).astype(np.float32, copy=False)
            if c.ndim != 3 or c.shape[0] != n_rows or n_cols % c.shape[1] or q.min() < 0 \
                    or q.max() >= c.shape[2]:
                raise ValueError(f"centroids {c.shape} do not fit codes {q.shape}: pass the "
                                 f"(out, n_groups, n_levels) table quantize returned")
            group = np.arange(n_cols) // (n_cols // c.shape[1])  # (in,)
            return _tensor(c[np.arange(n_rows)[:, None], group[None, :], q])
        if scale is not None:
            s = np.ascontiguousarray(_numpy(scale), dtype=np.float32)
            if s.shape != (n_rows, n_cols // 32) or n_cols % 32:
                raise ValueError(f"scale {s.shape} does not fit codes {q.shape}: Q8_0 has one "
                                 f"scale per 32 weights, ({n_rows}, {n_cols // 32})")
            r = QuantResult("Q8_0", (n_rows, n_cols), 8, 32, q.astype(np.uint8), s)
            return _tensor(r.dequantize())
        raise ValueError("dequantize needs centroids (any quantized type) or scale (Q8_0): "
                         "pass the dict quantize returned")


def _linear_weights(model) -> dict[str, object]:
    """``"<module>.weight"`` -> weight Parameter of every nn.Linear in ``model``."""
    import torch

    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}


class QuantizedModel:
    """Quantize every ``nn.Linear`` weight of a model and count its true memory.

    Parameters
    ----------
    model : torch.nn.Module
        Never modified: weights are read, results are kept here.
    quantizer : {"gptq", "awq", "gguf"} or a quantizer instance
        ``"gguf"`` uses ``GGUFQuantizer(bits)``: ``bits=4`` is Q4_K, as in the article.
    bits : int
    group_size : int
        For GPTQ and AWQ.
    calib : dict of str to array_like, optional
        Input activations per Linear (``"<module>.weight"`` or module name ->
        (n_samples, in)) for GPTQ/AWQ; layers without them use round-to-nearest.

    Attributes
    ----------
    results : dict of str to QuantResult
        ``"<module>.weight"`` -> its result.
    passthrough : dict of str to ndarray
        F16/F32 "quantized" Linear weights.

    Notes
    -----
    The article quantizes every parameter of rank >= 1 (biases and norms too)
    and counts ``numel × element_size`` of the int32 code tensors, i.e. 4
    bytes per weight whatever the bit width, and no scales. Here only
    ``nn.Linear`` weights are quantized (as GPTQ and AWQ do); the memory is
    their ``QuantResult.nbytes`` (packed codes, scales, zeros/mins) plus
    ``numel × element_size`` of every other parameter. "GB" is 1024**3 bytes,
    as in the article.
    """

    def __init__(self, model, quantizer="gguf", bits: int = 4, group_size: int = 128, *,
                 calib: Mapping | None = None):
        self.model = model
        self.quantizer_name = quantizer if isinstance(quantizer, str) else type(quantizer).__name__
        self.bits = bits
        self.group_size = group_size
        if quantizer == "gptq":
            self.quantizer = GPTQQuantizer(bits, group_size)
        elif quantizer == "awq":
            self.quantizer = AWQQuantizer(bits, group_size)
        elif quantizer == "gguf":
            self.quantizer = GGUFQuantizer(bits)
        elif isinstance(quantizer, (GPTQQuantizer, AWQQuantizer, GGUFQuantizer)):
            self.quantizer = quantizer
        else:
            raise ValueError(f"unknown quantizer {quantizer!r}; use 'gptq', 'awq', 'gguf' or a "
                             f"GPTQQuantizer/AWQQuantizer/GGUFQuantizer instance")
        self.results: dict[str, QuantResult] = {}
        self.passthrough: dict[str, np.ndarray] = {}
        self._quantize_model(dict(calib or {}))

    def _quantize_model(self, calib: dict) -> None:
        weights = _linear_weights(self.model)
        if not weights:
            raise ValueError(f"{type(self.model).__name__} has no nn.Linear layers to quantize")
        unknown = sorted(set(calib) - set(weights) - {k[: -len(".weight")] for k in weights})
        if unknown:
            raise KeyError(f"calib has activations for {unknown}, which are not Linear layers "
                           f"of the model; keys are module names such as {next(iter(weights))!r}")
        gguf = isinstance(self.quantizer, GGUFQuantizer)
        for key, w in weights.items():
            if gguf and self.quantizer.type_name in PLAIN_TYPES:
                self.passthrough[key] = _numpy(self.quantizer.quantize(w)["quantized"])
                continue
            x = calib.get(key, calib.get(key[: -len(".weight")]))
            self.results[key] = (self.quantizer.quantize_result(w) if gguf
                                 else self.quantizer.quantize_result(w, calib=x))

    def _bytes(self) -> int:
        """True storage bytes: quantized Linear weights + every other parameter."""
        quantized = set(self.results) | set(self.passthrough)
        total = sum(r.nbytes for r in self.results.values())
        total += sum(a.nbytes for a in self.passthrough.values())
        for name, p in self.model.named_parameters():
            if name not in quantized:
                total += p.numel() * p.element_size()
        return int(total)

    def get_memory_usage(self) -> float:
        """Memory of the quantized model in GB (1024**3 bytes): codes, scales, zeros and the rest."""
        return self._bytes() / 1024 ** 3

    def compare_with_original(self, original_model=None) -> dict:
        """Memory against the original, and how close the quantized weights are.

        Parameters
        ----------
        original_model : torch.nn.Module, optional
            Defaults to the model this was built from (which is never modified).

        Returns
        -------
        dict
            The article's ``original_memory_gb``, ``quantized_memory_gb`` (GB,
            not bytes as the article's sketch returns), ``compression_ratio``;
            plus ``original_bytes``, ``quantized_bytes`` and ``weight_sqnr_db``
            (mean over the quantized layers).
        """
        from qviz.metrics import sqnr_db

        original = self.model if original_model is None else original_model
        original_bytes = sum(p.numel() * p.element_size() for p in original.parameters())
        quantized_bytes = self._bytes()
        weights = _linear_weights(self.model)
        sqnr = [sqnr_db(_numpy(weights[k].float()), r.dequantize()) for k, r in self.results.items()]
        return {
            "original_memory_gb": original_bytes / 1024 ** 3,
            "quantized_memory_gb": quantized_bytes / 1024 ** 3,
            "compression_ratio": original_bytes / quantized_bytes,
            "original_bytes": int(original_bytes),
            "quantized_bytes": quantized_bytes,
            "weight_sqnr_db": float(np.mean(sqnr)) if sqnr else float("inf"),
        }

    def dequantized_model(self):
        """A copy of the model whose Linear weights are the decoded quantized ones.

        Returns
        -------
        torch.nn.Module
            A deep copy (the original is untouched); run it to see the
            quantized model's outputs.
        """
        import torch

        model = copy.deepcopy(self.model)
        weights = _linear_weights(model)
        decoded = {**{k: r.dequantize() for k, r in self.results.items()}, **self.passthrough}
        with torch.no_grad():
            for key, w_hat in decoded.items():
                w = weights[key]
                w.copy_(torch.from_numpy(np.asarray(w_hat, np.float32)).to(w.dtype))
        return model
