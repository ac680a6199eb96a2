"""Quantize a whole torch model: every ``nn.Linear``, block by block for GPTQ and AWQ.

:func:`quantize_model` returns a *copy* of the model whose Linear weights are
replaced by their quantized-then-dequantized values (float, in place), and the
:class:`~qviz.result.QuantResult` of every layer, so the copy can be evaluated
(:mod:`qviz.eval`) and every layer inspected.

How each method sees the model:

* ``"rtn"``, GGUF types, ``"kmeans"``, ``"nf4"``: layer by layer, no
  calibration. With ``calib`` given, methods that take an importance
  (GGUF types' ``imatrix``, k-means' ``importance``) get each layer's mean x²
  captured on the original model, as ``llama-imatrix`` does.
* ``"gptq"``: as the reference's ``llama_sequential`` (IST-DASLab/gptq
  ``llama.py``): the calibration batches run up to the first transformer
  block; then block after block, the block's Linears are quantized from the
  Hessians of their inputs and the block's *quantized* output becomes the next
  block's input. With ``true_sequential`` (default, AutoGPTQ's default) the
  Linears of a block go in stages of layers that read the same input (q,k,v →
  o → gate,up → down), each stage calibrated after the ones before it are
  quantized.
* ``"awq"``: as llm-awq's ``run_awq`` and AutoAWQ's ``AwqQuantizer``: per
  block, the inputs of every Linear are recorded on the float block (whose
  float output feeds the next block, as both references do), the scales of
  each group of Linears sharing an input are searched
  (:func:`qviz.algorithms.awq.search_scale`, the loss measured through the
  module that holds them), folded into the preceding op, then each Linear's
  clip is searched (not for query/key) and the weight rounded on AWQ's grid.

Where the scales go (:data:`AWQ_GROUPS`, a layer-name map):

* LLaMA: ``input_layernorm`` → q,k,v; ``v_proj`` → ``o_proj`` when their
  weights have the same shape (not with grouped-query attention, e.g.
  SmolLM2); ``post_attention_layernorm`` → gate,up; ``up_proj`` →
  ``down_proj``; exactly llm-awq's ``auto_scale_block`` for LlamaDecoderLayer.
* BERT (post-LayerNorm): only ``attention.self.value`` →
  ``attention.output.dense`` folds. The LayerNorm before q,k,v and before
  ``intermediate.dense`` also feeds the residual branch, and ``output.dense``
  reads a GELU output; dividing either by ``s`` would change the network.
  These layers keep their scale (``QuantResult.input_scale``): the copy
  holds ``Q(W·diag(s))·diag(s)⁻¹``, what AutoAWQ's ``ScaledActivation``
  computes for GELU models.
* Any other block: every Linear is its own group and keeps its scale.

Linears outside the blocks (BERT's pooler, an included ``lm_head``) are
calibrated in one more pass over the quantized blocks and quantized layer by
layer. Embeddings and ``lm_head`` are left alone unless asked; GPTQ and AWQ
quantize embeddings with RTN (they have no input activations to use).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np

from qviz.io import calib as calibration
from qviz.result import QuantResult

#: methods that need input activations of every layer
CALIBRATED = ("gptq", "awq")
#: option names of a method that take llama.cpp's importance (mean x²)
IMPORTANCE_OPTIONS = ("imatrix", "importance")
#: last name parts of layers AWQ does not clip (AutoAWQ's ``avoid_clipping``)
NO_CLIP = ("q_proj", "k_proj", "query", "key", "Wqkv")
#: rows of each outside-block layer's input kept for AWQ's search there
AWQ_OUTSIDE_SAMPLES = 4096


@dataclass(frozen=True)
class ScaleGroup:
    """Linears of a block that read one input and share one AWQ scale.

    Attributes
    ----------
    prev : str or None
        The op whose output is divided by the scale (a norm or a Linear, by
        name inside the block); None: the layers keep their own scale.
    linears : tuple of str
        The Linears whose input columns are multiplied by the scale.
    inspect : str
        The module whose output the scale search compares ('' for the block).
    same_shape : bool
        Fold only when ``prev``'s weight has the shape of the Linear's (llm-awq's
        condition for v -> o, false under grouped-query attention).
    """

    prev: str | None
    linears: tuple[str, ...]
    inspect: str
    same_shape: bool = False


#: model family -> the scale groups of one block, in order (llm-awq auto_scale_block)
AWQ_GROUPS = {
    "llama": (
        ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                   "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", same_shape=True),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
    "bert": (
        ScaleGroup(None, ("attention.self.query", "attention.self.key", "attention.self.value"),
                   "attention.self"),
        ScaleGroup("attention.self.value", ("attention.output.dense",), "attention.output.dense",
                   same_shape=True),
        ScaleGroup(None, ("intermediate.dense",), "intermediate"),
        ScaleGroup(None, ("output.dense",), "output.dense"),
    ),
}


class _Stop(Exception):
    """Raised by the hook that catches the first block's inputs."""


