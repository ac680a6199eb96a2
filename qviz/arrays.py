"""Floor 0: turn what a user hands qviz into a clean float32 weight matrix.

Every public function validates through :func:`as_weight`, so the rules live in
one place: tensors, arrays and ``nn.Linear`` modules are accepted; fp16/bf16 are
converted once; integers, NaN/Inf, float64 values beyond float32's range, tensors
on torch's meta device, wrong ranks and empty arrays are refused with a message
that says how to fix them. The caller's data is never modified:
the result is either a fresh copy or read only by qviz.
"""
from __future__ import annotations

import numpy as np


def to_numpy(obj, *, name: str = "weight") -> np.ndarray:
    """numpy view/copy of an array-like, a torch tensor or a module with ``.weight``.

    Raises
    ------
    ValueError
        For a tensor on torch's meta device (it has a shape but no data), or
        nested lists of unequal lengths, naming ``name``.
    """
    if hasattr(obj, "weight") and not isinstance(obj, np.ndarray) and not hasattr(obj, "detach"):
        obj = obj.weight  # nn.Linear and friends: (out, in)
    if hasattr(obj, "detach"):  # a torch tensor; torch is never imported here
        if getattr(obj, "is_meta", False):
            raise ValueError(f"{name} is a tensor on the meta device (shape {tuple(obj.shape)}): it has "
                             f"no data; load the weights first (e.g. from_pretrained without "
                             f"device_map='meta', or load_state_dict(..., assign=True) after to_empty())")
        t = obj.detach()
        if t.dtype.is_floating_point and t.dtype.itemsize < 4:
            t = t.float()  # bf16 has no numpy twin; fp16 converts exactly
        return t.cpu().numpy()
    try:
        return np.asarray(obj)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} is not a rectangular array of numbers ({e}); pass an ndarray "
                         f"or equal-length lists") from e


