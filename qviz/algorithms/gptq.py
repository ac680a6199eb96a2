"""GPTQ for one linear layer: Algorithm 1 of Frantar et al. (2022), as IST-DASLab/gptq runs it.

GPTQ quantizes the columns of ``W`` (out × in) one at a time and, after each,
spreads that column's rounding error ``err`` over the columns not yet
quantized, weighted by the inverse Hessian of the layer's inputs, so that the
layer's *output* ``W Xᵀ`` moves as little as possible. This module follows the
reference implementation ``GPTQ.fasterquant`` (IST-DASLab/gptq ``gptq.py``)
step by step, so that its codes, scales and zeros are identical on CPU:

1. dead inputs (``H[i, i] == 0``) get ``H[i, i] = 1`` and ``W[:, i] = 0``;
2. with ``act_order`` the columns are visited by descending ``diag(H)``;
3. ``H_inv`` is the upper Cholesky factor of ``(H + λI)⁻¹`` with
   ``λ = damp · mean(diag(H))`` (cholesky → cholesky_inverse → cholesky upper);
4. columns go in blocks of ``blocksize``; inside a block each column's error
   updates the rest of the block at once, and the columns after the block get
   one lazy batch update ``W[:, i2:] -= Err1 @ H_inv[i1:i2, i2:]``;
5. a group's scale and zero are chosen when the visit reaches its first column
   (``c % group_size == 0`` in visiting order), from ``W`` as the lazy scheme
   holds it then: updated by all earlier blocks, not yet by the earlier columns
   of the current block (the reference reads ``W``, not the block copy);
   ``static_groups`` chooses every group up front from the original ``W``.
   Per channel (one group per row), the parameters come from the original
   ``W`` before dead columns are zeroed, as the reference's ``groupsize=-1``.

The format is handed in (:class:`~qviz.algorithms.grid.RTNFormat`): GPTQ
decides *which* value each weight rounds from; the format decides the grid.

Notes
-----
Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", ICLR 2023, arXiv:2210.17323,
Algorithm 1 and Section 3 ("Step 3: Cholesky Reformulation").
"""
from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import torch

from qviz.algorithms.grid import RTNFormat
from qviz.arrays import as_activations, as_weight
from qviz.result import QuantResult

__all__ = ["RTNFormat", "check_hessian_finite", "gptq", "hessian", "hessian_scale_exponent",
           "inverse_hessian_factor", "resolve_hessian"]

#: how many times the damping may be multiplied by 10 when the Cholesky fails ...
DAMP_RETRIES = 4
#: ... never beyond this fraction of mean(diag(H)) (past it, H hardly matters)
MAX_DAMP = 1.0


def as_tensor(a: np.ndarray, device) -> torch.Tensor:
    """A float32 tensor reading ``a`` (copied when numpy marks it read-only)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view (CPU) or copy (CUDA) of ``t``, for the format's methods."""
    return t.detach().cpu().numpy()


def hessian(x, n_cols: int | None = None, *, device="cpu") -> torch.Tensor:
    """The layer Hessian of GPTQ's objective, ``H = (2/n) Σᵢ xᵢ xᵢᵀ``.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (n, n_cols) or (batch, seq, n_cols)
        Inputs of one linear layer; every row (token) is one sample.
    n_cols : int, optional
        Expected width (the weight's input columns), checked when given.
    device : str or torch.device
        Where to compute and return ``H``.

    Returns
    -------
    torch.Tensor, shape (n_cols, n_cols), float32

    Notes
    -----
    Computed in float32 as ``X'ᵀX'`` with ``X' = sqrt(2/n)·X``, which is what
    the reference's ``GPTQ.add_batch`` gives for one batch. The reference counts
    *sequences* as samples (``inp.shape[0]`` of a (batch, seq, in) input), so
    its ``H`` is ``seq`` times this one: the same codes up to float rounding,
    losses ``seq`` times larger.

    Examples
    --------
    >>> hessian(np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32))
    tensor([[10.,  2.],
            [ 2.,  4.]])
    """
    x = as_activations(x, np.shape(x)[-1] if n_cols is None else n_cols, name="x")
    x = math.sqrt(2 / x.shape[0]) * as_tensor(x, device)  # (n, n_cols), a new tensor
    H = x.T @ x
    if not bool(torch.isfinite(H).all()):  # finite x (checked above): XᵀX overflowed float32
        top = float(x.abs().max().double()) / math.sqrt(2 / x.shape[0])  # max |x| of the input
        peak = 2 * top**2  # a bound on H's largest entry
        k = max(1, math.ceil(math.log2(top)))
        raise ValueError(f"the Hessian (2/n)·XᵀX of these activations overflows float32 (its entries reach "
                         f"about {peak:.3g}, beyond {np.finfo(np.float32).max:.3g}); the activations are "
                         f"finite but far too large: divide them by a power of two, e.g. x / 2**{k} "
                         f"(GPTQ's codes do not change when x is scaled by a power of two; its loss "
                         f"scales by the square)")
    return H


