"""Calibration: text in, per-layer statistics of the input activations out.

Run text through any torch model and keep, for every ``nn.Linear`` (by module
name), what the quantization methods need from its inputs ``x`` (n × in):

* GPTQ's Hessian ``H = (2/n)·Σ xᵢxᵢᵀ`` (the convention of
  :func:`qviz.algorithms.gptq.hessian`);
* AWQ's per-channel mean ``|x|`` (``get_act_scale`` in llm-awq / AutoAWQ);
* llama.cpp's importance matrix, the per-channel mean ``x²`` (``llama-imatrix``);
* a capped uniform random sample of the rows of ``x``, for output-error plots.

The statistics are streamed: each batch adds its sums and is dropped, so the
memory is ``in²`` per layer however much text runs through.

The default text is English prose that ships with Python: the help topics of
``pydoc_data.topics`` (the reference manual's sections), split by topic into a
calibration part and a held-out evaluation part (:func:`default_texts`).
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

import numpy as np

from qviz.arrays import as_activations

log = logging.getLogger(__name__)

SPLITS = ("calib", "eval")


def imatrix(x, n_cols: int | None = None) -> np.ndarray:
    """llama.cpp's importance vector: the mean of squared activations per input column.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_cols) or (batch, seq, n_cols)
        Inputs of one linear layer.
    n_cols : int, optional
        Expected width (the weight's input columns), checked when given.

    Returns
    -------
    ndarray, shape (n_cols,), float32
        Accumulated in float64, as ``mean(x**2, axis=0)``.

    Examples
    --------
    >>> imatrix(np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32))
    array([5., 2.], dtype=float32)
    """
    x = as_activations(x, np.shape(x)[-1] if n_cols is None else n_cols, name="x")
    return np.mean(np.square(x, dtype=np.float64), axis=0).astype(np.float32)


def default_texts(split: str = "calib") -> list[str]:
    """English prose from CPython's ``pydoc_data.topics``, one text per help topic.

    The distinct topic texts, sorted by topic name, alternate: even positions
    are the calibration part, odd positions the held-out evaluation part, so
    no text is in both.
    With SmolLM2's tokenizer (Python 3.11) that is about 47k calibration and
    66k evaluation tokens. The text is fixed for a given Python version.

    Parameters
    ----------
    split : {"calib", "eval"}

    Returns
    -------
    list of str

    Examples
    --------
    >>> calib, held_out = default_texts("calib"), default_texts("eval")
    >>> set(calib) & set(held_out)
    set()
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use 'calib' (calibration) or 'eval' (held-out evaluation)")
    from pydoc_data.topics import topics

    texts = list(dict.fromkeys(topics[k] for k in sorted(topics)))  # 'if' and 'else' share a text
    return [t for i, t in enumerate(texts) if i % 2 == SPLITS.index(split)]