def find_blocks(model):
    """The model's transformer blocks: the ``nn.ModuleList`` holding the most Linears.

    ``model.model.layers`` for transformers' LLaMA, ``model.encoder.layer``
    for BERT, ``transformer.h`` for GPT-2-like models.

    Returns
    -------
    (str, torch.nn.ModuleList) or (None, None)
        Its name and the list; None when no ModuleList of blocks with Linears exists.
    """
    import torch

    best, best_count = (None, None), 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        counts = [sum(isinstance(m, torch.nn.Linear) for m in child.modules()) for child in mod]
        if min(counts) > 0 and sum(counts) > best_count:
            best, best_count = (name, mod), sum(counts)
    return best


def _set_weight(module, w: np.ndarray) -> None:
    """Give ``module`` a new weight Parameter (which also unties a shared one)."""
    import torch

    old = module.weight
    module.weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(w)).to(old.device, old.dtype),
                                       requires_grad=old.requires_grad)


def _untie_config(model) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False


def _first_tensor(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "last_hidden_state", out)


def _with_input(call, x):
    """A recorded (args, kwargs) call with its first input replaced by ``x``."""
    args, kwargs = call
    if args:
        return (x,) + tuple(args[1:]), kwargs
    return args, dict(kwargs, hidden_states=x)


def _input_of(call):
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


class _Block:
    """One block and its recorded calls (inputs and keyword arguments, per batch)."""

    def __init__(self, block, calls, masks, prefix: str = ""):
        self.block = block
        self.calls = calls
        self.masks = masks
        self.prefix = prefix  # the block's module name and a dot

    def run(self, hooks=None, pre_hooks=None):
        """Run the block on every call and return its outputs.

        Parameters
        ----------
        hooks : dict, optional
            Module -> ``fn(x)``, called with the module's input rows (n, in),
            padded positions left out.
        pre_hooks : dict, optional
            Module -> list of ``fn(args, kwargs)``, called before the module runs.
        """
        import torch

        handles = []
        current = {"i": 0}
        for mod, fn in (hooks or {}).items():
            def hook(module, args, output, fn=fn):
                x = args[0]
                m = self.masks[current["i"]]
                if m is not None and tuple(x.shape[:-1]) == tuple(m.shape):
                    x = x[m.to(x.device).bool()]
                fn(x.reshape(-1, x.shape[-1]))
            handles.append(mod.register_forward_hook(hook))
        for mod, fns in (pre_hooks or {}).items():
            def pre_hook(module, args, kwargs, fns=fns):
                for fn in fns:
                    fn(args, kwargs)
            handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        outs = []
        try:
            with torch.no_grad():
                for i, (args, kwargs) in enumerate(self.calls):
                    current["i"] = i
                    outs.append(_first_tensor(self.block(*args, **kwargs)))
        finally:
            for h in handles:
                h.remove()
        return outs

    def advance(self, outs) -> None:
        """Make ``outs`` the inputs of the next block."""
        self.calls = [_with_input(c, o) for c, o in zip(self.calls, outs)]