def resolve_hessian(n_cols: int, calib=None, H=None) -> torch.Tensor:
    """The Hessian GPTQ needs, from exactly one of activations or a given matrix.

    Parameters
    ----------
    n_cols : int
        Input columns of the weight.
    calib : array_like, shape (n_samples, n_cols), optional
        The layer's input activations (higher ranks are flattened to rows).
    H : array_like or torch.Tensor, shape (n_cols, n_cols), optional
        A precomputed Hessian, e.g. from :func:`hessian`.

    Returns
    -------
    torch.Tensor, shape (n_cols, n_cols), float32, on ``H``'s device (CPU for arrays)

    Raises
    ------
    ValueError
        Neither or both given, wrong widths, NaN/Inf.
    """
    if calib is None and H is None:
        raise ValueError(
            f"GPTQ needs the layer's inputs: pass calib= activations of shape (n_samples, {n_cols}), "
            f"e.g. captured with a forward hook on the nn.Linear "
            f"(layer.register_forward_hook(lambda m, args, out: xs.append(args[0]))) while running "
            f"the model on some text, or hessian= a ({n_cols}, {n_cols}) matrix from "
            f"qviz.algorithms.gptq.hessian(x)")
    if calib is not None and H is not None:
        raise ValueError("pass calib= or hessian=, not both: the Hessian is computed from calib")
    if calib is not None:
        return hessian(as_activations(calib, n_cols, name="calib"))
    device = H.device if isinstance(H, torch.Tensor) else "cpu"
    check_hessian_finite(H, "hessian")
    h = as_weight(H, name="hessian")  # float32, 2-D, finite, or a clear error
    if h.shape != (n_cols, n_cols):
        raise ValueError(f"hessian has shape {h.shape} but the weight has {n_cols} input columns; "
                         f"pass the ({n_cols}, {n_cols}) matrix (2/n)·XᵀX of this layer's inputs")
    return as_tensor(h, device)


def check_hessian_finite(H, name: str = "H") -> None:
    """A ValueError for a 2-D Hessian with NaN/Inf (or values beyond float32), saying why it happens.

    Parameters
    ----------
    H : array_like or torch.Tensor, shape (n, n)
        Other ranks pass (the shape checks that follow name them).
    name : str
        How the message calls it.
    """
    if isinstance(H, torch.Tensor):
        if H.ndim != 2 or H.is_meta or not H.is_floating_point():
            return
        bad = ~torch.isfinite(H.detach().float())  # float64 beyond float32 overflows here too
        if not bool(bad.any()):
            return
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        n_bad, nan = int(bad.sum()), bool(torch.isnan(H.detach()).any())
    else:
        a = np.asarray(H)
        if a.ndim != 2 or a.dtype.kind != "f":
            return
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(a.astype(np.float32))
        if not bad.any():
            return
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n_bad, nan = int(bad.sum()), bool(np.isnan(a).any())
    why = ("NaN: check the activations it was computed from" if nan else
           "Inf or beyond float32's 3.4e38: XᵀX overflowed float32, so the activations are far too "
           "large; divide them by a power of two (GPTQ's codes do not change; its loss scales by the "
           "square) and compute H again")
    raise ValueError(f"{name} has {n_bad} NaN/Inf value(s), the first at (row, col) = {first}: {why}")


def hessian_scale_exponent(H: torch.Tensor) -> int:
    """``k`` such that ``H · 4⁻ᵏ`` has ``mean(diag)`` near 1; 0 unless it is beyond 2^±40.

    Scaling ``H`` by a power of four is exact in floating point and scales
    the upper Cholesky factor of ``(H + λI)⁻¹`` by an exact power of two, so
    GPTQ's codes do not change; it keeps the damping, the Cholesky and its
    inverse inside float32 for Hessians such as ``3e38·I`` or ``1e-40·I``.

    Parameters
    ----------
    H : torch.Tensor, shape (n, n), float32

    Returns
    -------
    int
    """
    mean = float(torch.diag(H).double().mean())  # float64: a float32 sum of 3e38s overflows
    if not math.isfinite(mean) or mean <= 0 or 2.0**-40 <= mean <= 2.0**40:
        return 0
    return round(math.log2(mean) / 2)


