"""The block runner: run a model's transformer blocks one at a time on recorded inputs.

The calibrated drivers (:mod:`qviz.models.gptq_model`, :mod:`qviz.models.awq_model`)
work as the references' ``*_sequential`` loops do: the calibration batches run
up to the first transformer block (:func:`catch_block_inputs`); then block
after block (:class:`Block`), the block's Linears are quantized from what it
reads, and the block's output becomes the next block's input. What differs
between methods is one function per block, handed to :func:`run_blocks`.

Linears outside the blocks (BERT's pooler, an included ``lm_head``) are
calibrated in one more pass over the quantized blocks and quantized layer by
layer (:func:`run_blocks`' ``quantize_outside``).

torch loads when a function runs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from qviz.arrays import as_weight
from qviz.io import calib as calibration
from qviz.registry import Method
from qviz.result import QuantResult

__all__ = ["Block", "Driver", "OUTSIDE_SAMPLES", "catch_block_inputs", "check_weights", "driver_options", "find_blocks",
           "first_tensor", "input_of", "quantize_layer", "run_blocks", "set_weight", "stages",
           "untie_config", "with_input"]

#: rows of each outside-block layer's input kept (AWQ searches its scale on them)
OUTSIDE_SAMPLES = 4096


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


def set_weight(module, w: np.ndarray) -> None:
    """Give ``module`` a new weight Parameter (which also unties a shared one).

    Parameters
    ----------
    module : torch.nn.Module
        A Linear or Embedding; the new weight keeps the old one's device, dtype
        and ``requires_grad``.
    w : ndarray, shape of ``module.weight``, float32
    """
    import torch

    old = module.weight
    module.weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(w)).to(old.device, old.dtype),
                                       requires_grad=old.requires_grad)


def check_weights(modules: Mapping) -> None:
    """Every module's weight holds finite values (not on the meta device), or a ValueError naming it.

    Parameters
    ----------
    modules : mapping of str to torch.nn.Module
        Module name -> a Linear or Embedding (anything with a ``weight``).

    Raises
    ------
    ValueError
        Naming the first module whose weight is on the meta device or holds
        NaN/Inf, with the (row, col) of its first bad value.
    """
    import torch

    for name, mod in modules.items():
        w = mod.weight
        if w.is_meta:
            raise ValueError(f"layer {name!r}: its weight is on the meta device and holds no values; load "
                             f"the model's weights first (e.g. from_pretrained without device_map='meta' or "
                             f"init_empty_weights, or model.to_empty(device='cpu') then load_state_dict)")
        if not w.is_floating_point():
            continue
        bad = ~torch.isfinite(w.detach())
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            where = f"(row, col) = {idx}" if len(idx) == 2 else f"index {idx}"
            raise ValueError(f"layer {name!r}: weight has {int(bad.sum())} NaN/Inf value(s), the first "
                             f"{float(w.detach()[idx]):g} at {where}; clean or mask them before "
                             f"quantizing, or leave the layer out")


def quantize_layer(module, method: Method, options: Mapping, name: str | None = None) -> QuantResult:
    """Quantize ``module.weight`` with ``method`` and put the decoded weight in its place.

    Parameters
    ----------
    module : torch.nn.Linear or torch.nn.Embedding
        Weight (n_rows, n_cols); replaced by ``result.dequantize()``.
    method : Method
        The registry record; ``method.call`` checks ``options``.
    options : mapping
        The method's options for this layer.
    name : str, optional
        The module's name: a ValueError or TypeError of the method is raised
        again with ``layer 'name':`` in front.

    Returns
    -------
    QuantResult
    """
    try:
        result = method.call(as_weight(module.weight), **options)
    except (ValueError, TypeError) as exc:
        if name is None or type(exc) not in (ValueError, TypeError):
            raise
        raise type(exc)(f"layer {name!r}: {exc}") from exc
    set_weight(module, result.dequantize())
    return result


def untie_config(model) -> None:
    """Mark the model's config as no longer tying ``lm_head`` to the embeddings."""
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False