def _catch_block_inputs(model, first_block, batches):
    """Run the model up to its first block; the (args, kwargs) it gets, per batch."""
    import torch

    calls = []

    def hook(module, args, kwargs):
        calls.append((args, kwargs))
        raise _Stop

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for b in batches:
                try:
                    calibration.call_model(model, b)
                except _Stop:
                    pass
    finally:
        handle.remove()
    if len(calls) != len(batches):
        raise ValueError("the model did not reach its first block on every batch")
    return calls


def _stages(block: _Block, linears: dict, true_sequential: bool):
    """Linears of a block grouped by the input they read, in the order they run."""
    if not true_sequential:
        return [list(linears)]
    seen = []  # (input tensor, [names]) in call order
    by_module = {m: n for n, m in linears.items()}

    def record(args, kwargs, name):
        x = _input_of((args, kwargs))
        for t, names in seen:
            if t is x:
                names.append(name)
                return
        seen.append((x, [name]))

    probe = _Block(block.block, block.calls[:1], block.masks[:1])
    probe.run(pre_hooks={m: [lambda a, k, n=n: record(a, k, n)] for m, n in by_module.items()})
    stages = [names for _, names in seen]
    missing = [n for n in linears if not any(n in s for s in stages)]
    return stages + ([missing] if missing else [])


def _embedding_method(method: str, options: dict) -> tuple[str, dict]:
    """How embeddings are quantized: RTN for calibrated methods, else the method itself."""
    if method in CALIBRATED:
        keep = {k: options[k] for k in ("bits", "group_size", "sym") if k in options}
        return "rtn", keep
    return method, {k: v for k, v in options.items() if k not in IMPORTANCE_OPTIONS}


def _quantize_weight(w, method: str, options: dict) -> QuantResult:
    from qviz.api import quantize

    return quantize(w, method, **options)


def _check_method(method: str) -> str:
    from qviz.api import METHODS, method_names
    from qviz.formats.spec import FORMATS

    if not isinstance(method, str):
        raise TypeError(f"method must be a string such as 'rtn', 'gptq', 'awq' or 'Q4_K', got {method!r}")
    if method in FORMATS:
        return method
    if method.lower() in METHODS:
        return method.lower()
    raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(method_names())}")


def _takes(method: str, option: str) -> bool:
    from qviz.api import METHODS, quantize_gguf
    from qviz.formats.spec import FORMATS

    fn = quantize_gguf if method in FORMATS else METHODS[method]
    return option in inspect.signature(fn).parameters


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
        ``"rtn"``, ``"gptq"``, ``"awq"``, ``"kmeans"``, ``"nf4"`` or a GGUF type
        (``"Q4_K"``, …); see :func:`qviz.method_names`.
    calib : tokenizer or token batches, optional
        Calibration data, as for :func:`qviz.io.calib.capture`: a tokenizer
        (then the calibration part of the pydoc text, up to 128 sequences of
        512 tokens, :func:`qviz.io.calib.calibration_batches`), or token ids
        (a tensor (n, seq) or a list of tensors / dicts with ``input_ids``).
        Required by ``"gptq"`` and ``"awq"``.
    include_embeddings : bool
        Also quantize the ``nn.Embedding`` tables (rows = tokens); GPTQ and
        AWQ use RTN there.
    include_lm_head : bool
        Also quantize the output projection (``lm_head``); a tied one is untied.
    progress : bool
        ``tqdm.auto`` bars.
    **options
        The method's options (:func:`qviz.quantize`), e.g. ``bits=4,
        group_size=128``; for ``"gptq"`` also ``true_sequential`` (default
        True); for ``"awq"`` ``bits``, ``group_size``, ``sym``,
        ``duo_scaling``, ``clip``.

    Returns
    -------
    results : dict of str -> QuantResult
        Module name -> result; the copy's weight is its ``dequantize()``. For
        AWQ, ``info["input_scale"]`` is ``s`` and ``info["folded_into"]`` names
        the op that absorbed ``1/s``; when None, the result keeps ``s`` in its
        ``input_scale`` field (``dequantize()`` divides by it).
    model : torch.nn.Module
        The copy, in eval mode, with every quantized weight dequantized in place.

    Raises
    ------
    ValueError
        Unknown method, a calibrated method without ``calib``, a model without
        Linear layers, too little calibration text.

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

    method = _check_method(method)
    calibration.linear_layers(model)  # a clear error for a model without Linears
    if method in CALIBRATED and calib is None:
        raise ValueError(f"{method!r} needs calibration data: pass calib=tokenizer (the pydoc text) or "
                         f"calib=token ids (n, seq); see qviz.io.calib.calibration_batches")
    true_sequential = options.pop("true_sequential", True) if method == "gptq" else True
    qmodel = copy.deepcopy(model).eval()
    results: dict[str, QuantResult] = {}
    batches = None
    if calib is not None:
        batches = calibration.resolve_data(qmodel, calib)

    targets = _targets(qmodel, include_lm_head)
    with torch.no_grad():
        if method == "gptq":
            _gptq_model(qmodel, batches, targets, options, true_sequential, results, progress)
        elif method == "awq":
            _awq_model(qmodel, batches, targets, options, results, progress)
        else:
            _plain_model(qmodel, method, batches, targets, options, results, progress)
        if include_embeddings:
            _embeddings(qmodel, method, options, results, progress)
    if include_lm_head:
        _untie_config(qmodel)
    return results, qmodel


