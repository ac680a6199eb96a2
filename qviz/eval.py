"""How much a quantized model still behaves like the original: perplexity, KL, embeddings.

Takes any torch model: causal language models whose output is logits (or has
``.logits``, as transformers' ``*ForCausalLM``), and encoders whose output is
hidden states (or has ``.last_hidden_state``, as transformers' ``BertModel``).

* :func:`perplexity` with a sliding window over held-out text (default: the
  evaluation part of :func:`qviz.io.calib.default_texts`, 512-token windows);
* :func:`kl_divergence` of the next-token distributions against the
  unquantized model, llama.cpp's preferred measure (``llama-perplexity
  --kl-divergence``), because perplexity can hide changes that cancel out;
* :func:`compare_lm`: both for several models in one pass over the text;
* :func:`embedding_similarity`: mean cosine of normalized mean-pooled sentence
  embeddings against the original (all-MiniLM-L6-v2's sentence embedding).

Sliding window. Windows of ``ctx`` tokens start every ``stride`` tokens
(default ``ctx // 2``); each window scores only the tokens the previous one
did not, so every token after the first is predicted exactly once, with at
least ``ctx - stride`` tokens of context (except in the first window); with
``stride == ctx`` (disjoint windows) each window's first token is not scored. This is
transformers' "perplexity of fixed-length models" recipe. llama.cpp's
``llama-perplexity`` instead cuts the text into disjoint ``ctx`` chunks and
scores the second half of each: the same context per scored token, half the
tokens scored. Numbers from the two are close but not equal.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from qviz.io import calib


class LMScores(NamedTuple):
    """How one language model did on the evaluation text.

    Attributes
    ----------
    perplexity : float
        ``exp(mean negative log-likelihood)`` of the scored tokens.
    kl : float or None
        Mean ``KL(P_reference ‖ P_model)`` per scored token in nats (None
        without a reference).
    top1 : float or None
        Fraction of scored positions where both models' most likely next
        token agree (llama.cpp's "same top p").
    n_tokens : int
        Tokens scored.
    """

    perplexity: float
    kl: float | None
    top1: float | None
    n_tokens: int


def token_ids(data=None, tokenizer=None, *, max_tokens: int | None = None, split: str = "eval") -> list[int]:
    """Token ids to evaluate on.

    Parameters
    ----------
    data : str, list of str, or sequence / array / tensor of int, optional
        Text (needs ``tokenizer``) or token ids. Default: the held-out
        evaluation part of :func:`qviz.io.calib.default_texts`.
    tokenizer : transformers tokenizer, optional
    max_tokens : int, optional
        Keep only the first ``max_tokens``.
    """
    if data is None or isinstance(data, str) or (isinstance(data, (list, tuple)) and data
                                                 and isinstance(data[0], str)):
        if tokenizer is None:
            raise ValueError("text needs a tokenizer: pass tokenizer=, or token ids as data=")
        ids = calib.tokenize(tokenizer, data, split=split)
    else:
        a = np.asarray(data.detach().cpu() if hasattr(data, "detach") else data)
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got dtype {a.dtype}")
        ids = [int(i) for i in a.reshape(-1)]
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 2:
            raise ValueError(f"max_tokens={max_tokens!r}: use an integer >= 2")
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"the evaluation text has {len(ids)} token(s); at least 2 are needed "
                         f"(one to predict from, one to predict)")
    return ids


def windows(n: int, ctx: int = 512, stride: int | None = None) -> list[tuple[int, int, int]]:
    """The sliding windows over ``n`` tokens: (begin, end, tokens scored at the end).

    Examples
    --------
    >>> windows(10, ctx=4, stride=2)
    [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    """
    if isinstance(ctx, bool) or not isinstance(ctx, (int, np.integer)) or ctx < 2:
        raise ValueError(f"ctx={ctx!r}: use a window of at least 2 tokens (ctx >= 2), e.g. 512")
    stride = ctx // 2 if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= ctx:
        raise ValueError(f"stride={stride!r}: use a step of 1 to ctx={ctx} tokens (stride <= ctx)")
    out, prev_end, begin = [], 0, 0
    while prev_end < n:
        end = min(begin + ctx, n)
        scored = min(end - prev_end, end - begin - 1)  # a window's first token has no prediction
        out.append((begin, end, scored))
        prev_end = end
        begin += stride
    return out


def _logits(model, ids):
    """float32 logits (L, vocab) of a causal LM on ids (1, L)."""
    import inspect

    params = inspect.signature(getattr(model, "forward", model)).parameters
    kwargs = {"use_cache": False} if "use_cache" in params else {}
    out = model(ids.to(calib.model_device(model)), **kwargs)
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim != 3:
        raise ValueError(f"the model returned shape {tuple(out.shape)}; a causal LM returns "
                         f"logits (batch, seq, vocab)")
    return out[0].float()


def compare_lm(models, reference=None, data=None, tokenizer=None, *, ctx: int = 512,
               stride: int | None = None, max_tokens: int | None = None,
               progress: bool = True) -> dict[str, LMScores]:
    """Perplexity (and KL, top-1 agreement against ``reference``) of several models in one pass.

    Parameters
    ----------
    models : dict of name -> torch.nn.Module, or one module
        Causal language models over the same vocabulary.
    reference : torch.nn.Module, optional
        The unquantized model; its window logits are computed once per window.
    data, tokenizer, max_tokens
        What to evaluate on (:func:`token_ids`).
    ctx, stride : int
        Window length and step (default ``ctx // 2``); see the module notes.
    progress : bool
        A ``tqdm.auto`` bar over the windows.

    Returns
    -------
    dict of name -> LMScores
        Name ``"model"`` when a single module was given.
    """
    import torch
    from tqdm.auto import tqdm

    if not isinstance(models, dict):
        models = {"model": models}
    ids = token_ids(data, tokenizer, max_tokens=max_tokens)
    plan = windows(len(ids), ctx, stride)
    all_ids = torch.tensor(ids, dtype=torch.long)
    sums = {k: np.zeros(3) for k in models}  # nll, kl, top-1 matches (float64)
    n = 0
    with torch.inference_mode():
        for begin, end, scored in tqdm(plan, desc="windows", disable=not progress, leave=False):
            window = all_ids[begin:end][None]
            targets = all_ids[end - scored:end]
            ref = None
            if reference is not None:
                ref = torch.log_softmax(_logits(reference, window)[-scored - 1:-1], dim=-1)
            for name, model in models.items():
                logp = torch.log_softmax(_logits(model, window)[-scored - 1:-1], dim=-1)
                s = sums[name]
                s[0] -= float(logp.gather(1, targets[:, None].to(logp.device)).double().sum())
                if ref is not None:
                    s[1] += float((ref.exp() * (ref - logp)).sum(dim=-1).double().sum())
                    s[2] += float((ref.argmax(-1) == logp.argmax(-1)).sum())
            n += scored
    out = {}
    for name, (nll, kl, same) in sums.items():
        has_ref = reference is not None
        out[name] = LMScores(math.exp(nll / n), float(kl / n) if has_ref else None,
                             float(same / n) if has_ref else None, n)
    return out


def perplexity(model, data=None, tokenizer=None, *, ctx: int = 512, stride: int | None = None,
               max_tokens: int | None = None, progress: bool = True) -> float:
    """Perplexity of a causal language model with a sliding window.

    Parameters
    ----------
    model : torch.nn.Module or callable
        Returns logits (batch, seq, vocab) for ids (batch, seq), or an object
        with ``.logits`` (transformers).
    data : str, list of str, or token ids, optional
        Default: the held-out part of :func:`qviz.io.calib.default_texts`.
    tokenizer : transformers tokenizer, optional
        Needed for text.
    ctx : int
        Window length (tokens).
    stride : int, optional
        Step between windows, default ``ctx // 2``.
    max_tokens : int, optional
        Evaluate the first ``max_tokens`` tokens only.
    progress : bool

    Returns
    -------
    float
        ``exp`` of the mean negative log-likelihood, every token after the
        first scored once.

    Examples
    --------
    >>> import torch
    >>> uniform = lambda ids: torch.zeros(1, ids.shape[1], 8)   # every token equally likely
    >>> round(perplexity(uniform, [1, 2, 3, 4, 5], progress=False), 6)
    8.0
    """
    return compare_lm({"model": model}, None, data, tokenizer, ctx=ctx, stride=stride,
                      max_tokens=max_tokens, progress=progress)["model"].perplexity


def kl_divergence(model, reference, data=None, tokenizer=None, *, ctx: int = 512,
                  stride: int | None = None, max_tokens: int | None = None,
                  progress: bool = True) -> float:
    """Mean ``KL(P_reference ‖ P_model)`` of the next-token distributions, in nats per token.

    The same windows and scored tokens as :func:`perplexity`; llama.cpp's
    ``--kl-divergence`` reports the same mean (over its own chunks).

    Parameters
    ----------
    model : torch.nn.Module
        The quantized model.
    reference : torch.nn.Module
        The unquantized model (same vocabulary).
    data, tokenizer, ctx, stride, max_tokens, progress
        As for :func:`perplexity`.

    Returns
    -------
    float
        >= 0; exactly 0 for a model against itself.
    """
    return compare_lm({"model": model}, reference, data, tokenizer, ctx=ctx,
                      stride=stride, max_tokens=max_tokens, progress=progress)["model"].kl


def default_sentences(n: int = 256, min_chars: int = 40) -> list[str]:
    """Paragraphs of the held-out pydoc text, as sentences to embed (the first ``n``).

    Examples
    --------
    >>> len(default_sentences(5))
    5
    """
    out = []
    for text in calib.default_texts("eval"):
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= min_chars and not set(para) <= set("*=-~^ "):
                out.append(para)
    return out[:n]


def embed(model, tokenizer, texts, *, batch_size: int = 32, max_length: int = 256) -> np.ndarray:
    """Sentence embeddings: mean of the last hidden states over real tokens, L2-normalized.

    This is all-MiniLM-L6-v2's sentence-transformers pipeline (mean pooling,
    then ``Normalize``), with its ``max_seq_length`` of 256.

    Parameters
    ----------
    model : torch.nn.Module
        An encoder returning hidden states (batch, seq, dim), or an object with
        ``.last_hidden_state`` (transformers ``BertModel``).
    tokenizer : transformers tokenizer
    texts : list of str
    batch_size, max_length : int

    Returns
    -------
    ndarray, shape (n_texts, dim), float32
    """
    import torch

    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    device = calib.model_device(model)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc)
            hidden = getattr(hidden, "last_hidden_state", hidden)
            if isinstance(hidden, (tuple, list)):
                hidden = hidden[0]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, seq, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def embedding_similarity(model, reference, tokenizer, texts=None, *, batch_size: int = 32,
                         max_length: int = 256) -> float:
    """Mean cosine between a model's sentence embeddings and the reference model's.

    Parameters
    ----------
    model : torch.nn.Module
        The quantized encoder.
    reference : torch.nn.Module
        The original encoder.
    tokenizer : transformers tokenizer
    texts : list of str, optional
        Default :func:`default_sentences` (256 held-out pydoc paragraphs).
    batch_size, max_length : int

    Returns
    -------
    float
        In [-1, 1]; 1 for a model against itself.
    """
    texts = default_sentences() if texts is None else texts
    a = embed(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    b = embed(reference, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    return float(np.mean(np.sum(a.astype(np.float64) * b, axis=1)))
