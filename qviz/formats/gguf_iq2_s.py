"""IQ2_S: 2.5625 bits a weight, eight weights at a time on a 1024-point lattice, byte-identical to ggml.

A super-block holds 256 weights in sixteen sub-blocks of 16; each sub-block is
two runs of 8 weights. Every run of 8 stores the number (10 bits) of one point
of ggml's ``iq2s`` lattice (:func:`~qviz.formats.iq_lattice.lattice`: 8
coordinates, each a level 0..2 that decodes to 8, 25 or 43) and 8 sign bits.
Each sub-block has a 4-bit scale ``ls``; one fp16 ``d`` per super-block.

====== ==== ====================================== ============================================
type   bits block (bytes)                          decode of weight j of run g (sub-block ib)
====== ==== ====================================== ============================================
IQ2_S  2    d 2, qs 64, qh 8, scales 8             ``d*(0.5+ls[ib])*0.25 * ±iq2s_grid[g][j]``
====== ==== ====================================== ============================================

Bit layout of a ``block_iq2_s`` (ggml-common.h); run ``g = 0..31`` covers
weights ``8g .. 8g+7``, sub-block ``ib = g // 2``::

    d             fp16, little-endian
    qs[g]         g = 0..31   bits 7..0 of run g's grid number
    qs[32 + g]    g = 0..31   bit j: weight 8g+j is negative
    qh[g // 4]    bits 2(g%4)+1 .. 2(g%4): bits 9..8 of run g's grid number
    scales[k]     k = 0..7    bits 7..4: ls[2k+1] | bits 3..0: ls[2k]

Decode (ggml's ``dequantize_row_iq2_s``): ``dl = d * (0.5 + ls) * 0.25`` in
float32, then each weight is ``dl * value``, negated where its sign bit is set.

The quantizer is ggml's ``quantize_iq2_s`` -> ``quantize_row_iq2_s_impl`` (the
path of ``ggml_quantize_chunk`` with and without an imatrix; IQ2_S needs none).
Per super-block, ``sigma2 = 2 * sum(x**2) / 256``; each weight's error weight is
``imatrix * sqrt(sigma2 + x**2)`` or, without an imatrix, ``sigma2/4 + x**2``.
Per sub-block of 16, on the magnitudes ``|x|`` (the signs are stored apart):

1. below ``GROUP_MAX_EPS_IQ2_S = 1e-8`` the sub-block stays all zero (scale 0);
2. 19 trial scales ``1/id``, ``id = (5 + 0.1*is) / max|x|`` for ``is = -9..9``:
   each weight is rounded to a level ``clamp(nearest_int((id*|x| - 1)/2), 0, 2)``;
   a run of 8 whose levels are not a lattice point is replaced by the nearest of
   its listed neighbours (``iq2_find_best_neighbour``: least
   ``sum(sqrt(weight) * (scale*(2l+1) - |x|)**2)``); the trial with the best
   ``sumqx**2 / sumq2`` (``q = 2l+1``) wins and its scale is ``sumqx/sumq2``;
3. runs that the winner had to move onto the lattice are rounded again on the
   winning scale (and moved again if off), and the scale refitted;
4. a negative scale flips it and all 16 sign bits.

Then ``d = max_scale / 31``, stored as ``fp16(d * 0.9875)``, and each sub-block's
``ls = clamp(nearest_int((scale/d - 1)/2), 0, 15)`` with the float32 ``d``.

qviz stores the codes as indices into the signed ``codebook`` ``[-43, -25, -8,
8, 25, 43]`` (``3 + l`` for a positive weight, ``2 - l`` for a negative one) and
``scales`` as the float32 ``d*(0.5+ls)*0.25`` per sub-block, so
``QuantResult.dequantize()`` repeats ``dequantize_row_iq2_s`` bit for bit (a
sign flip is exact). :func:`points_iq2_s` gives the lattice points themselves.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.iq_lattice import Lattice, LatticePoints, lattice, pack_levels
from qviz.formats.rounding import fp16_bits, fp16_field, fp16_from_field, nearest_int, nearest_int_array
from qviz.formats.spec import FP16, QK_K, Unpacked, register_ggml

# name, ggml_type, block size, bits, sub-block size; general.file_type; fields in order.
# file_type: MOSTLY_IQ2_M (29), the llama.cpp file type whose weights are mostly IQ2_S
# (llama_model_ftype's default type; MOSTLY_IQ2_S's is IQ2_XS). llama.cpp's llama_tensor_get_type
# quantizes rows that no 256-block divides as IQ4_NL.
register_ggml(__name__, "IQ2_S", 22, QK_K, 2, 16, file_type=29, fallback="IQ4_NL",
              d=FP16, qs=QK_K // 4, qh=QK_K // 32, scales=QK_K // 32)

F32 = np.float32
LATTICE = "iq2s"
SUB = 16  # weights a sub-block scale applies to
N_SUB = QK_K // SUB  # sub-blocks per super-block
RUN = 8  # weights per lattice point
N_RUN = QK_K // RUN  # runs per super-block
K_MAX_Q = 3  # levels 0..2
N_TRIALS = 9  # trial scales is = -N_TRIALS .. N_TRIALS
GROUP_MAX_EPS_IQ2_S = F32(1e-8)

#: the signed decoded values; code ``3 + l`` is ``+value(l)``, code ``2 - l`` is ``-value(l)``
CODEBOOK = np.array([-43, -25, -8, 8, 25, 43], dtype=F32)


# ------------------------------------------------------------ ggml's rule

def _sequential_sum(v: np.ndarray) -> np.float32:
    """float32 sum of ``v`` (n,) in index order, as C's ``s += v[i]`` loop (numpy's sum is pairwise)."""
    return np.cumsum(v, dtype=F32)[-1]


def best_neighbour(lat: Lattice, u: int, xval: np.ndarray, waux: np.ndarray, scale: np.float32) -> np.ndarray:
    """ggml's ``iq2_find_best_neighbour``: the listed neighbour of off-grid point ``u`` nearest to ``xval``.

    Parameters
    ----------
    lat : Lattice
    u : int
        The packed levels of an off-grid run (``lat.kmap[u] < 0``).
    xval, waux : ndarray, shape (8,), float32
        The run's magnitudes and the square roots of their error weights.
    scale : float32

    Returns
    -------
    ndarray, shape (8,), int8
        The levels of the first neighbour (in list order) with the least
        ``sum(waux * (scale*(2l+1) - xval)**2)``, summed in order.
    """
    cand = lat.neighbours_of(u).astype(np.int64)  # (n,)
    diff = scale * lat.search[cand].astype(F32) - xval  # (n, 8)
    d2 = np.cumsum(waux * diff * diff, axis=1, dtype=F32)[:, -1]
    return lat.levels[cand[np.argmin(d2)]].astype(np.int8)


def _sums(L: np.ndarray, xval: np.ndarray, weight: np.ndarray) -> tuple[np.float32, np.float32]:
    """``sumqx = sum(w*x*q)`` and ``sumq2 = sum(w*q*q)`` with ``q = 2L+1``, in ggml's order."""
    q = (F32(2) * L.astype(F32) + F32(1)).astype(F32)
    return _sequential_sum(weight * xval * q), _sequential_sum(weight * q * q)