def inverse_hessian_factor(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """``H_inv``: the upper Cholesky factor of ``(H + λI)⁻¹``, ``λ = damp · mean(diag(H))``.

    Parameters
    ----------
    H : torch.Tensor, shape (n, n), float32
        Symmetric positive semi-definite, dead columns already fixed. Not modified.
    damp : float
        Relative damping (> 0). When a Cholesky fails it is multiplied by 10,
        up to :data:`DAMP_RETRIES` times and not beyond :data:`MAX_DAMP`.

    Returns
    -------
    H_inv : torch.Tensor, shape (n, n), float32, upper triangular
    damp : float
        The relative damping that worked.

    Raises
    ------
    ValueError
        When even the largest damping fails (``H`` is not positive semi-definite).

    Notes
    -----
    ``mean(diag(H))`` is taken in float64, and an ``H`` whose mean diagonal
    is beyond 2^±40 is scaled by a power of four first
    (:func:`hessian_scale_exponent`), so the damping cannot overflow.
    """
    k = hessian_scale_exponent(H)
    if k:
        H_inv, rel = inverse_hessian_factor(H * 2.0**-k * 2.0**-k, damp)
        return H_inv * 2.0**-k, rel  # (H·4⁻ᵏ + λ'I)⁻¹ = 4ᵏ (H + λI)⁻¹: its factor is 2ᵏ times H's
    diag = torch.arange(H.shape[0], device=H.device)
    mean_diag = torch.diag(H).double().mean().to(H.dtype)
    if not (bool(torch.isfinite(mean_diag)) and float(mean_diag) > 0):
        raise ValueError(f"mean(diag(H)) = {float(mean_diag):g}: a Hessian (2/n)·XᵀX has a positive "
                         f"diagonal; compute it from real activations")
    tried = []
    for k in range(DAMP_RETRIES + 1):
        rel = float(Decimal(repr(float(damp))).scaleb(k))  # damp·10^k without binary noise
        if tried and rel > MAX_DAMP:
            break
        tried.append(rel)
        H_damped = H.clone()
        H_damped[diag, diag] += rel * mean_diag
        L, info = torch.linalg.cholesky_ex(H_damped)
        if info.item() == 0:
            H_inv, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info.item() == 0 and bool(torch.isfinite(H_inv).all()):
                return H_inv, rel
    raise ValueError(f"the Cholesky of H + λI fails for λ = ({', '.join(f'{t:g}' for t in tried)}) × "
                     f"mean(diag(H)): H is not positive semi-definite (compute it as (2/n)·XᵀX of "
                     f"real activations) or damp={damp:g} is far too small")


def _float32_copy(a, device, name: str) -> torch.Tensor:
    """A private float32 copy of a 2-D finite array or tensor, on ``device``."""
    if isinstance(a, torch.Tensor) and a.is_meta:
        raise ValueError(f"{name} is on the meta device and holds no values; load the real tensor first")
    if name == "H":
        check_hessian_finite(a, name)  # says why a Hessian is not finite
    if not isinstance(a, torch.Tensor):
        a = torch.tensor(as_weight(a, name=name))  # validates numpy input
    elif a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(a.shape)}")
    else:
        bad = ~torch.isfinite(a.detach().float())
        if bool(bad.any()):
            first = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise ValueError(f"{name} has {int(bad.sum())} NaN/Inf value(s) (or values beyond float32), "
                             f"the first at (row, col) = {first}; clean or mask them first")
    return a.detach().to(device=device, dtype=torch.float32).clone()


def _check_options(fmt, damp, blocksize) -> None:
    if not (hasattr(fmt, "choose_params") and hasattr(fmt, "quantize_column")):
        raise TypeError(f"fmt must be a format with choose_params and quantize_column "
                        f"(e.g. RTNFormat(bits=4, group_size=128)), got {type(fmt).__name__}")
    if not (isinstance(damp, (int, float, np.floating)) and math.isfinite(damp) and damp > 0):
        raise ValueError(f"damp={damp!r}: use a positive fraction of mean(diag(H)), e.g. 0.01")
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize < 1:
        raise ValueError(f"blocksize={blocksize!r}: use a positive number of columns, e.g. 128")


