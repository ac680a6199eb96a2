"""Quantize a whole torch model: every ``nn.Linear``, block by block for GPTQ and AWQ.

:func:`quantize_model` returns a *copy* of the model whose Linear weights are
replaced by their quantized-then-dequantized values (float, in place), and the
:class:`~qviz.result.QuantResult` of every layer, so the copy can be evaluated
(:mod:`qviz.eval`) and every layer inspected.

How each method sees the model is read from its registry record
(:func:`qviz.registry.method`):

* A method with a ``driver`` (``"gptq"``: :mod:`qviz.models.gptq_model`,
  ``"awq"``: :mod:`qviz.models.awq_model`) quantizes the model block by block
  on the calibration data (:mod:`qviz.models.runner`); the driver is called as
  ``quantize_blocks(model, method, batches, targets, options, progress=...)``.
* Any other method (``"rtn"``, quant types, ``"kmeans"``, ``"nf4"``, a method
  you registered) goes layer by layer. With ``calib`` given, its
  ``"importance"`` option (quant types' ``imatrix``, k-means' ``importance``)
  gets each layer's mean x² captured on the original model, as
  ``llama-imatrix`` does, and its ``"calibration"`` option a sample of the
  layer's inputs.

Embeddings and ``lm_head`` are left alone unless asked; methods that read
activations quantize embeddings with RTN (they have no input activations to
use).
"""
from __future__ import annotations

import copy

from qviz import registry
from qviz.io import calib as calibration
from qviz.models.runner import OUTSIDE_SAMPLES, check_weights, quantize_layer, untie_config
from qviz.result import QuantResult

__all__ = ["quantize_model"]

#: the method embeddings get when the model's method reads activations
EMBEDDING_METHOD = "rtn"


def quantize_model(model, method: str = "rtn", calib=None, include_embeddings: bool = False,
                   include_lm_head: bool = False, progress: bool = True, **options):
    """Quantize every Linear of a torch model (a copy) with one qviz method.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers model (LLaMA-like ``model.model.layers``, BERT
        ``model.encoder.layer``) or any module with ``nn.Linear`` layers.
        Never modified: the work happens on a deep copy.
    method : str
        Any registered method: ``"rtn"``, ``"gptq"``, ``"awq"``, ``"kmeans"``,
        ``"nf4"`` or a quant type (``"Q4_K"``, …); see :func:`qviz.method_names`.
        A unique case-insensitive match is accepted (``"GPTQ"``).
    calib : tokenizer or token batches, optional
        Calibration data, as for :func:`qviz.io.calib.capture`: a tokenizer
        (then the calibration part of the pydoc text, up to 128 sequences of
        512 tokens, :func:`qviz.io.calib.calibration_batches`), or token ids
        (a tensor (n, seq) or a list of tensors / dicts with ``input_ids``).
        Required by methods that need calibration (``"gptq"``, ``"awq"``).
    include_embeddings : bool
        Also quantize the ``nn.Embedding`` tables (rows = tokens); methods
        that read activations (GPTQ, AWQ) use RTN there.
    include_lm_head : bool
        Also quantize the output projection (``lm_head``); a tied one is untied.
    progress : bool
        ``tqdm.auto`` bars.
    **options
        The method's options (:func:`qviz.quantize`), e.g. ``bits=4,
        group_size=128``. A driver sets the per-layer ones itself (GPTQ's
        ``hessian``; AWQ's ``calib``, and AWQ runs where the model is, so
        no ``device``) and may take its own: GPTQ's ``true_sequential``
        (default True).

    Returns
    -------
    results : dict of str -> QuantResult
        Module name -> result; the copy's weight is its ``dequantize()``. For
        AWQ, ``info["input_scale"]`` is ``s`` and ``info["folded_into"]`` names
        the op that absorbed ``1/s``; when None, the result keeps ``s`` in its
        ``input_scale`` field (``dequantize()`` divides by it) and
        ``info["scaled_activation"]`` names the activation the layer reads,
        where a checkpoint can hold ``s`` (:func:`qviz.io.export.export_awq`
        refuses the others, naming them).
    model : torch.nn.Module
        The copy, in eval mode, with every quantized weight dequantized in place.

    Raises
    ------
    ValueError
        Unknown method, a calibrated method without ``calib``, a model without
        Linear layers, too little calibration text, parameters on the meta
        device, a weight with NaN/Inf; a method's error on one layer is raised
        with the layer's module name in front.
    TypeError
        A method that is not a string, an option the method does not take.

    Examples
    --------
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    >>> results, qnet = quantize_model(net, "rtn", bits=4, group_size=32, progress=False)
    >>> sorted(results), results["0"].bits_per_weight
    (['0', '2'], 4.625)
    """
    import torch

    if not isinstance(method, str):
        raise TypeError(f"method must be a string such as 'rtn', 'gptq', 'awq' or 'Q4_K', got {method!r}")
    m = registry.method(method)
    calibration.linear_layers(model)  # a clear error for a model without Linears
    _check_not_meta(model)
    if m.needs_calibration and calib is None:
        raise ValueError(f"{m.name!r} needs calibration data: pass calib=tokenizer (the pydoc text) or "
                         f"calib=token ids (n, seq); see qviz.io.calib.calibration_batches")
    driver = None
    if m.driver is not None and calib is not None:
        driver = registry.load(m.driver)
    else:
        m.check(options)  # before any work; the driver checks its own
    qmodel = copy.deepcopy(model).eval()
    batches = None if calib is None else calibration.resolve_data(qmodel, calib)
    targets = _targets(qmodel, include_lm_head)
    check_weights(targets)  # NaN/Inf named by layer, before any work
    if include_embeddings:
        check_weights({n: e for n, e in qmodel.named_modules() if isinstance(e, torch.nn.Embedding)})
    with torch.no_grad():
        if driver is not None:
            results = driver(qmodel, m, batches, targets, dict(options), progress=progress)
        else:
            results = _layer_by_layer(qmodel, m, batches, targets, options, progress)
        if include_embeddings:
            results.update(_embeddings(qmodel, m, options))
    if include_lm_head:
        untie_config(qmodel)
    return results, qmodel


