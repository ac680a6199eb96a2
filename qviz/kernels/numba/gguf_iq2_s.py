"""Numba twin of :mod:`qviz.formats.gguf_iq2_s`: IQ2_S.

Same public names and results, bit for bit, as the numpy reference. Rows run
in parallel (``prange``); each row works in scratch arrays allocated once.
The lattice tables of ``lattice("iq2s")`` are passed to the kernels as
arguments (the grid as float32 odd coordinates ``2l+1``, the point map and the
neighbour lists as ggml lays them out).

The sub-block search gives ggml's results, every float32 sum in ggml's order,
but runs the 19 trial scales of a sub-block in lock-step (lanes): a trial's
rounding, neighbour search and sums do not depend on the other trials, only
ggml's keep-the-best step does, and it runs afterwards in trial order. A run's
consecutive trials that round to the same off-grid point (about six of them)
search its candidate list together, in LLVM vector code (:func:`_window_search`).
On one thread this is about 2.5-2.8x ggml's C on (256, 4096) rows; rows in parallel
give the rest. Sub-blocks with NaN or inf take ggml's loop as written
(:func:`_search_sub_block`), which also serves as the readable form.

The bit layout is drawn in the reference module.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_iq2_s import CODEBOOK, GROUP_MAX_EPS_IQ2_S, K_MAX_Q, LATTICE, N_RUN, N_SUB, N_TRIALS, RUN, SUB
from qviz.formats.iq_lattice import lattice
from qviz.formats.rounding import fp16_bits, nearest_int
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

F32 = np.float32
IQ2_S_SIZE = FORMATS["IQ2_S"].type_size  # 82: d 2, qs 64, qh 8, scales 8

_LAT = lattice(LATTICE)
GRID = _LAT.search.astype(F32)  # (1024, 8) odd coordinates 2l+1
LEVELS = _LAT.levels.astype(np.uint8)  # (1024, 8)
KMAP = _LAT.kmap.astype(np.int32)  # (43692,)
NEIGHBOURS = _LAT.neighbours.astype(np.int32)  # count, then grid numbers, at each offset
LEVEL_VALUES = np.array([8, 25, 43], dtype=F32)

NT = 2 * N_TRIALS + 1  # trial scales a sub-block tries
W = 8  # trials searched together (one 256-bit vector of float32)
TP = 32  # lanes of the trial scales: NT, and W past the last window start
NL = 24  # lanes of the roundings and sums: NT, rounded up to whole vectors of 8
FLT_MAX = F32(np.finfo(np.float32).max)
# ggml's trial numerators 2*K_MAX_Q-1 + 0.1*is in float32; lanes past the last trial repeat it
TRIAL_NUMERATORS = (F32(2 * K_MAX_Q - 1)
                    + (np.minimum(np.arange(TP), NT - 1) - N_TRIALS).astype(F32) * F32(0.1)).astype(F32)
# each grid point's distance terms 3i + level (see _window_search)
CODES = (np.arange(RUN) * K_MAX_Q + LEVELS).astype(np.int32)


@njit(**JIT_OPTIONS)
def _best_neighbour(neighbours, start, grid, xval, waux, o, scale, L, lo):
    """ggml's ``iq2_find_best_neighbour`` for the run ``xval[o:o+8]``: writes its levels to ``L[lo:lo+8]``.

    neighbours : int32, the list (count, grid numbers…) at ``start``; grid : float32 (1024, 8), the
    odd coordinates ``2l+1``. Each candidate's distance is summed in ggml's order; the first strict
    minimum wins. Returns the chosen grid number.
    """
    n = neighbours[start]
    best_d2 = F32(np.finfo(np.float32).max)
    best = -1
    for j in range(1, n + 1):
        g = neighbours[start + j]
        d2 = F32(0.0)
        for i in range(RUN):
            diff = scale * grid[g, i] - xval[o + i]
            d2 += waux[o + i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            best = g
    for i in range(RUN):
        L[lo + i] = np.int8((np.int64(grid[best, i]) - 1) // 2)
    return best


@njit(**JIT_OPTIONS)
def _round_run(id_, xval, o, L, lo):
    """Levels ``clamp(nearest_int(0.5*(id*x - 1)), 0, 2)`` of ``xval[o:o+8]`` into ``L[lo:lo+8]``;
    returns their packed index ``sum(l << 2i)``."""
    u = 0
    for i in range(RUN):
        l = nearest_int(F32(0.5) * (id_ * xval[o + i] - F32(1.0)))
        l = max(0, min(K_MAX_Q - 1, l))
        L[lo + i] = l
        u |= l << (2 * i)
    return u


@njit(**JIT_OPTIONS)
def _sums(L, xval, weight, o):
    """``sumqx, sumq2`` over the 16 weights from ``o``, ``q = 2L+1``, in ggml's order."""
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for i in range(SUB):
        w = weight[o + i]
        q = F32(2 * np.int64(L[i]) + 1)
        sumqx += w * xval[o + i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(**JIT_OPTIONS)
def _search_sub_block(xval, weight, waux, o, kmap, neighbours, grid, L, Laux):
    """One sub-block of 16 from ``o`` (ggml ``quantize_row_iq2_s_impl``'s inner loop, before the signs).

    Writes its levels (0..2, int8) to ``L`` (16,); returns the fitted scale
    (float32, possibly negative), 0 for a sub-block below GROUP_MAX_EPS_IQ2_S.
    """
    vmax = xval[o]
    for i in range(1, SUB):
        v = xval[o + i]
        vmax = vmax if vmax > v else v
    for i in range(SUB):
        L[i] = 0
    if vmax < GROUP_MAX_EPS_IQ2_S:
        return F32(0.0)
    best = F32(0.0)
    scale = vmax / F32(2 * K_MAX_Q - 1)
    on0 = True
    on1 = True
    for is_ in range(-N_TRIALS, N_TRIALS + 1):
        id_ = (F32(2 * K_MAX_Q - 1) + F32(is_) * F32(0.1)) / vmax
        this_scale = F32(1.0) / id_
        a0 = True
        a1 = True
        u = _round_run(id_, xval, o, Laux, 0)
        k = kmap[u]
        if k < 0:
            a0 = False
            _best_neighbour(neighbours, -k - 1, grid, xval, waux, o, this_scale, Laux, 0)
        u = _round_run(id_, xval, o + RUN, Laux, RUN)
        k = kmap[u]
        if k < 0:
            a1 = False
            _best_neighbour(neighbours, -k - 1, grid, xval, waux, o + RUN, this_scale, Laux, RUN)
        sumqx, sumq2 = _sums(Laux, xval, weight, o)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(SUB):
                L[i] = Laux[i]
            on0 = a0
            on1 = a1
    if (not on0 or not on1) and scale > 0:
        id_ = F32(1.0) / scale
        if not on0:
            u = _round_run(id_, xval, o, L, 0)
            k = kmap[u]
            if k < 0:
                _best_neighbour(neighbours, -k - 1, grid, xval, waux, o, scale, L, 0)
        if not on1:
            u = _round_run(id_, xval, o + RUN, L, RUN)
            k = kmap[u]
            if k < 0:
                _best_neighbour(neighbours, -k - 1, grid, xval, waux, o + RUN, scale, L, RUN)
        sumqx, sumq2 = _sums(L, xval, weight, o)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale


@njit(**JIT_OPTIONS)
def _lane_levels(idv, x, p, q, qi, u, ui):
    """One weight ``x`` rounded at every trial (lanes ``t``): ``q[qi, t] = 2l+1``, ``u[ui, t] += l*p``.

    ``l = clamp(nearest_int(v), 0, 2)`` with ``v = 0.5*(id*x - 1)`` is ``(v > 0.5) + (v >= 1.5)``
    (half to even at 0.5 and 1.5) for ``v`` in [-0.5, 3], which holds for finite ``0 <= x <= vmax``.
    ``u`` packs a run's levels as the float32 ``sum(l * 4**i)`` (exact, below 2**16). All float32:
    numba widens int32 arithmetic to int64, which halves the lanes of a vector. The lane loops take
    their length from an array, and index rows of 2-d arrays by ``t``: numba unrolls a loop of
    constant length, and guards an index that may be negative, before LLVM could vectorize.
    """
    for t in range(q.shape[1]):
        v = F32(0.5) * (idv[t] * x - F32(1.0))
        l = F32(v > F32(0.5)) + F32(v >= F32(1.5))
        q[qi, t] = F32(2.0) * l + F32(1.0)
        u[ui, t] += l * p


@njit(**JIT_OPTIONS)
def _lane_sums(q, qi, w, wx, sqx, sq2):
    """ggml's ``sumqx += w*x*q``, ``sumq2 += w*q*q`` for one weight at every trial (lanes ``t``)."""
    for t in range(sqx.shape[0]):
        sqx[t] += wx * q[qi, t]
        sq2[t] += w * q[qi, t] * q[qi, t]


@intrinsic
def _window_search(typingctx, neighbours, s, codes, tsv, ws, xval, waux, o, bj):
    """ggml's neighbour search for the run ``xval[o:o+8]`` at the trials ``ws .. ws+W`` in lock-step.

    neighbours : int32, the candidate list (count, grid numbers…) at ``s``; codes : int32 (1024, 8)
    C-contiguous, :data:`CODES`; tsv : float32 (>= ws+W,), the trial scales; xval, waux :
    float32, the run's values and ggml's weights; bj : int32 (>= W,), out: each lane's winning
    list position, -1 if none.

    First the 24 terms ``waux[i] * diff * diff``, ``diff = scale * (2l+1) - xval[i]``, of each
    lane (every weight ``i`` at every level ``l``); then a candidate's distance is
    ``0 + term[c0] + … + term[c7]``, ggml's sum in ggml's order, and the first strict minimum wins
    (``d < best``, best from FLT_MAX). Written as LLVM vector operations on ``W`` float32, the
    terms in a stack array and the running minimum in registers: from numba's loops LLVM makes
    scalar code (it cannot tell that the arrays do not overlap).
    """
    i32, i64 = ir.IntType(32), ir.IntType(64)
    f32v, i32v = ir.VectorType(ir.FloatType(), W), ir.VectorType(i32, W)
    n_terms = RUN * K_MAX_Q

    def splat(builder, value, vty):
        v = ir.Constant(vty, None)
        for lane in range(W):
            v = builder.insert_element(v, value, ir.Constant(i32, lane))
        return v

    def codegen(context, builder, signature, args):
        nb_a, s_v, co_a, ts_a, ws_v, x_a, w_a, o_v, bj_a = args
        nbty, sty, coty, tsty, wsty, xty, wty, oty, bjty = signature.args
        nb = context.make_array(nbty)(context, builder, nb_a).data
        co = context.make_array(coty)(context, builder, co_a).data
        ts = context.make_array(tsty)(context, builder, ts_a).data
        xd = context.make_array(xty)(context, builder, x_a).data
        wd = context.make_array(wty)(context, builder, w_a).data
        bjp = builder.bitcast(context.make_array(bjty)(context, builder, bj_a).data, i32v.as_pointer())
        s64 = context.cast(builder, s_v, sty, types.int64)
        o64 = context.cast(builder, o_v, oty, types.int64)
        ws64 = context.cast(builder, ws_v, wsty, types.int64)
        terms = cgutils.alloca_once(builder, ir.ArrayType(f32v, n_terms))
        scale = builder.load(builder.bitcast(builder.gep(ts, [ws64]), f32v.as_pointer()), align=4)
        levels = [builder.fmul(scale, ir.Constant(f32v, [float(2 * l + 1)] * W)) for l in range(K_MAX_Q)]
        for i in range(RUN):
            at = builder.add(o64, ir.Constant(i64, i))
            x = splat(builder, builder.load(builder.gep(xd, [at])), f32v)
            w = splat(builder, builder.load(builder.gep(wd, [at])), f32v)
            for l in range(K_MAX_Q):
                diff = builder.fsub(levels[l], x)
                builder.store(builder.fmul(builder.fmul(w, diff), diff),
                              builder.gep(terms, [ir.Constant(i32, 0), ir.Constant(i32, K_MAX_Q * i + l)]))
        n = builder.sext(builder.load(builder.gep(nb, [s64])), i64)
        entry = builder.block
        head = builder.append_basic_block("window.head")
        body = builder.append_basic_block("window.body")
        done = builder.append_basic_block("window.done")
        builder.branch(head)
        builder.position_at_end(head)
        j = builder.phi(i64)
        best = builder.phi(f32v)
        bidx = builder.phi(i32v)
        j.add_incoming(ir.Constant(i64, 0), entry)
        best.add_incoming(ir.Constant(f32v, [float(FLT_MAX)] * W), entry)
        bidx.add_incoming(ir.Constant(i32v, [-1] * W), entry)
        builder.cbranch(builder.icmp_signed("<", j, n), body, done)
        builder.position_at_end(body)
        g = builder.sext(builder.load(builder.gep(nb, [builder.add(builder.add(s64, j), ir.Constant(i64, 1))])), i64)
        row = builder.gep(co, [builder.mul(g, ir.Constant(i64, RUN))])
        acc = ir.Constant(f32v, [0.0] * W)
        for k in range(RUN):
            code = builder.load(builder.gep(row, [ir.Constant(i64, k)]))
            acc = builder.fadd(acc, builder.load(builder.gep(terms, [ir.Constant(i32, 0), code])))
        better = builder.fcmp_ordered("<", acc, best)
        j.add_incoming(builder.add(j, ir.Constant(i64, 1)), builder.block)
        best.add_incoming(builder.select(better, acc, best), builder.block)
        bidx.add_incoming(builder.select(better, splat(builder, builder.trunc(j, i32), i32v), bidx), builder.block)
        builder.branch(head)
        builder.position_at_end(done)
        builder.store(bidx, bjp, align=4)
        return context.get_dummy_value()
    return types.void(neighbours, s, codes, tsv, ws, xval, waux, o, bj), codegen


@njit(**JIT_OPTIONS)
def _search_sub_block_lanes(xval, weight, waux, o, kmap, neighbours, grid, codes, L, s):
    """:func:`_search_sub_block` with the 19 trials in lock-step (lanes); same results, bit for bit.

    Trials are independent until the keep-the-best step, which runs in trial
    order afterwards. A run's consecutive trials that round to the same
    off-grid point search the same candidate list, ``W`` trials at a time.
    ``s`` is the row's scratch (:func:`_scratch`). Falls back to
    :func:`_search_sub_block` when a rounding leaves the range of the shortcut.
    """
    idv, tsv, Q, U, K, sqx, sq2, bj = s
    vmax = xval[o]
    for i in range(1, SUB):
        v = xval[o + i]
        vmax = vmax if vmax > v else v
    for i in range(SUB):
        L[i] = 0
    if vmax < GROUP_MAX_EPS_IQ2_S:
        return F32(0.0)
    tame = vmax < np.inf
    for i in range(SUB):
        tame = tame and xval[o + i] <= vmax  # False for NaN, and for a value past a NaN's vmax
    if not tame:
        return _search_sub_block(xval, weight, waux, o, kmap, neighbours, grid, L, L.copy())
    for t in range(idv.shape[0]):
        idv[t] = TRIAL_NUMERATORS[t] / vmax
        tsv[t] = F32(1.0) / idv[t]
    for t in range(U.shape[1]):
        U[0, t] = F32(0.0)
        U[1, t] = F32(0.0)
    for i in range(SUB):
        _lane_levels(idv, xval[o + i], F32(4 ** (i % RUN)), Q, i, U, i // RUN)
    for r in range(2):
        off = False
        for t in range(NT):
            k = kmap[np.int64(U[r, t])]
            K[r, t] = k
            off = off or k < 0
        if not off:
            continue
        a = 0
        while a < NT:
            u = U[r, a]
            b = a + 1
            while b < NT and U[r, b] == u:
                b += 1
            k = K[r, a]
            if k < 0:
                start = -k - 1
                for ws in range(a, b, W):
                    _window_search(neighbours, start, codes, tsv, ws, xval, waux, o + RUN * r, bj)
                    for lane in range(min(W, b - ws)):
                        jj = bj[lane]
                        g = neighbours[start + 1 + jj] if jj >= 0 else grid.shape[0] - 1
                        for i in range(RUN):
                            Q[RUN * r + i, ws + lane] = grid[g, i]
            a = b
    for t in range(sqx.shape[0]):
        sqx[t] = F32(0.0)
        sq2[t] = F32(0.0)
    for i in range(SUB):
        w = weight[o + i]
        _lane_sums(Q, i, w, w * xval[o + i], sqx, sq2)
    best = F32(0.0)
    scale = vmax / F32(2 * K_MAX_Q - 1)
    tb = -1
    for t in range(NT):
        if sq2[t] > 0 and sqx[t] * sqx[t] > best * sq2[t]:
            scale = sqx[t] / sq2[t]
            best = scale * sqx[t]
            tb = t
    if tb < 0:
        return scale
    for i in range(SUB):
        L[i] = np.int8((np.int32(Q[i, tb]) - 1) // 2)
    on0 = K[0, tb] >= 0
    on1 = K[1, tb] >= 0
    if (not on0 or not on1) and scale > 0:
        id_ = F32(1.0) / scale
        for lane in range(W):
            idv[lane] = scale  # every lane the refit's scale: _window_search as a one-trial search
        for r in range(2):
            if K[r, tb] >= 0:
                continue
            u = _round_run(id_, xval, o + RUN * r, L, RUN * r)
            k = kmap[u]
            if k < 0:
                _window_search(neighbours, -k - 1, codes, idv, 0, xval, waux, o + RUN * r, bj)
                g = neighbours[-k + bj[0]] if bj[0] >= 0 else grid.shape[0] - 1
                for i in range(RUN):
                    L[RUN * r + i] = np.int8((np.int64(grid[g, i]) - 1) // 2)
        sumqx, sumq2 = _sums(L, xval, weight, o)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale


@njit(**JIT_OPTIONS)
def _scratch():
    """One row's scratch for :func:`_search_sub_block_lanes`."""
    return (np.empty(TP, dtype=F32), np.empty(TP, dtype=F32), np.empty((SUB, NL), dtype=F32),
            np.empty((2, NL), dtype=F32), np.empty((2, NL), dtype=np.int32),
            np.empty(NL, dtype=F32), np.empty(NL, dtype=F32), np.empty(W, dtype=np.int32))


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq2_s(x, imatrix, out, kmap, neighbours, grid, codes):
    """IQ2_S rows into ``out`` (ggml's ``quantize_iq2_s``).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32
    (n_cols,) or None; out : uint8 (n_rows, n_cols // 256 * 82), zeroed, written;
    kmap, neighbours : int32, grid : float32 (1024, 8): the ``iq2s`` tables as ggml lays them out;
    codes : int32 (1024, 8), :data:`CODES`.
    """
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        xr = x[r]
        xval = np.empty(QK_K, dtype=F32)
        weight = np.empty(QK_K, dtype=F32)
        waux = np.empty(QK_K, dtype=F32)
        scales = np.empty(N_SUB, dtype=F32)
        L = np.empty(SUB, dtype=np.int8)
        scratch = _scratch()
        for b in range(n_cols // QK_K):
            xb = xr[b * QK_K:(b + 1) * QK_K]
            o = out[r, b * IQ2_S_SIZE:(b + 1) * IQ2_S_SIZE]
            sumx2 = F32(0.0)
            for i in range(QK_K):
                sumx2 += xb[i] * xb[i]
            sigma2 = F32(2.0) * sumx2 / F32(QK_K)
            for i in range(QK_K):
                if imatrix is None:
                    weight[i] = F32(0.25) * sigma2 + xb[i] * xb[i]
                else:
                    weight[i] = imatrix[b * QK_K + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                waux[i] = np.sqrt(weight[i])
                xval[i] = xb[i] if xb[i] >= 0 else -xb[i]
            max_scale = F32(0.0)
            for ib in range(N_SUB):
                scale = _search_sub_block_lanes(xval, weight, waux, SUB * ib, kmap, neighbours, grid, codes, L, scratch)
                scales[ib] = scale
                vmax = xval[SUB * ib]
                for i in range(1, SUB):
                    v = xval[SUB * ib + i]
                    vmax = vmax if vmax > v else v
                if vmax < GROUP_MAX_EPS_IQ2_S:
                    continue  # ggml skips the sub-block: its bytes stay zero
                flip = 0
                if scale < 0:
                    scale = -scale
                    flip = 0xFF
                for k in range(2):
                    g8 = 2 * ib + k
                    u = 0
                    s = 0
                    for i in range(RUN):
                        u |= np.int64(L[RUN * k + i]) << (2 * i)
                        if xb[SUB * ib + RUN * k + i] < 0:
                            s |= 1 << i
                    gi = kmap[u]
                    o[2 + g8] = gi & 0xFF
                    o[2 + 64 + g8 // 4] |= (gi >> 8) << (2 * (g8 % 4))
                    o[2 + 32 + g8] = s ^ flip
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if not max_scale:
                continue
            d = max_scale / F32(31.0)
            write_fp16(o, 0, fp16_bits(d * F32(0.9875)))
            id_ = F32(1.0) / d
            for ib in range(N_SUB):
                l = nearest_int(F32(0.5) * (id_ * scales[ib] - F32(1.0)))
                l = max(0, min(15, l))
                o[2 + 64 + 8 + ib // 2] |= l << (4 * (ib % 2))


@njit(**JIT_OPTIONS)
def _steps(p, dl):
    """The sixteen steps ``d * (0.5 + ls) * 0.25`` of the super-block ``p`` (82,) uint8 into dl (16,) float32."""
    d = read_fp16(p, 0)
    for ib in range(N_SUB):
        ls = (np.int64(p[74 + ib // 2]) >> (4 * (ib % 2))) & 0xF
        dl[ib] = d * (F32(0.5) + F32(ls)) * F32(0.25)


@njit(**JIT_OPTIONS)
def _grid_number(p, g):
    """Grid number of run ``g`` (0..31) of the super-block ``p``."""
    return np.int64(p[2 + g]) | (((np.int64(p[66 + g // 4]) >> (2 * (g % 4))) & 3) << 8)


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_iq2_s(packed, out, levels):
    """IQ2_S: ``(d * (0.5 + ls) * 0.25) * ±value``.

    packed : uint8 (n_rows, n_super * 82); out : float32 (n_rows, n_super * 256), written;
    levels : uint8 (1024, 8), the lattice points' levels.
    """
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        dl = np.empty(N_SUB, dtype=F32)
        for b in range(n_cols // QK_K):
            blk = p[b * IQ2_S_SIZE:(b + 1) * IQ2_S_SIZE]
            _steps(blk, dl)
            for g in range(N_RUN):
                gi = _grid_number(blk, g)
                s = blk[34 + g]
                for j in range(RUN):
                    v = dl[g // 2] * LEVEL_VALUES[levels[gi, j]]
                    y[b * QK_K + RUN * g + j] = -v if (s >> j) & 1 else v


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_iq2_s(packed, codes, scales, mins, levels):
    """IQ2_S rows: codes uint8 (n_rows, n_cols) 0..5 (``3 + l``, or ``2 - l`` when negative) and scales
    float32 (n_rows, n_cols // 16) ``d * (0.5 + ls) * 0.25``, both written; ``mins`` is None."""
    n_rows, n_cols = codes.shape
    for r in prange(n_rows):
        p = packed[r]
        c = codes[r]
        for b in range(n_cols // QK_K):
            blk = p[b * IQ2_S_SIZE:(b + 1) * IQ2_S_SIZE]
            _steps(blk, scales[r, N_SUB * b:N_SUB * (b + 1)])
            for g in range(N_RUN):
                gi = _grid_number(blk, g)
                s = blk[34 + g]
                for j in range(RUN):
                    lv = levels[gi, j]
                    c[b * QK_K + RUN * g + j] = 2 - lv if (s >> j) & 1 else 3 + lv


quantize_iq2_s, dequantize_iq2_s, unpack_iq2_s = twins(
    "IQ2_S", (_quantize_iq2_s, KMAP, NEIGHBOURS, GRID, CODES), (_dequantize_iq2_s, LEVELS),
    (_unpack_iq2_s, LEVELS), codebook=CODEBOOK)

describe_twins(__name__, "numba")
