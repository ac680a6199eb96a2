"""llama-quantize's recipes: which type each tensor of a GGUF file gets for ``Q4_K_M`` and the rest.

A llama-quantize *file type* (``LlamaFileType``, llama.h ``LLAMA_FTYPE_MOSTLY_*``)
is not one type but a recipe: a default type plus rules that give some
tensors more (or fewer) bits by their role (attn_v, ffn_down, output, ...),
their layer, the model's architecture, its expert count and its grouped-query
attention. :data:`RECIPES` holds every file type as data; :func:`plan` applies
the rules to a file and returns a :class:`RecipePlan` (a per-tensor table,
nothing written) whose rows say *why* each tensor gets its type;
:func:`qviz.io.gguf_writer.requantize` writes it.

The reference is llama.cpp's ``src/llama-quant.cpp`` as vendored by
llama-cpp-python 0.3.36 (the version the end-to-end test runs):

* which tensors are quantized at all: ``tensor_allows_quantization``
  (:func:`allows_quantization`);
* a tensor's role: ``tensor_get_category`` (:func:`category`);
* the rules: ``llama_tensor_get_type`` and ``llama_tensor_get_type_impl``,
  including its counters: ``i_attention_wv`` counts attn_v-like tensors and
  ``i_ffn_down``/``i_ffn_gate``/``i_ffn_up`` count ffn tensors in the order
  llama.cpp visits them (by layer number, then by name), and only those that
  reach the rules (not those a ``tensor_types`` pattern or ``pure`` decides);
  ``n_ffn_*`` are the model's block count and ``n_attention_wv`` the number
  of attn_v-like tensors;
* rows that the chosen type's block does not divide: ``tensor_type_fallback``,
  which each type's registry record carries (:attr:`qviz.registry.QuantType.fallback`;
  a test checks it against llama.cpp's list);
* a tensor already of its target type is copied unchanged, as llama.cpp does.

Examples
--------
>>> RECIPES["Q4_K_M"]
Recipe(name='Q4_K_M', file_type=15, default='Q4_K')
>>> use_more_bits(0, 8), use_more_bits(1, 8), use_more_bits(3, 8)
(True, False, True)
"""
from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from qviz import registry
from qviz.io.gguf_reader import GGUFFile, TensorInfo, read

__all__ = ["Recipe", "RECIPES", "ALIASES", "TensorPlan", "RecipePlan", "plan", "recipe",
           "category", "allows_quantization", "use_more_bits", "requires_imatrix", "ggml_type_names",
           "checked_imatrix_path"]


class Recipe(NamedTuple):
    """One llama-quantize file type.

    Attributes
    ----------
    name : str
        llama-quantize's name, e.g. ``"Q4_K_M"``.
    file_type : int
        ``general.file_type`` it writes (``gguf.LlamaFileType``).
    default : str
        The type a tensor gets when no rule says otherwise
        (``llama_ftype_get_default_type``).
    """

    name: str
    file_type: int
    default: str


def _recipes() -> dict[str, Recipe]:
    ft = gguf.LlamaFileType
    # llama-quantize's listing order (tools/quantize/quantize.cpp); the default
    # type of each file type from llama_ftype_get_default_type. Left out: Q2_0
    # (no ggml type of that name in gguf-py yet), NVFP4 (llama.cpp has no default
    # type for it: "invalid output file type"), BF16 (qviz does not write it).
    table = [("Q1_0", ft.MOSTLY_Q1_0, "Q1_0"), ("Q4_0", ft.MOSTLY_Q4_0, "Q4_0"),
             ("Q4_1", ft.MOSTLY_Q4_1, "Q4_1"), ("MXFP4_MOE", ft.MOSTLY_MXFP4_MOE, "MXFP4"),
             ("Q5_0", ft.MOSTLY_Q5_0, "Q5_0"), ("Q5_1", ft.MOSTLY_Q5_1, "Q5_1"),
             ("IQ2_XXS", ft.MOSTLY_IQ2_XXS, "IQ2_XXS"), ("IQ2_XS", ft.MOSTLY_IQ2_XS, "IQ2_XS"),
             ("IQ2_S", ft.MOSTLY_IQ2_S, "IQ2_XS"), ("IQ2_M", ft.MOSTLY_IQ2_M, "IQ2_S"),
             ("IQ1_S", ft.MOSTLY_IQ1_S, "IQ1_S"), ("IQ1_M", ft.MOSTLY_IQ1_M, "IQ1_M"),
             ("TQ1_0", ft.MOSTLY_TQ1_0, "TQ1_0"), ("TQ2_0", ft.MOSTLY_TQ2_0, "TQ2_0"),
             ("Q2_K", ft.MOSTLY_Q2_K, "Q2_K"), ("Q2_K_S", ft.MOSTLY_Q2_K_S, "Q2_K"),
             ("IQ3_XXS", ft.MOSTLY_IQ3_XXS, "IQ3_XXS"), ("IQ3_S", ft.MOSTLY_IQ3_S, "IQ3_S"),
             ("IQ3_M", ft.MOSTLY_IQ3_M, "IQ3_S"), ("IQ3_XS", ft.MOSTLY_IQ3_XS, "IQ3_S"),
             ("Q3_K_S", ft.MOSTLY_Q3_K_S, "Q3_K"), ("Q3_K_M", ft.MOSTLY_Q3_K_M, "Q3_K"),
             ("Q3_K_L", ft.MOSTLY_Q3_K_L, "Q3_K"), ("IQ4_NL", ft.MOSTLY_IQ4_NL, "IQ4_NL"),
             ("IQ4_XS", ft.MOSTLY_IQ4_XS, "IQ4_XS"), ("Q4_K_S", ft.MOSTLY_Q4_K_S, "Q4_K"),
             ("Q4_K_M", ft.MOSTLY_Q4_K_M, "Q4_K"), ("Q5_K_S", ft.MOSTLY_Q5_K_S, "Q5_K"),
             ("Q5_K_M", ft.MOSTLY_Q5_K_M, "Q5_K"), ("Q6_K", ft.MOSTLY_Q6_K, "Q6_K"),
             ("Q8_0", ft.MOSTLY_Q8_0, "Q8_0"), ("F16", ft.MOSTLY_F16, "F16"), ("F32", ft.ALL_F32, "F32")]
    return {name: Recipe(name, int(ftype), default) for name, ftype, default in table}


