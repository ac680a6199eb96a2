"""Output arrays of the decoding kernels: new, or the caller's to reuse.

A weight-sized float32 array that is new each time costs page faults, tens
of milliseconds for 64 MB: a caller that decodes often (an explorer) hands
the kernels one buffer to overwrite instead.
"""
from __future__ import annotations

import numpy as np


def float_output(shape: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """A float32 array of ``shape`` for a kernel to fill: ``out`` (checked) or a new one.

    Raises
    ------
    ValueError
        ``out`` is not a C-contiguous float32 array of ``shape``.
    """
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {tuple(shape)}; "
                         f"got {out.dtype} {out.shape}")
    return out