def _check_not_meta(model) -> None:
    """A model with parameters or buffers on the meta device holds no values to quantize."""
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:
        raise ValueError(f"{len(meta)} parameter(s)/buffer(s) of the model are on the meta device and hold "
                         f"no values (e.g. {', '.join(meta[:3])}); load the weights first (from_pretrained "
                         f"without device_map='meta' or init_empty_weights, or model.to_empty(device='cpu') "
                         f"then load_state_dict)")


def _targets(model, include_lm_head: bool) -> dict:
    """The Linears to quantize, by name: all, without the output projection unless asked."""
    linears = calibration.linear_layers(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = linears.get("lm_head")
    if include_lm_head:
        return linears
    return {n: m for n, m in linears.items() if m is not head}


def _layer_by_layer(model, method, batches, targets, options, progress) -> dict[str, QuantResult]:
    """Each target alone; its importance and input sample captured on the original model."""
    from tqdm.auto import tqdm

    importance, calib = method.role("importance"), method.role("calibration")
    stats = {}
    if batches is not None and (importance or calib):
        stats = calibration.capture(model, batches, list(targets), hessian=False, progress=progress,
                                    max_samples=OUTSIDE_SAMPLES if calib else 0)
    results = {}
    for name, mod in tqdm(targets.items(), desc=method.label, disable=not progress, leave=False):
        opts = dict(options)
        if importance and name in stats:
            opts[importance] = stats[name].imatrix
        if calib and name in stats:
            opts[calib] = stats[name].sample
        results[name] = quantize_layer(mod, method, opts, name)
    return results


def _embeddings(model, method, options) -> dict[str, QuantResult]:
    """Every ``nn.Embedding`` table quantized (the model's method, or RTN for one that reads activations)."""
    import torch

    if method.takes_calibration:
        method = registry.method(EMBEDDING_METHOD)
        options = {k: v for k, v in options.items() if method.option(k) is not None}
    else:
        options = {k: v for k, v in options.items() if k != method.role("importance")}
    results = {name: quantize_layer(mod, method, options, name)
               for name, mod in model.named_modules() if isinstance(mod, torch.nn.Embedding)}
    untie_config(model)
    return results