def first_tensor(out):
    """The hidden states of a module's output (a tensor, a tuple, or a ``ModelOutput``)."""
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "last_hidden_state", out)


def with_input(call, x):
    """A recorded ``(args, kwargs)`` call with its first input replaced by ``x``."""
    args, kwargs = call
    if args:
        return (x,) + tuple(args[1:]), kwargs
    return args, dict(kwargs, hidden_states=x)


def input_of(call):
    """The first input (hidden states) of a recorded ``(args, kwargs)`` call."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


class Block:
    """One block and its recorded calls (inputs and keyword arguments, per batch).

    Parameters
    ----------
    block : torch.nn.Module or None
        The block to run (set before :meth:`run`).
    calls : list of (tuple, dict)
        One ``(args, kwargs)`` per calibration batch, hidden states (batch,
        seq, hidden) first.
    masks : list of torch.Tensor or None
        Each batch's attention mask (batch, seq), or None; padded positions
        are left out of the rows hooks see.
    prefix : str
        The block's module name and a dot (``"model.layers.3."``).
    """

    def __init__(self, block, calls, masks, prefix: str = ""):
        self.block = block
        self.calls = calls
        self.masks = masks
        self.prefix = prefix

    def run(self, hooks=None, pre_hooks=None):
        """Run the block on every call and return its outputs.

        Parameters
        ----------
        hooks : dict, optional
            Module -> ``fn(x)``, called with the module's input rows (n, in),
            padded positions left out.
        pre_hooks : dict, optional
            Module -> list of ``fn(args, kwargs)``, called before the module runs.

        Returns
        -------
        list of torch.Tensor
            The block's hidden states, one (batch, seq, hidden) per call.
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
                    outs.append(first_tensor(self.block(*args, **kwargs)))
        finally:
            for h in handles:
                h.remove()
        return outs

    def advance(self, outs) -> None:
        """Make ``outs`` the inputs of the next block."""
        self.calls = [with_input(c, o) for c, o in zip(self.calls, outs)]


class _Stop(Exception):
    """Raised by the hook that catches the first block's inputs."""


def catch_block_inputs(model, first_block, batches):
    """Run the model up to its first block; the ``(args, kwargs)`` it gets, per batch.

    Parameters
    ----------
    model : torch.nn.Module
    first_block : torch.nn.Module
    batches : list of dict
        :func:`qviz.io.calib.resolve_data`'s batches.

    Returns
    -------
    list of (tuple, dict)
    """
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


def stages(block: Block, linears: dict, true_sequential: bool) -> list[list[str]]:
    """Linears of a block grouped by the input they read, in the order they run.

    Parameters
    ----------
    block : Block
        Run once, on its first call, to see which Linears read the same tensor.
    linears : dict of str to torch.nn.Linear
    true_sequential : bool
        False: one stage of every Linear.

    Returns
    -------
    list of list of str
        E.g. q,k,v → o → gate,up → down for a LLaMA block; Linears the probe
        did not see come last.
    """
    if not true_sequential:
        return [list(linears)]
    seen = []  # (input tensor, [names]) in call order
    by_module = {m: n for n, m in linears.items()}

    def record(args, kwargs, name):
        x = input_of((args, kwargs))
        for t, names in seen:
            if t is x:
                names.append(name)
                return
        seen.append((x, [name]))

    probe = Block(block.block, block.calls[:1], block.masks[:1])
    probe.run(pre_hooks={m: [lambda a, k, n=n: record(a, k, n)] for m, n in by_module.items()})
    found = [names for _, names in seen]
    missing = [n for n in linears if not any(n in s for s in found)]
    return found + ([missing] if missing else [])


