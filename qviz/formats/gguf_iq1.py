"""IQ1_S and IQ1_M: 8 weights at a time on the 2048-point ``iq1s`` lattice of -1/0/1 vectors, shifted by ±1/8.

A super-block holds 256 weights in runs of 8; each run stores an 11-bit number
of a grid point ``g`` (:func:`~qviz.formats.iq_lattice.lattice` ``("iq1s")``,
levels 0/1/2, values -1/0/1). Weight ``j`` of a run decodes as
``dl * (g[j] + delta)`` with ``delta = ±IQ1S_DELTA = ±0.125`` and
``dl = d * (2*s + 1)`` for a 3-bit sub-block scale ``s``. No per-weight signs.

====== ==== ============================ ========================================================
type   bits block (bytes)                decode of weight j (run k of sub-block ib)
====== ==== ============================ ========================================================
IQ1_S  1    d 2, qs 32, qh 16            ``d*(2*s[ib]+1) * (g[j] + delta[ib])``, 32-weight ``ib``
IQ1_M  1    qs 32, qh 16, scales 8       ``d*(2*s[ib]+1) * (g[j] + delta[k])``, 16-weight ``ib``
====== ==== ============================ ========================================================

IQ1_S (1.5625 bits per weight) has one scale and one delta sign per 32 weights;
IQ1_M (1.75) one 3-bit scale per 16 weights and a delta sign per run of 8,
and no field of its own for ``d``: its 16 bits are spread over the top
nibbles of the four 16-bit words of ``scales``.

Bit layout of a ``block_iq1_s`` (ggml-common.h), sub-block ``ib = 0..7``, run ``k = 0..3``::

    d             fp16, little-endian
    qs[4*ib + k]  low 8 bits of the grid number of run k
    qh[ib]        uint16 LE  bit 15    | 14 13 12 | 11 10 9 | 8 7 6 | 5 4 3 | 2 1 0
                             delta < 0 | s[ib]    | hi run3 | run2  | run1  | run0

Bit layout of a ``block_iq1_m``, 16-weight sub-block ``ib = 0..15``, run ``k = 0..1``::

    qs[2*ib + k]  low 8 bits of the grid number of run k
    qh[ib]        bit  7               | 6 5 4       | 3                   | 2 1 0
                       run 1 delta < 0 | hi of run 1 | run 0 delta < 0     | hi of run 0
    scales        four uint16 LE words w[0..3]: w[m] bits 3*i..3*i+2 = s[4*m + i] (i = 0..3),
                  bits 12..15 = bits 4*m .. 4*m+3 of the fp16 ``d``

The quantizers are ggml's ``quantize_iq1_s`` -> ``quantize_row_iq1_s_impl``
and ``quantize_iq1_m`` -> ``quantize_row_iq1_m_impl`` (ggml-python 0.0.45),
for each sub-block (32 weights for IQ1_S, 16 for IQ1_M):

1. error weights ``imatrix * sqrt(sigma2 + x**2)`` with ``sigma2 = 2*sum(x**2)/256``
   of the super-block (IQ1_M without an imatrix: ``x**2``; IQ1_S has no path
   without one: ggml asserts);
2. a sub-block whose largest magnitude is below ``GROUP_MAX_EPS_IQ1_S = 1e-12``
   (IQ1_M: ``1e-7``) is left all zero (scale 0);
3. the weights are sorted (``qsort`` with ``iq1_sort_helper``, glibc's stable
   merge sort: ties keep their order) and every split of the sorted weights into
   three runs (levels 0, 1, 2) is tried, ``i1 <= i2`` in order, with the
   shifted level values ``x_p = (-7/8, 1/8, 9/8)`` and ``x_m = (-9/8, -1/8, 7/8)``
   (IQ1_M: the four choices of a shift for each half of 8), keeping the first
   split of largest ``sumqx**2/sumq2`` (ggml's float32 test
   ``sumqx*sumqx > best*sumq2``, ``best = (sumqx/sumq2)*sumqx``). IQ1_S
   computes the sums from prefix sums over the sorted weights; IQ1_M
   accumulates each split's four sums element by element in sorted order;
4. a negative scale flips the levels and the shifts;
5. each run of 8 levels is looked up in the lattice's point map; a run off the
   grid takes the neighbour of least weighted squared error at that scale
   (``iq1_find_best_neighbour2``), and the scale is refit on the chosen points;
6. ``d = max_scale/15``; each sub-block's 3-bit ``s = clamp(nearest_int((scale/d - 1)/2), 0, 7)``.
   IQ1_S stores ``fp16(d * 1.125)``; IQ1_M refits ``d`` by least squares over
   the whole super-block on the rounded scales and stores ``fp16(d * 1.1125)``.

Every sum and product is float32 in ggml's order (its compiled ``libggml-base``
has no fused multiply-adds). Known divergences, none reachable from finite
rows of moderate size: ggml's full-grid fallback of ``iq1_find_best_neighbour2``
(taken only when every neighbour's error overflows or is NaN) indexes the
weights out of bounds; qviz uses the run's own weights there. ggml's
``iq1_find_best_neighbour`` is not called by either quantizer.

llama.cpp 0.3.36's ggml rewrote IQ1_M's split search with prefix sums
(the float32 sums are added in another order), so its IQ1_M bytes may differ
from these (ggml-python 0.0.45's) in a few sub-blocks; IQ1_S is the same in
both. ``ggml_quantize_requires_imatrix`` names IQ1_S but not IQ1_M; llama.cpp's
``llama-quantize`` nevertheless refuses both without an imatrix (except for
``token_embd.weight`` and ``output.weight``: ``tensor_requires_imatrix`` in
llama-quant.cpp).

qviz stores each weight's code as ``level + 3*(delta < 0)`` (0..5) with
``codebook = (g + delta)`` for ``g = -1, 0, 1`` and each sign of ``delta`` (exact
in float32), and ``scales`` as the float32 products ``d * (2*s + 1)``, so
``QuantResult.dequantize()`` repeats ggml's ``dequantize_row_iq1_s`` /
``dequantize_row_iq1_m`` bit for bit. ``points_iq1_s`` / ``points_iq1_m``
return the chosen grid numbers (no signs: ``negative`` is all False).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.iq_lattice import LatticePoints, lattice
from qviz.formats.rounding import fp16_bits, fp16_from_field, nearest_int
from qviz.formats.spec import FP16, QK, QK_K, Unpacked, register_ggml

# name, ggml_type, block size, bits, sub-block size; general.file_type (MOSTLY_IQ1_S / MOSTLY_IQ1_M); fields.
# llama.cpp's llama_tensor_get_type quantizes rows that no 256-block divides as IQ4_NL.
register_ggml(__name__, "IQ1_S", 19, QK_K, 1, QK, file_type=24, fallback="IQ4_NL", requires_imatrix=True,
              d=FP16, qs=QK_K // 8, qh=QK_K // 16)
register_ggml(__name__, "IQ1_M", 29, QK_K, 1, QK // 2, file_type=31, fallback="IQ4_NL",
              qs=QK_K // 8, qh=QK_K // 16, scales=QK_K // 32)

F32 = np.float32
FLT_MAX = F32(np.finfo(np.float32).max)
LATTICE = "iq1s"
DELTA = F32(0.125)  # IQ1S_DELTA == IQ1M_DELTA
X_P = np.array([-1 + 0.125, 0.125, 1 + 0.125], dtype=F32)  # level values shifted up
X_M = np.array([-1 - 0.125, -0.125, 1 - 0.125], dtype=F32)  # shifted down
EPS_S = F32(1e-12)  # GROUP_MAX_EPS_IQ1_S
EPS_M = F32(1e-7)  # GROUP_MAX_EPS_IQ1_M
S_BLOCK = QK  # IQ1S_BLOCK_SIZE
M_BLOCK = QK // 2  # IQ1M_BLOCK_SIZE
S_FUDGE = F32(1.125)  # IQ1_S stores d * 1.125
M_FUDGE = F32(1.1125)  # IQ1_M stores d * 1.1125
M_MASKS = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.uint8)  # qh delta bits of IQ1_M's shift choice
#: decoded value of each code ``level + 3*(delta < 0)``
CODEBOOK = np.concatenate([X_P, X_M]).astype(F32)

_S_I1, _S_I2 = (a.astype(np.int64) for a in np.triu_indices(S_BLOCK + 1))  # (561,) splits i1 <= i2 in order
_M_I1, _M_I2 = (a.astype(np.int64) for a in np.triu_indices(M_BLOCK + 1))  # (153,)


# ------------------------------------------------------------ shared steps

def _sigma2(xbl: np.ndarray) -> F32:
    """``2*sumx2/256`` of a super-block (256,) float32, the sum in order."""
    sumx2 = np.cumsum(xbl * xbl, dtype=F32)[-1]
    return (F32(2) * sumx2) / F32(QK_K)


def first_best(sumqx: np.ndarray, sumq2: np.ndarray) -> tuple[int, F32]:
    """The candidate ggml's scan keeps: the last to pass ``sumq2 > 0 and sumqx**2 > best*sumq2``.

    Parameters
    ----------
    sumqx, sumq2 : ndarray, shape (n,), float32
        The candidates in ggml's order.

    Returns
    -------
    index : int
        -1 when none passes.
    scale : float32
        ``sumqx/sumq2`` of that candidate (0 when none).
    """
    best, pos, found, scale = -FLT_MAX, 0, -1, F32(0)
    while True:
        qx, q2 = sumqx[pos:], sumq2[pos:]
        hits = np.flatnonzero((q2 > 0) & (qx * qx > best * q2))
        if hits.size == 0:
            return found, scale
        found = pos + int(hits[0])
        scale = sumqx[found] / sumq2[found]
        best = scale * sumqx[found]
        pos = found + 1


def best_neighbour(neighbours: np.ndarray, xval: np.ndarray, weight: np.ndarray, scale: F32,
                   xg: np.ndarray) -> int:
    """ggml's ``iq1_find_best_neighbour2``: the grid point of least weighted error at ``scale``.

    Parameters
    ----------
    neighbours : ndarray, shape (n,), uint16
        Candidate grid numbers (the lattice's neighbour list of the run).
    xval, weight : ndarray, shape (8,), float32
    scale : float32
    xg : ndarray, shape (3,), float32
        The shifted level values (``X_P`` or ``X_M``).

    Returns
    -------
    int
        The first candidate of least ``sum(w * (scale*xg[l] - x)**2)`` (float32, in order).
    """
    levels = lattice(LATTICE).levels
    d2 = _run_errors(levels[neighbours.astype(np.int64)], xval, weight, scale, xg)
    ok = d2 < FLT_MAX
    if not ok.any():  # ggml's full-grid fallback (it reads xval out of bounds; the run's own here)
        neighbours = np.arange(len(levels), dtype=np.int64)
        d2 = _run_errors(levels, xval, weight, scale, xg)
        ok = d2 < FLT_MAX
        if not ok.any():
            raise FloatingPointError("IQ1: no grid point has a finite error (ggml asserts)")
    m = d2[ok].min()
    return int(neighbours[int(np.flatnonzero(ok & (d2 == m))[0])])


def _run_errors(levels: np.ndarray, xval: np.ndarray, weight: np.ndarray, scale: F32,
                xg: np.ndarray) -> np.ndarray:
    """``sum_i w[i]*diff*diff`` with ``diff = scale*xg[l[i]] - x[i]``, per row of levels (n, 8) -> (n,)."""
    q = xg[levels.astype(np.int64)]  # (n, 8)
    diff = scale * q - xval
    d2 = np.zeros(len(levels), dtype=F32)
    for i in range(8):
        d2 = d2 + (weight[i] * diff[:, i]) * diff[:, i]
    return d2


def _grid_runs(L: np.ndarray, xb: np.ndarray, weight: np.ndarray, scale: F32,
               shifts: list[np.ndarray]) -> tuple[np.ndarray, bool]:
    """Grid numbers of the runs of 8 levels ``L`` (n,), neighbours searched for runs off the grid.

    ``shifts[k]`` is the level-value table of run k. Returns (index (n//8,) int64, all_on_grid).
    """
    lat = lattice(LATTICE)
    n_runs = len(L) // 8
    u = (L.reshape(n_runs, 8).astype(np.int64) << (2 * np.arange(8))).sum(axis=1)
    index = lat.kmap[u].astype(np.int64)
    for k in np.flatnonzero(index < 0):
        nb = lat.neighbours_of(int(u[k]))
        index[k] = best_neighbour(nb, xb[8 * k:8 * k + 8], weight[8 * k:8 * k + 8], scale, shifts[k])
    return index, bool((lat.kmap[u] >= 0).all())


def _refit(index: np.ndarray, xb: np.ndarray, weight: np.ndarray, shifts: list[np.ndarray],
           factor: np.ndarray | None = None, sums: tuple[F32, F32] = (F32(0), F32(0))) -> tuple[F32, F32]:
    """``sumqx``, ``sumq2`` over the runs' grid points in order, continuing ``sums``.

    ``q = shifts[k][l]`` (times ``factor[k]``, float32, when given).
    """
    levels = lattice(LATTICE).levels
    sumqx, sumq2 = sums
    for k, g in enumerate(index):
        q = shifts[k][levels[g].astype(np.int64)]
        if factor is not None:
            q = q * factor[k]
        for j in range(8):
            wq = weight[8 * k + j] * q[j]
            sumqx = sumqx + wq * xb[8 * k + j]
            sumq2 = sumq2 + wq * q[j]
    return sumqx, sumq2


def _levels_of_split(order: np.ndarray, i1: int, i2: int, n: int) -> np.ndarray:
    """Levels 0/1/2 of the weights: sorted positions below ``i1`` 0, below ``i2`` 1, the rest 2."""
    L = np.empty(n, dtype=np.int64)
    L[order[:i1]] = 0
    L[order[i1:i2]] = 1
    L[order[i2:]] = 2
    return L


# ------------------------------------------------------------ IQ1_S

def _iq1_s_sub_block(xb: np.ndarray, weight: np.ndarray) -> tuple[F32, int, np.ndarray]:
    """One 32-weight sub-block: (scale, shift +1/-1, grid numbers (4,)); scale 0 for an empty one."""
    if np.abs(xb).max() < EPS_S:
        return F32(0), 1, np.zeros(4, dtype=np.int64)
    order = np.argsort(xb, kind="stable")
    zero = np.zeros(1, dtype=F32)
    sumx = np.concatenate([zero, np.cumsum((weight * xb)[order], dtype=F32)])
    sumw = np.concatenate([zero, np.cumsum(weight[order], dtype=F32)])
    a, b, c = sumx[_S_I1] - sumx[0], sumx[_S_I2] - sumx[_S_I1], sumx[S_BLOCK] - sumx[_S_I2]
    aw, bw, cw = sumw[_S_I1] - sumw[0], sumw[_S_I2] - sumw[_S_I1], sumw[S_BLOCK] - sumw[_S_I2]
    qx = [(a * t[0] + b * t[1]) + c * t[2] for t in (X_P, X_M)]
    q2 = [((aw * t[0]) * t[0] + (bw * t[1]) * t[1]) + (cw * t[2]) * t[2] for t in (X_P, X_M)]
    found, scale = first_best(np.stack(qx, axis=1).ravel(), np.stack(q2, axis=1).ravel())
    if found < 0:
        return F32(0), 1, np.zeros(4, dtype=np.int64)
    pair, shift = found // 2, 1 - 2 * (found % 2)
    L = _levels_of_split(order, int(_S_I1[pair]), int(_S_I2[pair]), S_BLOCK)
    if scale < 0:
        L, scale, shift = 2 - L, -scale, -shift
    xx = X_P if shift == 1 else X_M
    index, on_grid = _grid_runs(L, xb, weight, scale, [xx] * 4)
    if not on_grid:
        sumqx, sumq2 = _refit(index, xb, weight, [xx] * 4)
        if sumqx > 0 and sumq2 > 0:
            scale = sumqx / sumq2
    if not scale >= 0:
        raise FloatingPointError("IQ1_S: negative or NaN scale (ggml asserts)")
    return scale, shift, index


def _iq1_s_block(xbl: np.ndarray, qw: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """One super-block (256,) with its imatrix slice: (d fp16 bits, qs (32,) uint8, qh (8,) uint16)."""
    qs = np.zeros(QK_K // 8, dtype=np.uint8)
    qh = np.zeros(QK_K // S_BLOCK, dtype=np.uint16)
    sigma2 = _sigma2(xbl)
    scales = np.zeros(QK_K // S_BLOCK, dtype=F32)
    shifts = np.ones(QK_K // S_BLOCK, dtype=np.int64)
    max_scale = F32(0)
    for ib in range(QK_K // S_BLOCK):
        xb = xbl[S_BLOCK * ib:S_BLOCK * (ib + 1)]
        weight = qw[S_BLOCK * ib:S_BLOCK * (ib + 1)] * np.sqrt(sigma2 + xb * xb)
        scale, shift, index = _iq1_s_sub_block(xb, weight)
        qs[4 * ib:4 * ib + 4] = index & 255
        qh[ib] = np.bitwise_or.reduce((index >> 8) << (3 * np.arange(4)))
        scales[ib], shifts[ib] = scale, shift
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == 0:
        return 0, qs, qh
    d = max_scale / F32(15)
    d_bits = fp16_bits(d * S_FUDGE)
    inv = F32(1) / d
    for ib in range(QK_K // S_BLOCK):
        l = max(0, min(7, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1)))))
        if shifts[ib] == -1:
            l |= 8
        qh[ib] |= l << 12
    return d_bits, qs, qh


@describe(QUANTIZE, "IQ1_S",
          summary="Each 32-weight sub-block tries every split of its sorted weights into the\n"
                  "levels -1/0/1 shifted by +-1/8; each run of 8 is snapped to the ``iq1s``\n"
                  "lattice (nearest neighbours when off it); 3-bit scales on ``d = max_scale/15``.",
          imatrix="Importance of each column (required, as ggml asserts): weights\n"
                  "    ``imatrix * sqrt(sigma2 + x**2)`` with ``sigma2 = 2 * mean(x**2)`` of the super-block.",
          notes="ggml-quants.c ``quantize_iq1_s`` -> ``quantize_row_iq1_s_impl`` (ggml-python 0.0.45).",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> quantize_iq1_s(x, np.ones(256, np.float32)).shape\n(2, 50)")
def quantize_iq1_s(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    if imatrix is None:
        raise ValueError("IQ1_S needs an importance matrix: ggml's quantize_row_iq1_s_impl asserts "
                         "'missing quantization weights'")
    x = np.ascontiguousarray(x, dtype=F32)
    imatrix = np.asarray(imatrix, dtype=F32)
    n_rows, n_blocks = x.shape[0], x.shape[1] // QK_K
    d = np.zeros((n_rows, n_blocks), dtype=np.uint16)
    qs = np.zeros((n_rows, n_blocks, QK_K // 8), dtype=np.uint8)
    qh = np.zeros((n_rows, n_blocks, QK_K // S_BLOCK), dtype=np.uint16)
    with np.errstate(all="ignore"):
        for r, i in np.ndindex(n_rows, n_blocks):
            d[r, i], qs[r, i], qh[r, i] = _iq1_s_block(x[r, QK_K * i:QK_K * (i + 1)],
                                                       imatrix[QK_K * i:QK_K * (i + 1)])
    return assemble("IQ1_S", d=_u16_bytes(d), qs=qs, qh=_u16_bytes(qh).reshape(n_rows, n_blocks, -1))


def _u16_bytes(v: np.ndarray) -> np.ndarray:
    """uint16 values (...) -> little-endian bytes (..., 2)."""
    v = v.astype(np.uint16)
    return np.stack([(v & 0xFF).astype(np.uint8), (v >> 8).astype(np.uint8)], axis=-1)


def _u16_of(b: np.ndarray) -> np.ndarray:
    """Little-endian byte pairs (..., 2n) -> uint16 (..., n)."""
    b = b.astype(np.uint16)
    return b[..., 0::2] | (b[..., 1::2] << 8)


# ------------------------------------------------------------ IQ1_M

def _iq1_m_sums(xb: np.ndarray, weight: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every split's four ``sumqx`` and ``sumq2`` (153, 4), accumulated in sorted order as ggml does.

    Choice ``k``: bit 1 set shifts the first 8 weights down, bit 0 the last 8.
    """
    n = M_BLOCK
    tables = np.empty((n, 4, 3), dtype=F32)  # [weight i, k, level]: the shifted value
    first = np.arange(n) < n // 2
    for k in range(4):
        tables[first, k] = X_M if (k >> 1) else X_P
        tables[~first, k] = X_M if (k & 1) else X_P
    ws = weight[order]
    xs = xb[order]
    tab = tables[order]  # (16, 4, 3) in sorted order
    seg = np.where(np.arange(n)[None, :] < _M_I1[:, None], 0,
                   np.where(np.arange(n)[None, :] < _M_I2[:, None], 1, 2))  # (153, 16)
    sumqx = np.zeros((len(_M_I1), 4), dtype=F32)
    sumq2 = np.zeros((len(_M_I1), 4), dtype=F32)
    for j in range(n):
        v = tab[j][:, seg[:, j]].T  # (153, 4)
        wv = ws[j] * v
        sumqx = sumqx + wv * xs[j]
        sumq2 = sumq2 + wv * v
    return sumqx, sumq2


def _iq1_m_shifts(k: int) -> list[np.ndarray]:
    """Level-value tables of IQ1_M's two runs for shift choice ``k``."""
    return [X_M if k >> 1 else X_P, X_M if k & 1 else X_P]


def _iq1_m_sub_block(xb: np.ndarray, weight: np.ndarray) -> tuple[F32, int, np.ndarray]:
    """One 16-weight sub-block: (scale, shift choice 0..3, grid numbers (2,)); scale 0 for an empty one."""
    if np.abs(xb).max() < EPS_M:
        return F32(0), 0, np.zeros(2, dtype=np.int64)
    order = np.argsort(xb, kind="stable")
    sumqx, sumq2 = _iq1_m_sums(xb, weight, order)
    found, scale = first_best(sumqx.ravel(), sumq2.ravel())
    if found < 0:
        return F32(0), 0, np.zeros(2, dtype=np.int64)
    pair, k = found // 4, found % 4
    L = _levels_of_split(order, int(_M_I1[pair]), int(_M_I2[pair]), M_BLOCK)
    if scale < 0:
        L, scale, k = 2 - L, -scale, 3 - k
    shifts = _iq1_m_shifts(k)
    index, on_grid = _grid_runs(L, xb, weight, scale, shifts)
    if not on_grid:
        sqx, sq2 = _refit(index, xb, weight, shifts)
        if sqx > 0 and sq2 > 0:
            scale = sqx / sq2
    if not scale >= 0:
        raise FloatingPointError("IQ1_M: negative or NaN scale (ggml asserts)")
    return scale, k, index


def _iq1_m_weights(xb: np.ndarray, qw: np.ndarray | None, sigma2: F32) -> np.ndarray:
    return xb * xb if qw is None else qw * np.sqrt(sigma2 + xb * xb)


def _iq1_m_block(xbl: np.ndarray, qw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One super-block (256,): (qs (32,) uint8, qh (16,) uint8, scales (4,) uint16)."""
    n_sub = QK_K // M_BLOCK
    qs = np.zeros(QK_K // 8, dtype=np.uint8)
    qh = np.zeros(n_sub, dtype=np.uint8)
    sc = np.zeros(4, dtype=np.uint16)
    sigma2 = _sigma2(xbl)
    scales = np.zeros(n_sub, dtype=F32)
    shifts = np.zeros(n_sub, dtype=np.int64)
    indices = np.zeros((n_sub, 2), dtype=np.int64)
    max_scale = F32(0)
    for ib in range(n_sub):
        xb = xbl[M_BLOCK * ib:M_BLOCK * (ib + 1)]
        w = _iq1_m_weights(xb, None if qw is None else qw[M_BLOCK * ib:M_BLOCK * (ib + 1)], sigma2)
        scale, k, index = _iq1_m_sub_block(xb, w)
        indices[ib] = index
        qs[2 * ib:2 * ib + 2] = index & 255
        qh[ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
        scales[ib], shifts[ib] = scale, k
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == 0:
        return qs, qh, sc
    d = max_scale / F32(15)
    inv = F32(1) / d
    sums = (F32(0), F32(0))
    for ib in range(n_sub):
        l = max(0, min(7, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1)))))
        sc[ib // 4] |= l << (3 * (ib % 4))
        qh[ib] |= M_MASKS[shifts[ib]]
        xb = xbl[M_BLOCK * ib:M_BLOCK * (ib + 1)]
        w = _iq1_m_weights(xb, None if qw is None else qw[M_BLOCK * ib:M_BLOCK * (ib + 1)], sigma2)
        factor = np.full(2, F32(2 * l + 1), dtype=F32)
        sums = _refit(indices[ib], xb, w, _iq1_m_shifts(int(shifts[ib])), factor, sums)
    if sums[1] > 0:
        d = sums[0] / sums[1]
    s = fp16_bits(d * M_FUDGE)
    sc |= ((np.uint16(s) >> (4 * np.arange(4, dtype=np.uint16))) & 0xF).astype(np.uint16) << 12
    return qs, qh, sc


@describe(QUANTIZE, "IQ1_M",
          summary="Each 16-weight sub-block tries every split of its sorted weights into the\n"
                  "levels -1/0/1, each half of 8 shifted by +1/8 or -1/8; each run of 8 is snapped\n"
                  "to the ``iq1s`` lattice; 3-bit scales on ``d = max_scale/15``, then ``d`` is\n"
                  "refit over the super-block.",
          imatrix="Importance of each column: weights ``imatrix * sqrt(sigma2 + x**2)``\n"
                  "    with ``sigma2 = 2 * mean(x**2)`` of the super-block; else ``x**2``.",
          notes="ggml-quants.c ``quantize_iq1_m`` -> ``quantize_row_iq1_m_impl`` (ggml-python 0.0.45;\n"
                "llama.cpp's newer ggml searches with prefix sums and may differ).",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> quantize_iq1_m(x).shape\n(2, 56)")
def quantize_iq1_m(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=F32)
    n_rows, n_blocks = x.shape[0], x.shape[1] // QK_K
    qs = np.zeros((n_rows, n_blocks, QK_K // 8), dtype=np.uint8)
    qh = np.zeros((n_rows, n_blocks, QK_K // M_BLOCK), dtype=np.uint8)
    sc = np.zeros((n_rows, n_blocks, 4), dtype=np.uint16)
    with np.errstate(all="ignore"):
        for r, i in np.ndindex(n_rows, n_blocks):
            qw = None if imatrix is None else np.asarray(imatrix, dtype=F32)[QK_K * i:QK_K * (i + 1)]
            qs[r, i], qh[r, i], sc[r, i] = _iq1_m_block(x[r, QK_K * i:QK_K * (i + 1)], qw)
    return assemble("IQ1_M", qs=qs, qh=qh, scales=_u16_bytes(sc).reshape(n_rows, n_blocks, -1))


# ------------------------------------------------------- unpack, dequantize, points

def _iq1_s_fields(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d float32 (n_rows, nb), qs (n_rows, nb, 32) uint8, qh (n_rows, nb, 8) uint16)."""
    f = fields("IQ1_S", packed)
    return fp16_from_field(f["d"]), f["qs"], _u16_of(f["qh"])


def _iq1_m_fields(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(d float32 (n_rows, nb), qs (…, 32), qh (…, 16) uint8, sc (…, 4) uint16)."""
    f = fields("IQ1_M", packed)
    sc = _u16_of(f["scales"])
    d_bits = ((sc >> 12) << (4 * np.arange(4, dtype=np.uint16))).astype(np.uint16)
    d_bits = np.bitwise_or.reduce(d_bits, axis=-1).astype(np.uint16)
    return fp16_from_field(_u16_bytes(d_bits)), f["qs"], f["qh"], sc


def _iq1_s_runs(qs: np.ndarray, qh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid numbers (…, 32) and delta-negative flags per run (…, 32) of IQ1_S super-blocks."""
    hi = (qh[..., None].astype(np.int64) >> (3 * np.arange(4))) & 7  # (…, 8, 4)
    index = qs.astype(np.int64) | (hi.reshape(*qs.shape) << 8)
    neg = np.repeat((qh >> 15).astype(bool), 4, axis=-1)
    return index, neg


def _iq1_m_runs(qs: np.ndarray, qh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid numbers (…, 32) and delta-negative flags per run (…, 32) of IQ1_M super-blocks."""
    q = qh.astype(np.int64)[..., None]
    hi = (q >> np.array([0, 4])) & 7  # (…, 16, 2)
    neg = ((q >> np.array([3, 7])) & 1).astype(bool)
    return qs.astype(np.int64) | (hi.reshape(*qs.shape) << 8), neg.reshape(*qs.shape)


def _codes(index: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Codes ``level + 3*neg`` (n_rows, n_runs*8) from grid numbers and delta flags (n_rows, n_runs)."""
    levels = lattice(LATTICE).levels[index].astype(np.uint8)  # (…, 8)
    codes = levels + (3 * neg.astype(np.uint8))[..., None]
    return codes.reshape(index.shape[0], -1)


@describe(UNPACK, "IQ1_S", codes="``level + 3*(delta < 0)``, 0..5, indices into ``codebook``",
          scales="``d * (2*s + 1)``",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> u = unpack_iq1_s(quantize_iq1_s(x, np.ones(256, np.float32)))\n"
                   ">>> u.codes.shape, u.scales.shape, u.codebook\n"
                   "((2, 256), (2, 8), array([-0.875,  0.125,  1.125, -1.125, -0.125,  0.875], dtype=float32))")
def unpack_iq1_s(packed: npt.NDArray[np.uint8]) -> Unpacked:
    d, qs, qh = _iq1_s_fields(packed)
    n_rows = packed.shape[0]
    scales = d[..., None] * (F32(2) * ((qh >> 12) & 7).astype(F32) + F32(1))
    index, neg = _iq1_s_runs(qs, qh)
    return Unpacked(_codes(index.reshape(n_rows, -1), neg.reshape(n_rows, -1)),
                    scales.reshape(n_rows, -1).astype(F32), codebook=CODEBOOK.copy())


@describe(UNPACK, "IQ1_M", codes="``level + 3*(delta < 0)``, 0..5, indices into ``codebook``",
          scales="``d * (2*s + 1)``",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> u = unpack_iq1_m(quantize_iq1_m(x))\n"
                   ">>> u.codes.shape, u.scales.shape\n((2, 256), (2, 16))")
def unpack_iq1_m(packed: npt.NDArray[np.uint8]) -> Unpacked:
    d, qs, qh, sc = _iq1_m_fields(packed)
    n_rows = packed.shape[0]
    s = (sc[..., None] >> (3 * np.arange(4, dtype=np.uint16))) & 7  # (…, 4, 4): sub-block 4m + i
    scales = d[..., None] * (F32(2) * s.reshape(*sc.shape[:-1], 16).astype(F32) + F32(1))
    index, neg = _iq1_m_runs(qs, qh)
    return Unpacked(_codes(index.reshape(n_rows, -1), neg.reshape(n_rows, -1)),
                    scales.reshape(n_rows, -1).astype(F32), codebook=CODEBOOK.copy())


def _dequantize(u: Unpacked, group: int) -> np.ndarray:
    n_rows = u.codes.shape[0]
    levels = u.codebook[u.codes].reshape(n_rows, -1, group)
    return (u.scales[..., None] * levels).reshape(n_rows, -1)


@describe(DEQUANTIZE, "IQ1_S", formula="``(d * (2*s + 1)) * (grid[j] + delta)`` per weight",
          examples=">>> x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)\n"
                   ">>> dequantize_iq1_s(quantize_iq1_s(x, np.ones(256, np.float32))).shape\n(1, 256)")
def dequantize_iq1_s(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _dequantize(unpack_iq1_s(packed), S_BLOCK)


@describe(DEQUANTIZE, "IQ1_M", formula="``(d * (2*s + 1)) * (grid[j] + delta)`` per weight",
          examples=">>> x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)\n"
                   ">>> dequantize_iq1_m(quantize_iq1_m(x)).shape\n(1, 256)")
def dequantize_iq1_m(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _dequantize(unpack_iq1_m(packed), M_BLOCK)


def points_iq1_s(packed: npt.NDArray[np.uint8]) -> LatticePoints:
    """The ``iq1s`` grid point of each run of 8 weights of IQ1_S rows.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 50), uint8

    Returns
    -------
    LatticePoints
        ``index`` uint16 (n_rows, n_cols // 8); ``negative`` all False (n_rows, n_cols): no signs.
    """
    _, qs, qh = _iq1_s_fields(packed)
    index, _ = _iq1_s_runs(qs, qh)
    n_rows = packed.shape[0]
    index = index.reshape(n_rows, -1).astype(np.uint16)
    return LatticePoints(LATTICE, index, np.zeros((n_rows, index.shape[1] * 8), dtype=bool))


def points_iq1_m(packed: npt.NDArray[np.uint8]) -> LatticePoints:
    """The ``iq1s`` grid point of each run of 8 weights of IQ1_M rows.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 56), uint8

    Returns
    -------
    LatticePoints
        ``index`` uint16 (n_rows, n_cols // 8); ``negative`` all False (n_rows, n_cols): no signs.
    """
    _, qs, qh, _ = _iq1_m_fields(packed)
    index, _ = _iq1_m_runs(qs, qh)
    n_rows = packed.shape[0]
    index = index.reshape(n_rows, -1).astype(np.uint16)
    return LatticePoints(LATTICE, index, np.zeros((n_rows, index.shape[1] * 8), dtype=bool))
