"""``suggest_types``: a GGUF type per tensor that meets a bits-per-weight budget.

Every candidate tensor is quantized with every candidate type (what the row
length really allows: llama-quantize's fallback types included), giving each
tensor a few options ``(bytes, error)``. Choosing one option per tensor so that
the bytes fit the budget and the summed error is least is a multiple-choice
knapsack; :func:`choose` solves it by dynamic programming over the Pareto
frontier of (total bits, total error) pairs, tensor by tensor.

The error of a tensor is its summed squared weight error ``Σ (w - ŵ)²`` (its
MSE × n_elements), or with an importance matrix (llama.cpp imatrix: the mean
squared input activation of every column) ``Σ_j imatrix[j] · Σ_i (w_ij - ŵ_ij)²``,
the expected squared output error of the layer. With an imatrix the tensors
are also quantized with it, as ``llama-quantize --imatrix`` does.
"""
from __future__ import annotations

import contextlib
import fnmatch
import html
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qviz import registry

#: frontier points kept per step of :func:`choose`; beyond it the frontier is thinned
MAX_STATES = 4096


@dataclass(frozen=True)
class Option:
    """One way to store one tensor.

    Attributes
    ----------
    type_name : str
        The GGUF type the tensor really gets (after any row-length fallback).
    n_bytes : int
        Bytes of its data in that type.
    error : float
        Summed squared weight error, imatrix-weighted when an imatrix was given.
    """

    type_name: str
    n_bytes: int
    error: float


@dataclass(frozen=True)
class Plan:
    """The types :func:`suggest_types` chose, and what they cost.

    Attributes
    ----------
    types : dict of str to str
        fnmatch pattern matching exactly one tensor name -> its GGUF type; pass it
        as ``qviz.gguf.requantize(src, dst, types=plan.types)``.
    rows : list of dict
        One per planned tensor: ``name``, ``shape``, ``from`` (its type now),
        ``type``, ``bits_per_weight``, ``bytes``, ``error``.
    target_bpw : float
        The budget asked for.
    bits_per_weight : float
        What the plan uses, over the planned tensors.
    error : float
        Summed error of the plan.
    error_measure : str
        ``"squared error"`` or ``"imatrix-weighted squared error"``.
    n_bytes : int
        Bytes of the planned tensors' data.
    file_bytes : int or None
        For a GGUF source: its size with the planned tensors replaced (the
        header may differ by a few bytes: requantize updates two metadata keys).
    """

    types: dict[str, str]
    rows: list[dict]
    target_bpw: float
    bits_per_weight: float
    error: float
    error_measure: str
    n_bytes: int
    file_bytes: int | None = None

    def table(self) -> list[dict]:
        """The rows, for display (``pandas.DataFrame(plan.table())``)."""
        return [dict(r) for r in self.rows]

    def _repr_html_(self) -> str:
        size = f"{self.n_bytes:,} bytes of planned tensors"
        if self.file_bytes is not None:
            size += f"; file ≈ {self.file_bytes:,} bytes ({self.file_bytes / 2**20:.1f} MiB)"
        head = (f"<p>{len(self.rows)} tensors at {self.bits_per_weight:.4f} bits per weight "
                f"(target {self.target_bpw:g}); {html.escape(self.error_measure)} "
                f"{self.error:.4g}; {size}</p>")
        cols = ("name", "shape", "from", "type", "bits_per_weight", "bytes", "error")
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>"
            for r in self.rows)
        heads = "".join(f"<th>{c}</th>" for c in cols)
        return f"{head}<table><tr>{heads}</tr>{cells}</table>"

    def __repr__(self) -> str:
        return (f"Plan({len(self.rows)} tensors, {self.bits_per_weight:.4f} bpw "
                f"(target {self.target_bpw:g}), error={self.error:.4g})")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return " × ".join(map(str, v))
    return str(v)


def exact_pattern(name: str) -> str:
    """An fnmatch pattern that matches ``name`` and nothing else.

    Examples
    --------
    >>> exact_pattern("blk.0.ffn_up.weight"), exact_pattern("a[1]*")
    ('blk.0.ffn_up.weight', 'a[[]1][*]')
    """
    return re.sub(r"([*?\[])", r"[\1]", name)