def _levels(id_: np.float32, xval: np.ndarray) -> np.ndarray:
    """Levels ``clamp(nearest_int(0.5*(id*x - 1)), 0, 2)`` (int8) of magnitudes ``xval``."""
    return np.clip(nearest_int_array(F32(0.5) * (id_ * xval - F32(1))), 0, K_MAX_Q - 1).astype(np.int8)


def _search_sub_block(xval: np.ndarray, weight: np.ndarray, lat: Lattice) -> tuple[np.float32, np.ndarray]:
    """One sub-block of 16 (ggml ``quantize_row_iq2_s_impl``'s inner loop, before the signs).

    Parameters
    ----------
    xval, weight : ndarray, shape (16,), float32
        Magnitudes ``|x|`` and error weights.
    lat : Lattice
        ``lattice("iq2s")``.

    Returns
    -------
    scale : float32
        The fitted scale (may be negative: the caller flips it and the signs).
    L : ndarray, shape (16,), int8
        Levels 0..2, two lattice points.
    """
    waux = np.sqrt(weight)
    vmax = xval.max()
    L = np.zeros(SUB, dtype=np.int8)
    if vmax < GROUP_MAX_EPS_IQ2_S:
        return F32(0), L
    best = F32(0)
    scale = vmax / F32(2 * K_MAX_Q - 1)
    on_grid = [True, True]
    for is_ in range(-N_TRIALS, N_TRIALS + 1):
        id_ = (F32(2 * K_MAX_Q - 1) + F32(is_) * F32(0.1)) / vmax
        this_scale = F32(1) / id_
        Laux = _levels(id_, xval)
        aux_on = [True, True]
        for k in range(2):
            run = slice(RUN * k, RUN * (k + 1))
            u = int(pack_levels(Laux[run], 2))
            if lat.kmap[u] < 0:
                aux_on[k] = False
                Laux[run] = best_neighbour(lat, u, xval[run], waux[run], this_scale)
        sumqx, sumq2 = _sums(Laux, xval, weight)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            L = Laux
            on_grid = aux_on
    if not all(on_grid) and scale > 0:
        id_ = F32(1) / scale
        for k in range(2):
            if on_grid[k]:
                continue
            run = slice(RUN * k, RUN * (k + 1))
            L[run] = _levels(id_, xval[run])
            u = int(pack_levels(L[run], 2))
            if lat.kmap[u] < 0:
                L[run] = best_neighbour(lat, u, xval[run], waux[run], scale)
        sumqx, sumq2 = _sums(L, xval, weight)
        if sumq2 > 0:
            scale = sumqx / sumq2
    return scale, L


