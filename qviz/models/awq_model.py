"""AWQ over a whole model, block by block, as llm-awq's ``run_awq`` and AutoAWQ's ``AwqQuantizer``.

Per block, the inputs of every Linear are recorded on the float block (whose
float output feeds the next block, as both references do); the scales of each
group of Linears sharing an input (:func:`qviz.models.architectures.scale_groups`)
are searched (:func:`qviz.algorithms.awq.search_scale`, the loss measured
through the module that holds them) and folded into the preceding op; then
each Linear's clip is searched (not for query/key,
:data:`qviz.models.architectures.NO_CLIP`) and the weight rounded on AWQ's
grid. Linears outside the blocks keep their scale (``input_scale``).

The AWQ method record names :func:`quantize_blocks` as its driver;
:func:`qviz.models.quantize_model.quantize_model` calls it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from qviz.models.architectures import NO_CLIP, scale_groups
from qviz.models.runner import (Block, driver_options, first_tensor, input_of, quantize_layer,
                                run_blocks, set_weight, with_input)
from qviz.registry import Method
from qviz.result import QuantResult

__all__ = ["quantize_blocks"]


def quantize_blocks(model, method: Method, batches, targets: dict, options: dict, *,
                    progress: bool = True) -> dict[str, QuantResult]:
    """AWQ block by block, a :class:`~qviz.models.runner.Driver` (parameters there).

    Scales are folded into the model's norms and Linears where the
    architecture map allows (:mod:`qviz.models.architectures`). ``method`` is
    the ``"awq"`` record: its ``calib`` option receives the inputs of Linears
    outside the blocks. ``options`` are AWQ's ``bits``, ``group_size``,
    ``sym``, ``duo_scaling``, ``clip`` (``calib`` and ``device`` are not
    taken: AWQ runs where the model is).

    Returns
    -------
    dict of str to QuantResult
        Module name -> result. ``info["input_scale"]`` is ``s`` and
        ``info["folded_into"]`` names the op that absorbed ``1/s``; when None,
        the result keeps ``s`` in its ``input_scale`` field
        (``dequantize()`` divides by it), and ``info["scaled_activation"]``
        names the activation module the layer reads where the architecture
        map knows one (where a checkpoint can hold ``s``,
        :func:`qviz.io.export.export_awq`), else None.
    """
    from qviz.algorithms import awq

    opts, _ = driver_options(method, options, supplied=(method.role("calibration"), "device"))
    given = {**{o.name: o.default for o in method.options}, **opts}
    g = given["group_size"]
    fmt = awq.AWQFormat(given["bits"], 1 << 30 if g == -1 else g,  # per channel: longer than any row
                        zero_point=not given["sym"])
    results: dict[str, QuantResult] = {}

    def quantize_block(block: Block, linears: dict):
        return _quantize_block(block, linears, fmt, given["duo_scaling"], given["clip"], results)

    def quantize_outside(name, module, stats):
        r = quantize_layer(module, method, dict(opts, calib=stats.sample), name)  # s stays: decode divides by it
        results[name] = dataclasses.replace(r, info={**r.info, "folded_into": None,
                                                     "scaled_activation": None})

    run_blocks(model, batches, targets, quantize_block, quantize_outside,
               desc=f"{method.label} blocks", progress=progress)
    return results


def _inspect_forward(module, linears, calls, shapes):
    """``forward(x, ws)`` for the scale search: ``module`` run with trial weights ``ws``.

    ``x`` (n_tokens, n_cols) is the recorded input of every call, flattened;
    each call gets its own slice back in its shape.
    """
    import torch

    sizes = [int(np.prod(s[:-1])) for s in shapes]

    def forward(x, ws):
        saved = [lin.weight.data for lin in linears]
        try:
            for lin, w in zip(linears, ws):
                lin.weight.data = w.to(lin.weight.dtype)
            outs = []
            for call, part, shape in zip(calls, torch.split(x, sizes), shapes):
                args, kwargs = with_input(call, part.reshape(shape))
                outs.append(first_tensor(module(*args, **kwargs)).reshape(-1).float())
            return torch.cat(outs)
        finally:
            for lin, w in zip(linears, saved):
                lin.weight.data = w

    return forward


def _quantize_block(runner: Block, linears: dict, fmt, duo_scaling: bool, clip: bool, results: dict):
    """Scale search, folding, clip search and rounding of one block (see the module notes).

    Returns the float block's outputs (the next block's inputs).
    """
    import torch
    from qviz.algorithms import awq

    block = runner.block
    local = {n[len(runner.prefix):]: m for n, m in linears.items()}  # name inside the block
    modules = dict(block.named_modules())
    groups = scale_groups(block, local)
    inputs = {n: [] for n in local}  # full-shape inputs per call
    calls = {g.inspect: [] for g in groups}

    def keep_input(name):
        return lambda args, kwargs: inputs[name].append(input_of((args, kwargs)).detach())

    def keep_call(name):
        return lambda args, kwargs: calls[name].append((args, kwargs))

    pre_hooks = {}
    for n in local:
        pre_hooks.setdefault(modules[n], []).append(keep_input(n))
    for name in calls:
        pre_hooks.setdefault(modules[name], []).append(keep_call(name))
    outs = runner.run(pre_hooks=pre_hooks)  # the float block: its output feeds the next block

    scales = {}
    for g in groups:
        ws = [modules[n].weight for n in g.linears]
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[g.linears[0]]]).float()
        shapes = [tuple(t.shape) for t in inputs[g.linears[0]]]
        fwd = _inspect_forward(modules[g.inspect], [modules[n] for n in g.linears],
                               calls[g.inspect], shapes)
        scales[g] = awq.search_scale(x, ws, fmt, forward=fwd, duo_scaling=duo_scaling,
                                     device=x.device)
    input_scale, folded, acts = {}, {}, {}
    for g, s in scales.items():
        if g.prev is not None:
            _fold(modules[g.prev], s)
        for n in g.linears:
            mod = modules[n]
            mod.weight.data = mod.weight.data * s.view(1, -1).to(mod.weight.dtype)
            input_scale[n], folded[n] = s, g.prev
            acts[n] = runner.prefix + g.act if g.prev is None and g.act is not None else None
    for n, mod in local.items():
        s = input_scale[n]
        W = mod.weight.data.float()
        max_val = None
        if clip and n.split(".")[-1] not in NO_CLIP:
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[n]]).float() / s.view(1, -1)
            max_val = awq.search_clip(W, x, fmt)
            W = awq.apply_clip(W, max_val, fmt.group_size)
        info = {"input_scale": s.detach().cpu().numpy(), "folded_into": folded[n],
                "max_val": None if max_val is None else max_val.detach().cpu().numpy(),
                "clip": max_val is not None, "zero_point": fmt.zero_point,
                "scaled_activation": acts[n]}
        # folded: dequantize() is Q(W·diag(s)), beside the op that absorbed 1/s; else it divides by s
        full = runner.prefix + n
        results[full] = awq.scaled_result(W, fmt, info["input_scale"] if folded[n] is None else None, info)
        set_weight(mod, results[full].dequantize())
    return outs


def _fold(prev, s) -> None:
    """Divide the output channels of ``prev`` (a norm's weight and bias, or a Linear's rows) by ``s``."""
    w = prev.weight.data
    prev.weight.data = (w / s.view(-1, *([1] * (w.ndim - 1))).to(w.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.data = prev.bias.data / s.to(prev.bias.dtype)
