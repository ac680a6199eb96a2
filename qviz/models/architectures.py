"""Architecture maps as data: which op feeds which Linears of a transformer block.

AWQ scales the input columns of Linears that read one input and divides the
op that produced that input (a norm, or a Linear) by the same scale. Where
such an op exists depends on the architecture, and nothing else does: this
module says it per model family (:data:`AWQ_GROUPS`), by module names inside
one block.

* LLaMA: ``input_layernorm`` → q,k,v; ``v_proj`` → ``o_proj`` when their
  weights have the same shape (not with grouped-query attention, e.g.
  SmolLM2); ``post_attention_layernorm`` → gate,up; ``up_proj`` →
  ``down_proj``; exactly llm-awq's ``auto_scale_block`` for LlamaDecoderLayer.
* BERT (post-LayerNorm): only ``attention.self.value`` →
  ``attention.output.dense`` folds. The LayerNorm before q,k,v and before
  ``intermediate.dense`` also feeds the residual branch, and ``output.dense``
  reads a GELU output; dividing either by ``s`` would change the network.
  These layers keep their scale (``QuantResult.input_scale``): the model
  holds ``Q(W·diag(s))·diag(s)⁻¹``, what AutoAWQ's ``ScaledActivation``
  computes for GELU models. ``output.dense`` reads
  ``intermediate.intermediate_act_fn``, so a checkpoint can hold its ``s`` as
  that activation's ``scales`` (:func:`qviz.io.export.export_awq`); the
  others' ``s`` has no place in an AWQ checkpoint.
* Any other block: every Linear is its own group and keeps its scale.

A new family is one more entry of :data:`AWQ_GROUPS`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AWQ_GROUPS", "NO_CLIP", "ScaleGroup", "family", "scale_groups"]

#: last name parts of layers AWQ does not clip (AutoAWQ's ``avoid_clipping``)
NO_CLIP = ("q_proj", "k_proj", "query", "key", "Wqkv")


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
    act : str or None
        For an unfolded group (``prev`` None) whose Linears read an
        activation's output: that activation module, where AutoAWQ's
        ``ScaledActivation`` holds the scale (``<act>.scales``).
    """

    prev: str | None
    linears: tuple[str, ...]
    inspect: str
    same_shape: bool = False
    act: str | None = None


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
        ScaleGroup(None, ("output.dense",), "output.dense", act="intermediate.intermediate_act_fn"),
    ),
}


def family(block) -> str | None:
    """The :data:`AWQ_GROUPS` entry whose layer names ``block`` (a torch module) has, or None."""
    names = {n for n, _ in block.named_modules()}
    for name, groups in AWQ_GROUPS.items():
        if all(set(g.linears) <= names and g.inspect in names for g in groups):
            return name
    return None


def scale_groups(block, linears) -> list[ScaleGroup]:
    """The scale groups of one block: from the layer-name map, else one per Linear.

    Parameters
    ----------
    block : torch.nn.Module
        One transformer block.
    linears : collection of str
        The Linears to quantize, by name inside the block.

    Returns
    -------
    list of ScaleGroup
        The family's groups whose Linears are all in ``linears`` (a
        ``same_shape`` group only where the shapes agree), then one unfolded
        group for every Linear left.
    """
    fam = family(block)
    if fam is None:
        return [ScaleGroup(None, (n,), n) for n in linears]
    modules = dict(block.named_modules())
    groups = []
    for g in AWQ_GROUPS[fam]:
        if not all(n in linears for n in g.linears):
            continue
        if g.same_shape and modules[g.prev].weight.shape != modules[g.linears[0]].weight.shape:
            continue  # the layers then keep their own scales (one group each, below)
        groups.append(g)
    grouped = {n for g in groups for n in g.linears}
    return groups + [ScaleGroup(None, (n,), n) for n in linears if n not in grouped]
