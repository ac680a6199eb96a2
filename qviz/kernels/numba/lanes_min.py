"""ggml's scale-and-min search run on many sub-blocks in lock-step ("lanes").

``make_qkx2_quants`` / ``make_qkx3_quants`` (:mod:`qviz.formats.ggml_search`)
spend their time in serial float32 sums: for each trial scale, ``sum_l``,
``sum_l2``, ``sum_xl`` and then the error add up one weight after another, and
every add waits for the one before. Sub-blocks are independent, so here
``n_lanes`` of them run the same search side by side:

* Lane layout: a group's values sit lane-major, ``x[i, k]`` = value ``i``
  of sub-block ``k``, so ``x[i, :]`` holds value ``i`` of every lane
  (contiguous). Every loop runs over ``i`` outside and the lanes inside; the
  lane loop has no dependence between iterations, so the CPU overlaps the
  lanes' chains and LLVM vectorizes it.
* Each lane still adds its own values in ggml's order, so its sums, and the
  bytes, are ggml's.
* ggml's branches become per-lane choices inside the lane loop (``D > 0``,
  ``this_min > 0``, "is this trial better?"); a lane with no range
  (``max <= min``) runs along and is given ggml's answer at the end.
* ggml copies a better trial's codes at once; a lane here remembers the
  trial's inverse scale and min instead and rounds its codes once, at the end,
  with the same float32 operations.
* Codes are rounded with ggml's ``nearest_int`` bit trick, which wraps
  beyond 2**22 (a trial measured from a better trial's min can land there,
  seen on sparse sub-blocks with zero imatrix weights). :func:`nearest_int`
  is ``rounding.nearest_int`` returning int32: compiled from the shared
  definition (``search.nearest_int``, int64) the lane loops ran 10-25% slower.

numba's cache of ``gguf_k_min`` holds this module's code compiled in: after
editing this file, delete ``qviz/kernels/numba/__pycache__/gguf_k_min*.nb*``.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from qviz.kernels.numba.search import JIT_OPTIONS

f32 = np.float32
INF = f32(np.inf)

#: rows of the per-lane work array of :func:`make_qkx_quants_lanes`
N_LANE_VALUES = 15


@njit(**JIT_OPTIONS)
def to_lanes(x, n, lanes):
    """Lane-major copy of consecutive groups of ``n``: ``lanes[i, k] = x[n*k + i]``.

    x : float32 (n * n_lanes,); lanes : float32 (n, >= n_lanes), written.
    """
    for k in range(x.shape[0] // n):
        for i in range(n):
            lanes[i, k] = x[n * k + i]


@njit(**JIT_OPTIONS)
def from_lanes(lanes, k0, out):
    """The inverse of :func:`to_lanes` for the groups from lane ``k0`` on:
    ``out[n*j + i] = lanes[i, k0 + j]``.

    lanes : (n, >= k0 + n_groups); out : (n * n_groups,), written; same dtype.
    """
    n = lanes.shape[0]
    for j in range(out.shape[0] // n):
        for i in range(n):
            out[n * j + i] = lanes[i, k0 + j]


@intrinsic
def _bits(typingctx, x):
    """A float32's bit pattern as int32 (C's ``memcpy`` into an ``int``)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@njit(**JIT_OPTIONS)
def nearest_int(fval):
    """:func:`qviz.formats.rounding.nearest_int` (ggml's, wrapping beyond 2**22) as int32.

    The same bits as the definition in ``rounding``, written with a bit-cast
    intrinsic so that it compiles to vector integer instructions in the lane loops.
    """
    return np.int32((_bits(fval + f32(12582912.0)) & 0x7FFFFF) - 0x400000)


@njit(**JIT_OPTIONS)
def _code(iscale, x, xmin, nmax):
    """ggml's ``MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))`` as float32."""
    return f32(max(np.int32(0), min(np.int32(nmax), nearest_int(iscale * (x - xmin)))))


