"""Numba twin of :mod:`qviz.formats.gguf_iq2`: IQ2_XXS and IQ2_XS.

Same public names and bytes as the numpy reference (and the same arrays from
``unpack_<type>``). Rows run in parallel (``prange``); each row works in
scratch arrays allocated once. The bit layout and the search are drawn in the
reference module; the lattice tables (:func:`~qviz.formats.iq_lattice.lattice`)
are passed to the kernels as arrays.

The time goes into ggml's ``iq2_find_best_neighbour``: for a run of 8 whose
rounded levels are off the grid, the weighted distance to each listed
neighbour, at every trial scale. A run keeps its levels over several trials,
so the kernel builds, once per (run, list), each neighbour's distance as a
quadratic in the scale (:func:`_quadratic`); a trial then evaluates those
(two products a neighbour) and measures exactly, in ggml's float32 order, only
the neighbours within a proven rounding bound of the least (:func:`_nearest`).
The fit's sums keep their order; runs before the first changed point reuse
their partial sums, and a trial with the same points as the one before is
skipped (it cannot change the state). The helpers are inlined into the row
kernel (``inline="always"``): a call passing a dozen arrays otherwise costs
their reference counting, more than the work of a small search. Inlining alone
does not remove that counting (numba's pruning gives up inside branchy loops),
so the row's work runs on borrowed views (:func:`_borrowed`: no memory record,
each count a null check) of arrays its caller owns for the whole call.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from qviz.formats.blocks import describe_twins
from qviz.formats.ggml_search import GROUP_MAX_EPS, make_qp_quants
from qviz.formats.gguf_iq2 import ABORTED_D, CODEBOOK, DIMS, KMAXQ, SPECS, missing_imatrix
from qviz.formats.iq_lattice import lattice
from qviz.formats.rounding import fp16_bits, nearest_int
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

F32 = np.float32
FLT_MAX = F32(np.finfo(np.float32).max)
IQ2_XXS_SIZE = FORMATS["IQ2_XXS"].type_size  # 66: d 2, qs 64
IQ2_XS_SIZE = FORMATS["IQ2_XS"].type_size  # 74: d 2, qs 64, scales 8
MAX_NEIGHBOURS = 512  # above any list's count (a list holds grid numbers, at most the grid's size)


#: The sieve's slack (see :func:`_nearest`): a neighbour is measured exactly when its quadratic is within
#: ``2 * (ERR_FACTOR * bound + ERR_FLOOR)`` of the least; the rounding it covers (ggml's float32 sum and
#: the float32 quadratic) is below ``22 * 2**-24 * bound`` (plus underflow, below 2**-149 an operation).
ERR_FACTOR = 2.0 ** -18
ERR_FLOOR = 1e-40
#: Runs whose bound reaches this (or is nan) take the plain search: no float32 sum there can overflow.
BOUND_MAX = 1e30


def _list_starts(neighbours: np.ndarray) -> np.ndarray:
    """Offsets of the lists in ``neighbours`` (each a count followed by that many grid numbers)."""
    starts = []
    s, m = 0, len(neighbours)
    while s < m:
        starts.append(s)
        s += int(neighbours[s]) + 1
    return np.array(starts, dtype=np.int64)


def neighbour_coordinates(name: str) -> np.ndarray:
    """Each list's neighbours' odd coordinates, coordinate-major: int8 (8 * len(neighbours),).

    The list at ``start`` (count ``n``) keeps coordinate ``i`` of its neighbour ``j`` (grid number
    ``neighbours[start + 1 + j]``) at ``8 * (start + 1) + i * n + j``: a search reads one contiguous
    stretch, one coordinate of every neighbour after another.
    """
    lat = lattice(name)
    nb = lat.neighbours.astype(np.int64)
    starts = _list_starts(nb)
    counts = nb[starts]
    owner = np.repeat(starts, counts)
    count = np.repeat(counts, counts)
    pos = owner + 1 + (np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts))
    points = lat.search[nb[pos]]
    out = np.zeros(DIMS * len(nb), dtype=np.int8)
    for i in range(DIMS):
        out[DIMS * (owner + 1) + i * count + (pos - owner - 1)] = points[:, i]
    return out


def tables(name: str) -> tuple[np.ndarray, ...]:
    """The arrays the quantize kernel takes: kmap, neighbours, neighbour_coordinates, levels."""
    lat = lattice(name)
    return (lat.kmap, lat.neighbours, neighbour_coordinates(name), lat.levels)


# ------------------------------------------------------------------ search

@intrinsic
def _borrowed(typingctx, arr):
    """``arr`` as a view without its memory record (meminfo and parent null): the same data, shape and
    strides, but numba's reference counts on it (and on views of it) become null checks instead of
    atomic operations. Only for arrays that an owner keeps alive while the view is used: here the
    arguments of :func:`_row_work`, whose caller :func:`_quantize_row` holds the owners across the call.
    """
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, value=args[0])
        view.meminfo = ir.Constant(view.meminfo.type, None)
        view.parent = ir.Constant(view.parent.type, None)
        return view._getvalue()
    return arr(arr), codegen


@njit(inline="always", **JIT_OPTIONS)
def _distance(coords, at, n, j, xval, waux, off, scale):
    """ggml's float32 ``d2`` of neighbour ``j`` of the list whose coordinates start at ``at`` (count ``n``)."""
    d2 = F32(0.0)
    for i in range(DIMS):
        diff = scale * F32(coords[at + i * n + j]) - xval[off + i]
        d2 += waux[off + i] * diff * diff
    return d2