def _check_candidates(candidates) -> list[str]:
    """The candidate types spelled as registered (every registered type by default)."""
    known = registry.types()
    if candidates is None:
        return list(known)
    if isinstance(candidates, str):
        candidates = [candidates]
    names = list(candidates)
    if not names:
        raise ValueError(f"candidates {names!r}: choose GGUF types from {', '.join(known)}")
    out = []
    for c in names:
        try:
            out.append(registry.quant_type(c).name)
        except (TypeError, ValueError) as e:
            raise ValueError(f"candidates {c!r}: {e}") from None
    return out


def type_options(w, candidates=None, imatrix=None) -> list[Option]:
    """Every way to store weight ``w`` in the candidate types, with its error.

    Parameters
    ----------
    w : array_like, shape (n_rows, n_cols)
        The weight (float).
    candidates : list of str, optional
        GGUF types (default: every registered type, :func:`qviz.registry.types`,
        less those that need an importance matrix when ``imatrix`` is None). Each
        resolves to the type its rows really get (llama-quantize's fallback);
        one that fits neither way is left out, and so is a repeated type.
    imatrix : array_like, shape (n_cols,), optional
        Importances: quantize with them and weight the error by them.

    Returns
    -------
    list of Option
        In candidate order, possibly empty.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    >>> [(o.type_name, o.n_bytes) for o in type_options(w, ["Q8_0", "Q4_K"])]
    [('Q8_0', 272), ('Q5_0', 176)]
    """
    from qviz.api import quantize
    from qviz.arrays import as_weight
    from qviz.quantizers import check_imatrix, resolve_type

    w = as_weight(w)
    im = check_imatrix(imatrix, w.shape[1])
    weights = np.ones(w.shape[1]) if im is None else im.astype(np.float64)
    options, seen = [], set()
    for name in _check_candidates(candidates):
        try:
            real = resolve_type(name, w.shape[1], fallback=True)
        except ValueError:  # neither the type nor its fallback divides the rows
            continue
        if real in seen or (im is None and candidates is None and registry.quant_type(real).requires_imatrix):
            continue
        seen.add(real)
        r = quantize(w, real, imatrix=im)
        sq = np.square(w.astype(np.float64) - r.dequantize().astype(np.float64))
        options.append(Option(real, r.nbytes, float(sq.sum(axis=0) @ weights)))
    return options


def choose(options: list[list[Option]], budget_bits: int, max_states: int = MAX_STATES) -> list[int]:
    """One option per tensor: least total error with total bits ≤ ``budget_bits``.

    Dynamic programming over tensors; the states after each tensor are the
    Pareto frontier of (total bits, total error) of the tensors so far, so a
    state with more bits and no less error than another is dropped, and so is
    one that cannot fit even if every remaining tensor took its smallest
    option. Exact while a frontier has at most ``max_states`` points; a larger
    one is thinned to ``max_states`` points spread evenly along it (then the
    result respects the budget but may miss the optimum).

    Parameters
    ----------
    options : list of list of Option
        Per tensor, its options (at least one each).
    budget_bits : int
        Most bits all tensors together may take.
    max_states : int
        Frontier size limit.

    Returns
    -------
    list of int
        The chosen option's index for every tensor.

    Raises
    ------
    ValueError
        When even the smallest options exceed the budget.

    Examples
    --------
    >>> a = [Option("Q4_K", 144, 9.0), Option("Q8_0", 272, 1.0)]
    >>> b = [Option("Q4_K", 144, 2.0), Option("Q8_0", 272, 0.5)]
    >>> choose([a, b], budget_bits=(144 + 272) * 8)  # one tensor may take Q8_0: the worse one
    [1, 0]
    """
    if isinstance(max_states, bool) or not isinstance(max_states, (int, np.integer)) or max_states < 1:
        raise ValueError(f"max_states={max_states!r}: give a positive number of frontier points")
    bits = [np.array([o.n_bytes * 8 for o in opts], dtype=np.int64) for opts in options]
    errs = [np.array([o.error for o in opts], dtype=np.float64) for opts in options]
    if any(len(b) == 0 for b in bits):
        raise ValueError("every tensor needs at least one option")
    # rest[i]: fewest bits tensors i.. can take
    rest = np.concatenate([np.cumsum([int(b.min()) for b in bits][::-1])[::-1], [0]])
    if rest[0] > budget_bits:
        raise ValueError(f"the budget of {budget_bits} bits is below the {int(rest[0])} bits "
                         f"the smallest types need")
    state_bits, state_err = np.zeros(1, np.int64), np.zeros(1)
    history = []  # per tensor: (parent state, option) of every new state
    for i, (b, e) in enumerate(zip(bits, errs)):
        cand_bits = (state_bits[:, None] + b[None, :]).ravel()  # (n_states * n_options,)
        cand_err = (state_err[:, None] + e[None, :]).ravel()
        parent = np.repeat(np.arange(len(state_bits)), len(b))
        option = np.tile(np.arange(len(b)), len(state_bits))
        fits = np.flatnonzero(cand_bits + rest[i + 1] <= budget_bits)
        order = fits[np.lexsort((cand_err[fits], cand_bits[fits]))]  # by bits, then error
        errs_sorted = cand_err[order]
        # Pareto: keep a point only if its error is below every point with fewer bits
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], errs_sorted[:-1]]))
        keep = order[errs_sorted < best_before]
        if len(keep) > max_states:
            keep = keep[np.unique(np.linspace(0, len(keep) - 1, max_states).round().astype(int))]
        state_bits, state_err = cand_bits[keep], cand_err[keep]
        history.append((parent[keep], option[keep]))
    state = int(np.argmin(state_err))  # the frontier's last point; argmin says why
    picks = []
    for parent, option in reversed(history):
        picks.append(int(option[state]))
        state = int(parent[state])
    return picks[::-1]