def _iq2_s_block(x: np.ndarray, qw: np.ndarray | None, lat: Lattice) -> tuple[int, np.ndarray, np.ndarray,
                                                                                np.ndarray]:
    """One super-block (ggml ``quantize_row_iq2_s_impl``).

    Parameters
    ----------
    x : ndarray, shape (256,), float32
    qw : ndarray, shape (256,), float32, or None
        The imatrix slice of this super-block.
    lat : Lattice

    Returns
    -------
    d_bits : int
        fp16 bits of ``d * 0.9875``.
    ls : ndarray, shape (16,), int64
        Sub-block scales 0..15.
    grid : ndarray, shape (32,), int64
        Lattice point number of each run of 8.
    signs : ndarray, shape (32,), uint8
        Sign bits of each run (bit j: weight j is negative).
    """
    sigma2 = F32(2) * _sequential_sum(x * x) / F32(QK_K)
    if qw is None:
        weight = F32(0.25) * sigma2 + x * x
    else:
        weight = qw * np.sqrt(sigma2 + x * x)
    neg = x < 0
    xval = np.abs(x)
    bit = np.left_shift(1, np.arange(RUN)).astype(np.uint8)
    signs = np.bitwise_or.reduce(np.where(neg.reshape(N_RUN, RUN), bit, 0), axis=1).astype(np.uint8)
    grid = np.zeros(N_RUN, dtype=np.int64)
    scales = np.zeros(N_SUB, dtype=F32)
    max_scale = F32(0)
    for ib in range(N_SUB):
        sub = slice(SUB * ib, SUB * (ib + 1))
        if xval[sub].max() < GROUP_MAX_EPS_IQ2_S:
            signs[2 * ib:2 * ib + 2] = 0  # ggml skips the sub-block: its bytes stay zero
            continue
        scale, L = _search_sub_block(xval[sub], weight[sub], lat)
        if scale < 0:
            scale = -scale
            signs[2 * ib:2 * ib + 2] ^= 0xFF
        grid[2 * ib:2 * ib + 2] = lat.kmap[pack_levels(L.reshape(2, RUN), 2)]
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    ls = np.zeros(N_SUB, dtype=np.int64)
    if not max_scale:
        return 0, ls, grid, signs
    d = max_scale / F32(31)
    id_ = F32(1) / d
    for ib in range(N_SUB):
        ls[ib] = max(0, min(15, nearest_int(F32(0.5) * (id_ * scales[ib] - F32(1)))))
    return fp16_bits(d * F32(0.9875)), ls, grid, signs