@njit(**JIT_OPTIONS)
def make_qkx_quants_lanes(n_lanes, nmax, x, weights, L, rmin, rdelta, nstep, use_mad,
                          scale, the_min, Lf, work):
    """ggml's ``make_qkx2_quants``/``make_qkx3_quants`` on ``n_lanes`` groups at once.

    Lane ``k`` gets exactly what ggml's ``make_qkx3_quants`` returns for
    ``x[:, k]``, ``weights[:, k]`` (with weights given, qkx2 and qkx3 are the
    same search; :func:`qviz.formats.ggml_search.make_qkx3_quants` is its
    readable form).

    Parameters
    ----------
    n_lanes : int
        Groups searched; the arrays may have more columns (unused).
    nmax : int
        The largest code.
    x, weights : ndarray, shape (n, >= n_lanes), float32
        The groups' values and error weights, lane-major (see the module).
    L : ndarray, shape (n, >= n_lanes), uint8
        Output: the codes, lane-major.
    rmin, rdelta : float32
        First trial offset and step, in code units.
    nstep : int
        Trials after the first; below 1 no search is done.
    use_mad : bool
        Absolute (True) or squared (False) error.
    scale, the_min : ndarray, shape (>= n_lanes,), float32
        Output: each lane's step and ``-min``.
    Lf : ndarray, shape (n, >= n_lanes), float32
        Scratch: the trial codes.
    work : ndarray, shape (N_LANE_VALUES, >= n_lanes), float32
        Scratch: one row per running value of the search.

    Notes
    -----
    ggml-quants.c ``make_qkx2_quants`` and ``make_qkx3_quants``; ggml's
    quirk is kept: after a better trial, later trials measure from its min.
    """
    n = x.shape[0]
    xmin, xmax, sum_w, sum_x = work[0], work[1], work[2], work[3]
    best_error, iscale = work[4], work[5]
    code_iscale, code_min = work[6], work[7]  # what the best codes were rounded with
    sum_l, sum_l2, sum_xl = work[8], work[9], work[10]
    D, this_scale, this_min, cur_error = work[11], work[12], work[13], work[14]
    for k in range(n_lanes):
        xmin[k] = x[0, k]
        xmax[k] = x[0, k]
        sum_w[k] = weights[0, k]
        sum_x[k] = weights[0, k] * x[0, k]
    for i in range(1, n):
        for k in range(n_lanes):
            v = x[i, k]
            xmin[k] = v if v < xmin[k] else xmin[k]
            xmax[k] = v if v > xmax[k] else xmax[k]
            sum_w[k] += weights[i, k]
            sum_x[k] += weights[i, k] * v
    for k in range(n_lanes):
        if xmin[k] > 0:
            xmin[k] = f32(0.0)
        code_iscale[k] = f32(nmax) / (xmax[k] - xmin[k])
        scale[k] = f32(1.0) / code_iscale[k]
        code_min[k] = xmin[k]
        best_error[k] = f32(0.0)
    for i in range(n):  # the error of the first guess, min..max spread over 0..nmax
        for k in range(n_lanes):
            diff = scale[k] * _code(code_iscale[k], x[i, k], xmin[k], nmax) + xmin[k] - x[i, k]
            diff = abs(diff) if use_mad else diff * diff
            best_error[k] += weights[i, k] * diff
    for k in range(n_lanes):
        if not xmax[k] > xmin[k]:  # no range: no trial may win
            best_error[k] = -INF
    for step in range(nstep + 1 if nstep >= 1 else 0):
        for k in range(n_lanes):
            iscale[k] = (rmin + rdelta * f32(step) + f32(nmax)) / (xmax[k] - xmin[k])
            sum_l[k] = f32(0.0)
            sum_l2[k] = f32(0.0)
            sum_xl[k] = f32(0.0)
        for i in range(n):
            for k in range(n_lanes):
                fl = _code(iscale[k], x[i, k], xmin[k], nmax)
                Lf[i, k] = fl
                wl = weights[i, k] * fl
                sum_l[k] += wl
                sum_l2[k] += wl * fl
                sum_xl[k] += wl * x[i, k]
        for k in range(n_lanes):
            D[k] = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k]
            s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / D[k]
            m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / D[k]
            if m > 0:
                m = f32(0.0)
                s = sum_xl[k] / sum_l2[k]
            this_scale[k] = s
            this_min[k] = m
            cur_error[k] = f32(0.0)
        for i in range(n):
            for k in range(n_lanes):
                diff = this_scale[k] * Lf[i, k] + this_min[k] - x[i, k]
                diff = abs(diff) if use_mad else diff * diff
                cur_error[k] += weights[i, k] * diff
        for k in range(n_lanes):
            if D[k] > 0 and cur_error[k] < best_error[k]:
                best_error[k] = cur_error[k]
                scale[k] = this_scale[k]
                code_iscale[k] = iscale[k]
                code_min[k] = xmin[k]
                xmin[k] = this_min[k]
    for k in range(n_lanes):
        if best_error[k] == -INF:  # no range: ggml returns scale 0 and codes 0
            scale[k] = f32(0.0)
            code_iscale[k] = f32(0.0)
        the_min[k] = -xmin[k]
    for i in range(n):
        for k in range(n_lanes):
            L[i, k] = _code(code_iscale[k], x[i, k], code_min[k], nmax)
