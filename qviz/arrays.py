"""Floor 0: turn what a user hands qviz into a clean float32 weight matrix.

Every public function validates through :func:`as_weight`, so the rules live in
one place: tensors, arrays and ``nn.Linear`` modules are accepted; fp16/bf16 are
converted once; integers, NaN/Inf, wrong ranks and empty arrays are refused
with a message that says how to fix them. The caller's data is never modified:
the result is either a fresh copy or read only by qviz.
"""
from __future__ import annotations

import numpy as np


def _to_numpy(obj) -> np.ndarray:
    """numpy view/copy of an array-like, a torch tensor or a module with ``.weight``."""
    if hasattr(obj, "weight") and not isinstance(obj, np.ndarray) and not hasattr(obj, "detach"):
        obj = obj.weight  # nn.Linear and friends: (out, in)
    if hasattr(obj, "detach"):  # a torch tensor; torch is never imported here
        t = obj.detach()
        if t.dtype.is_floating_point and t.dtype.itemsize < 4:
            t = t.float()  # bf16 has no numpy twin; fp16 converts exactly
        return t.cpu().numpy()
    return np.asarray(obj)


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
        For anything but 2-D, an empty array, or NaN/Inf values (the message
        gives how many and the first (row, col)).
    """
    a = _to_numpy(obj)
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
    a = np.ascontiguousarray(a, dtype=np.float32)
    check_finite(a, name)
    return a


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise ValueError naming the count and first (row, col) of NaN/Inf in ``a``."""
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} has {int(bad.sum())} NaN/Inf values; the first is at "
                         f"(row, col) = {first}. Clean or mask them before quantizing.")


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
    a = _to_numpy(obj)
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
    a = np.ascontiguousarray(a, dtype=np.float32)
    check_finite(a, name)
    return a


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