def _targets(model, include_lm_head: bool) -> dict:
    """The Linears to quantize, by name: all, without the output projection unless asked."""
    linears = calibration.linear_layers(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = linears.get("lm_head")
    if include_lm_head:
        return linears
    return {n: m for n, m in linears.items() if m is not head}


def _plain_model(model, method, batches, targets, options, results, progress):
    """Layer by layer; importance from a capture on the original model when calib is given."""
    from tqdm.auto import tqdm

    imp = next((o for o in IMPORTANCE_OPTIONS if _takes(method, o)), None)
    stats = {}
    if batches is not None and imp is not None:
        stats = calibration.capture(model, batches, list(targets), max_samples=0, hessian=False,
                                    progress=progress)
    for name, mod in tqdm(targets.items(), desc=method, disable=not progress, leave=False):
        opts = dict(options)
        if name in stats:
            opts[imp] = stats[name].imatrix
        results[name] = _quantize_weight(mod, method, opts)
        _set_weight(mod, results[name].dequantize())


def _embeddings(model, method, options, results, progress):
    import torch

    emb_method, emb_options = _embedding_method(method, options)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Embedding):
            results[name] = _quantize_weight(mod.weight, emb_method, emb_options)
            _set_weight(mod, results[name].dequantize())
    _untie_config(model)


def _outside_blocks(model, batches, targets, block_list, calibrate_one, progress):
    """Calibrate and quantize the target Linears outside the blocks, on the current model."""
    inside = {id(m) for m in block_list.modules()} if block_list is not None else set()
    rest = {n: m for n, m in targets.items() if id(m) not in inside}
    if not rest:
        return
    stats = calibration.capture(model, batches, list(rest), progress=progress,
                                max_samples=AWQ_OUTSIDE_SAMPLES)
    for name, mod in rest.items():
        calibrate_one(name, mod, stats[name])