@describe(QUANTIZE, "IQ2_S",
          summary="Each run of 8 magnitudes goes to a point of the ``iq2s`` lattice: 19 trial\n"
                  "scales per 16-weight sub-block, off-lattice runs moved to their best listed\n"
                  "neighbour, the best weighted fit kept; 4-bit sub-block scales on\n"
                  "``d = max_scale/31`` (stored ``* 0.9875``).",
          imatrix="Importance of each column: weights ``imatrix * sqrt(sigma2 + x**2)``\n"
                  "    with ``sigma2 = 2 * mean(x**2)`` of the super-block; else ``sigma2/4 + x**2``.",
          notes="ggml-quants.c ``quantize_iq2_s`` -> ``quantize_row_iq2_s_impl`` (the path of\n"
                "``ggml_quantize_chunk``, with or without imatrix; IQ2_S does not require one).",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> quantize_iq2_s(x).shape\n(2, 82)")
def quantize_iq2_s(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    lat = lattice(LATTICE)
    n_rows, n_blocks = x.shape[0], x.shape[1] // QK_K
    blocks = x.reshape(n_rows, n_blocks, QK_K)
    d = np.zeros((n_rows, n_blocks), dtype=np.uint16)
    qs = np.zeros((n_rows, n_blocks, QK_K // 4), dtype=np.uint8)
    qh = np.zeros((n_rows, n_blocks, QK_K // 32), dtype=np.uint8)
    scales = np.zeros((n_rows, n_blocks, QK_K // 32), dtype=np.uint8)
    with np.errstate(all="ignore"):  # huge or tiny rows overflow and divide to inf/NaN, as in C
        for r, i in np.ndindex(n_rows, n_blocks):
            qw = None if imatrix is None else imatrix[QK_K * i:QK_K * (i + 1)]
            d_bits, ls, grid, signs = _iq2_s_block(blocks[r, i], qw, lat)
            d[r, i] = d_bits
            qs[r, i, :N_RUN] = grid & 0xFF
            qs[r, i, N_RUN:] = signs
            qh[r, i] = np.bitwise_or.reduce((grid >> 8).reshape(8, 4) << (2 * np.arange(4)), axis=1)
            scales[r, i] = ls[0::2] | (ls[1::2] << 4)
    return assemble("IQ2_S", d=fp16_field(d), qs=qs, qh=qh, scales=scales)


# ------------------------------------------------------- unpack, dequantize

def _grid_numbers(qs: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """qs (…, 64) and qh (…, 8) -> each run's grid number (…, 32), int64."""
    high = (qh[..., :, None].astype(np.int64) >> (2 * np.arange(4))) & 3  # (…, 8, 4)
    return qs[..., :N_RUN].astype(np.int64) | (high.reshape(*qh.shape[:-1], N_RUN) << 8)


def _negative(qs: np.ndarray) -> np.ndarray:
    """qs (…, 64) -> the sign bit of each weight (…, 256), bool."""
    bits = (qs[..., N_RUN:, None] >> np.arange(RUN, dtype=np.uint8)) & 1  # (…, 32, 8)
    return bits.reshape(*qs.shape[:-1], QK_K).astype(bool)


def points_iq2_s(packed: npt.NDArray[np.uint8]) -> LatticePoints:
    """The ``iq2s`` lattice point of each run of 8 weights and each weight's sign bit.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 82), uint8
        ``block_iq2_s`` rows.

    Returns
    -------
    LatticePoints
        ``lattice = "iq2s"``; ``index`` uint16 (n_rows, n_cols // 8), the grid
        number (``qs | qh`` bits) of each run; ``negative`` bool (n_rows, n_cols).

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    >>> p = points_iq2_s(quantize_iq2_s(x))
    >>> p.lattice, p.index.shape, p.negative.shape
    ('iq2s', (2, 32), (2, 256))
    """
    f = fields("IQ2_S", packed)
    n_rows = packed.shape[0]
    index = _grid_numbers(f["qs"], f["qh"]).astype(np.uint16).reshape(n_rows, -1)
    return LatticePoints(LATTICE, index, _negative(f["qs"]).reshape(n_rows, -1))


@describe(UNPACK, "IQ2_S",
          codes="0..5, indices into ``codebook = [-43, -25, -8, 8, 25, 43]`` (the lattice\n"
                "    value, signed)",
          scales="``d * (0.5 + ls) * 0.25``",
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> u = unpack_iq2_s(quantize_iq2_s(x))\n"
                   ">>> u.codes.shape, u.scales.shape, u.codebook\n"
                   "((2, 256), (2, 16), array([-43., -25.,  -8.,   8.,  25.,  43.], dtype=float32))")
def unpack_iq2_s(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("IQ2_S", packed)
    n_rows = packed.shape[0]
    lat = lattice(LATTICE)
    ls = np.stack([f["scales"] & 0xF, f["scales"] >> 4], axis=-1).reshape(*f["scales"].shape[:-1], N_SUB)
    d = fp16_from_field(f["d"])[..., None]
    scales = d * (F32(0.5) + ls.astype(F32)) * F32(0.25)  # (n_rows, n_blocks, 16)
    levels = lat.levels[_grid_numbers(f["qs"], f["qh"])].reshape(*ls.shape[:-1], QK_K)  # (…, 256)
    codes = np.where(_negative(f["qs"]), 2 - levels, 3 + levels).astype(np.uint8)
    return Unpacked(codes.reshape(n_rows, -1), scales.astype(F32).reshape(n_rows, -1), codebook=CODEBOOK.copy())


@describe(DEQUANTIZE, "IQ2_S", formula="``(d * (0.5 + ls) * 0.25) * ±iq2s_grid`` per weight",
          examples=">>> x = np.linspace(-1, 1, 256, dtype=np.float32)[None]\n"
                   ">>> float(np.abs(dequantize_iq2_s(quantize_iq2_s(x)) - x).max()) < 0.3\nTrue")
def dequantize_iq2_s(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    u = unpack_iq2_s(packed)
    n_rows = u.codes.shape[0]
    levels = u.codebook[u.codes].reshape(n_rows, -1, SUB)  # (n_rows, n_sub, 16)
    return (u.scales[..., None] * levels).reshape(n_rows, -1)