def _group_plan(perm: np.ndarray, g: int, n_groups: int, static_groups: bool):
    """Group of each visited column, and where its parameters are chosen.

    Returns
    -------
    gid : ndarray, shape (n_cols,), int64
        Group id of the column visited ``c``-th.
    choose : ndarray, shape (n_cols,), bool
        True where the visit chooses that group's scale and zero from the
        current ``W`` (never for static or per-channel groups).
    """
    n_cols = perm.shape[0]
    visit = np.arange(n_cols)
    if n_groups == 1:
        return np.zeros(n_cols, dtype=np.int64), np.zeros(n_cols, dtype=bool)
    if static_groups:  # groups follow the original columns
        return perm // g, np.zeros(n_cols, dtype=bool)
    return visit // g, visit % g == 0  # groups follow the visiting order


def _quantize_blocks(W, H_inv, fmt, params, gid, choose, g, blocksize):
    """The column loop of Algorithm 1 with lazy batch updates; ``W`` is updated in place.

    Parameters
    ----------
    W : torch.Tensor, shape (n_rows, n_cols), float32
        Columns in visiting order, dead columns zeroed.
    H_inv : torch.Tensor, shape (n_cols, n_cols), float32
        Upper Cholesky factor of the damped inverse Hessian, visiting order.
    fmt : RTNFormat
    params : dict
        Group id -> (scale, zero), each ndarray (n_rows,) float32; filled
        here for groups whose ``choose`` column is reached.
    gid, choose : ndarray, shape (n_cols,)
        From :func:`_group_plan`.
    g : int
        Columns per group.
    blocksize : int

    Returns
    -------
    codes : ndarray, shape (n_rows, n_cols), uint8, visiting order
    losses : torch.Tensor, shape (n_rows, n_cols), float32
        ``(w - q)² / d² / 2`` per weight, visiting order.
    """
    n_rows, n_cols = W.shape
    codes = np.zeros((n_rows, n_cols), dtype=np.uint8)
    losses = torch.zeros_like(W)
    for i1 in range(0, n_cols, blocksize):
        i2 = min(i1 + blocksize, n_cols)
        W1 = W[:, i1:i2].clone()  # (n_rows, count): updated column by column
        err = torch.zeros_like(W1)
        H_inv1 = H_inv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if choose[c]:  # the reference reads W here, not the block copy W1
                params[gid[c]] = fmt.choose_params(_np(W[:, c:c + g]))
            scale, zero = params[gid[c]]
            w = W1[:, i]
            d = H_inv1[i, i]
            codes[:, c], q = fmt.quantize_column(_np(w), scale, zero)
            q = torch.from_numpy(q).to(W.device)
            losses[:, c] = (w - q) ** 2 / d ** 2 / 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(H_inv1[i, i:].unsqueeze(0))
            err[:, i] = err1
        W[:, i2:] -= err.matmul(H_inv[i1:i2, i2:])  # the lazy batch update
    return codes, losses