def _gptq_model(model, batches, targets, options, true_sequential, results, progress):
    from tqdm.auto import tqdm

    opts = options
    _, blocks = find_blocks(model)
    target_ids = {id(m) for m in targets.values()}
    if blocks is not None:
        runner = _Block(None, _catch_block_inputs(model, blocks[0], batches),
                        [b.get("attention_mask") for b in batches])
        prefix = {id(m): n for n, m in model.named_modules()}
        for block in tqdm(blocks, desc="GPTQ blocks", disable=not progress):
            runner.block = block
            linears = {prefix[id(m)]: m for m in block.modules()
                       if id(m) in target_ids}
            for stage in _stages(runner, linears, true_sequential):
                acc = {n: calibration.Accumulator(linears[n].in_features, 0, None) for n in stage}
                runner.run(hooks={linears[n]: acc[n].add for n in stage})
                for n in stage:
                    h = acc[n].stats(n).hessian
                    results[n] = _quantize_weight(linears[n], "gptq", dict(opts, hessian=h))
                    _set_weight(linears[n], results[n].dequantize())
            runner.advance(runner.run())

    def one(name, mod, st):
        results[name] = _quantize_weight(mod, "gptq", dict(opts, hessian=st.hessian))
        _set_weight(mod, results[name].dequantize())

    _outside_blocks(model, batches, targets, blocks, one, progress)


def _awq_format(options):
    from qviz.algorithms import awq

    unknown = sorted(set(options) - {"bits", "group_size", "sym", "duo_scaling", "clip"})
    if unknown:
        raise TypeError(f"method 'awq' takes no option(s) {', '.join(unknown)}; its options are: "
                        f"bits, group_size, sym, duo_scaling, clip")
    g = options.get("group_size", 128)
    if g == -1:
        g = 1 << 30  # per channel: longer than any row
    return awq.AWQFormat(int(options.get("bits", 4)), int(g), zero_point=not options.get("sym", False))


def _family(block) -> str | None:
    """The :data:`AWQ_GROUPS` entry whose layer names this block has."""
    names = {n for n, _ in block.named_modules()}
    for family, groups in AWQ_GROUPS.items():
        if all(set(g.linears) <= names and g.inspect in names for g in groups):
            return family
    return None


def _awq_groups(block, linears: dict) -> list[ScaleGroup]:
    """The scale groups of one block: from the layer-name map, else one per Linear."""
    family = _family(block)
    if family is None:
        return [ScaleGroup(None, (n,), n) for n in linears]
    modules = dict(block.named_modules())
    groups = []
    for g in AWQ_GROUPS[family]:
        if not all(n in linears for n in g.linears):
            continue
        if g.same_shape and modules[g.prev].weight.shape != modules[g.linears[0]].weight.shape:
            continue  # the layers then keep their own scales (one group each, below)
        groups.append(g)
    grouped = {n for g in groups for n in g.linears}
    return groups + [ScaleGroup(None, (n,), n) for n in linears if n not in grouped]


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
                args, kwargs = _with_input(call, part.reshape(shape))
                outs.append(_first_tensor(module(*args, **kwargs)).reshape(-1).float())
            return torch.cat(outs)
        finally:
            for lin, w in zip(linears, saved):
                lin.weight.data = w

    return forward


def _awq_block(runner: _Block, linears: dict, fmt, options, results):
    """Scale search, folding, clip search and rounding of one block (see the module notes).

    Returns the float block's outputs (the next block's inputs).
    """
    import torch
    from qviz.algorithms import awq

    block = runner.block
    local = {n[len(runner.prefix):]: m for n, m in linears.items()}  # name inside the block
    modules = dict(block.named_modules())
    groups = _awq_groups(block, local)
    inputs = {n: [] for n in local}  # full-shape inputs per call
    calls = {g.inspect: [] for g in groups}

    def keep_input(name):
        return lambda args, kwargs: inputs[name].append(_input_of((args, kwargs)).detach())

    def keep_call(name):
        return lambda args, kwargs: calls[name].append((args, kwargs))

    pre_hooks = {}
    for n in local:
        pre_hooks.setdefault(modules[n], []).append(keep_input(n))
    for name in calls:
        pre_hooks.setdefault(modules[name], []).append(keep_call(name))
    outs = runner.run(pre_hooks=pre_hooks)  # the float block: its output feeds the next block

    duo = bool(options.get("duo_scaling", False))
    scales = {}
    for g in groups:
        ws = [modules[n].weight for n in g.linears]
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[g.linears[0]]]).float()
        shapes = [tuple(t.shape) for t in inputs[g.linears[0]]]
        fwd = _inspect_forward(modules[g.inspect], [modules[n] for n in g.linears],
                               calls[g.inspect], shapes)
        scales[g] = awq.search_scale(x, ws, fmt, forward=fwd, duo_scaling=duo,
                                     device=x.device)
    input_scale, folded = {}, {}
    for g, s in scales.items():
        if g.prev is not None:
            _fold(modules[g.prev], s)
        for n in g.linears:
            mod = modules[n]
            mod.weight.data = mod.weight.data * s.view(1, -1).to(mod.weight.dtype)
            input_scale[n], folded[n] = s, g.prev
    clip = bool(options.get("clip", True))
    for n, mod in local.items():
        s = input_scale[n]
        W = mod.weight.data.float()
        max_val = None
        if clip and n.split(".")[-1] not in NO_CLIP:
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[n]]).float() / s.view(1, -1)
            max_val = awq.search_clip(W, x, fmt)
            W = awq.apply_clip(W, max_val, fmt.group_size)
        full = runner.prefix + n
        results[full] = _awq_result(W, fmt, s, folded[n], max_val)
        _set_weight(mod, results[full].dequantize())  # ÷ s only where s was not folded
    return outs