@njit(inline="always", **JIT_OPTIONS)
def _best_neighbour(neighbours, coords, start, xval, waux, off, scale):
    """ggml's ``iq2_find_best_neighbour`` for the list at ``start``, every neighbour measured: the grid
    number chosen, or -1 (none below FLT_MAX: ggml asserts). The run is ``xval[off:off+8]``."""
    n = np.int64(neighbours[start])
    best = FLT_MAX
    g = -1
    for j in range(n):
        d2 = _distance(coords, DIMS * (start + 1), n, j, xval, waux, off, scale)
        if d2 < best:
            best = d2
            g = np.int64(neighbours[start + 1 + j])
    return g


@njit(inline="always", **JIT_OPTIONS)
def _quadratic(coords, start, n, xval, waux, off, a, b):
    """``a[j] = sum(waux * q**2)``, ``b[j] = 2 * sum(waux * xval * q)`` (float32) over the ``n`` neighbours
    of the list at ``start``: neighbour ``j``'s distance is ``c + s * (s * a[j] - b[j])`` in exact
    arithmetic, ``c`` the same for all. Loops over the neighbours (contiguous: LLVM vectorizes them)."""
    at = DIMS * (start + 1)
    w = waux[off]
    wx = F32(2.0) * (w * xval[off])
    for j in range(n):
        q = F32(coords[at + j])
        a[j] = w * (q * q)
        b[j] = wx * q
    for i in range(1, DIMS):
        w = waux[off + i]
        wx = F32(2.0) * (w * xval[off + i])
        for j in range(n):
            q = F32(coords[at + i * n + j])
            a[j] += w * (q * q)
            b[j] += wx * q


@njit(inline="always", **JIT_OPTIONS)
def _nearest(neighbours, coords, start, a, b, f, xval, waux, off, scale, bound):
    """``iq2_find_best_neighbour``'s answer from the quadratics ``a``, ``b`` (:func:`_quadratic`).

    ``f[j] = s * (s * a[j] - b[j])`` (float32) differs from ggml's float32 ``d2`` minus ``c`` by less than
    ``ERR_FACTOR * bound + ERR_FLOOR`` (``bound = sum(waux * (|x| + 10*scale)**2)`` >= each term's
    ``waux * (|s*q - x| + s*q)**2``; ggml's rounding of the terms and the sum stays below ``12 * 2**-24``
    of it, that of ``a``, ``b`` and ``f`` below ``10 * 2**-24``).
    A neighbour whose ``f`` exceeds the least by twice that has a larger ``d2`` than the least one's and
    cannot be ggml's first minimum; the rest are measured exactly (:func:`_distance`) in list order.
    """
    n = np.int64(neighbours[start])
    for j in range(n):
        f[j] = scale * (scale * a[j] - b[j])
    m0 = m1 = m2 = m3 = np.inf  # four running minima: no chain of n dependent compares
    j = 0
    while j + 4 <= n:
        m0 = f[j] if f[j] < m0 else m0
        m1 = f[j + 1] if f[j + 1] < m1 else m1
        m2 = f[j + 2] if f[j + 2] < m2 else m2
        m3 = f[j + 3] if f[j + 3] < m3 else m3
        j += 4
    while j < n:
        m0 = f[j] if f[j] < m0 else m0
        j += 1
    m0 = m0 if m0 < m1 else m1
    m2 = m2 if m2 < m3 else m3
    lim = np.float64(m0 if m0 < m2 else m2) + 2.0 * (ERR_FACTOR * bound + ERR_FLOOR)
    best = FLT_MAX
    g = -1
    for j in range(n):
        if f[j] <= lim:
            d2 = _distance(coords, DIMS * (start + 1), n, j, xval, waux, off, scale)
            if d2 < best:
                best = d2
                g = np.int64(neighbours[start + 1 + j])
    return g


