"""Numba twin of :mod:`qviz.formats.hqq`'s solver: the same zeros, errors and codes, bit for bit.

The reference runs about twelve torch passes over the weight per iteration.
Here the elementwise work is two fused passes (``prange`` over groups), and
only what must be torch's to give torch's bits stays torch's:

1. :func:`_residual` — ``q = clamp(rint(w * inv + zero))``, ``d = w - (q - zero) / inv``,
   writes ``|d|``;
2. torch: the error ``mean |d|`` (torch's float32 sum order) and ``|d| ** (p-1)``
   in place (torch's vectorised ``pow``, which is not correctly rounded);
3. :func:`_zero_terms` — recomputes ``q`` and ``d``, applies the threshold
   ``sign(d) * max(|d| - c * |d|**(p-1), 0)`` with ``c = float32(1 / beta)``
   and writes ``q - (w - W_e) * inv``;
4. torch: the group means of those terms, the new zeros.

Every buffer has the shape and layout of the reference's tensors, so torch
splits its sums and its vector loops the same way. Each float32 operation of
1 and 3 is one IEEE operation in the reference's order (no fastmath, no
contraction into fused multiply-adds).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

F32 = np.float32
JIT_OPTIONS = {"cache": True, "error_model": "numpy", "parallel": True}  # no fastmath

__all__ = ["solve", "codes_of"]


@njit(**JIT_OPTIONS)
def _residual(w, inv, zero, maxq, absd):
    """``absd[g, j] = |w - (q - zero) / inv|`` of every group ``g`` (float32 (n_groups, g) arrays)."""
    for g in prange(w.shape[0]):
        s, z = inv[g, 0], zero[g, 0]
        for j in range(w.shape[1]):
            q = min(max(np.rint(w[g, j] * s + z), F32(0)), maxq)
            absd[g, j] = abs(w[g, j] - (q - z) / s)


@njit(**JIT_OPTIONS)
def _zero_terms(w, inv, zero, maxq, powd, c, terms):
    """``terms[g, j] = q - (w - W_e) * inv`` with the lp threshold ``W_e`` (``powd = |d|**(p-1)``)."""
    for g in prange(w.shape[0]):
        s, z = inv[g, 0], zero[g, 0]
        for j in range(w.shape[1]):
            x = w[g, j]
            q = min(max(np.rint(x * s + z), F32(0)), maxq)
            d = x - (q - z) / s
            e = max(abs(d) - c * powd[g, j], F32(0)) * np.sign(d)
            terms[g, j] = q - (x - e) * s


@njit(**JIT_OPTIONS)
def _codes(w, inv, zero, maxq, out):
    """``out[g, j] = clamp(rint(w * inv + zero), 0, maxq)`` as uint8."""
    for g in prange(w.shape[0]):
        s, z = inv[g, 0], zero[g, 0]
        for j in range(w.shape[1]):
            out[g, j] = np.uint8(min(max(np.rint(w[g, j] * s + z), F32(0)), maxq))


def solve(groups: np.ndarray, inv_scale: np.ndarray, zero: np.ndarray, bits: int, *,
          iters: int, lp_norm: float, beta: float, kappa: float,
          early_stop: bool) -> tuple[np.ndarray, list[float]]:
    """:func:`qviz.formats.hqq.solve`, fused: the same zeros and errors.

    Parameters
    ----------
    groups : ndarray, shape (n_groups, group_size), float32
    inv_scale, zero : ndarray, shape (n_groups, 1), float32
    bits, iters, lp_norm, beta, kappa, early_stop
        As :func:`qviz.formats.hqq.solve`.

    Returns
    -------
    zero : ndarray, shape (n_groups, 1), float32
    errors : list of float
    """
    import torch

    w = np.ascontiguousarray(groups, dtype=np.float32)
    inv = np.ascontiguousarray(inv_scale, dtype=np.float32)
    z = np.ascontiguousarray(zero, dtype=np.float32)
    maxq = F32((1 << bits) - 1)
    work = np.empty_like(w)  # |d|, then |d| ** (p-1)
    terms = np.empty_like(w)
    work_t, terms_t = torch.from_numpy(work), torch.from_numpy(terms)
    errors: list[float] = []
    best = math.inf
    for _ in range(iters):
        _residual(w, inv, z, maxq, work)
        err = float(work_t.mean())
        work_t.pow_(lp_norm - 1)
        _zero_terms(w, inv, z, maxq, work, F32(1.0 / beta), terms)
        z = torch.mean(terms_t, dim=1, keepdim=True).numpy()
        beta *= kappa
        errors.append(err)
        if early_stop and not err < best:
            break
        best = min(best, err)
    return z, errors


def codes_of(groups: np.ndarray, inv_scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """:func:`qviz.formats.hqq.codes_of`: uint8 codes, shape of ``groups``."""
    out = np.empty(groups.shape, dtype=np.uint8)
    _codes(np.ascontiguousarray(groups, dtype=np.float32), np.ascontiguousarray(inv_scale, dtype=np.float32),
           np.ascontiguousarray(zero, dtype=np.float32), F32((1 << bits) - 1), out)
    return out