#: every llama-quantize file type qviz knows, by name, in llama-quantize's order
RECIPES: dict[str, Recipe] = _recipes()
#: llama-quantize's short names (``Q4_K`` is ``Q4_K_M`` there; to qviz's ``requantize(types=...)``
#: ``"Q4_K"`` stays one type, so give these as ``recipe=``)
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

#: types whose tensors need an importance matrix in llama-quantize (``tensor_requires_imatrix``)
_NEEDS_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")
_ATTN_V = ("attn_v", "attn_qkv", "attn_kv_b")
_IQ2_FAMILY = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_LAYER = re.compile(r"blk\.([+-]?\d+)")

# ``tensor_allows_quantization``: substrings that keep a weight as it is, and why
_KEEP = (("_norm.weight", "a norm"), ("ffn_gate_inp.weight", "an expert router"),
         ("ffn_gate_tid2eid.weight", "a token→expert table"), ("altup", "tiny (altup)"),
         ("laurel", "tiny (laurel)"), ("per_layer_model_proj", "small (per_layer_model_proj)"),
         ("ssm_conv1d", "a small conv1d"), ("shortconv.conv.weight", "a small conv1d"),
         ("indexer.k_proj.weight", "a tiny indexer projection"),
         ("indexer.q_proj.weight", "a tiny indexer projection"),
         *((f"time_mix_{p}.weight", "a small RWKV weight") for p in
           ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2", "decay_w1",
            "decay_w2", "lerp_fused")),
         ("attn_rel_b.weight", "a relative position bias"), (".position_embd", "a position embedding"),
         ("sam.pos_embd", "a position embedding"), ("sam.neck.", "multimodal (sam.neck)"),
         ("sam.net_", "multimodal (sam.net)"), (".rel_pos", "a relative position table"),
         (".patch_embd", "a patch embedding"), (".patch_merger", "a patch merger"),
         ("a.rvq.codebook", "an audio codebook"), ("mm.a.code_embd", "an audio codebook"))
_KEEP_GLM5_NEXT = ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                   "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
                   "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight",
                   "attn_v_b.weight")


def ggml_type_names() -> list[str]:
    """Every ggml type name gguf-py knows plus the registered ones (``"Q4_K"``, ``"IQ2_S"``, ``"F16"``...)."""
    return list(dict.fromkeys([*(t.name for t in GGMLQuantizationType), *registry.types()]))


def _block(type_name: str) -> int:
    """Weights per block of a ggml type (1 for the plain floats)."""
    if type_name in registry.types():
        return registry.quant_type(type_name).block_size
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]


def _type_size(type_name: str) -> int:
    if type_name in registry.types():
        return registry.quant_type(type_name).type_size
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]