@njit(inline="always", **JIT_OPTIONS)
def _level_runs(kmap, neighbours, coords, levels, xval, waux, n, iscale, scale, redo, out, on_grid, grid,
                sums, cache_u, cache_a, cache_b, slots, f):
    """Levels of the runs ``k`` with ``redo[k]`` on inverse scale ``iscale`` into ``out`` (int8 (n,));
    off-grid runs take their best neighbour at ``scale``. ``on_grid[k]``: the rounded levels were a point;
    ``grid[k]``: the point taken. Returns False when a neighbour search found nothing (ggml asserts).

    The quadratics of the run's last two lists stay in ``cache_a/b[k, slot]`` (the lists' levels in
    ``cache_u[k, slot]``): ``slots[0, k]`` is the slot the run used last, ``slots[1, k]`` the one the best
    trial so far used, which a new list does not overwrite.
    """
    for k in range(n // DIMS):
        if not redo[k]:
            continue
        u = 0
        for i in range(DIMS):
            l = nearest_int(F32(0.5) * (iscale * xval[DIMS * k + i] - F32(1.0)))
            l = max(0, min(KMAXQ - 1, l))
            out[DIMS * k + i] = l
            u |= l << (2 * i)
        g = np.int64(kmap[u])
        on_grid[k] = g >= 0
        if g < 0:
            start = -g - 1
            s = np.float64(scale)
            bound = sums[k, 2] + s * (20.0 * sums[k, 1] + 100.0 * s * sums[k, 0])
            if bound < BOUND_MAX:
                if cache_u[k, 0] == u:
                    slot = 0
                elif cache_u[k, 1] == u:
                    slot = 1
                else:
                    slot = 1 if slots[1, k] == 0 else 0
                    _quadratic(coords, start, np.int64(neighbours[start]), xval, waux, DIMS * k,
                               cache_a[k, slot], cache_b[k, slot])
                    cache_u[k, slot] = u
                slots[0, k] = slot
                g = _nearest(neighbours, coords, start, cache_a[k, slot], cache_b[k, slot], f, xval, waux,
                             DIMS * k, scale, bound)
            else:
                g = _best_neighbour(neighbours, coords, start, xval, waux, DIMS * k, scale)
            if g < 0:
                return False
            for i in range(DIMS):
                out[DIMS * k + i] = levels[g, i]
        grid[k] = g
    return True


@njit(inline="always", **JIT_OPTIONS)
def _fit(fqx, fq2, L, n, k0, partial):
    """``(sum(w*x*q), sum(w*q*q))`` with ``q = 2L+1``, in order, float32; ``fqx[i, l]``, ``fq2[i, l]`` hold
    the terms of level ``l``. ``partial[:, k]`` keeps the two sums before run ``k``; those up to run ``k0``
    are taken as they are (the runs before it kept their levels), the rest recomputed."""
    sumqx = partial[0, k0]
    sumq2 = partial[1, k0]
    for k in range(k0, n // DIMS):
        partial[0, k] = sumqx
        partial[1, k] = sumq2
        for i in range(DIMS * k, DIMS * (k + 1)):
            l = np.int64(L[i])
            sumqx += fqx[i, l]
            sumq2 += fq2[i, l]
    partial[0, n // DIMS] = sumqx
    partial[1, n // DIMS] = sumq2
    return sumqx, sumq2


@njit(inline="always", **JIT_OPTIONS)
def _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, points, signs, work, flags, L, Laux, Lqp,
               fterms, psums, sums, ints, cache_u, cache_a, cache_b, f):
    """One sub-block of ``quantize_row_iq2_{xxs,xs}_impl`` (the reference's ``_sub_block``).

    xb, weight : float32 (n,), n = 32 (``xxs``) or 16. Writes points and signs int64 (n // 8,);
    work : float32 (2, n) scratch (xval, waux); flags : bool (4, n // 8) scratch; L, Laux, Lqp : int8/uint8
    (n,) scratch; fterms float32 (2, n, 3), psums float32 (2, n // 8 + 1), sums float64 (n // 8, 3), ints int64 (4, n // 8), cache_u int64
    (n // 8, 2), cache_a/b float32 (n // 8, 2, MAX_NEIGHBOURS), f float32 (MAX_NEIGHBOURS,) scratch.
    Returns the scale, or -1 where ggml would abort (a point off the grid).
    """
    n = xb.shape[0]
    n_runs = n // DIMS
    xval = work[0]
    waux = work[1]
    for i in range(n):
        waux[i] = np.sqrt(weight[i])
    for k in range(n_runs):
        nflip = 0
        s = 0
        for i in range(DIMS):
            v = xb[DIMS * k + i]
            if v >= 0:
                xval[DIMS * k + i] = v
            else:
                xval[DIMS * k + i] = -v
                nflip += 1
                s |= 1 << i
        if nflip % 2:
            imin = 0
            vmin = weight[DIMS * k] * xb[DIMS * k] * xb[DIMS * k]
            for i in range(1, DIMS):
                ax = weight[DIMS * k + i] * xb[DIMS * k + i] * xb[DIMS * k + i]
                if ax < vmin:
                    vmin = ax
                    imin = i
            xval[DIMS * k + imin] = -xval[DIMS * k + imin]
            s ^= 1 << imin
        signs[k] = s & 127
        points[k] = 0
    xmax = xval[0]
    for i in range(1, n):
        xmax = xmax if xmax > xval[i] else xval[i]
    if xmax < GROUP_MAX_EPS:
        for k in range(n_runs):
            signs[k] = 0
        return F32(0.0)
    if xxs:
        scale = make_qp_quants(n, KMAXQ + 1, xval, Lqp, weight)
        eff_max = scale * F32(KMAXQ)
        if eff_max <= 0:
            for k in range(n_runs):
                signs[k] = 0
            return F32(0.0)
        lo, hi = -6, 7
    else:
        scale = xmax / F32(2 * KMAXQ - 1)
        eff_max = xmax
        lo, hi = -9, 10
    # per-run constants: the fit's terms of each level, the search's bound sums, an empty cache
    fqx = fterms[0]
    fq2 = fterms[1]
    for i in range(n):
        w = weight[i]
        wx = w * xval[i]
        for l in range(KMAXQ):
            q = F32(2 * l + 1)
            fqx[i, l] = wx * q
            fq2[i, l] = w * q * q
    for k in range(n_runs):
        sw = 0.0
        swx = 0.0
        swx2 = 0.0
        for i in range(DIMS):
            w = np.float64(waux[DIMS * k + i])
            x = abs(np.float64(xval[DIMS * k + i]))
            sw += w
            swx += w * x
            swx2 += w * x * x
        sums[k, 0] = sw
        sums[k, 1] = swx
        sums[k, 2] = swx2
        cache_u[k, 0] = -1
        cache_u[k, 1] = -1
    slots = ints[0:2]
    grid = ints[2]
    prev = ints[3]
    for k in range(n_runs):
        slots[0, k] = 0
        slots[1, k] = -1
        prev[k] = -1
    partial = psums
    partial[0, 0] = F32(0.0)
    partial[1, 0] = F32(0.0)
    on_grid = flags[0]
    aux_on_grid = flags[1]
    every = flags[2]
    prev_on = flags[3]
    for k in range(n_runs):
        on_grid[k] = True
        every[k] = True
    for i in range(n):
        L[i] = 0
    best = F32(0.0)
    for step in range(lo, hi):
        iscale = (F32(2 * KMAXQ - 1) + F32(step) * F32(0.1)) / eff_max
        if not _level_runs(kmap, neighbours, coords, levels, xval, waux, n, iscale, F32(1.0) / iscale,
                           every, Laux, aux_on_grid, grid, sums, cache_u, cache_a, cache_b, slots, f):
            return F32(-1.0)
        # the same points (and grid flags) as the trial before: the same sums, and a trial that cannot
        # change the state (it either set it from these very sums or was found wanting); the runs before
        # the first whose point changed add the same terms as before
        k0 = n_runs
        same = True
        for k in range(n_runs):
            if grid[k] != prev[k] and k0 == n_runs:
                k0 = k
            if aux_on_grid[k] != prev_on[k]:
                same = False
            prev[k] = grid[k]
            prev_on[k] = aux_on_grid[k]
        if same and k0 == n_runs:
            continue
        sumqx, sumq2 = _fit(fqx, fq2, Laux, n, k0, partial)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(n):
                L[i] = Laux[i]
            for k in range(n_runs):
                on_grid[k] = aux_on_grid[k]
                if not aux_on_grid[k]:
                    slots[1, k] = slots[0, k]
    n_redo = 0
    for k in range(n_runs):  # XXS re-levels every run, XS those that were off the grid
        every[k] = xxs or not on_grid[k]
        n_redo += every[k]
    if n_redo > 0 and scale > 0:
        if not _level_runs(kmap, neighbours, coords, levels, xval, waux, n, F32(1.0) / scale, scale,
                           every, L, aux_on_grid, grid, sums, cache_u, cache_a, cache_b, slots, f):
            return F32(-1.0)
        partial[0, 0] = F32(0.0)
        partial[1, 0] = F32(0.0)
        sumqx, sumq2 = _fit(fqx, fq2, L, n, 0, partial)
        if sumq2 > 0:
            scale = sumqx / sumq2
    if scale < 0:
        scale = -scale
        for k in range(n_runs):
            signs[k] = ~signs[k] & 127
    for k in range(n_runs):
        u = 0
        for i in range(DIMS):
            u |= np.int64(L[DIMS * k + i]) << (2 * i)
        g = np.int64(kmap[u])
        if g < 0:
            return F32(-1.0)
        points[k] = g
    return scale


@njit(**JIT_OPTIONS)
def _quantize_row(x, imatrix, xxs, kmap, neighbours, coords, levels, out, type_size):
    """One row of ``quantize_iq2_{xxs,xs}`` into ``out`` (uint8 (n_blocks * type_size,)); a super-block
    where ggml would abort gets ``d = +inf`` and zero bits (``ABORTED_D``, as the reference).

    Allocates the row's scratch and hands :func:`_row_work` borrowed views (:func:`_borrowed`) of it and
    of the arguments: they stay alive here until that call returns."""
    n = 32 if xxs else 16
    n_sub = QK_K // n
    n_runs = n // DIMS
    scales = np.empty(n_sub, dtype=F32)
    points = np.zeros((n_sub, n_runs), dtype=np.int64)
    signs = np.zeros((n_sub, n_runs), dtype=np.int64)
    weight = np.empty(n, dtype=F32)
    work = np.empty((2, n), dtype=F32)
    flags = np.empty((4, n_runs), dtype=np.bool_)
    L = np.zeros(n, dtype=np.int8)
    Laux = np.zeros(n, dtype=np.int8)
    Lqp = np.zeros(n, dtype=np.uint8)
    fterms = np.empty((2, n, KMAXQ), dtype=F32)
    psums = np.empty((2, n_runs + 1), dtype=F32)
    sums = np.empty((n_runs, 3), dtype=np.float64)
    ints = np.empty((4, n_runs), dtype=np.int64)
    cache_u = np.empty((n_runs, 2), dtype=np.int64)
    cache_a = np.empty((n_runs, 2, MAX_NEIGHBOURS), dtype=F32)
    cache_b = np.empty((n_runs, 2, MAX_NEIGHBOURS), dtype=F32)
    f = np.empty(MAX_NEIGHBOURS, dtype=F32)
    _row_work(_borrowed(x), _borrowed(imatrix), xxs, _borrowed(kmap), _borrowed(neighbours),
              _borrowed(coords), _borrowed(levels), _borrowed(out), type_size, _borrowed(scales),
              _borrowed(points), _borrowed(signs), _borrowed(weight), _borrowed(work), _borrowed(flags),
              _borrowed(L), _borrowed(Laux), _borrowed(Lqp), _borrowed(fterms), _borrowed(psums),
              _borrowed(sums), _borrowed(ints), _borrowed(cache_u), _borrowed(cache_a), _borrowed(cache_b),
              _borrowed(f))


@njit(**JIT_OPTIONS)
def _row_work(x, imatrix, xxs, kmap, neighbours, coords, levels, out, type_size, scales, points, signs,
              weight, work, flags, L, Laux, Lqp, fterms, psums, sums, ints, cache_u, cache_a, cache_b, f):
    """The work of :func:`_quantize_row` on borrowed views (all arrays, scratch included)."""
    n = 32 if xxs else 16
    n_sub = QK_K // n
    n_runs = n // DIMS
    for b in range(x.shape[0] // QK_K):
        xbl = x[b * QK_K:(b + 1) * QK_K]
        qw = imatrix[b * QK_K:(b + 1) * QK_K]
        o = out[b * type_size:(b + 1) * type_size]
        sumx2 = F32(0.0)
        for i in range(QK_K):
            sumx2 += xbl[i] * xbl[i]
        sigma2 = sumx2 / F32(QK_K)
        max_scale = F32(0.0)
        aborted = False
        for ib in range(n_sub):
            xb = xbl[n * ib:n * (ib + 1)]
            for i in range(n):
                weight[i] = qw[n * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            s = _sub_block(xb, weight, xxs, kmap, neighbours, coords, levels, points[ib], signs[ib],
                           work, flags, L, Laux, Lqp, fterms, psums, sums, ints, cache_u, cache_a, cache_b, f)
            if s < 0:
                aborted = True
                break
            scales[ib] = s
            max_scale = max_scale if max_scale > s else s
        for j in range(type_size):
            o[j] = 0
        if aborted:
            write_fp16(o, 0, ABORTED_D)
            continue
        if max_scale == 0:
            continue
        d = max_scale / F32(31.0)
        write_fp16(o, 0, fp16_bits(d))
        inv = F32(1.0) / d
        for ib in range(n_sub):
            ls = max(0, min(15, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))))
            if xxs:
                sign_word = np.int64(ls) << 28
                for k in range(n_runs):
                    o[2 + 8 * ib + k] = points[ib, k]
                    sign_word |= signs[ib, k] << (7 * k)
                for j in range(4):
                    o[6 + 8 * ib + j] = (sign_word >> (8 * j)) & 0xFF
            else:
                for k in range(n_runs):
                    q = points[ib, k] | (signs[ib, k] << 9)
                    o[2 + 4 * ib + 2 * k] = q & 0xFF
                    o[3 + 4 * ib + 2 * k] = q >> 8
                o[66 + ib // 2] |= ls << (4 * (ib % 2))


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq2_xxs(x, imatrix, out, kmap, neighbours, coords, levels):
    """IQ2_XXS rows into ``out`` (ggml's ``quantize_iq2_xxs``).

    x : float32 (n_rows, n_cols), n_cols a multiple of 256; imatrix : float32 (n_cols,) (never None);
    out : uint8 (n_rows, n_cols // 256 * 66), written; the rest are :func:`tables`.
    """
    for r in prange(x.shape[0]):
        _quantize_row(x[r], imatrix, True, kmap, neighbours, coords, levels, out[r], IQ2_XXS_SIZE)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq2_xs(x, imatrix, out, kmap, neighbours, coords, levels):
    """IQ2_XS rows into ``out`` (ggml's ``quantize_iq2_xs``); as :func:`_quantize_iq2_xxs`, 74-byte blocks."""
    for r in prange(x.shape[0]):
        _quantize_row(x[r], imatrix, False, kmap, neighbours, coords, levels, out[r], IQ2_XS_SIZE)


# ------------------------------------------------------- unpack, dequantize

@njit(**JIT_OPTIONS)
def _run(blk, xxs, k):
    """(grid number, 8 sign bits with the parity bit, ls) of run ``k`` (0..31) of one block."""
    if xxs:
        ib = k // 4
        g = np.int64(blk[2 + 8 * ib + k % 4])
        w = np.int64(0)
        for j in range(4):
            w |= np.int64(blk[6 + 8 * ib + j]) << (8 * j)
        s = (w >> (7 * (k % 4))) & 127
        ls = w >> 28
    else:
        q = np.int64(blk[2 + 2 * k]) | (np.int64(blk[3 + 2 * k]) << 8)
        g = q & 511
        s = q >> 9
        ls = (np.int64(blk[66 + k // 4]) >> (4 * ((k // 2) % 2))) & 0xF
    parity = 0
    for i in range(7):
        parity ^= (s >> i) & 1
    return g, s | (parity << 7), ls


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize(packed, y, xxs, type_size, values):
    """``(d * (0.5 + ls) * 0.25) * grid[point][j] * (+-1)``; values int8 (n_grid, 8) the decoded grid."""
    n_rows, n_cols = y.shape
    for r in prange(n_rows):
        for b in range(n_cols // QK_K):
            blk = packed[r, b * type_size:(b + 1) * type_size]
            d = read_fp16(blk, 0)
            for k in range(QK_K // DIMS):
                g, s, ls = _run(blk, xxs, k)
                db = d * (F32(0.5) + F32(ls)) * F32(0.25)
                for j in range(DIMS):
                    v = db * F32(values[g, j])
                    y[r, b * QK_K + DIMS * k + j] = -v if (s >> j) & 1 else v


@njit(parallel=True, **JIT_OPTIONS)
def _unpack(packed, codes, scales, mins, xxs, type_size, levels):
    """codes uint8 (n_rows, n_cols) 0..5 into ``CODEBOOK``, scales float32 (n_rows, n_groups) the steps
    ``d * (0.5 + ls) * 0.25``, both written; ``mins`` is None; levels uint8 (n_grid, 8)."""
    n_rows, n_cols = codes.shape
    group = 32 if xxs else 16
    for r in prange(n_rows):
        for b in range(n_cols // QK_K):
            blk = packed[r, b * type_size:(b + 1) * type_size]
            d = read_fp16(blk, 0)
            for k in range(QK_K // DIMS):
                g, s, ls = _run(blk, xxs, k)
                col = b * QK_K + DIMS * k
                scales[r, col // group] = d * (F32(0.5) + F32(ls)) * F32(0.25)
                for j in range(DIMS):
                    c = 3 + np.int64(levels[g, j])
                    codes[r, col + j] = 5 - c if (s >> j) & 1 else c


def _twins(type_name: str, quantize_kernel):
    name = SPECS[type_name][0]
    xxs, size = type_name == "IQ2_XXS", FORMATS[type_name].type_size
    lat = lattice(name)
    return twins(type_name, (quantize_kernel, *tables(name)), (_dequantize, xxs, size, lat.values),
                 (_unpack, xxs, size, lat.levels), codebook=CODEBOOK)


def _requiring_imatrix(type_name: str, quantize):
    """``quantize`` that raises the reference's error for a None imatrix (ggml asserts one)."""
    def checked(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        if imatrix is None:
            raise missing_imatrix(type_name)
        return quantize(x, imatrix)
    checked.__name__ = checked.__qualname__ = quantize.__name__
    checked.__module__ = quantize.__module__
    return checked


_quantize_xxs, dequantize_iq2_xxs, unpack_iq2_xxs = _twins("IQ2_XXS", _quantize_iq2_xxs)
_quantize_xs, dequantize_iq2_xs, unpack_iq2_xs = _twins("IQ2_XS", _quantize_iq2_xs)
quantize_iq2_xxs = _requiring_imatrix("IQ2_XXS", _quantize_xxs)
quantize_iq2_xs = _requiring_imatrix("IQ2_XS", _quantize_xs)

describe_twins(__name__, "numba")