def run_blocks(model, batches, targets: dict, quantize_block: Callable, quantize_outside: Callable, *,
               desc: str, progress: bool = True) -> None:
    """Quantize the targets block by block, then those outside the blocks.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place (the caller's copy).
    batches : list of dict
        Calibration batches.
    targets : dict of str to torch.nn.Linear
        The Linears to quantize, by module name.
    quantize_block : callable
        ``quantize_block(block, linears) -> outputs``: quantizes ``linears``
        (the targets inside the :class:`Block` ``block``, by full name) and
        returns the hidden states the next block reads. Blocks without
        targets are only run.
    quantize_outside : callable
        ``quantize_outside(name, module, stats)`` for every target outside the
        blocks, with its :class:`~qviz.io.calib.LayerStats` (Hessian and a
        sample of :data:`OUTSIDE_SAMPLES` rows) captured on the model whose
        blocks are quantized.
    desc : str
        Progress bar label.
    progress : bool
    """
    from tqdm.auto import tqdm

    _, blocks = find_blocks(model)
    target_ids = {id(m) for m in targets.values()}
    names = {id(m): n for n, m in model.named_modules()}
    if blocks is not None:
        runner = Block(None, catch_block_inputs(model, blocks[0], batches),
                       [b.get("attention_mask") for b in batches])
        for block in tqdm(blocks, desc=desc, disable=not progress):
            runner.block = block
            runner.prefix = names[id(block)] + "."
            linears = {names[id(m)]: m for m in block.modules() if id(m) in target_ids}
            runner.advance(quantize_block(runner, linears) if linears else runner.run())

    inside = {id(m) for m in blocks.modules()} if blocks is not None else set()
    rest = {n: m for n, m in targets.items() if id(m) not in inside}
    if not rest:
        return
    stats = calibration.capture(model, batches, list(rest), progress=progress,
                                max_samples=OUTSIDE_SAMPLES)
    for name, mod in rest.items():
        quantize_outside(name, mod, stats[name])


class Driver(Protocol):
    """What a method record's ``driver`` names: a function quantizing a model block by block.

    ``quantize_model`` calls it as ``quantize_blocks(model, method, batches,
    targets, options, progress=progress)`` for a method whose record has a
    ``driver`` (GPTQ: :func:`qviz.models.gptq_model.quantize_blocks`, AWQ:
    :func:`qviz.models.awq_model.quantize_blocks`).

    Parameters
    ----------
    model : torch.nn.Module
        The caller's copy, changed in place: every target's weight becomes the
        weight the model computes with.
    method : Method
        The method's record (its options schema, roles).
    batches : list of dict
        Calibration batches (:func:`qviz.io.calib.resolve_data`).
    targets : dict of str to torch.nn.Linear
        The Linears to quantize, by module name.
    options : dict
        The method's options as the caller gave them, and the driver's own
        extras (split with :func:`driver_options`).
    progress : bool
        ``tqdm.auto`` bars.

    Returns
    -------
    dict of str to QuantResult
        Module name -> result, in the order the layers were quantized.
    """

    def __call__(self, model, method: Method, batches, targets: dict, options: dict, *,
                 progress: bool = True) -> dict[str, QuantResult]: ...


def driver_options(method: Method, options: Mapping, *, supplied=(), **extra) -> tuple[dict, dict]:
    """Split a driver's options into the method's own (checked) and the driver's extras.

    Parameters
    ----------
    method : Method
    options : mapping
        ``quantize_model``'s ``**options``.
    supplied : tuple of str
        Method options the driver sets itself, per layer; the caller may not.
    **extra
        The driver's own options and their defaults (``true_sequential=True``).

    Returns
    -------
    method_options : dict
        Checked against ``method``'s schema.
    extras : dict
        Every name of ``extra``, given or default.

    Raises
    ------
    TypeError
        For an option neither the method nor the driver takes, or one the
        driver supplies (the message lists those it takes).
    """
    own = {k: v for k, v in options.items() if k not in extra}
    taken = sorted(set(own) & set(supplied))
    takes = [o.name for o in method.options if o.name not in supplied] + list(extra)
    if taken:
        raise TypeError(f"method {method.name!r} takes no option(s) {', '.join(taken)} in quantize_model, "
                        f"which sets them per layer; its options are: {', '.join(takes)}")
    unknown = sorted(set(own) - {o.name for o in method.options})
    if unknown:
        raise TypeError(f"method {method.name!r} takes no option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(takes)}")
    return method.check(own), {k: options.get(k, v) for k, v in extra.items()}