def tokenize(tokenizer, texts=None, *, split: str = "calib") -> list[int]:
    """Token ids of ``texts`` joined by blank lines, without special tokens.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    texts : str or list of str, optional
        Default :func:`default_texts` (``split``).
    """
    texts = default_texts(split) if texts is None else texts
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a string or a list of strings")
    return list(tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"])


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (BERT: [CLS] and [SEP]; SmolLM2: none).

    Found by encoding one word with and without special tokens.
    """
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare):])
    return [], []


def calibration_batches(tokenizer, texts=None, *, seq_len: int = 512, n_sequences: int = 128,
                        batch_size: int = 8) -> list:
    """Cut text into ``n_sequences`` consecutive sequences of ``seq_len`` tokens.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        Its special tokens are added around every sequence (BERT's [CLS] and
        [SEP]; nothing for SmolLM2), inside the ``seq_len``.
    texts : str or list of str, optional
        Default: :func:`default_texts` ``("calib")``.
    seq_len : int
        Tokens per sequence.
    n_sequences : int
        At most this many sequences; fewer when the text is shorter (logged).
        GPTQ's reference draws 128 random windows of 2048 tokens from C4; these
        are consecutive windows of a fixed text instead, so runs repeat.
    batch_size : int
        Sequences per batch.

    Returns
    -------
    list of torch.Tensor, each shape (b, seq_len), int64

    Raises
    ------
    ValueError
        When the text has fewer than ``seq_len`` tokens (the message says how
        many it has and how many are needed).
    """
    import torch

    for name, v in (("seq_len", seq_len), ("n_sequences", n_sequences), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r}: use a positive integer")
    before, after = special_tokens(tokenizer)
    n_special = len(before) + len(after)
    body = seq_len - n_special
    if body < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room beside {n_special} special tokens")
    ids = tokenize(tokenizer, texts)
    if len(ids) < body:
        raise ValueError(f"the calibration text has {len(ids)} tokens; one sequence of seq_len={seq_len} "
                         f"needs at least {body}: pass more text or a smaller seq_len")
    n = min(n_sequences, len(ids) // body)
    if n < n_sequences:
        log.info("calibration text gives %d sequences of %d tokens (asked for %d)", n, seq_len, n_sequences)
    rows = [before + ids[i * body:(i + 1) * body] + after for i in range(n)]
    data = torch.tensor(rows, dtype=torch.long)  # (n, seq_len)
    return list(torch.split(data, batch_size))


def as_batches(data, batch_size: int = 8) -> list[dict]:
    """Normalize token batches to a list of ``{"input_ids": (b, s), ["attention_mask": (b, s)]}``.

    Parameters
    ----------
    data : torch.Tensor or ndarray, shape (n, seq) or (seq,), integer; or a list of
        such tensors or of dicts with ``input_ids`` (and ``attention_mask``)
        A 2-D tensor is split into batches of ``batch_size`` rows.
    """
    import torch

    def one(b):
        if isinstance(b, dict) or hasattr(b, "keys"):
            if "input_ids" not in b:
                raise ValueError(f"a batch dict needs 'input_ids', got keys {sorted(b)}")
            out = {k: _ids(b[k], k) for k in ("input_ids", "attention_mask") if k in b}
            if "attention_mask" in out and out["attention_mask"].shape != out["input_ids"].shape:
                raise ValueError("attention_mask and input_ids have different shapes")
            return [out]
        t = _ids(b, "input_ids")
        return [{"input_ids": c} for c in torch.split(t, batch_size)]

    if isinstance(data, (torch.Tensor, np.ndarray, dict)) or hasattr(data, "keys"):
        batches = one(data)
    elif isinstance(data, (list, tuple)):
        batches = [x for b in data for x in one(b)]
    else:
        raise TypeError(f"pass a tokenizer, or token ids as a tensor (n, seq) or a list of tensors or "
                        f"dicts with 'input_ids'; got {type(data).__name__}")
    if not batches or sum(b["input_ids"].numel() for b in batches) == 0:
        raise ValueError("the token batches are empty; pass at least one sequence of token ids")
    return batches


def _ids(t, name: str):
    import torch

    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{name} must be integer token ids, got {t.dtype}")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be (batch, seq) or (seq,), got shape {tuple(t.shape)}")
    return t.long()


@dataclass(frozen=True)
class LayerStats:
    """What calibration kept of one Linear layer's inputs x (n × in).

    Attributes
    ----------
    name : str
        Module name in the model (``"model.layers.0.self_attn.q_proj"``).
    n_samples : int
        Rows (tokens) seen.
    hessian : ndarray, shape (in, in), float32, or None
        ``(2/n)·XᵀX``, GPTQ's ``H`` (:func:`qviz.algorithms.gptq.hessian`);
        None when :func:`capture` was told ``hessian=False``.
    mean_abs : ndarray, shape (in,), float32
        ``mean |x|`` per input channel (AWQ's activation scale).
    imatrix : ndarray, shape (in,), float32
        ``mean x²`` per input channel (llama.cpp's importance matrix).
    sample : ndarray, shape (m, in), float32
        ``m = min(n_samples, max_samples)`` rows drawn uniformly without
        replacement (in the order they were seen).
    """

    name: str
    n_samples: int
    hessian: np.ndarray
    mean_abs: np.ndarray
    imatrix: np.ndarray
    sample: np.ndarray

    def __repr__(self) -> str:
        return (f"LayerStats({self.name!r}, n_samples={self.n_samples}, in={self.mean_abs.shape[0]}, "
                f"sample={self.sample.shape})")


class Accumulator:
    """Streaming sums of a layer's inputs: XᵀX, Σ|x|, Σx² and a reservoir sample.

    Each batch's sums are computed in float32 on the activations' device and
    added to float64 totals; rows are sampled by keeping the ``max_samples``
    smallest random keys (a uniform sample without replacement).

    Parameters
    ----------
    n_cols : int
    max_samples : int
    generator : torch.Generator
        CPU generator for the sample keys (seeded by the caller).
    hessian : bool
        Accumulate XᵀX (in² memory) — False when only the vectors are needed.
    """

    def __init__(self, n_cols: int, max_samples: int, generator, hessian: bool = True):
        import torch

        self.n = 0
        self.n_cols = n_cols
        self.max_samples = max_samples
        self.generator = generator
        self.xtx = torch.zeros(n_cols, n_cols, dtype=torch.float64) if hessian else None
        self.abs_sum = torch.zeros(n_cols, dtype=torch.float64)
        self.sq_sum = torch.zeros(n_cols, dtype=torch.float64)
        self.keys = torch.empty(0)
        self.rows = torch.empty(0, n_cols)
        self.order = torch.empty(0, dtype=torch.long)

    def add(self, x) -> None:
        """Add rows ``x`` (m, n_cols), any float dtype and device."""
        import torch

        x = x.detach().reshape(-1, self.n_cols).float()
        if x.shape[0] == 0:
            return
        if self.xtx is not None:
            self.xtx += (x.T @ x).double().cpu()
        self.abs_sum += x.abs().sum(0).double().cpu()
        self.sq_sum += x.square().sum(0).double().cpu()
        if self.max_samples:  # keep the max_samples rows with the smallest random keys
            keys = torch.cat([self.keys, torch.rand(x.shape[0], generator=self.generator)])
            rows = torch.cat([self.rows, x.cpu()])
            order = torch.cat([self.order, torch.arange(self.n, self.n + x.shape[0])])
            keep = torch.argsort(keys)[: self.max_samples]
            self.keys, self.rows, self.order = keys[keep], rows[keep], order[keep]
        self.n += x.shape[0]

    def stats(self, name: str) -> LayerStats:
        """The layer's :class:`LayerStats`."""
        if self.n == 0:
            raise ValueError(f"layer {name!r} saw no inputs: the model never called it on this data")
        hessian = (self.xtx * (2.0 / self.n)).float().numpy() if self.xtx is not None else None
        by_time = np.argsort(self.order.numpy(), kind="stable")
        return LayerStats(
            name=name, n_samples=self.n, hessian=hessian,
            mean_abs=(self.abs_sum / self.n).float().numpy(),
            imatrix=(self.sq_sum / self.n).float().numpy(),
            sample=np.ascontiguousarray(self.rows.numpy()[by_time], dtype=np.float32),
        )


def linear_layers(model) -> dict:
    """Every ``nn.Linear`` of ``model`` by module name (model order).

    Raises
    ------
    ValueError
        When the model has none.
    """
    import torch

    found = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if not found:
        raise ValueError(f"{type(model).__name__} has no torch.nn.Linear layers; qviz calibrates and "
                         f"quantizes nn.Linear weights (GPT-2's Conv1D is not one)")
    return found


def pick_layers(model, layers=None) -> dict:
    """The Linear layers named in ``layers`` (all when None), checked."""
    found = linear_layers(model)
    if layers is None:
        return found
    if isinstance(layers, str):
        layers = [layers]
    out = {}
    for name in layers:
        if name not in found:
            near = difflib.get_close_matches(name, found, n=3, cutoff=0.5)
            raise ValueError(f"{name!r} is not an nn.Linear of this model; closest: {near} "
                             f"(qviz.io.calib.linear_layers(model) lists them)")
        out[name] = found[name]
    return out


def model_device(model):
    """Device of the model's first parameter (CPU for a model without parameters)."""
    import torch

    p = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def call_model(model, batch: dict):
    """Run ``model`` on one batch of token ids, on the model's device.

    transformers-style models (a ``forward`` taking ``input_ids``) get keyword
    arguments, the attention mask and ``use_cache=False``; any other module
    gets the ids as its one positional argument.
    """
    import inspect

    device = model_device(model)
    params = inspect.signature(model.forward).parameters
    if "input_ids" not in params:
        return model(batch["input_ids"].to(device))
    kwargs = {k: v.to(device) for k, v in batch.items() if k in params}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return model(**kwargs)


def _is_tokenizer(obj) -> bool:
    return callable(obj) and hasattr(obj, "encode") and hasattr(obj, "decode")


def resolve_data(model, tokenizer_or_batches, texts=None, *, seq_len=512, n_sequences=128,
                 batch_size=8) -> list[dict]:
    """Batches from a tokenizer (default text or ``texts``) or given token ids."""
    if _is_tokenizer(tokenizer_or_batches):
        batches = calibration_batches(tokenizer_or_batches, texts, seq_len=seq_len,
                                      n_sequences=n_sequences, batch_size=batch_size)
        return as_batches(batches)
    if texts is not None:
        raise ValueError("texts= needs a tokenizer as the second argument, not token batches")
    return as_batches(tokenizer_or_batches, batch_size)


def run_batches(model, batches: list[dict], hooks: dict, *, progress: bool = True,
                desc: str = "calibration") -> None:
    """Run ``model`` on each batch with ``hooks`` (module -> fn(x2d)) collecting Linear inputs.

    Padded positions (``attention_mask == 0``) are left out of what the hooks see.
    """
    import torch
    from tqdm.auto import tqdm

    mask = {"current": None}

    def make_hook(fn):
        def hook(module, args, output):
            x = args[0]
            m = mask["current"]
            if m is not None and tuple(x.shape[:-1]) == tuple(m.shape):
                x = x[m.to(x.device).bool()]
            fn(x.reshape(-1, x.shape[-1]))
        return hook

    handles = [mod.register_forward_hook(make_hook(fn)) for mod, fn in hooks.items()]
    try:
        with torch.no_grad():
            for b in tqdm(batches, desc=desc, disable=not progress, leave=False):
                mask["current"] = b.get("attention_mask")
                call_model(model, b)
    finally:
        for h in handles:
            h.remove()


def capture(model, tokenizer_or_batches, layers=None, *, texts=None, max_samples: int = 1024,
            hessian: bool = True, seq_len: int = 512, n_sequences: int = 128, batch_size: int = 8,
            seed: int = 0, progress: bool = True) -> dict[str, LayerStats]:
    """Run text through a torch model and keep statistics of every Linear layer's inputs.

    Parameters
    ----------
    model : torch.nn.Module
        Any model with ``nn.Linear`` layers taking token ids: transformers
        models get ``input_ids``, ``attention_mask`` and ``use_cache=False``,
        others the ids positionally. Not modified; runs in ``no_grad``.
    tokenizer_or_batches : tokenizer, or token ids
        A transformers tokenizer (then ``texts``, default the calibration part
        of :func:`default_texts`, is cut into ``n_sequences`` sequences of
        ``seq_len`` tokens), or token ids: a tensor (n, seq), or a list of
        tensors or of dicts with ``input_ids`` and ``attention_mask``.
    layers : list of str, optional
        Module names of the Linear layers to watch; default all.
    texts : str or list of str, optional
        Calibration text (with a tokenizer only).
    max_samples : int
        Cap of the random sample of input rows kept per layer (0: none).
    hessian : bool
        Accumulate GPTQ's Hessian (``in²`` floats per layer).
    seq_len, n_sequences, batch_size : int
        How text is cut (:func:`calibration_batches`).
    seed : int
        Seed of the row sample.
    progress : bool
        A ``tqdm.auto`` bar over the batches.

    Returns
    -------
    dict
        Module name -> :class:`LayerStats` (``hessian`` None when not asked).

    Raises
    ------
    ValueError
        Too little text (the message says how many tokens are needed), empty
        batches, a model without Linear layers, or an unknown layer name.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3))
    >>> st = capture(model, torch.arange(10)[None], progress=False)["1"]
    >>> st.n_samples, st.hessian.shape, st.sample.shape
    (10, (4, 4), (10, 4))
    """
    import torch

    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 0:
        raise ValueError(f"max_samples={max_samples!r}: use a number of rows >= 0")
    chosen = pick_layers(model, layers)
    batches = resolve_data(model, tokenizer_or_batches, texts, seq_len=seq_len,
                           n_sequences=n_sequences, batch_size=batch_size)
    gen = torch.Generator().manual_seed(seed)
    acc = {name: Accumulator(m.in_features, int(max_samples), gen, hessian) for name, m in chosen.items()}
    run_batches(model, batches, {m: acc[name].add for name, m in chosen.items()}, progress=progress)
    return {name: a.stats(name) for name, a in acc.items()}
