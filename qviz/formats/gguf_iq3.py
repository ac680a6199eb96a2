"""IQ3_XXS and IQ3_S: 4-weight points of ggml's 3-bit lattices, byte-identical to ggml.

Both types cut a 256-weight super-block into eight sub-blocks of 32 weights,
and each sub-block into eight runs of four. A run stores the *number* of one
grid point of a 4-dimensional lattice (:func:`~qviz.formats.iq_lattice.lattice`
``"iq3xxs"``: 256 points, ``"iq3s"``: 512 points) and one sign bit per weight;
the sub-block stores a 4-bit scale ``ls`` and the super-block one fp16 ``d``.

======= ==== ============================================ ==================================================
type    bits block (bytes)                                decode of weight j of run k, sub-block ib
======= ==== ============================================ ==================================================
IQ3_XXS 3    d 2, qs 96 (grid numbers 64, ls+signs 32)    ``(d*(0.5+ls)*0.5) * iq3xxs_grid[g][j] * sign``
IQ3_S   3    d 2, qs 64, qh 8, signs 32, scales 4         ``(d*(1+2*ls)) * iq3s_grid[g][j] * sign``
======= ==== ============================================ ==================================================

The decode values of a level ``l`` (0..7) are ``4, 12, 20, 28, 36, 44, 52, 62``
for IQ3_XXS and ``1, 3, ..., 15`` for IQ3_S.

Bit layout of a ``block_iq3_xxs`` (ggml-common.h; 98 bytes)::

    d                          fp16, little-endian
    qs[8*ib + k]   k = 0..7    grid number g (0..255) of run k of sub-block ib
    qs[64 + 4*ib .. +3]        uint32 LE   bit  31..28 | 27..21 | 20..14 | 13..7 | 6..0
                                                ls[ib]   s[3]     s[2]     s[1]    s[0]

``s[m]`` holds the signs of weights ``8m .. 8m+6`` of the sub-block (bit i set:
negative); the sign of weight ``8m+7`` is the parity of ``s[m]`` (ggml's
``ksigns_iq2xs``), so every group of eight has an even number of minus signs.

Bit layout of a ``block_iq3_s`` (110 bytes)::

    d                          fp16, little-endian
    qs[8*ib + k]               bits 7..0 of the grid number g (0..511) of run k of sub-block ib
    qh[ib]                     bit k: bit 8 of that grid number
    signs[4*ib + m]            bit i: weight 8m+i of sub-block ib is negative
    scales[p]      p = 0..3    bit  7 6 5 4    | 3 2 1 0
                                    ls[2p+1]   | ls[2p]

The quantizers are ggml's ``quantize_iq3_xxs`` -> ``quantize_row_iq3_xxs_impl(256, …)``
and ``quantize_iq3_s`` -> ``quantize_row_iq3_s_impl(32, …)`` (``ggml_quantize_chunk``'s
paths, with or without an imatrix; neither type requires one). For each sub-block:

1. error weights ``w = x**2``, or ``imatrix * sqrt(sigma2 + x**2)`` with ``sigma2``
   twice the mean square of the super-block; ``waux = sqrt(w)`` weighs the
   neighbour search;
2. the magnitudes ``xval = |x|`` are searched, the signs stored. IQ3_XXS makes
   each group of eight even in minus signs: when it is odd, the weight of
   smallest ``w * x**2`` keeps the wrong sign (its ``xval`` is negated);
3. 31 (IQ3_XXS: ``is = -15..15``) or 19 (IQ3_S: ``is = -9..9``) trial inverse
   scales ``id = (15 + 0.2*is) / max(xval)``: each run rounds to levels
   ``clamp(nearest_int((id*xval - 1)/2), 0, 7)``; a run off the grid takes the
   neighbour (``lattice.neighbours``) of least ``sum waux*(q/id - xval)**2``
   in odd coordinates ``q = 2l+1``. The trial of largest ``sumqx**2/sumq2``
   gives the levels and the scale ``sumqx/sumq2``;
4. when some run of the best trial was off the grid, the runs are rounded once
   more on that scale (IQ3_XXS: only the off-grid runs, IQ3_S: all) and the
   scale refitted. IQ3_XXS skips a sub-block below ``GROUP_MAX_EPS_IQ3_XXS`` (1e-8),
   IQ3_S only an all-zero one.

Then ``d = max_scale / 31``, stored as ``fp16(d * 1.0125)`` (IQ3_XXS) or
``fp16(d * 1.033)`` (IQ3_S), and ``ls = clamp(nearest_int((scale/d - 1)/2), 0, 15)``.

qviz unpacks a weight into a code 0..15 of the codebook ``[-v7, …, -v0, v0, …, v7]``
(the signed decode values: ``codes = 8 + l`` for a positive weight, ``7 - l`` for a
negative one) and a float32 scale per sub-block (``d*(0.5+ls)*0.5`` or ``d*(1+2*ls)``),
so ``QuantResult.dequantize()`` repeats ggml's ``dequantize_row_iq3_xxs`` /
``dequantize_row_iq3_s`` bit for bit: ggml multiplies ``(scale * value) * (±1)``,
which is ``scale * (±value)`` exactly. :func:`points_iq3_xxs` / :func:`points_iq3_s`
give the grid numbers and sign bits the explorers draw.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.iq_lattice import Lattice, LatticePoints, lattice
from qviz.formats.rounding import fp16_bits, fp16_field, fp16_from_field, nearest_int, nearest_int_array
from qviz.formats.spec import FP16, QK, QK_K, Unpacked, register_ggml

# name, ggml_type, block size, bits, sub-block size; general.file_type (MOSTLY_IQ3_XXS 23, MOSTLY_IQ3_S 26);
# fields in order. llama.cpp's llama_tensor_get_type quantizes rows no 256-block divides as IQ4_NL.
register_ggml(__name__, "IQ3_XXS", 18, QK_K, 3, QK, file_type=23, fallback="IQ4_NL",
              d=FP16, qs=3 * QK_K // 8)
register_ggml(__name__, "IQ3_S", 21, QK_K, 3, QK, file_type=26, fallback="IQ4_NL",
              d=FP16, qs=QK_K // 4, qh=QK_K // 32, signs=QK_K // 8, scales=QK_K // 64)

F32 = np.float32
N_SUB = QK_K // QK  # sub-blocks per super-block
RUN = 4  # weights per grid point
N_RUNS = QK // RUN  # runs per sub-block
KMAXQ = 8  # levels 0..7
#: per type: lattice name, trial steps ``is`` from -n to n, fp16 fudge factor of d
LATTICE = {"IQ3_XXS": "iq3xxs", "IQ3_S": "iq3s"}
N_TRIALS = {"IQ3_XXS": 15, "IQ3_S": 9}
D_FUDGE = {"IQ3_XXS": F32(1.0125), "IQ3_S": F32(1.033)}
#: ggml's GROUP_MAX_EPS_IQ3_XXS: an IQ3_XXS sub-block whose largest |x| is below it is all zero
GROUP_MAX_EPS_IQ3_XXS = F32(1e-8)
#: decode value of each level 0..7
LEVEL_VALUES = {"IQ3_XXS": np.array([4, 12, 20, 28, 36, 44, 52, 62], dtype=F32),
                "IQ3_S": np.arange(1, 16, 2, dtype=F32)}
#: the signed decode values: code c < 8 is ``-value[7 - c]``, c >= 8 is ``value[c - 8]``
CODEBOOK = {name: np.concatenate([-v[::-1], v]).astype(F32) for name, v in LEVEL_VALUES.items()}

_BIT = np.arange(8, dtype=np.uint8)  # (8,)
#: ggml's ksigns_iq2xs: seven stored sign bits -> the sign byte, bit 7 their parity (an even count of minus signs)
KSIGNS = np.array([s | (bin(s).count("1") & 1) << 7 for s in range(128)], dtype=np.uint8)


# ------------------------------------------------------------ ggml's search

def best_neighbour(lat: Lattice, u: int, xval: np.ndarray, waux: np.ndarray, scale: np.float32) -> int:
    """ggml's ``iq3_find_best_neighbour``: the grid point nearest an off-grid run.

    Parameters
    ----------
    lat : Lattice
    u : int
        The packed levels of the run (``lat.kmap[u] < 0``).
    xval, waux : ndarray, shape (4,), float32
        The run's magnitudes and search weights.
    scale : float32
        The trial scale: a point's coordinates ``q = 2l+1`` stand for ``scale * q``.

    Returns
    -------
    int
        The grid number of least ``sum waux*(scale*q - xval)**2`` (summed in order;
        the first of equal ones in the neighbour list's order).
    """
    cand = lat.neighbours_of(u).astype(np.int64)  # (n,)
    q = lat.search[cand].astype(F32)  # (n, 4)
    d2 = np.zeros(len(cand), dtype=F32)
    for i in range(RUN):
        diff = scale * q[:, i] - xval[i]
        d2 = d2 + waux[i] * diff * diff
    d2 = np.where(d2 < np.finfo(F32).max, d2, np.inf)  # ggml starts from FLT_MAX and keeps d2 < best
    return int(cand[int(np.argmin(d2))])


def _sums(w: np.ndarray, xval: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sumqx = sum w*xval*q`` and ``sumq2 = sum w*q*q`` (q = 2L+1) in order, float32, over the last axis."""
    q = (2 * L.astype(np.int32) + 1).astype(F32)
    sumqx = np.add.accumulate((w * xval) * q, axis=-1, dtype=F32)[..., -1]
    sumq2 = np.add.accumulate((w * q) * q, axis=-1, dtype=F32)[..., -1]
    return sumqx, sumq2


def _levels(inv: np.ndarray, xval: np.ndarray) -> np.ndarray:
    """``clamp(nearest_int(0.5*(inv*xval - 1)), 0, 7)`` (``inv`` broadcast against ``xval``), int64."""
    return np.clip(nearest_int_array(F32(0.5) * (inv * xval - F32(1))), 0, KMAXQ - 1).astype(np.int64)


def _onto_grid(lat: Lattice, L: np.ndarray, xval: np.ndarray, waux: np.ndarray, scale: np.float32,
               runs) -> np.ndarray:
    """Move each run ``k in runs`` of levels ``L`` (32,) onto the grid (in place); whether each was on it (8,)."""
    on = np.ones(N_RUNS, dtype=bool)
    for k in runs:
        s = slice(RUN * k, RUN * (k + 1))
        u = int((L[s] << (3 * np.arange(RUN))).sum())
        if lat.kmap[u] < 0:
            on[k] = False
            L[s] = lat.levels[best_neighbour(lat, u, xval[s], waux[s], scale)]
    return on


def search_sub_block(type_name: str, xb: np.ndarray, weight: np.ndarray
                     ) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """One sub-block of 32 weights (ggml ``quantize_row_iq3_xxs_impl`` / ``quantize_row_iq3_s_impl``).

    Parameters
    ----------
    type_name : {"IQ3_XXS", "IQ3_S"}
    xb, weight : ndarray, shape (32,), float32
        The weights and their error weights.

    Returns
    -------
    scale : float32 or None
        The sub-block's scale (>= 0); None for a sub-block skipped as all zero.
    grid : ndarray, shape (8,), int64
        The grid number of each run of four.
    signs : ndarray, shape (4,), uint8
        The sign byte of each group of eight (IQ3_XXS: 7 bits, the eighth is the parity).
    """
    xxs = type_name == "IQ3_XXS"
    lat = lattice(LATTICE[type_name])
    waux = np.sqrt(weight)
    neg = ~(xb >= 0)
    xval = np.where(neg, -xb, xb).astype(F32)
    bits = neg.reshape(4, 8)
    if xxs:
        for m in range(4):
            if bits[m].sum() % 2:
                g = slice(8 * m, 8 * m + 8)
                imin = int(np.argmin((weight[g] * xb[g]) * xb[g]))
                xval[8 * m + imin] = -xval[8 * m + imin]
                bits[m, imin] = ~bits[m, imin]
    signs = (bits.astype(np.uint8) << _BIT).sum(axis=1).astype(np.uint8)
    if xxs:
        signs &= 127
    xmax = np.max(xval)
    L = np.zeros(QK, dtype=np.int64)
    if (xmax < GROUP_MAX_EPS_IQ3_XXS) if xxs else (xmax == 0):
        return None, np.zeros(N_RUNS, dtype=np.int64), np.zeros(4, dtype=np.uint8)
    # the trials, all at once: inverse scales, levels, runs moved onto the grid
    steps = np.arange(-N_TRIALS[type_name], N_TRIALS[type_name] + 1).astype(F32)
    inv = (F32(2 * KMAXQ - 1) + steps * F32(0.2)) / xmax  # (T,)
    trial_scale = F32(1) / inv
    Laux = _levels(inv[:, None], xval[None, :])  # (T, 32)
    on_aux = np.stack([_onto_grid(lat, Laux[t], xval, waux, trial_scale[t], range(N_RUNS))
                       for t in range(len(steps))])  # (T, 8)
    sumqx, sumq2 = _sums(weight, xval, Laux)
    best = F32(0)
    scale = xmax / F32(2 * KMAXQ - 1)
    on = np.full(N_RUNS, xxs)
    for t in range(len(steps)):
        if sumq2[t] > 0 and sumqx[t] * sumqx[t] > best * sumq2[t]:
            scale = sumqx[t] / sumq2[t]
            best = scale * sumqx[t]
            L, on = Laux[t].copy(), on_aux[t]
    if not on.all() and scale > 0:
        Lnew = _levels(F32(1) / scale, xval)
        redo = [k for k in range(N_RUNS) if not on[k]] if xxs else range(N_RUNS)
        for k in redo:
            L[RUN * k:RUN * (k + 1)] = Lnew[RUN * k:RUN * (k + 1)]
        _onto_grid(lat, L, xval, waux, scale, redo)
        sqx, sq2 = _sums(weight, xval, L)
        if sq2 > 0:
            scale = sqx / sq2
    if scale < 0:  # ggml: "should never happen"; the scale is stored unsigned
        scale = -scale
        signs = ~signs & (127 if xxs else 255)
    grid = lat.kmap[(L.reshape(N_RUNS, RUN) << (3 * np.arange(RUN))).sum(axis=1)].astype(np.int64)
    assert (grid >= 0).all(), "ggml aborts here: a run off the grid"
    return scale, grid, signs.astype(np.uint8)


def quantize_super_block(type_name: str, x: np.ndarray, qw: np.ndarray | None
                         ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """One super-block of 256 weights.

    Parameters
    ----------
    type_name : {"IQ3_XXS", "IQ3_S"}
    x : ndarray, shape (256,), float32
    qw : ndarray, shape (256,), float32, or None
        The imatrix slice of this super-block.

    Returns
    -------
    d_bits : int
        fp16 bits of the stored ``d``.
    ls : ndarray, shape (8,), int64
        4-bit sub-block scales.
    grid : ndarray, shape (8, 8), int64
        Grid number of each run, by sub-block.
    signs : ndarray, shape (8, 4), uint8
        Sign byte of each group of eight, by sub-block.
    kept : ndarray, shape (8,), bool
        False for the sub-blocks skipped as all zero.
    """
    sigma2 = F32(2) * np.add.accumulate(x * x, dtype=F32)[-1] / F32(QK_K)
    scales = np.zeros(N_SUB, dtype=F32)
    grid = np.zeros((N_SUB, N_RUNS), dtype=np.int64)
    signs = np.zeros((N_SUB, 4), dtype=np.uint8)
    kept = np.zeros(N_SUB, dtype=bool)
    for ib in range(N_SUB):
        xb = x[QK * ib:QK * (ib + 1)]
        if qw is None:
            weight = xb * xb
        else:
            weight = qw[QK * ib:QK * (ib + 1)] * np.sqrt(sigma2 + xb * xb)
        scale, grid[ib], signs[ib] = search_sub_block(type_name, xb, weight.astype(F32))
        kept[ib] = scale is not None
        scales[ib] = 0 if scale is None else scale
    max_scale = np.max(scales)
    if max_scale == 0:  # IQ3_XXS clears the whole block; IQ3_S keeps the runs and signs it wrote
        if type_name == "IQ3_XXS":
            grid[:], signs[:] = 0, 0
        return 0, np.zeros(N_SUB, dtype=np.int64), grid, signs, kept
    d = max_scale / F32(31)
    inv = F32(1) / d
    ls = np.array([min(15, max(0, nearest_int(F32(0.5) * (inv * s - F32(1))))) for s in scales], dtype=np.int64)
    return fp16_bits(d * D_FUDGE[type_name]), ls, grid, signs, kept


def _quantize(type_name: str, x: np.ndarray, imatrix: np.ndarray | None):
    """(d bits (n_rows, n_blocks) uint16, ls (…, 8), grid (…, 8, 8), signs (…, 8, 4), kept (…, 8)) of every
    super-block."""
    n_rows, n_blocks = x.shape[0], x.shape[1] // QK_K
    blocks = x.reshape(n_rows, n_blocks, QK_K)
    d = np.zeros((n_rows, n_blocks), dtype=np.uint16)
    ls = np.zeros((n_rows, n_blocks, N_SUB), dtype=np.int64)
    grid = np.zeros((n_rows, n_blocks, N_SUB, N_RUNS), dtype=np.int64)
    signs = np.zeros((n_rows, n_blocks, N_SUB, 4), dtype=np.uint8)
    kept = np.zeros((n_rows, n_blocks, N_SUB), dtype=bool)
    with np.errstate(all="ignore"):  # huge or tiny rows overflow and divide to inf/NaN, as in C
        for r, i in np.ndindex(n_rows, n_blocks):
            qw = None if imatrix is None else imatrix[QK_K * i:QK_K * (i + 1)]
            d[r, i], ls[r, i], grid[r, i], signs[r, i], kept[r, i] = quantize_super_block(type_name, blocks[r, i],
                                                                                          qw)
    return d, ls, grid, signs, kept


QUANTIZE_NOTES = {
    "IQ3_XXS": "ggml-quants.c ``quantize_iq3_xxs`` -> ``quantize_row_iq3_xxs_impl(256, …)``,\n"
               "``iq3_find_best_neighbour`` (the path of ``ggml_quantize_chunk``, with or without imatrix).",
    "IQ3_S": "ggml-quants.c ``quantize_iq3_s`` -> ``quantize_row_iq3_s_impl(32, …)``,\n"
             "``iq3_find_best_neighbour`` (the path of ``ggml_quantize_chunk``, with or without imatrix).",
}
IMATRIX = ("Importance of each column: weights ``imatrix * sqrt(sigma2 + x**2)``\n"
           "    with ``sigma2 = 2 * mean(x**2)`` of the super-block; else ``x**2``.")
SUMMARY = ("Runs of four weights take a point of the {lattice} lattice: 2*{n}+1 trial scales,\n"
           "off-grid runs moved to their best neighbour, the best trial refitted (see the module).")


@describe(QUANTIZE, "IQ3_XXS", summary=SUMMARY.format(lattice="iq3xxs", n=15), imatrix=IMATRIX,
          notes=QUANTIZE_NOTES["IQ3_XXS"],
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> quantize_iq3_xxs(x).shape\n(2, 98)")
def quantize_iq3_xxs(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, ls, grid, signs, _ = _quantize("IQ3_XXS", x, imatrix)
    words = (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(axis=-1, dtype=np.uint32)
    words |= ls.astype(np.uint32) << 28  # (n_rows, n_blocks, 8)
    n_rows, n_blocks = d.shape
    qs = np.concatenate([grid.astype(np.uint8).reshape(n_rows, n_blocks, QK_K // RUN),
                         words.astype("<u4").view(np.uint8).reshape(n_rows, n_blocks, 4 * N_SUB)], axis=-1)
    return assemble("IQ3_XXS", d=fp16_field(d), qs=qs)


@describe(QUANTIZE, "IQ3_S", summary=SUMMARY.format(lattice="iq3s", n=9), imatrix=IMATRIX,
          notes=QUANTIZE_NOTES["IQ3_S"],
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> quantize_iq3_s(x).shape\n(2, 110)")
def quantize_iq3_s(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, ls, grid, signs, kept = _quantize("IQ3_S", x, imatrix)
    n_rows, n_blocks = d.shape
    # ggml advances its qs and signs pointers past written sub-blocks only: after an all-zero
    # sub-block, the next ones' grid numbers and signs move up a slot (and decode misaligned); qh does not move
    qs = np.zeros((n_rows, n_blocks, N_SUB, N_RUNS), dtype=np.uint8)
    packed_signs = np.zeros((n_rows, n_blocks, N_SUB, 4), dtype=np.uint8)
    for r, i in np.ndindex(n_rows, n_blocks):
        n_kept = int(kept[r, i].sum())
        qs[r, i, :n_kept] = grid[r, i, kept[r, i]] & 255
        packed_signs[r, i, :n_kept] = signs[r, i, kept[r, i]]
    qh = ((grid >> 8).astype(np.uint8) << _BIT).sum(axis=-1).astype(np.uint8)  # (n_rows, n_blocks, 8)
    lo, hi = ls[..., 0::2], ls[..., 1::2]
    scales = (lo | (hi << 4)).astype(np.uint8)
    return assemble("IQ3_S", d=fp16_field(d), qs=qs.reshape(n_rows, n_blocks, QK_K // RUN), qh=qh,
                    signs=packed_signs.reshape(n_rows, n_blocks, QK_K // 8), scales=scales)


# ------------------------------------------------------- unpack, dequantize

def _decode_fields(type_name: str, packed: np.ndarray):
    """Per super-block: d (n_rows, n_blocks) float32, ls (…, 8) int64, grid numbers (…, 64) int64 and the
    negative flag of each weight (…, 256) bool."""
    f = fields(type_name, packed)
    d = fp16_from_field(f["d"])
    if type_name == "IQ3_XXS":
        grid = f["qs"][..., :QK_K // RUN].astype(np.int64)
        words = np.ascontiguousarray(f["qs"][..., QK_K // RUN:]).view("<u4").astype(np.int64)  # (…, 8)
        ls = words >> 28
        s7 = (words[..., None] >> (7 * np.arange(4))) & 127  # (…, 8, 4)
        sign_bytes = KSIGNS[s7]
    else:
        hi = (f["qh"][..., :, None] >> _BIT) & 1  # (…, 8 sub-blocks, 8 runs)
        grid = f["qs"].astype(np.int64) | (hi.reshape(*hi.shape[:-2], QK_K // RUN).astype(np.int64) << 8)
        sc = f["scales"].astype(np.int64)
        ls = np.stack([sc & 15, sc >> 4], axis=-1).reshape(*sc.shape[:-1], N_SUB)
        sign_bytes = f["signs"].reshape(*f["signs"].shape[:-1], N_SUB, 4)
    negative = ((sign_bytes[..., None] >> _BIT) & 1).astype(bool)  # (…, 8, 4, 8)
    return d, ls, grid, negative.reshape(*negative.shape[:-3], QK_K)


def _sub_block_scales(type_name: str, d: np.ndarray, ls: np.ndarray) -> np.ndarray:
    """ggml's float32 step of each sub-block, (…, 8)."""
    if type_name == "IQ3_XXS":
        return d[..., None] * (F32(0.5) + ls.astype(F32)) * F32(0.5)
    return d[..., None] * (1 + 2 * ls).astype(F32)


def _unpack(type_name: str, packed: np.ndarray) -> Unpacked:
    n_rows = packed.shape[0]
    d, ls, grid, negative = _decode_fields(type_name, packed)
    levels = lattice(LATTICE[type_name]).levels[grid].reshape(*grid.shape[:-1], QK_K).astype(np.int64)
    codes = np.where(negative, 7 - levels, 8 + levels).astype(np.uint8)
    with np.errstate(invalid="ignore"):  # NaN d from arbitrary bytes
        scales = _sub_block_scales(type_name, d, ls)
    return Unpacked(codes.reshape(n_rows, -1), scales.astype(F32).reshape(n_rows, -1),
                    codebook=CODEBOOK[type_name].copy())


def _dequantize(type_name: str, packed: np.ndarray) -> np.ndarray:
    u = _unpack(type_name, packed)
    n_rows = u.codes.shape[0]
    values = u.codebook[u.codes].reshape(n_rows, -1, QK)  # (n_rows, n_sub, 32)
    return (u.scales[..., None] * values).reshape(n_rows, -1)


def _points(type_name: str, packed: np.ndarray) -> LatticePoints:
    n_rows = packed.shape[0]
    _, _, grid, negative = _decode_fields(type_name, packed)
    return LatticePoints(LATTICE[type_name], grid.astype(np.uint16).reshape(n_rows, -1),
                         negative.reshape(n_rows, -1))


CODES = "0..15, indices into ``codebook``, the signed decode values ``[-v7..-v0, v0..v7]``"
UNPACK_EXAMPLE = (">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                  ">>> u = unpack_{lower}(quantize_{lower}(x))\n"
                  ">>> u.codes.shape, u.scales.shape, u.codebook[-2:]\n"
                  "((2, 256), (2, 8), array([{v6}., {v7}.], dtype=float32))")
DEQUANTIZE_EXAMPLE = (">>> x = np.linspace(-1, 1, 256, dtype=np.float32)[None]\n"
                      ">>> float(np.abs(dequantize_{lower}(quantize_{lower}(x)) - x).max()) < 0.2\nTrue")


@describe(UNPACK, "IQ3_XXS", codes=CODES, scales="``d * (0.5 + ls) * 0.5``",
          examples=UNPACK_EXAMPLE.format(lower="iq3_xxs", v6=52, v7=62))
def unpack_iq3_xxs(packed: npt.NDArray[np.uint8]) -> Unpacked:
    return _unpack("IQ3_XXS", packed)


@describe(UNPACK, "IQ3_S", codes=CODES, scales="``d * (1 + 2*ls)``",
          examples=UNPACK_EXAMPLE.format(lower="iq3_s", v6=13, v7=15))
def unpack_iq3_s(packed: npt.NDArray[np.uint8]) -> Unpacked:
    return _unpack("IQ3_S", packed)


@describe(DEQUANTIZE, "IQ3_XXS", formula="``(d * (0.5 + ls) * 0.5) * iq3xxs_grid[g][j] * (±1)`` per weight",
          examples=DEQUANTIZE_EXAMPLE.format(lower="iq3_xxs"))
def dequantize_iq3_xxs(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _dequantize("IQ3_XXS", packed)


@describe(DEQUANTIZE, "IQ3_S", formula="``(d * (1 + 2*ls)) * iq3s_grid[g][j] * (±1)`` per weight",
          examples=DEQUANTIZE_EXAMPLE.format(lower="iq3_s"))
def dequantize_iq3_s(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _dequantize("IQ3_S", packed)


def points_iq3_xxs(packed: npt.NDArray[np.uint8]) -> LatticePoints:
    """The iq3xxs grid point of each run of four weights and each weight's sign bit.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 98), uint8

    Returns
    -------
    LatticePoints
        ``lattice = "iq3xxs"``; ``index`` uint16 (n_rows, n_blocks * 64); ``negative`` bool
        (n_rows, n_blocks * 256), the eighth sign of each group the parity of the seven stored.
    """
    return _points("IQ3_XXS", packed)


def points_iq3_s(packed: npt.NDArray[np.uint8]) -> LatticePoints:
    """The iq3s grid point of each run of four weights and each weight's sign bit.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 110), uint8

    Returns
    -------
    LatticePoints
        ``lattice = "iq3s"``; ``index`` uint16 (n_rows, n_blocks * 64), 0..511; ``negative`` bool
        (n_rows, n_blocks * 256).
    """
    return _points("IQ3_S", packed)