def as_float32(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` (real numbers) as C-contiguous float32, refusing what float32 cannot hold.

    Parameters
    ----------
    a : ndarray, any shape, float or integer
    name : str
        How error messages call it.

    Returns
    -------
    ndarray, shape of ``a``, float32
        ``a`` itself when it already is C-contiguous float32.

    Raises
    ------
    ValueError
        For NaN/Inf, and for finite values beyond float32's range (float64
        input above 3.4e38 would become inf); each message gives the count,
        the first position and the fix.

    Examples
    --------
    >>> as_float32(np.array([1.0, 2.0]), "x").dtype
    dtype('float32')
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(a, dtype=np.float32)
        if np.isfinite(out.sum(dtype=np.float64)):  # float64 cannot overflow here: all finite, no mask
            return out
    if a.dtype != np.float32:
        overflow = ~np.isfinite(out) & np.isfinite(a)  # finite before the cast: beyond float32
        if overflow.any():
            first = tuple(int(i) for i in np.argwhere(overflow)[0])
            raise ValueError(
                f"{name} has {int(overflow.sum())} values beyond float32's range "
                f"(|x| > {float(np.finfo(np.float32).max):.7g}), qviz's working precision; the first "
                f"is {float(a[first]):g} at {_where(first)}. Rescale it first (e.g. divide by a power "
                f"of two and multiply the decoded values back)")
    check_finite(out, name)
    return out


def _where(index: tuple[int, ...]) -> str:
    """``(row, col) = (i, j)`` for a 2-D position, ``index i`` otherwise."""
    return f"(row, col) = {index}" if len(index) == 2 else f"index {index if len(index) != 1 else index[0]}"


def as_weight(obj, *, name: str = "weight") -> np.ndarray:
    """Validate a 2-D weight and return it as C-contiguous float32.

    Parameters
    ----------
    obj : array_like, torch.Tensor or nn.Linear, shape (n_rows, n_cols)
        The weight, out × in (``nn.Linear.weight`` layout). float16, bfloat16,
        float32 and float64 are accepted.
    name : str
        How error messages call it.

    Returns
    -------
    ndarray, shape (n_rows, n_cols), float32
        Never the caller's buffer when a conversion was needed; when the input
        already is C-contiguous float32 numpy it is returned as is, and qviz
        only reads it.

    Raises
    ------
    TypeError
        For integer, boolean or complex data.
    ValueError
        For anything but 2-D, an empty array, NaN/Inf values or values beyond
        float32's range (the message gives how many and the first (row, col)),
        or a tensor on torch's meta device.
    """
    a = to_numpy(obj, name=name)
    if a.dtype.kind in "iub":
        raise TypeError(
            f"{name} has integer dtype {a.dtype}; qviz quantizes floating-point weights. "
            f"Convert it first, e.g. w.astype(np.float32) or tensor.float().")
    if a.dtype.kind not in "f":
        raise TypeError(f"{name} has dtype {a.dtype}; pass a real floating-point array "
                        f"(float16, bfloat16, float32 or float64).")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (out × in), got shape {a.shape}; "
                         f"reshape it, e.g. w.reshape(w.shape[0], -1).")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}).")
    return as_float32(a, name)


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise ValueError naming the count and first position ((row, col) when 2-D) of NaN/Inf in ``a``."""
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} has {int(bad.sum())} NaN/Inf values; the first is at "
                         f"{_where(first)}. Clean or mask them before quantizing.")


def check_group_size(group_size, n_cols: int) -> int:
    """Columns per group for rows of ``n_cols``: -1 means per channel (the whole row).

    Raises
    ------
    TypeError
        ``group_size`` is not an integer.
    ValueError
        ``group_size`` is 0 or negative other than -1.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size={group_size!r} must be an integer")
    if group_size == -1:
        return n_cols
    if group_size <= 0:
        raise ValueError(f"group_size={group_size}: use a positive number of columns, "
                         f"or -1 for one group per output row")
    return min(int(group_size), n_cols)


def as_activations(obj, n_cols: int, *, name: str = "calib") -> np.ndarray:
    """Validate activations X (n_samples × n_cols) for a layer whose rows are ``n_cols`` wide.

    Higher-rank inputs (batch, seq, in) are flattened to (batch·seq, in).
    """
    a = to_numpy(obj, name=name)
    if a.dtype.kind not in "f":
        raise TypeError(f"{name} has dtype {a.dtype}; pass floating-point activations.")
    if a.ndim < 2:
        raise ValueError(f"{name} must be (n_samples, {n_cols}), got shape {a.shape}.")
    a = a.reshape(-1, a.shape[-1])
    if a.shape[1] != n_cols:
        raise ValueError(f"{name} has {a.shape[1]} columns but the weight has {n_cols} "
                         f"input columns; pass the inputs of this layer (n_samples × {n_cols}).")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has no samples.")
    return as_float32(a, name)


def as_importance(obj, n_cols: int, *, name: str = "imatrix") -> np.ndarray:
    """Validate one importance per input column and return it as float32 (n_cols,).

    An importance (llama.cpp's imatrix, k-means' column weights) weighs each
    column's squared error; only ratios matter. The sign is the caller's to
    check (what zero means differs between methods).

    Raises
    ------
    TypeError
        For values that are not numbers.
    ValueError
        For another shape than (n_cols,) (a (1, n_cols) or (16, 16) array is
        refused, not flattened), NaN/Inf, or values beyond float32's range.

    Examples
    --------
    >>> as_importance([1, 2, 3], 3)
    array([1., 2., 3.], dtype=float32)
    """
    a = to_numpy(obj, name=name)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} has dtype {a.dtype}; pass one non-negative number per input column "
                        f"(e.g. qviz.imatrix(x) of the layer's inputs)")
    if a.ndim == 1 and a.shape[0] != n_cols:
        raise ValueError(f"{name} has {a.shape[0]} values but the rows have {n_cols} columns; pass one "
                         f"per input column (e.g. qviz.imatrix(x) of the layer's inputs)")
    if a.shape != (n_cols,):
        raise ValueError(f"{name} has shape {a.shape}; pass a vector of shape ({n_cols},), one value per "
                         f"input column")
    return as_float32(a.reshape(1, n_cols), name)[0]  # a row: errors name (0, column)


def torch_device(device):
    """A ``torch.device`` for ``device`` (None: the CPU), refusing CUDA when torch has none.

    Raises
    ------
    ValueError
        For a name torch does not know, or ``"cuda"`` without a CUDA build/GPU.
    """
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu' or 'cuda'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available in this torch "
                         f"({torch.__version__}); use device='cpu' (or leave it None)")
    return dev