def _fold(prev, s) -> None:
    """Divide the output channels of ``prev`` (a norm's weight and bias, or a Linear's rows) by ``s``."""
    w = prev.weight.data
    prev.weight.data = (w / s.view(-1, *([1] * (w.ndim - 1))).to(w.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.data = prev.bias.data / s.to(prev.bias.dtype)


def _awq_result(W, fmt, s, folded_into, max_val) -> QuantResult:
    """The QuantResult of a scaled (and clipped) weight rounded on AWQ's grid.

    Folded: ``dequantize()`` is ``Q(W·diag(s))``, the weight beside the op that
    absorbed ``1/s``. Not folded: ``input_scale`` keeps ``s`` and
    ``dequantize()`` divides by it. Either way, the weight the model holds.
    """
    from qviz.algorithms.awq import _quantize

    codes, scales, zeros = _quantize(W, fmt)
    info = {"input_scale": s.detach().cpu().numpy(), "folded_into": folded_into,
            "max_val": None if max_val is None else max_val.detach().cpu().numpy(),
            "clip": max_val is not None, "zero_point": fmt.zero_point}
    g = min(fmt.group_size, W.shape[1])
    return QuantResult("awq", tuple(W.shape), int(fmt.bits), int(g), codes.cpu().numpy(),
                       scales.cpu().numpy(), None if zeros is None else zeros.cpu().numpy(),
                       input_scale=info["input_scale"] if folded_into is None else None, info=info)


def _awq_model(model, batches, targets, options, results, progress):
    from tqdm.auto import tqdm

    fmt = _awq_format(options)
    _, blocks = find_blocks(model)
    target_ids = {id(m) for m in targets.values()}
    names = {id(m): n for n, m in model.named_modules()}
    if blocks is not None:
        runner = _Block(None, _catch_block_inputs(model, blocks[0], batches),
                        [b.get("attention_mask") for b in batches])
        for block in tqdm(blocks, desc="AWQ blocks", disable=not progress):
            runner.block = block
            runner.prefix = names[id(block)] + "."
            linears = {names[id(m)]: m for m in block.modules() if id(m) in target_ids}
            if linears:
                outs = _awq_block(runner, linears, fmt, options, results)
            else:
                outs = runner.run()
            runner.advance(outs)  # the float block's output, as llm-awq and AutoAWQ

    awq_options = {k: options[k] for k in ("bits", "group_size", "sym", "duo_scaling", "clip")
                   if k in options}

    def one(name, mod, st):
        r = _quantize_weight(mod, "awq", dict(awq_options, calib=st.sample))
        results[name] = dataclasses.replace(r, info={**r.info, "folded_into": None})
        _set_weight(mod, r.dequantize())  # its s is not folded: the decode divides by it

    _outside_blocks(model, batches, targets, blocks, one, progress)