def named_weights(model, layers=None) -> dict:
    """The weights to work on: name -> 2-D float32 array.

    Parameters
    ----------
    model : torch.nn.Module or mapping of str to array_like
        A module (its ``nn.Linear`` layers, named as ``named_modules`` names
        them) or a mapping of names to (out, in) weights.
    layers : str or list of str, optional
        fnmatch patterns of the names to keep (default: all); each must match.

    Returns
    -------
    dict of str to ndarray, shape (n_out, n_in), float32
        Read only, never modified; may share memory with the model.
    """
    from qviz.arrays import as_weight

    if isinstance(model, Mapping):
        found = dict(model)
    elif hasattr(model, "named_modules"):
        import torch

        found = {name: m.weight for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear)}
    else:
        raise TypeError(f"expected a torch module or a mapping of names to weights, "
                        f"got {type(model).__name__}")
    if layers is not None:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in found):
                raise ValueError(f"layers pattern {p!r} matches none of the {len(found)} "
                                 f"layers (e.g. {', '.join(list(found)[:3])})")
        found = {n: v for n, v in found.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if not found:
        raise ValueError("no layers to work on: the model has no nn.Linear (or the mapping is empty)")
    return {name: as_weight(v, name=name) for name, v in found.items()}


def _gguf_weights(f, tensors) -> tuple[dict, dict]:
    """The tensors of GGUF file ``f`` requantize would quantize -> (name -> weight, name -> type)."""
    from qviz.io.gguf_writer import requested_type

    infos = [t for t in f.tensors if requested_type(t, {"*": "F16"}) is not None]
    if tensors is not None:
        patterns = [tensors] if isinstance(tensors, str) else list(tensors)
        for p in patterns:
            if not any(fnmatch.fnmatchcase(t.name, p) for t in infos):
                raise ValueError(f"tensors pattern {p!r} matches no quantizable weight of {f.path}")
        infos = [t for t in infos if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]
    weights = {t.name: f.decode(t.name).reshape(-1, t.shape[-1]) for t in infos}
    return weights, {t.name: t.type_name for t in infos}


def suggest_types(model_or_gguf, target_bpw: float, imatrix=None, candidates=None,
                  tensors=None, max_states: int = MAX_STATES) -> Plan:
    """Pick a GGUF type per tensor that meets ``target_bpw`` at the least total error.

    Parameters
    ----------
    model_or_gguf : path, GGUFFile, torch.nn.Module or mapping of str to array_like
        A GGUF file (its weight matrices, those ``requantize`` would quantize,
        decoded to float32), a torch model (its ``nn.Linear`` weights) or
        name -> (out, in) weight.
    target_bpw : float
        Bits per weight the planned tensors may take on average, scales included.
    imatrix : mapping of str to array_like, shape (n_cols,), optional
        Importance vectors by tensor name; a tensor without one is measured
        (and quantized) unweighted.
    candidates : list of str, optional
        GGUF types to choose from (default: every registered type).
    tensors : str or list of str, optional
        fnmatch patterns of the tensors to plan (default: all); with a GGUF
        source the others keep their type.
    max_states : int
        See :func:`choose`.

    Returns
    -------
    Plan
        ``plan.types`` maps each tensor (an exact-name pattern) to its type.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> weights = {"a": rng.standard_normal((8, 256)), "b": 10 * rng.standard_normal((8, 256))}
    >>> plan = suggest_types(weights, 5.6, candidates=["Q4_K", "Q6_K"])
    >>> plan.types, plan.bits_per_weight
    ({'a': 'Q4_K', 'b': 'Q6_K'}, 5.53125)
    """
    if isinstance(target_bpw, bool) or not isinstance(target_bpw, (int, float, np.number)) \
            or not math.isfinite(target_bpw) or target_bpw <= 0:
        raise ValueError(f"target_bpw={target_bpw!r}: give a positive number of bits per "
                         f"weight, e.g. 4.5")
    source = _open_source(model_or_gguf)
    if source is not None:
        with source as f:
            weights, current = _gguf_weights(f, tensors)
            old_bytes = sum(f.tensor(n).n_bytes for n in weights)
            file_size = os.path.getsize(f.path) if f.path is not None else None
    else:
        weights = named_weights(model_or_gguf, tensors)
        current, old_bytes, file_size = {}, 0, None
    imatrix = dict(imatrix or {})
    unknown = sorted(set(imatrix) - set(weights))
    if unknown:
        raise ValueError(f"imatrix has entries for {unknown[:3]}, which are not among the "
                         f"{len(weights)} planned tensors")
    options = {name: type_options(w, candidates, imatrix.get(name)) for name, w in weights.items()}
    unplannable = [n for n, o in options.items() if not o]
    if unplannable:
        raise ValueError(f"no candidate type fits the rows of {unplannable[:3]} "
                         f"(row lengths {[weights[n].shape[1] for n in unplannable[:3]]}); "
                         f"leave them out with tensors=")
    names = list(weights)
    n_weights = sum(weights[n].size for n in names)
    budget = int(math.floor(target_bpw * n_weights))
    least = sum(min(o.n_bytes for o in options[n]) for n in names) * 8
    if least > budget:
        raise ValueError(f"target_bpw={target_bpw:g} is below {least / n_weights:.4f}, the fewest "
                         f"bits per weight these tensors can take in the candidate types")
    picks = choose([options[n] for n in names], budget, max_states)
    chosen = {n: options[n][k] for n, k in zip(names, picks)}
    rows = [{"name": n, "shape": weights[n].shape, "from": current.get(n, "F32"),
             "type": o.type_name, "bits_per_weight": o.n_bytes * 8 / weights[n].size,
             "bytes": o.n_bytes, "error": o.error} for n, o in chosen.items()]
    n_bytes = sum(o.n_bytes for o in chosen.values())
    return Plan(
        types={exact_pattern(n): o.type_name for n, o in chosen.items()},
        rows=rows,
        target_bpw=float(target_bpw),
        bits_per_weight=n_bytes * 8 / n_weights,
        error=float(sum(o.error for o in chosen.values())),
        error_measure="imatrix-weighted squared error" if imatrix else "squared error",
        n_bytes=n_bytes,
        file_bytes=None if file_size is None else file_size - old_bytes + n_bytes,
    )


def _open_source(source):
    """A GGUFFile for a path or GGUFFile source (a context manager), else None."""
    from qviz.io import gguf

    if isinstance(source, (str, os.PathLike)):
        return gguf.read(Path(source))
    if isinstance(source, gguf.GGUFFile):
        return contextlib.nullcontext(source)  # the caller's file stays open
    return None
