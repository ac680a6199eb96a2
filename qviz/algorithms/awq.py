"""AWQ for one linear layer: activation-aware scale search, then clip search, as llm-awq runs them.

AWQ (Lin et al. 2024) keeps the grid of plain round-to-nearest but rescales the
weight's input columns first. A column whose activations are large matters more
for the output, so it is multiplied by ``s_j > 1`` before rounding (its relative
rounding error shrinks) and the input is divided by ``s_j`` (folded into the
preceding op), which leaves the float layer unchanged::

    y = W x = (W·diag(s)) (diag(s)⁻¹ x)  ≈  Q(W·diag(s)) (diag(s)⁻¹ x)

This module follows mit-han-lab/llm-awq ``awq/quantize/auto_scale.py`` and
``auto_clip.py`` (and AutoAWQ's ``AwqQuantizer._search_best_scale``,
``_compute_best_scale`` and ``_compute_best_clip``, which add ``duo_scaling``):

1. ``x_mean = mean |x|`` per input column; with ``duo_scaling`` also
   ``w_mean``, the mean over rows of ``|w| / (group absmax + 1e-6)``;
2. for ``α = k / 20``, ``k = 0 … 19``: ``s = x_mean^α`` (duo:
   ``x_mean^α / (w_mean^(1-α) + 1e-4)``), clamped to >= 1e-4, normalized by
   ``sqrt(max(s)·min(s))``; the loss is the mean squared difference between the
   module's float output and its output with every weight replaced by
   ``Q(W·diag(s)) · diag(s)⁻¹``; the first α with the smallest loss wins;
3. the weight becomes ``W·diag(s)`` and the calibration input ``x / s``;
4. clip search (skipped for query/key projections, whose error goes through
   ``q·kᵀ``): for every output row and group, the clip ``max_val = absmax ·
   (1 - i/20)`` for ``i = 0 … 9`` (1.0 down to 0.55) that gives the smallest
   mean squared group output ``Σ_k x_k w_k`` on a sample of at most about 512
   tokens; the weight is clamped to ``±max_val``;
5. the scaled, clipped weight is quantized on the grid.

The grid is handed in (:class:`AWQFormat`): AWQ's ``pseudo_quantize_tensor``.
It differs from qviz's ``"rtn"`` grid (the GPTQ reference's) only in corner
cases: the range of a group is [min, max] without forcing zero in, the step is
at least ``1e-5 / maxq``, and the zero point is clamped to the codes. Groups
that do not divide the row get a shorter last group (AWQ itself requires
``n_cols % group_size == 0``).

Decoding. The result's codes, scales and zeros are those of ``W·diag(s)``, so
``result.dequantize()`` is ``Q(W·diag(s))``: the weight an AWQ checkpoint
stores, correct when the preceding op has been divided by ``s`` (a whole-model
pass folds it there). Alone, the layer's weight is
``result.dequantize() / result.info["input_scale"]`` (columns divided by ``s``,
float32, broadcast over rows): :func:`unscaled_weight`.

Notes
-----
Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han, "AWQ: Activation-aware
Weight Quantization for LLM Compression and Acceleration", MLSys 2024,
arXiv:2306.00978, Section 3.2 ("Searching to scale", Eq. 4-5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from qviz.algorithms.grid import RTNFormat
from qviz.arrays import torch_device, as_activations, as_weight, check_finite
from qviz.result import QuantResult

__all__ = ["AWQFormat", "activation_mean", "apply_clip", "awq", "candidate_scale", "fake_quantize",
           "quantize", "scaled_result", "search_clip", "search_scale", "unscaled_weight", "weight_mean"]

#: ratios α = k / N_GRID, k = 0 … N_GRID - 1 (auto_scale's ``n_grid``)
N_GRID = 20
#: the clip search tries shrink factors 1 - i / N_GRID for i < MAX_SHRINK · N_GRID
MAX_SHRINK = 0.5
#: tokens the clip search looks at: every (n // N_SAMPLE_TOKEN)-th one
N_SAMPLE_TOKEN = 512


@dataclass(frozen=True)
class AWQFormat:
    """AWQ's grid: ``pseudo_quantize_tensor`` of llm-awq (``awq/quantize/quantizer.py``).

    Every slice along the last axis of the tensors its methods take is one group.

    Attributes
    ----------
    bits : int
        2..8 (AWQ's ``w_bit``, default 4).
    group_size : int
        Input columns per group (``q_group_size``, default 128); a value >= the
        row length means per channel.
    zero_point : bool
        Asymmetric codes ``0 … 2**bits - 1`` with a zero point (AWQ's default);
        False: symmetric ``-2**(bits-1) … 2**(bits-1) - 1`` times ``absmax / (2**(bits-1) - 1)``.

    Examples
    --------
    >>> fmt = AWQFormat(bits=2, group_size=4)
    >>> fmt.fake_quantize(torch.tensor([[-1.0, 0.0, 0.5, 2.0]]))
    tensor([[-1.,  0.,  0.,  2.]])
    """

    bits: int = 4
    group_size: int = 128
    zero_point: bool = True

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) \
                or not 2 <= self.bits <= 8:
            raise ValueError(f"bits={self.bits!r}: choose an integer from 2 to 8")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, (int, np.integer)) \
                or self.group_size < 1:
            raise ValueError(f"group_size={self.group_size!r}: use a positive number of columns")

    @property
    def code_range(self) -> tuple[int, int]:
        """Smallest and largest signed integer level (0 and maxq with a zero point)."""
        if self.zero_point:
            return 0, 2 ** self.bits - 1
        return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1

    def choose_params(self, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scale and zero point of every group.

        Parameters
        ----------
        groups : torch.Tensor, shape (..., k), float32
            Each slice along the last axis is one group.

        Returns
        -------
        scales : torch.Tensor, shape (..., 1), float32
        zeros : torch.Tensor, shape (..., 1), float32, or None without a zero point
        """
        lo, hi = self.code_range
        if self.zero_point:
            max_val = groups.amax(dim=-1, keepdim=True)
            min_val = groups.amin(dim=-1, keepdim=True)
            scales = (max_val - min_val).clamp(min=1e-5) / hi
            zeros = (-torch.round(min_val / scales)).clamp_(lo, hi)
            return scales, zeros
        max_val = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        return max_val / hi, None

    def levels(self, groups, scales, zeros) -> torch.Tensor:
        """Signed integer levels ``clamp(round(w / scale) + zero)``, float32, shape of ``groups``."""
        lo, hi = self.code_range
        q = torch.round(groups / scales)
        if zeros is not None:
            q = q + zeros
        return torch.clamp(q, lo, hi)

    def fake_quantize(self, groups: torch.Tensor) -> torch.Tensor:
        """Quantize and decode at once (``pseudo_quantize_tensor``); same shape, float32."""
        scales, zeros = self.choose_params(groups)
        q = self.levels(groups, scales, zeros)
        return (q - zeros) * scales if zeros is not None else q * scales


def _as_format(fmt) -> AWQFormat:
    """An :class:`AWQFormat`; an ``RTNFormat`` is read as AWQ's grid with its bits, groups and sym."""
    if isinstance(fmt, AWQFormat):
        return fmt
    if isinstance(fmt, RTNFormat):
        return AWQFormat(int(fmt.bits), int(fmt.group_size), zero_point=not fmt.sym)
    raise TypeError(f"fmt must be an AWQFormat (e.g. AWQFormat(bits=4, group_size=128)) or an "
                    f"RTNFormat, got {type(fmt).__name__}")


# --- groups of columns: full groups reshaped at once, the shorter last group apart -----------

def _parts(n_cols: int, group_size: int) -> list[tuple[int, int, int]]:
    """(first column, number of groups, group length) of the full groups and of the tail."""
    g = min(group_size, n_cols)
    n_full = n_cols // g
    parts = [(0, n_full, g)]
    if n_cols % g:
        parts.append((n_full * g, 1, n_cols % g))
    return parts


def fake_quantize(w: torch.Tensor, fmt: AWQFormat) -> torch.Tensor:
    """``Q(w)`` decoded, for a 2-D weight whose rows are cut into groups of ``fmt.group_size``.

    Parameters
    ----------
    w : torch.Tensor, shape (n_rows, n_cols), float32
    fmt : AWQFormat

    Returns
    -------
    torch.Tensor, shape (n_rows, n_cols), float32
    """
    out = []
    for start, n, k in _parts(w.shape[1], fmt.group_size):
        part = w[:, start:start + n * k].reshape(w.shape[0], n, k)  # (n_rows, n, k)
        out.append(fmt.fake_quantize(part).reshape(w.shape[0], n * k))
    return torch.cat(out, dim=1)


def quantize(w: torch.Tensor, fmt: AWQFormat):
    """``w`` rounded on AWQ's grid, its groups of ``fmt.group_size`` columns cut as in :func:`fake_quantize`.

    Parameters
    ----------
    w : torch.Tensor, shape (n_rows, n_cols), float32
        The weight to store: for AWQ the scaled (and clipped) ``W·diag(s)``.
    fmt : AWQFormat

    Returns
    -------
    codes : torch.Tensor, shape (n_rows, n_cols), uint8
        ``0 … 2**bits - 1`` (symmetric levels shifted up by ``2**(bits-1)``).
    scales : torch.Tensor, shape (n_rows, n_groups), float32
    zeros : torch.Tensor, shape (n_rows, n_groups), float32, or None without a zero point
    """
    codes, scales, zeros = [], [], []
    for start, n, k in _parts(w.shape[1], fmt.group_size):
        part = w[:, start:start + n * k].reshape(w.shape[0], n, k)  # (n_rows, n, k)
        s, z = fmt.choose_params(part)  # (n_rows, n, 1)
        codes.append(fmt.levels(part, s, z).reshape(w.shape[0], n * k))
        scales.append(s[..., 0])
        zeros.append(None if z is None else z[..., 0])
    q = torch.cat(codes, dim=1) - fmt.code_range[0]  # symmetric: shift to 0 … 2**bits - 1
    z = None if zeros[0] is None else torch.cat(zeros, dim=1)
    return q.to(torch.uint8), torch.cat(scales, dim=1), z


# --- inputs ----------------------------------------------------------------------------------

def _device(device, like=None) -> torch.device:
    """The device to run on: ``device``, else that of ``like`` (a tensor), else the CPU."""
    if device is None and isinstance(like, torch.Tensor):
        return like.device
    return torch_device(device)


def _weight(w, device, name: str) -> torch.Tensor:
    """A private float32 2-D finite copy of ``w`` on ``device``."""
    if isinstance(w, torch.Tensor):
        if w.ndim != 2 or w.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 2-D (out × in) tensor, got shape {tuple(w.shape)}")
        if not w.dtype.is_floating_point:
            raise TypeError(f"{name} has dtype {w.dtype}; pass floating-point weights (tensor.float())")
        w = w.detach().to(device=device, dtype=torch.float32).clone()
        if not bool(torch.isfinite(w).all()):
            check_finite(w.cpu().numpy(), name)
        return w
    return torch.tensor(as_weight(w, name=name), device=device)


def _activations(x, n_cols: int, device, keep_shape: bool = False) -> torch.Tensor:
    """Validated float32 activations on ``device``: (n, n_cols), or as given with ``keep_shape``."""
    if not isinstance(x, torch.Tensor):
        a = np.asarray(x)
        flat = as_activations(a, n_cols, name="x")  # (n, n_cols) float32, or a clear error
        return torch.tensor(flat.reshape(a.shape) if keep_shape else flat, device=device)
    if not x.dtype.is_floating_point:
        raise TypeError(f"x has dtype {x.dtype}; pass floating-point activations (tensor.float())")
    if x.ndim < 2 or x.shape[-1] != n_cols or x.numel() == 0:
        raise ValueError(f"x has shape {tuple(x.shape)} but the weight has {n_cols} input columns; "
                         f"pass this layer's inputs, shape (n_samples, {n_cols})")
    x = x.detach().to(device=device, dtype=torch.float32)  # may be the caller's tensor: only read
    if not bool(torch.isfinite(x).all()):
        check_finite(x.reshape(-1, n_cols).cpu().numpy(), "x")
    return x if keep_shape else x.reshape(-1, n_cols)


# --- step 1-2: the scale search --------------------------------------------------------------

def activation_mean(x: torch.Tensor) -> torch.Tensor:
    """``mean |x|`` per input column (llm-awq ``get_act_scale``), shape (n_cols,), float32."""
    return x.abs().reshape(-1, x.shape[-1]).mean(0)


def weight_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over rows of ``|w| / (group absmax + 1e-6)`` (AutoAWQ, for ``duo_scaling``); (n_cols,)."""
    out = []
    for start, n, k in _parts(w.shape[1], group_size):
        part = w[:, start:start + n * k].reshape(w.shape[0], n, k).abs()  # (n_rows, n, k)
        out.append((part / (part.amax(dim=-1, keepdim=True) + 1e-6)).reshape(w.shape[0], n * k))
    return torch.cat(out, dim=1).mean(0)


def candidate_scale(x_mean: torch.Tensor, w_mean: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """The scale vector of one ratio α, normalized by ``sqrt(max · min)``.

    Parameters
    ----------
    x_mean : torch.Tensor, shape (n_cols,), float32
        :func:`activation_mean`.
    w_mean : torch.Tensor, shape (n_cols,), float32, or None
        :func:`weight_mean` for duo scaling; None for ``s = x_mean^α``.
    ratio : float
        α in [0, 1).

    Returns
    -------
    torch.Tensor, shape (n_cols,), float32
        Inf or NaN entries (overflow) are set to 1, as AutoAWQ does.
    """
    if w_mean is None:
        s = x_mean.pow(ratio).clamp(min=1e-4)
    else:
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    s[torch.isinf(s)] = 1
    s[torch.isnan(s)] = 1
    return s


def _linear(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The default module: every weight applied to ``x``, outputs side by side."""
    return torch.nn.functional.linear(x, weights[0] if len(weights) == 1 else torch.cat(weights))


class _Search(NamedTuple):
    scale: torch.Tensor  # (n_cols,) float32
    best: int  # index of the chosen ratio
    losses: np.ndarray  # (n_grid,) float64


def _search(x, weights, fmt: AWQFormat, forward, duo_scaling: bool, n_grid: int) -> _Search:
    """The grid search of auto_scale: loss of every ratio, the first smallest wins."""
    x_mean = activation_mean(x)
    w_mean = weight_mean(torch.cat(weights), fmt.group_size) if duo_scaling else None
    with torch.no_grad():
        reference = forward(x, list(weights))
        losses = np.full(n_grid, np.inf)
        best, best_loss, best_scale = -1, float("inf"), None
        for k in range(n_grid):
            s = candidate_scale(x_mean, w_mean, k / n_grid)
            row = s.view(1, -1)
            trial = [fake_quantize(w * row, fmt) / row for w in weights]  # Q(W·s)·s⁻¹
            losses[k] = (reference - forward(x, trial)).float().pow(2).mean().item()
            if losses[k] < best_loss:  # strict: ties keep the smaller α
                best, best_loss, best_scale = k, losses[k], s
    if best < 0:
        raise ValueError(f"every ratio gave a NaN or infinite loss ({losses.tolist()}); "
                         f"check the activations and the forward function")
    return _Search(best_scale, best, losses)


def search_scale(x, weights, fmt, forward: Callable | None = None, *, duo_scaling: bool = False,
                 n_grid: int = N_GRID, device=None) -> torch.Tensor:
    """AWQ's per-input-column scale for weights that share one input (auto_scale).

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (..., n_cols)
        Calibration inputs of the weights (e.g. the block's normed hidden
        states). Kept in its shape for ``forward``; the means flatten it.
    weights : sequence of array_like or torch.Tensor, each shape (out_i, n_cols)
        The linears that read ``x`` (q, k and v; gate and up; or one weight).
        Never modified.
    fmt : AWQFormat or RTNFormat
        The grid.
    forward : callable, optional
        ``forward(x, ws) -> Tensor``: the module whose output error is measured,
        run with the list ``ws`` in place of ``weights`` (same order and shapes,
        float32 tensors on the device). Default: the linears themselves,
        ``x @ concat(ws)ᵀ``.
    duo_scaling : bool
        ``s = x_mean^α / (w_mean^(1-α) + 1e-4)`` (AutoAWQ) instead of ``x_mean^α``.
    n_grid : int
        Ratios α = k / n_grid, k < n_grid.
    device : str or torch.device, optional
        Where to run; default the first weight's device (CPU for arrays).

    Returns
    -------
    torch.Tensor, shape (n_cols,), float32, on the device
        ``s``: the caller multiplies the weights' columns by it and divides the
        preceding op's output (or the input) by it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 32)).astype(np.float32) * np.linspace(0.1, 10, 32, dtype=np.float32)
    >>> w = rng.standard_normal((8, 32)).astype(np.float32)
    >>> s = search_scale(x, [w], AWQFormat(bits=3, group_size=16))
    >>> tuple(s.shape), bool(s[-1] > s[0])
    ((32,), True)
    """
    fmt = _as_format(fmt)
    dev = _device(device, weights[0] if len(weights) else None)
    ws = _weights(weights, dev)
    x = _activations(x, ws[0].shape[1], dev, keep_shape=forward is not None)
    return _search(x, ws, fmt, forward or _linear, duo_scaling, _check_grid(n_grid)).scale


def _weights(weights, device) -> list[torch.Tensor]:
    if isinstance(weights, (np.ndarray, torch.Tensor)) or not len(weights):
        raise TypeError("weights must be a non-empty list of (out_i, n_cols) weights that share "
                        "the input, e.g. [q.weight, k.weight, v.weight] or [w]")
    ws = [_weight(w, device, f"weights[{i}]") for i, w in enumerate(weights)]
    if len({w.shape[1] for w in ws}) > 1:
        raise ValueError(f"the weights share one input, so they need the same number of columns; "
                         f"got {[tuple(w.shape) for w in ws]}")
    return ws


def _check_grid(n_grid) -> int:
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < 1:
        raise ValueError(f"n_grid={n_grid!r}: use a positive number of grid points, e.g. 20")
    return int(n_grid)


# --- step 4: the clip search -----------------------------------------------------------------

def search_clip(w, x, fmt, *, n_grid: int = N_GRID, max_shrink: float = MAX_SHRINK,
                n_sample_token: int = N_SAMPLE_TOKEN, device=None) -> torch.Tensor:
    """The clip of every output row and group that best keeps the group outputs (auto_clip).

    Parameters
    ----------
    w : array_like or torch.Tensor, shape (n_rows, n_cols)
        The weight, already scaled (``W·diag(s)``). Never modified.
    x : array_like or torch.Tensor, shape (n_tokens, n_cols) or (..., n_cols)
        Its inputs, already divided by ``s``. Every ``max(1, n_tokens //
        n_sample_token)``-th token is used.
    fmt : AWQFormat or RTNFormat
    n_grid, max_shrink : int, float
        Clips ``absmax · (1 - i / n_grid)`` for ``i < int(max_shrink · n_grid)``.
    n_sample_token : int
    device : str or torch.device, optional
        Default ``w``'s device (CPU for arrays).

    Returns
    -------
    torch.Tensor, shape (n_rows, n_groups), float32
        ``max_val``: clamp the group to ``±max_val`` (:func:`apply_clip`).

    Notes
    -----
    Rows go in batches of 256 when they divide by 256, else 64 (the
    reference's batches, for memory); the last batch may be shorter.
    """
    fmt = _as_format(fmt)
    dev = _device(device, w)
    w = _weight(w, dev, "w")
    x = _activations(x, w.shape[1], dev)
    x = x[:: max(1, x.shape[0] // n_sample_token)]  # (n_sample, n_cols)
    n_rows = w.shape[0]
    batch = 256 if n_rows % 256 == 0 else 64
    out = []
    for start, n, k in _parts(w.shape[1], fmt.group_size):
        xg = x[:, start:start + n * k].reshape(1, x.shape[0], n, k)  # (1, n_sample, n, k)
        wg = w[:, start:start + n * k].reshape(n_rows, 1, n, k)  # (n_rows, 1, n, k)
        best = [_clip_rows(wg[r:r + batch], xg, fmt, n_grid, max_shrink)
                for r in range(0, n_rows, batch)]
        out.append(torch.cat(best, dim=0).reshape(n_rows, n))
    return torch.cat(out, dim=1)


def _clip_rows(w, x, fmt, n_grid, max_shrink) -> torch.Tensor:
    """The best clip of a batch of rows.

    Parameters
    ----------
    w : torch.Tensor, shape (rows, 1, n, k), float32
    x : torch.Tensor, shape (1, n_sample, n, k), float32

    Returns
    -------
    torch.Tensor, shape (rows, 1, n, 1), float32
    """
    absmax = w.abs().amax(dim=-1, keepdim=True)  # (rows, 1, n, 1)
    best = absmax.clone()
    min_err = torch.ones_like(absmax) * 1e9
    reference = (x * w).sum(dim=-1)  # (rows, n_sample, n): each group's share of the output
    for i in range(int(max_shrink * n_grid)):
        max_val = absmax * (1 - i / n_grid)
        q = fmt.fake_quantize(torch.clamp(w, -max_val, max_val))
        err = ((x * q).sum(dim=-1) - reference).pow(2).mean(dim=1).view(min_err.shape)
        better = err < min_err
        min_err[better] = err[better]
        best[better] = max_val[better]
    return best


def apply_clip(w, max_val, group_size: int) -> torch.Tensor:
    """Clamp every group of ``w`` to ``±max_val`` (a new tensor).

    Parameters
    ----------
    w : torch.Tensor or array_like, shape (n_rows, n_cols), float32
    max_val : torch.Tensor or array_like, shape (n_rows, n_groups), float32
        From :func:`search_clip`.
    group_size : int
        Columns per group, the format's (``n_groups`` alone does not say where
        groups start: 200 columns make 4 groups of 64 + 8, or of 50). Column
        ``j`` belongs to group ``j // group_size``; the last may be shorter.

    Returns
    -------
    torch.Tensor, shape (n_rows, n_cols), float32, on ``w``'s device

    Examples
    --------
    >>> apply_clip(torch.tensor([[-3.0, 1.0, 5.0]]), torch.tensor([[2.0, 4.0]]), group_size=2)
    tensor([[-2.,  1.,  4.]])
    """
    w = w if isinstance(w, torch.Tensor) else torch.as_tensor(np.asarray(w, dtype=np.float32))
    max_val = torch.as_tensor(max_val, dtype=torch.float32, device=w.device)
    n_rows, n_cols = w.shape
    if max_val.ndim != 2 or max_val.shape[0] != n_rows:
        raise ValueError(f"max_val has shape {tuple(max_val.shape)}; it needs one value per row and "
                         f"group of the ({n_rows}, {n_cols}) weight")
    n_groups = max_val.shape[1]
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: pass the format's columns per group")
    g = min(int(group_size), n_cols)
    if -(-n_cols // g) != n_groups:
        raise ValueError(f"group_size={group_size} cuts {n_cols} columns into {-(-n_cols // g)} groups, "
                         f"but max_val has {n_groups}")
    m = torch.repeat_interleave(max_val, g, dim=1)[:, :n_cols]  # (n_rows, n_cols)
    return torch.clamp(w, -m, m)


# --- the layer -------------------------------------------------------------------------------

def awq(W, X, fmt, *, duo_scaling: bool = False, clip: bool = True, device=None) -> QuantResult:
    """Quantize one linear layer with AWQ: scale search, clip search, round.

    Parameters
    ----------
    W : array_like or torch.Tensor, shape (n_rows, n_cols), float
        The weight, out × in. Never modified.
    X : array_like or torch.Tensor, shape (n_samples, n_cols) or (..., n_cols)
        Its calibration inputs (one token per row). Never modified.
    fmt : AWQFormat or RTNFormat
        The grid (AWQ's default: ``AWQFormat(bits=4, group_size=128)``).
    duo_scaling : bool
        AutoAWQ's ``s = x_mean^α / (w_mean^(1-α) + 1e-4)``.
    clip : bool
        Run the clip search (False for query/key projections).
    device : str or torch.device, optional
        Where to compute; default ``W``'s device (CPU for arrays).

    Returns
    -------
    QuantResult
        ``method="awq"``; codes uint8 (n_rows, n_cols), scales and zeros
        float32 (n_rows, n_groups) of the scaled, clipped weight ``W·diag(s)``
        (``zeros`` None without a zero point: the implied zero is
        ``2**(bits-1)``). ``dequantize()`` gives ``Q(W·diag(s))``; the
        layer's own weight is ``dequantize() / info["input_scale"]``
        (:func:`unscaled_weight`). ``info``: ``ratio`` (the chosen α),
        ``ratios`` and ``losses`` (float64 (n_grid,): output MSE per α),
        ``input_scale`` (s, float32 (n_cols,)), ``max_val`` (the clip, float32
        (n_rows, n_groups), or None), ``duo_scaling``, ``clip``, ``zero_point``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((64, 256)).astype(np.float32)
    >>> X = rng.standard_normal((128, 256)).astype(np.float32) * rng.lognormal(0, 1, 256).astype(np.float32)
    >>> r = awq(W, X, AWQFormat(bits=4, group_size=128))
    >>> r.codes.shape, r.scales.shape, r.info["input_scale"].shape
    ((64, 256), (64, 2), (256,))
    """
    fmt = _as_format(fmt)
    dev = _device(device, W)
    W = _weight(W, dev, "W")
    X = _activations(X, W.shape[1], dev)
    search = _search(X, [W], fmt, _linear, bool(duo_scaling), N_GRID)
    s = search.scale.view(1, -1)
    W_s = W * s  # (n_rows, n_cols): the weight AWQ stores
    max_val = None
    if clip:
        max_val = search_clip(W_s, X / s, fmt)
        W_s = apply_clip(W_s, max_val, fmt.group_size)
    info = {
        "ratio": search.best / N_GRID, "ratios": np.arange(N_GRID) / N_GRID,
        "losses": search.losses, "loss": float(search.losses[search.best]),
        "input_scale": _np(search.scale), "max_val": None if max_val is None else _np(max_val),
        "duo_scaling": bool(duo_scaling), "clip": bool(clip), "zero_point": fmt.zero_point,
    }
    return scaled_result(W_s, fmt, info["input_scale"], info)


def scaled_result(w_scaled: torch.Tensor, fmt: AWQFormat, input_scale: np.ndarray | None,
                  info: dict) -> QuantResult:
    """The QuantResult of a scaled (and clipped) weight ``W·diag(s)`` rounded on ``fmt``'s grid.

    Parameters
    ----------
    w_scaled : torch.Tensor, shape (n_rows, n_cols), float32
    fmt : AWQFormat
    input_scale : ndarray, shape (n_cols,), float32, or None
        ``s``, kept in the result so that ``dequantize()`` divides by it; None
        where ``1/s`` is folded into the preceding op (``dequantize()`` is
        then ``Q(W·diag(s))``).
    info : dict
        Diagnostics, stored as given.

    Returns
    -------
    QuantResult
        ``method="awq"``, codes uint8 (n_rows, n_cols), scales and zeros
        float32 (n_rows, n_groups).
    """
    codes, scales, zeros = quantize(w_scaled, fmt)
    g = min(fmt.group_size, w_scaled.shape[1])
    return QuantResult("awq", tuple(w_scaled.shape), int(fmt.bits), int(g), _np(codes), _np(scales),
                       None if zeros is None else _np(zeros), input_scale=input_scale, info=info)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def unscaled_weight(result: QuantResult) -> np.ndarray:
    """The layer's own quantized weight, ``Q(W·diag(s)) · diag(s)⁻¹``.

    Parameters
    ----------
    result : QuantResult
        From :func:`awq`: its ``input_scale`` field holds ``s``.

    Returns
    -------
    ndarray, shape (n_rows, n_cols), float32
        ``result.dequantize()``, which divides the columns of the scaled
        weight's decode by ``s`` in float32: what multiplies the *unscaled*
        input ``x``.
    """
    if result.input_scale is None:
        raise ValueError(f"this {result.method!r} result has no input_scale; "
                         f"unscaled_weight is for AWQ results whose s is not folded away")
    return result.dequantize()