def gptq(W, H, fmt: RTNFormat, *, act_order: bool = False, static_groups: bool = False,
         damp: float = 0.01, blocksize: int = 128) -> QuantResult:
    """Quantize one layer with GPTQ (Algorithm 1), as ``GPTQ.fasterquant`` does.

    Parameters
    ----------
    W : torch.Tensor or ndarray, shape (n_rows, n_cols), float
        The weight, out × in. Never modified. The work runs in float32 on its
        device (CUDA tensors stay on the GPU; arrays run on the CPU).
    H : torch.Tensor or ndarray, shape (n_cols, n_cols), float32
        The layer Hessian (:func:`hessian`). Never modified.
    fmt : RTNFormat
        The grid: bits, sym and columns per group (>= n_cols: per channel).
    act_order : bool
        Visit columns by descending ``diag(H)`` (the reference's ``actorder``).
    static_groups : bool
        Choose all group parameters up front from the original ``W`` (after
        dead columns are zeroed), so groups stay contiguous in the original order.
    damp : float
        Damping as a fraction of ``mean(diag(H))`` (the reference's ``percdamp``).
    blocksize : int
        Columns per lazy batch.

    Returns
    -------
    QuantResult
        ``method="gptq"``; ``codes`` uint8 (n_rows, n_cols) in the original
        column order; ``scales`` and ``zeros`` float32 (n_rows, n_groups),
        column ``k`` belonging to group id ``k`` (``zeros`` is None when
        symmetric: the zero is ``2**(bits-1)``). ``info`` holds ``loss``
        (sum of ``losses``), ``losses`` (float32 (n_cols,), the column sums of
        ``(w - q)² / d² / 2``, original order), ``damp`` (the relative damping
        used) and ``n_dead``.

    Notes
    -----
    With ``act_order`` and without ``static_groups`` groups follow the
    visiting order, so column ``j`` is *not* in group ``j // group_size``:
    the result's ``g_idx`` (int32, (n_cols,)) then gives every original
    column's group id, and ``QuantResult.dequantize`` decodes with it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((4, 64)).astype(np.float32)
    >>> H = hessian(rng.standard_normal((256, 64)).astype(np.float32))
    >>> r = gptq(W, H, RTNFormat(bits=4, group_size=32))
    >>> r.codes.shape, r.scales.shape, r.info["damp"]
    ((4, 64), (4, 2), 0.01)
    """
    _check_options(fmt, damp, blocksize)
    device = W.device if isinstance(W, torch.Tensor) else "cpu"
    W = _float32_copy(W, device, "W")  # (n_rows, n_cols): ours to update
    H = _float32_copy(H, device, "H")  # (n_cols, n_cols)
    n_rows, n_cols = W.shape
    if H.shape != (n_cols, n_cols):
        raise ValueError(f"H has shape {tuple(H.shape)} but W has {n_cols} columns; "
                         f"pass the ({n_cols}, {n_cols}) Hessian of this layer's inputs")
    g = min(int(fmt.group_size), n_cols)
    n_groups = -(-n_cols // g)

    params = {0: fmt.choose_params(_np(W))} if n_groups == 1 else {}  # before dead zeroing
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups and n_groups > 1:
        params = {k: fmt.choose_params(_np(W[:, s:s + g])) for k, s in enumerate(range(0, n_cols, g))}

    if act_order:
        perm_t = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm_t]
        H = H[perm_t][:, perm_t]
        perm = _np(perm_t).astype(np.int64)
    else:
        perm = np.arange(n_cols)
    k = hessian_scale_exponent(H)  # H·4⁻ᵏ: exact, same codes, no overflow in the damping
    if k:
        H = H * 2.0**-k * 2.0**-k
    H_inv, damp_used = inverse_hessian_factor(H, damp)

    gid, choose = _group_plan(perm, g, n_groups, static_groups)
    codes, losses = _quantize_blocks(W, H_inv, fmt, params, gid, choose, g, blocksize)
    return _result(codes, losses, params, perm, gid, fmt, g, n_groups, dead, damp_used,
                   act_order, static_groups, blocksize, 4.0**k)


def _result(codes, losses, params, perm, gid, fmt, g, n_groups, dead, damp_used,
            act_order, static_groups, blocksize, loss_scale: float = 1.0) -> QuantResult:
    """Undo the visiting order and wrap everything in a QuantResult.

    ``loss_scale`` (``4ᵏ``) undoes the scaling of a rescaled Hessian on the losses.
    """
    n_rows, n_cols = codes.shape
    invperm = np.argsort(perm)
    g_idx = np.empty(n_cols, dtype=np.int32)
    g_idx[perm] = gid  # original column -> group id
    scales = np.stack([params[k][0] for k in range(n_groups)], axis=1)  # (n_rows, n_groups)
    zeros = np.stack([params[k][1] for k in range(n_groups)], axis=1)
    col_losses = _np(losses.sum(0)).astype(np.float32)[invperm]  # (n_cols,), original order
    if loss_scale != 1.0:  # in float64; kept float64 where float32 cannot hold a column's loss
        col64 = col_losses.astype(np.float64) * loss_scale
        col_losses = col64.astype(np.float32) if np.abs(col64).max() <= np.finfo(np.float32).max else col64
    info = {
        "sym": fmt.sym, "act_order": act_order, "static_groups": static_groups,
        "blocksize": blocksize, "damp": damp_used, "n_dead": int(dead.sum()),
        "loss": float(col_losses.sum(dtype=np.float64)), "losses": col_losses,
    }
    contiguous = np.array_equal(g_idx, np.arange(n_cols) // g)
    return QuantResult("gptq", (n_rows, n_cols), int(fmt.bits), g, codes[:, invperm],
                       scales.astype(np.float32), None if fmt.sym else zeros.astype(np.float32),
                       g_idx=None if contiguous else g_idx, info=info)