def _is_quantized(type_name: str) -> bool:
    """ggml's ``ggml_is_quantized``: a type with blocks (not F32/F16/BF16/F64/I*)."""
    return _block(type_name) > 1


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of layers, and every third in between.

    Parameters
    ----------
    i_layer, n_layers : int
        The layer (or the tensor's rank among its kind) and their count;
        eighths use C's integer division.

    Examples
    --------
    >>> [i for i in range(16) if use_more_bits(i, 16)]
    [0, 1, 4, 7, 10, 13, 14, 15]
    """
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _more_bits_why(i: int, n: int) -> str:
    if i < n // 8:
        return f"in the first 1/8 of {n}"
    if i >= 7 * n // 8:
        return f"in the last 1/8 of {n}"
    return f"every 3rd of the middle layers of {n}"


def category(name: str) -> str:
    """A tensor's role as llama.cpp's ``tensor_get_category`` sees it.

    Returns one of ``"output"``, ``"token_embd"``, ``"attn_qkv"``,
    ``"attn_kv_b"``, ``"attn_v"``, ``"attn_k"``, ``"attn_q"``,
    ``"attn_output"``, ``"ffn_up"``, ``"ffn_gate"``, ``"ffn_down"``, ``"other"``.

    Examples
    --------
    >>> category("blk.3.attn_v.weight"), category("blk.0.ffn_down_exps.weight"), category("output.weight")
    ('attn_v', 'ffn_down', 'output')
    """
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for role in ("attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output"):
        if role + ".weight" in name:
            return role
    for role in ("ffn_up", "ffn_gate", "ffn_down"):
        if role in name:
            return role
    return "other"


def allows_quantization(info: TensorInfo, arch: str, quantize_output_tensor: bool = True) -> str | None:
    """None when llama-quantize quantizes tensor ``info``, else why it keeps it (``tensor_allows_quantization``).

    Examples
    --------
    >>> allows_quantization(TensorInfo("blk.0.attn_norm.weight", "F32", (64,), 256, 0), "llama")
    '1-D'
    >>> allows_quantization(TensorInfo("blk.0.attn_q.weight", "F32", (4, 64), 1024, 0), "llama") is None
    True
    """
    name = info.name
    if len(info.shape) < 2:
        return f"{len(info.shape)}-D"
    if not name.endswith("weight"):
        return "not a weight"
    if not quantize_output_tensor and name == "output.weight":
        return "leave_output_tensor"
    if name in ("position_embd.weight", "token_types.weight"):
        return "a position/token-type embedding"
    for part, why in _KEEP:
        if part in name:
            return why
    if arch == "glm5-next" and any(p in name for p in _KEEP_GLM5_NEXT):
        return "kept for glm5-next"
    return None


def requires_imatrix(name: str, type_name: str, recipe_name: str) -> bool:
    """Whether llama-quantize refuses to write tensor ``name`` as ``type_name`` without an imatrix.

    ``tensor_requires_imatrix``: the IQ1/IQ2/IQ3_XXS types, and Q2_K in a
    ``Q2_K_S`` file; never the token embedding or the output.

    Examples
    --------
    >>> requires_imatrix("blk.0.ffn_up.weight", "Q2_K", "Q2_K_S"), requires_imatrix("output.weight", "IQ2_XS", "IQ2_XS")
    (True, False)
    """
    if category(name) in ("token_embd", "output"):
        return False
    return type_name in _NEEDS_IMATRIX or (type_name == "Q2_K" and recipe_name == "Q2_K_S")


def recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case-insensitive; ``Q4_K`` etc. as llama-quantize's aliases).

    Raises
    ------
    ValueError
        For an unknown name: the closest recipe names and the whole list.

    Examples
    --------
    >>> recipe("q4_k_m").name, recipe("Q5_K").name
    ('Q4_K_M', 'Q5_K_M')
    """
    if isinstance(name, Recipe):
        return name
    if isinstance(name, str) and name.upper() in ALIASES:
        name = ALIASES[name.upper()]
    try:
        return RECIPES[registry.resolve_name(name, RECIPES, "recipe")]
    except ValueError as e:
        raise ValueError(f"{e} (llama-quantize's file types; qviz.gguf.RECIPES)") from None


# --------------------------------------------------------------------------- the table


class TensorPlan(NamedTuple):
    """One tensor's row of a :class:`RecipePlan`.

    Attributes
    ----------
    name : str
    shape : tuple of int
        numpy order (rows first; the last is ggml's ``ne[0]``, the row length).
    source_type, type : str
        Its type in the source file and the type it gets.
    converted : bool
        False when it is copied unchanged (not quantized, or already ``type``).
    nbytes : int
        Its bytes in the new file.
    why : str
        The rule that decided, in words.
    needs_imatrix : bool
        llama-quantize refuses to write it without an importance matrix.
    """

    name: str
    shape: tuple[int, ...]
    source_type: str
    type: str
    converted: bool
    nbytes: int
    why: str
    needs_imatrix: bool = False

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def bits_per_weight(self) -> float:
        return self.nbytes * 8 / self.n_elements if self.n_elements else 0.0


@dataclass(frozen=True)
class RecipePlan:
    """What a recipe does to each tensor of a file (:func:`plan`); nothing is written.

    Attributes
    ----------
    recipe : Recipe
    rows : tuple of TensorPlan
        One per tensor, in the file's order.
    options : mapping
        The llama-quantize options it was planned with.
    n_fallback : int
        Tensors whose rows the chosen type's block does not divide.
    """

    recipe: Recipe
    rows: tuple[TensorPlan, ...]
    options: Mapping
    n_fallback: int = 0

    @property
    def types(self) -> dict[str, str]:
        """Tensor name -> the type it gets."""
        return {r.name: r.type for r in self.rows}

    @property
    def total_bytes(self) -> int:
        """Bytes of all tensor data in the new file (no padding, no metadata)."""
        return sum(r.nbytes for r in self.rows)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight over every tensor, as llama-quantize reports its ``quant size``."""
        n = sum(r.n_elements for r in self.rows)
        return self.total_bytes * 8 / n if n else 0.0

    @property
    def needs_imatrix(self) -> tuple[str, ...]:
        """Tensors llama-quantize refuses to write without an importance matrix."""
        return tuple(r.name for r in self.rows if r.needs_imatrix)

    def __iter__(self) -> Iterator[TensorPlan]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> TensorPlan:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no tensor {name!r} in this plan")

    def counts(self) -> dict[str, int]:
        """Type -> how many tensors get it."""
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.type] = out.get(r.type, 0) + 1
        return out

    def _head(self) -> str:
        return (f"{self.recipe.name} (file type {self.recipe.file_type}): {len(self.rows)} tensors, "
                f"{self.total_bytes / 2**20:.2f} MiB, {self.bits_per_weight:.3f} bits per weight; "
                + ", ".join(f"{t}×{n}" for t, n in sorted(self.counts().items())))

    def __repr__(self) -> str:
        w = max((len(r.name) for r in self.rows), default=4)
        lines = [self._head(), f"{'tensor':<{w}}  {'shape':<14} {'from':<7} {'type':<7} {'bpw':>6}  why"]
        for r in self.rows:
            lines.append(f"{r.name:<{w}}  {str(r.shape):<14} {r.source_type:<7} {r.type:<7} "
                         f"{r.bits_per_weight:6.3f}  {r.why}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><td><code>{html.escape(r.name)}</code></td><td>{r.shape}</td><td>{r.source_type}</td>"
            f"<td><b>{r.type}</b></td><td>{r.bits_per_weight:.3f}</td><td>{html.escape(r.why)}</td></tr>"
            for r in self.rows)
        return (f"<p>{html.escape(self._head())}</p><table><thead><tr><th>tensor</th><th>shape</th>"
                f"<th>from</th><th>type</th><th>bpw</th><th>why</th></tr></thead><tbody>{cells}</tbody></table>")


# --------------------------------------------------------------------------- options


def _check_type(value, what: str) -> str:
    names = [*ggml_type_names()]
    try:
        return registry.resolve_name(value, names, "ggml type")
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None


def _check_patterns(tensor_types) -> list[tuple[re.Pattern, str, str]]:
    """``tensor_types`` as (compiled regex, type, pattern) in order: llama-quantize's ``--tensor-type``.

    A pattern is lowercased as llama-quantize's parser does, and matches
    anywhere in a tensor name (``std::regex_search``; Python's ``re.search``).
    """
    if tensor_types is None:
        return []
    if isinstance(tensor_types, str):
        tensor_types = [tensor_types]
    items = tensor_types.items() if isinstance(tensor_types, Mapping) else tensor_types
    out = []
    for item in items:
        if isinstance(item, str):
            pattern, sep, type_name = item.partition("=")
            if not sep or not pattern or not type_name:
                raise ValueError(f"tensor_types: {item!r} is not PATTERN=TYPE (e.g. 'attn_v=Q8_0')")
        else:
            try:
                pattern, type_name = item
            except (TypeError, ValueError):
                raise TypeError(f"tensor_types: {item!r} is not a (pattern, type) pair; give a mapping "
                                f"{{'ffn_down': 'Q6_K'}}, pairs, or 'PATTERN=TYPE' strings") from None
        if not isinstance(pattern, str):
            raise TypeError(f"tensor_types: the pattern {pattern!r} is not a string (a regex of tensor names)")
        type_name = _check_type(type_name, f"tensor_types[{pattern!r}]")
        try:
            regex = re.compile(pattern.lower())
        except re.error as e:
            raise ValueError(f"tensor_types: {pattern!r} is not a regular expression ({e})") from None
        out.append((regex, type_name, pattern))
    return out


class _Model(NamedTuple):
    """The hyper-parameters llama-quantize's rules read."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int
    is_70b: bool

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


def _first(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, (list, tuple)) or hasattr(value, "shape"):
        return int(value[0]) if len(value) else default
    return int(value)


def _model(src: GGUFFile) -> _Model:
    md = src.metadata
    arch = md.get("general.architecture", "")
    arch = arch if isinstance(arch, str) else ""
    n_layer = _first(md.get(f"{arch}.block_count"), 0)
    n_head = _first(md.get(f"{arch}.attention.head_count"), 0)
    n_head_kv = _first(md.get(f"{arch}.attention.head_count_kv"), n_head)
    n_expert = _first(md.get(f"{arch}.expert_count"), 0)
    # LLM_TYPE_70B as the architectures that have one set it (src/models/*.cpp)
    is_70b = ((arch == "llama" and n_expert != 8 and n_layer == 80 and n_head != n_head_kv)
              or (arch in ("deci", "olmo", "qwen2") and n_layer == 80) or (arch == "jais2" and n_layer == 68))
    return _Model(arch, n_layer, n_head, n_head_kv, n_expert, is_70b)


def _llama_order(info: TensorInfo) -> tuple[int, str]:
    """llama.cpp's ``weight_name_comparer``: by layer number (-1 for none), then by name."""
    m = _LAYER.match(info.name)
    return (int(m.group(1)) if m else -1, info.name)


# --------------------------------------------------------------------------- the rules


class _State:
    """``quantize_state_impl``'s counters."""

    def __init__(self, src: GGUFFile, model: _Model, has_imatrix: bool):
        names = [t.name for t in src.tensors]
        self.n_attention_wv = sum(category(n) in _ATTN_V for n in names)
        self.tied = "output.weight" not in names
        self.n_ffn = model.n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.has_imatrix = has_imatrix
        self.n_fallback = 0


def _layer(state: _State, model: _Model, counter: int, name: str) -> int:
    """``layer_info``: the counter, or with experts the layer number in the name."""
    if model.n_expert > 1:
        m = _LAYER.match(name)
        if m is None:
            raise ValueError(f"cannot tell the layer of {name!r} (llama.cpp needs blk.N. names in a "
                             f"model with {model.n_expert} experts)")
        i = int(m.group(1))
        if not 0 <= i < state.n_ffn:
            raise ValueError(f"{name!r}: layer {i} is not in [0, {state.n_ffn})")
        return i
    return counter


def _rules(state: _State, model: _Model, r: str, new: str, info: TensorInfo, cat: str,
           output_tensor_type: str | None, token_embedding_type: str | None) -> tuple[str, str]:
    """``llama_tensor_get_type_impl``: (type, why) for a tensor the recipe's rules decide."""
    name, arch, gqa, n_expert = info.name, model.arch, model.n_gqa, model.n_expert
    default = new
    ne2 = info.shape[0] if len(info.shape) >= 3 else 1
    if arch == "glm5-next" and any(p in name for p in ("attn_q_a", "attn_q_b", "nextn.eh_proj")) \
            and new not in ("F32", "BF16", "F16"):
        return "Q8_0", "glm5-next keeps this projection at Q8_0"
    if cat == "output" or (state.tied and cat == "token_embd"):
        what = "output" if cat == "output" else "token_embd (tied to the output)"
        if output_tensor_type is not None:
            return output_tensor_type, f"{what}: output_tensor_type"
        nx, qk = info.shape[-1], _block(new)
        if r == "MXFP4_MOE":
            return "Q8_0", f"{what} in MXFP4_MOE → Q8_0"
        if arch == "falcon" or nx % qk:
            why = "falcon" if arch == "falcon" else f"rows of {nx} not divisible by {new}'s {qk}"
            return "Q8_0", f"{what}: {why} → Q8_0"
        if r in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
            return "Q5_K", f"{what} in {r} → Q5_K"
        if new != "Q8_0":
            return "Q6_K", f"{what} → Q6_K"
        return new, f"{what}: default {new}"
    if r == "MXFP4_MOE":
        if ne2 > 1 and (arch != "bailingmoe3" or cat in ("ffn_up", "ffn_gate", "ffn_down")):
            return "MXFP4", f"expert tensor ({ne2} experts) → MXFP4"
        return "Q8_0", "not an expert tensor in MXFP4_MOE → Q8_0"
    if cat == "token_embd":
        if token_embedding_type is not None:
            return token_embedding_type, "token_embd: token_embedding_type"
        if r in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K", f"token_embd in {r} → Q2_K"
        if r in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S", f"token_embd in {r} → IQ3_S"
        if r in ("TQ1_0", "TQ2_0"):
            return "Q4_K", f"token_embd in {r} → Q4_K"
        return new, f"token_embd: default {new}"
    if r in _IQ2_FAMILY:
        more = "IQ3_S" if r in ("IQ2_S", "IQ2_M") else "Q2_K"
        if cat in _ATTN_V:
            if gqa >= 4 or n_expert >= 4:
                new, why = "Q4_K", f"{cat} with GQA {gqa} / {n_expert} experts → Q4_K"
            else:
                new, why = more, f"{cat} in {r} → {more}"
            state.i_attention_wv += 1
            return new, why
        if n_expert == 8 and cat == "attn_k":
            return "Q4_K", "attn_k with 8 experts → Q4_K"
        if cat == "ffn_down":
            i, n = state.i_ffn_down, state.n_ffn
            state.i_ffn_down += 1
            if i < n // 8:
                return more, f"ffn_down #{i} in the first 1/8 of {n} → {more}"
            return new, f"ffn_down #{i}: default {new}"
        if cat == "attn_output":
            if n_expert == 8:
                return "Q5_K", "attn_output with 8 experts → Q5_K"
            if r in ("IQ1_S", "IQ1_M"):
                return "IQ2_XXS", f"attn_output in {r} → IQ2_XXS"
            if r in ("IQ2_S", "IQ2_M"):
                return "IQ3_S", f"attn_output in {r} → IQ3_S"
        return new, f"default {new}"
    if cat in _ATTN_V:
        i, n = state.i_attention_wv, state.n_attention_wv
        why = f"default {new}"
        if r == "Q2_K":
            new = "Q4_K" if gqa >= 4 else "Q3_K"
            why = f"{cat} in Q2_K with GQA {gqa} → {new}"
        elif r == "Q2_K_S" and gqa >= 4:
            new, why = "Q4_K", f"{cat} with GQA {gqa} ≥ 4 → Q4_K"
        elif r == "IQ3_XXS":
            new = "Q4_K" if gqa >= 4 else "IQ3_S" if not state.has_imatrix else "IQ3_XXS"
            why = (f"{cat} with GQA {gqa} ≥ 4 → Q4_K" if gqa >= 4 else
                   f"{cat} without an imatrix → IQ3_S" if not state.has_imatrix else
                   f"{cat} with an imatrix → IQ3_XXS")
        elif r in ("IQ3_XS", "IQ3_S") and gqa >= 4:
            new, why = "Q4_K", f"{cat} with GQA {gqa} ≥ 4 → Q4_K"
        elif r == "IQ3_M":
            new, why = "Q4_K", f"{cat} in IQ3_M → Q4_K"
        elif r == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
            why = f"{cat} #{i} {'(one of the first two) ' if i < 2 else ''}→ {new}"
        elif r == "Q3_K_L":
            new, why = "Q5_K", f"{cat} in Q3_K_L → Q5_K"
        elif r in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
            new, why = "Q5_K", f"{cat} with GQA {gqa} ≥ 4 → Q5_K"
        elif r in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new, why = "Q6_K", f"{cat} #{i} {_more_bits_why(i, n)} → Q6_K"
        elif r == "Q4_K_S" and i < 4:
            new, why = "Q5_K", f"{cat} #{i} (one of the first four) → Q5_K"
        if model.is_70b and new in ("Q3_K", "Q4_K"):
            new, why = "Q5_K", f"{cat} of a 70B model (8 heads share it) → Q5_K"
        if n_expert == 8:
            new, why = "Q8_0", f"{cat} with 8 experts → Q8_0"
        state.i_attention_wv += 1
        return new, why
    if cat == "attn_k":
        if n_expert == 8:
            return "Q8_0", "attn_k with 8 experts → Q8_0"
        if r == "IQ3_XS":
            return "IQ3_XXS", "attn_k in IQ3_XS → IQ3_XXS"
        if r == "IQ3_XXS":
            return "IQ2_S", "attn_k in IQ3_XXS → IQ2_S"
        return new, f"default {new}"
    if cat == "attn_q":
        if r == "IQ3_XS":
            return "IQ3_XXS", "attn_q in IQ3_XS → IQ3_XXS"
        if r == "IQ3_XXS":
            return "IQ2_S", "attn_q in IQ3_XXS → IQ2_S"
        return new, f"default {new}"
    if cat == "ffn_down":
        i, n = _layer(state, model, state.i_ffn_down, name), state.n_ffn
        state.i_ffn_down += 1
        at, why = f"ffn_down of layer {i}", None
        if r == "Q2_K":
            new, why = "Q3_K", "ffn_down in Q2_K → Q3_K"
        elif r == "Q2_K_S":
            if i < n // 8:
                new, why = "Q4_K", f"{at} in the first 1/8 of {n} → Q4_K"
        elif r == "IQ3_XXS" and not state.has_imatrix:
            new = "Q4_K" if i < n // 8 else "Q3_K"
            why = f"{at} without an imatrix{' in the first 1/8 of ' + str(n) if i < n // 8 else ''} → {new}"
        elif r == "Q3_K_M":
            if i < n // 16:
                new, why = "Q5_K", f"{at} in the first 1/16 of {n} → Q5_K"
            elif arch != "falcon" or use_more_bits(i, n):
                new, why = "Q4_K", f"{at} → Q4_K"
            else:
                new, why = "Q3_K", f"{at} (falcon) → Q3_K"
        elif r == "IQ3_M" and (i < n // 8 or (n_expert == 8 and use_more_bits(i, n))):
            new, why = "Q4_K", f"{at} {_more_bits_why(i, n)} → Q4_K"
        elif r == "Q3_K_L":
            new = "Q4_K" if arch == "falcon" else "Q5_K"
            why = f"ffn_down in Q3_K_L → {new}"
        elif r == "Q4_K_M":
            if arch == "falcon":
                new = "Q6_K" if i < n // 16 else "Q5_K" if use_more_bits(i, n) else "Q4_K"
                why = f"{at} (falcon) → {new}"
            elif use_more_bits(i, n):
                new, why = "Q6_K", f"{at} {_more_bits_why(i, n)} → Q6_K"
        elif i < n // 8 and r in ("IQ4_NL", "IQ4_XS") and not state.has_imatrix:
            new, why = "Q5_K", f"{at} in the first 1/8 of {n}, no imatrix → Q5_K"
        elif r == "Q5_K_M" and use_more_bits(i, n):
            new, why = "Q6_K", f"{at} {_more_bits_why(i, n)} → Q6_K"
        elif r == "Q4_K_S" and arch != "falcon" and i < n // 8:
            new, why = "Q5_K", f"{at} in the first 1/8 of {n} → Q5_K"
        elif r in ("Q4_0", "Q5_0") and state.has_imatrix and i < n // 8:
            new = "Q4_1" if r == "Q4_0" else "Q5_1"
            why = f"{at} in the first 1/8 of {n}, with an imatrix → {new}"
        return new, why or f"default {default}"
    if cat == "attn_output":
        if arch != "falcon":
            if n_expert == 8:
                if r in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                         "IQ3_S", "IQ3_M", "IQ4_XS"):
                    return "Q5_K", "attn_output with 8 experts → Q5_K"
            else:
                more = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K",
                        "IQ3_M": "Q4_K"}.get(r)
                if more:
                    return more, f"attn_output in {r} → {more}"
        elif r == "Q3_K_L":
            return "Q4_K", "attn_output (falcon) in Q3_K_L → Q4_K"
        return new, f"default {new}"
    if cat == "attn_qkv":  # not reached: attn_qkv is attn_v-like above (as in llama.cpp)
        return new, f"default {new}"
    if cat in ("ffn_gate", "ffn_up"):
        counter = state.i_ffn_gate if cat == "ffn_gate" else state.i_ffn_up
        i, n = _layer(state, model, counter, name), state.n_ffn
        if cat == "ffn_gate":
            state.i_ffn_gate += 1
        else:
            state.i_ffn_up += 1
        if r == "IQ3_XS" and n // 8 <= i < 7 * n // 8:
            return "IQ3_XXS", f"{cat} of layer {i}, in the middle 3/4 of {n} → IQ3_XXS"
        return new, f"default {new}"
    return new, f"default {new}"


def _fallback(state: _State, info: TensorInfo, type_name: str, why: str) -> tuple[str, str]:
    """``tensor_type_fallback``: the type rows that ``type_name``'s block does not divide get.

    The registry's ``fallback`` of the type (F16 when even that does not divide the rows); a
    32-block type without one goes straight to F16, a larger block without one is refused.
    """
    n_cols, qk = info.shape[-1], _block(type_name)
    if n_cols % qk == 0:
        return type_name, why
    state.n_fallback += 1
    alt = registry.quant_type(type_name).fallback if type_name in registry.TYPES else None
    if alt is None:
        if qk > 32:
            raise ValueError(f"tensor {info.name!r}: rows of {n_cols} are not a multiple of {type_name}'s "
                             f"block of {qk}, and llama-quantize defines no fallback for {type_name}; "
                             f"choose another recipe or give that tensor a type (tensor_types=)")
        alt = type_name
    if n_cols % _block(alt):
        return "F16", f"{why}; rows of {n_cols} fit neither {type_name} nor {alt} → F16 (fallback)"
    return alt, f"{why}; rows of {n_cols} not divisible by {qk} → {alt} (fallback)"


def _check_direct(info: TensorInfo, type_name: str, option: str) -> None:
    """llama-quantize applies output/token_embedding types without a fallback: refuse rows that do not fit."""
    qk = _block(type_name)
    if info.shape[-1] % qk:
        raise ValueError(f"{option}={type_name!r}: {info.name!r} has rows of {info.shape[-1]}, not a "
                         f"multiple of {type_name}'s block of {qk} (llama-quantize applies this option "
                         f"without a fallback); choose a type whose block divides {info.shape[-1]}")


def plan(src, recipe_name: str, *, pure: bool = False, output_tensor_type: str | None = None,
         token_embedding_type: str | None = None, tensor_types=None, leave_output_tensor: bool = False,
         imatrix=None) -> RecipePlan:
    """Each tensor's type under a llama-quantize recipe, and why; nothing is written.

    Parameters
    ----------
    src : path or GGUFFile
        A GGUF file (read with :func:`qviz.io.gguf_reader.read`), or one already open.
    recipe_name : str
        A llama-quantize file type (:data:`RECIPES`: ``"Q4_K_M"``, ``"IQ2_M"``,
        ``"Q3_K_L"``, ...; case-insensitive; ``"Q4_K"`` is ``"Q4_K_M"`` as in
        llama-quantize).
    pure : bool
        ``--pure``: the default type for every quantized tensor (the
        output/token-embedding options, ``tensor_types`` and row fallbacks
        still apply).
    output_tensor_type, token_embedding_type : str, optional
        ``--output-tensor-type`` / ``--token-embedding-type``: the type of
        ``output.weight`` / ``token_embd.weight`` (with tied embeddings the
        output type also reaches the token embedding, as in llama.cpp).
    tensor_types : mapping of str to str, or iterable, optional
        ``--tensor-type PATTERN=TYPE``: regular expressions (lowercased,
        searched anywhere in the name, as llama-quantize does) -> types; the
        first matching pattern decides and the recipe's rules are skipped
        for that tensor. A mapping, ``(pattern, type)`` pairs or
        ``"PATTERN=TYPE"`` strings.
    leave_output_tensor : bool
        ``--leave-output-tensor``: keep ``output.weight`` as it is.
    imatrix : optional
        Anything not None means "an importance matrix is given" (some rules
        depend on it: IQ3_XXS, IQ4_NL/IQ4_XS, Q4_0/Q5_0 ffn_down).

    Returns
    -------
    RecipePlan
        One :class:`TensorPlan` per tensor; ``.types``, ``.total_bytes``,
        ``.bits_per_weight``; a readable repr and HTML table.

    Raises
    ------
    ValueError
        For an unknown recipe (the closest names and the list), an unknown
        type in an option, or rows a type cannot hold where llama-quantize
        has no fallback.

    Examples
    --------
    >>> import os, tempfile
    >>> from qviz.io.demo import random_llama_gguf
    >>> path = random_llama_gguf(os.path.join(tempfile.mkdtemp(), "tiny.gguf"), tokenizer=False)
    >>> p = plan(path, "Q4_K_M")
    >>> p.types["blk.0.attn_v.weight"], p["blk.0.attn_v.weight"].why
    ('Q6_K', 'attn_v #0 in the first 1/8 of 8 → Q6_K')
    >>> p.types["blk.1.ffn_down.weight"], p.types["output.weight"]
    ('Q4_K', 'Q6_K')
    """
    r = recipe(recipe_name)
    if src is None or isinstance(src, (str, os.PathLike)):
        with read(src) as f:
            return plan(f, r, pure=pure, output_tensor_type=output_tensor_type,
                        token_embedding_type=token_embedding_type, tensor_types=tensor_types,
                        leave_output_tensor=leave_output_tensor, imatrix=imatrix)
    if not isinstance(src, GGUFFile):
        raise TypeError(f"src must be a GGUF path or an open qviz.gguf.GGUFFile, got {type(src).__name__}")
    ott = None if output_tensor_type is None else _check_type(output_tensor_type, "output_tensor_type")
    tet = None if token_embedding_type is None else _check_type(token_embedding_type, "token_embedding_type")
    patterns = _check_patterns(tensor_types)
    options = {"pure": bool(pure), "output_tensor_type": ott, "token_embedding_type": tet,
               "tensor_types": [(p, t) for _, t, p in patterns], "leave_output_tensor": bool(leave_output_tensor),
               "imatrix": imatrix is not None}
    model = _model(src)
    state = _State(src, model, imatrix is not None)
    decided: dict[str, tuple[str, str]] = {}
    for info in sorted(src.tensors, key=_llama_order):
        decided[info.name] = _decide(state, model, r, info, pure, ott, tet, patterns, leave_output_tensor)
    rows = []
    for info in src.tensors:
        new, why = decided[info.name]
        converted = new != info.type_name
        if not converted and not why.startswith("kept"):
            why += f" (already {new}: copied)"
        nbytes = info.n_elements // _block(new) * _type_size(new)
        needs = (not why.startswith("kept")) and requires_imatrix(info.name, new, r.name)
        rows.append(TensorPlan(info.name, tuple(info.shape), info.type_name, new, converted, nbytes, why, needs))
    return RecipePlan(r, tuple(rows), options, state.n_fallback)


def _decide(state: _State, model: _Model, r: Recipe, info: TensorInfo, pure: bool, ott, tet,
            patterns, leave_output_tensor: bool) -> tuple[str, str]:
    """``llama_tensor_get_type``: (type, why) of one tensor."""
    keep = allows_quantization(info, model.arch, not leave_output_tensor)
    if keep is not None:
        return info.type_name, f"kept: {keep}"
    cat = category(info.name)
    if tet is not None and cat == "token_embd":
        named = info.name == "per_layer_token_embd.weight" and any(rx.search(info.name) for rx, _, _ in patterns)
        if not named:
            _check_direct(info, tet, "token_embedding_type")
            return tet, "token_embedding_type"
    if ott is not None and cat == "output":
        _check_direct(info, ott, "output_tensor_type")
        return ott, "output_tensor_type"
    new, why = r.default, f"default {r.default}"
    if not _is_quantized(r.default):
        return new, why
    manual = next(((t, p) for rx, t, p in patterns if rx.search(info.name)), None)
    if manual is not None:
        new, why = manual[0], f"tensor_types {manual[1]!r} → {manual[0]}"
    elif pure:
        why = f"pure: {new}"
    else:
        new, why = _rules(state, model, r.name, new, info, cat, ott, tet)
    return _fallback(state, info, new, why)


def checked_imatrix_path(value) -> bool:
    """Whether ``value`` names an imatrix file (a str or path), checking that it exists.

    Raises
    ------
    FileNotFoundError
        For a path that is not a file, naming it.
    """
    if not isinstance(value, (str, os.PathLike)):
        return False
    if not os.path.isfile(value):
        raise FileNotFoundError(f"imatrix file {os.fspath(value)!r} does not exist (give the path of a "
                                f"llama-imatrix .dat or .gguf file, or a mapping of tensor names to "
                                f"importance vectors)")
    return True
