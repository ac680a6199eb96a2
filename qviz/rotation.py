"""Randomized Hadamard rotations of a weight's input dimension (QuaRot, SpinQuant).

A linear layer computes ``y = x · Wᵀ``. For any orthogonal ``R`` (n_cols ×
n_cols), ``y = (x·R) · (W·R)ᵀ``: quantizing ``W·R`` instead of ``W`` changes
nothing but what the quantizer sees. A randomized Hadamard ``R`` spreads every
outlier column over all the columns of its block, so the rotated weight is
close to Gaussian, with a far smaller max/RMS ratio: the lesson of why FP4 and
int4 formats want it.

Here ``R = diag(signs) · H``, ``H`` block-diagonal with ``n_cols / block``
normalized Sylvester–Hadamard blocks of ``block`` columns (``block`` a power of
two dividing ``n_cols``; by default the largest), and ``signs`` ±1 drawn from a
seed. ``H`` is symmetric and its own inverse, so::

    apply(x)   = x · R   = H(x ⊙ signs)      (rows of x, along the last axis)
    restore(v) = v · Rᵀ  = H(v) ⊙ signs

``H`` of a row runs as a fast Walsh–Hadamard transform: log2(block) butterfly
stages ``(a, b) → (a + b, a − b)`` in float32, then one multiply by
``1/sqrt(block)`` rounded to float32. :func:`fwht` is the numpy definition;
``qviz.kernels.numba.rotation`` is its twin (same stages, same order: the same
bits).

A rotated :class:`~qviz.result.QuantResult` holds the codes of ``W·R`` and its
:class:`Rotation`; ``dequantize()`` returns ``Q(W·R)·Rᵀ``, the weight in the
layer's own basis, so the output error on the layer's real activations is
measured as the rotated model computes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Rotation", "hadamard", "fwht", "largest_block"]

#: the rotations :func:`qviz.quantize` offers
KINDS = ("hadamard",)


def largest_block(n: int) -> int:
    """The largest power of two dividing ``n`` (the default Hadamard block)."""
    if n < 1:
        raise ValueError(f"a rotation needs at least one column, got {n}")
    return n & -n


def fwht(x: np.ndarray, block: int) -> np.ndarray:
    """Normalized Walsh–Hadamard transform of every ``block`` consecutive values of each row.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        ``n_cols`` a multiple of ``block``. Not modified.
    block : int
        A power of two.

    Returns
    -------
    ndarray, shape (n_rows, n_cols), float32
        ``x`` times the block-diagonal ``H`` (``H = Hᵀ = H⁻¹``).
    """
    rows, cols = x.shape
    y = np.array(x, dtype=np.float32, copy=True).reshape(rows, cols // block, block)
    h = 1
    while h < block:
        v = y.reshape(rows, cols // block, block // (2 * h), 2, h)
        a, b = v[:, :, :, 0, :].copy(), v[:, :, :, 1, :]
        v[:, :, :, 0, :] = a + b
        v[:, :, :, 1, :] = a - b
        h *= 2
    y *= np.float32(1.0 / np.sqrt(block))
    return y.reshape(rows, cols)


@dataclass(frozen=True, eq=False)
class Rotation:
    """``R = diag(signs) · H_block``: an orthogonal transform of the input dimension.

    Attributes
    ----------
    kind : str
        ``"hadamard"``.
    block : int
        Columns per Hadamard block, a power of two dividing ``n_cols``.
    signs : ndarray, shape (n_cols,), float32
        ±1.
    seed : int
        What drew ``signs`` (``hadamard(n_cols, block, seed)`` rebuilds them).
    """

    kind: str
    block: int
    signs: np.ndarray
    seed: int = 0

    @property
    def n_cols(self) -> int:
        """Columns the rotation acts on."""
        return int(self.signs.shape[0])

    @property
    def storage_bits(self) -> int:
        """One sign bit per column (a seed regenerates them, but a checkpoint stores them)."""
        return self.n_cols

    def _rows(self, x, what: str) -> tuple[np.ndarray, tuple]:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.n_cols:
            raise ValueError(f"{what} has {x.shape[-1]} columns; the rotation acts on {self.n_cols}")
        return np.ascontiguousarray(x.reshape(-1, self.n_cols)), x.shape

    def apply(self, x, backend: str = "numba") -> np.ndarray:
        """``x · R`` along the last axis (weights or activations), float32; ``x`` is not modified."""
        rows, shape = self._rows(x, "the array to rotate")
        if backend == "numpy":
            return fwht(rows * self.signs, self.block).reshape(shape)
        from qviz.kernels.numba.rotation import rotate_rows

        return rotate_rows(rows, self.signs, self.block, True).reshape(shape)

    def restore(self, v, backend: str = "numba") -> np.ndarray:
        """``v · Rᵀ`` along the last axis: back to the layer's own basis, float32."""
        rows, shape = self._rows(v, "the array to restore")
        if backend == "numpy":
            return (fwht(rows, self.block) * self.signs).reshape(shape)
        from qviz.kernels.numba.rotation import rotate_rows

        return rotate_rows(rows, self.signs, self.block, False).reshape(shape)

    def matrix(self) -> np.ndarray:
        """``R`` as a dense float32 (n_cols, n_cols) array (small layers, tests)."""
        return self.apply(np.eye(self.n_cols, dtype=np.float32), backend="numpy")

    def __repr__(self) -> str:
        return f"Rotation({self.kind!r}, block={self.block}, n_cols={self.n_cols}, seed={self.seed})"


def hadamard(n_cols: int, block: int | None = None, seed: int = 0) -> Rotation:
    """A randomized block-Hadamard rotation of ``n_cols`` input columns.

    Parameters
    ----------
    n_cols : int
    block : int, optional
        A power of two dividing ``n_cols``; default the largest (``n_cols``
        itself when it is a power of two: one dense Hadamard).
    seed : int
        Seed of the random signs.

    Examples
    --------
    >>> import numpy as np
    >>> r = hadamard(8, seed=1)
    >>> m = r.matrix()
    >>> bool(np.allclose(m @ m.T, np.eye(8), atol=1e-6)), r.block
    (True, 8)
    """
    n_cols = int(n_cols)
    if block is None:
        block = largest_block(n_cols)
    block = int(block)
    if block < 1 or block & (block - 1) or n_cols % block:
        raise ValueError(f"rotate_block={block}: a Hadamard block is a power of two dividing the "
                         f"{n_cols} columns; choose one of "
                         f"{', '.join(str(1 << k) for k in range(largest_block(n_cols).bit_length()))}")
    signs = np.where(np.random.default_rng(seed).integers(0, 2, n_cols) == 1, 1.0, -1.0).astype(np.float32)
    return Rotation("hadamard", block, signs, int(seed))
