"""IQ2_XXS and IQ2_XS: 8 weights at a time on ggml's E8-like lattices, with 4-bit sub-block scales.

A 256-weight super-block stores one fp16 ``d``. Every run of 8 weights is one
point of a fixed grid of 8-vectors (:func:`~qviz.formats.iq_lattice.lattice`
``"iq2xxs"``, 256 points, or ``"iq2xs"``, 512 points) whose coordinates are
the values 8, 25 or 43, plus 7 sign bits; the 8th sign is their parity (ggml's
``ksigns_iq2xs``: an even number of weights is negative). A 4-bit scale ``ls``
per sub-block (32 weights in IQ2_XXS, 16 in IQ2_XS) gives the step
``db = d * (0.5 + ls) * 0.25``, and weight j decodes as
``db * grid[point][j] * (-1 if sign j else 1)``.

======= ======= ===================== =========================================
type    bits    block (bytes)         per 32 weights (sub-block ib32)
======= ======= ===================== =========================================
IQ2_XXS 2.0625  d 2, qs 64            4 grid bytes, 4 x 7 sign bits, ls (4 bits)
IQ2_XS  2.3125  d 2, qs 64, scales 8  4 x (9-bit point, 7 sign bits), 2 x ls
======= ======= ===================== =========================================

Bit layout of a ``block_iq2_xxs`` (ggml-common.h), ``qs`` read as 16 little-endian
uint32, two per 32-weight sub-block ``ib``::

    d              fp16, little-endian
    qs[2*ib]       bit  31..24 | 23..16 | 15..8  | 7..0
                        point3   point2   point1   point0      (grid numbers, 0..255)
    qs[2*ib + 1]   bit  31..28 | 27..21 | 20..14 | 13..7  | 6..0
                        ls       signs3   signs2   signs1   signs0

Bit layout of a ``block_iq2_xs``, ``qs`` read as 32 little-endian uint16, one per
8 weights ``8*k .. 8*k+7``, and ``scales`` one byte per 32 weights::

    d              fp16, little-endian
    qs[k]          bit  15..9 | 8..0
                        signs    point (grid number, 0..511)
    scales[ib32]   bit  7..4                      | 3..0
                        ls of weights 16..31      | ls of weights 0..15

The quantizers are ggml's ``quantize_iq2_xxs`` / ``quantize_iq2_xs``
(``quantize_row_iq2_xxs_impl`` / ``quantize_row_iq2_xs_impl``); both need an
importance matrix (``ggml_quantize_requires_imatrix``; ``ggml_quantize_chunk``
asserts one). For each sub-block:

1. error weights ``w = imatrix * sqrt(sigma2 + x**2)`` with ``sigma2`` the mean
   square of the super-block, and ``sqrt(w)`` for the neighbour search;
2. signs: each run of 8 is made non-negative; when an odd number of weights was
   negative, the one with the smallest ``w * x**2`` keeps its sign (its
   magnitude goes in negated), so the parity rule holds;
3. a trial of inverse scales ``id = (5 + 0.1*is) / m`` (IQ2_XXS: ``is`` in
   -6..6, ``m = 3 * make_qp_quants(32, 4, ...)``; IQ2_XS: ``is`` in -9..9, ``m``
   the largest magnitude): levels ``clamp(nearest_int((id*x - 1)/2), 0, 2)``,
   and each run of 8 whose level vector is not a grid point takes the nearest
   of its listed neighbours (ggml's ``iq2_find_best_neighbour``: least
   ``sum(sqrt(w) * (scale*(2l+1) - x)**2)``); the trial with the largest
   ``sumqx**2 / sumq2`` (``q = 2l+1``) sets the scale ``sumqx / sumq2``;
4. a last pass re-levels on that scale (IQ2_XXS: every run; IQ2_XS: the runs
   that were off the grid) and refits the scale once more.

Where ggml would abort (its ``GGML_ASSERT`` checks, reached only when the weights overflow float32) qviz
stores the super-block with ``d = +inf`` and zero bits (:data:`ABORTED_D`).

Then ``d = max_scale / 31`` and ``ls = clamp(nearest_int((scale/d - 1)/2), 0, 15)``
(with the float32 ``d``); a super-block whose scales are all zero is all zero.

qviz's ``unpack`` holds ``codes`` indexing ``codebook = [-43, -25, -8, 8, 25, 43]``
(the signed decoded values) and ``scales`` the float32 steps ``db`` per
sub-block, so ``QuantResult.dequantize()`` repeats ggml's ``dequantize_row_iq2_xxs``
/ ``dequantize_row_iq2_xs`` bit for bit (``db * g * (+-1) == db * (+-g)`` in
IEEE arithmetic). :func:`points_iq2_xxs` / :func:`points_iq2_xs` give the grid
number of each run of 8 and each weight's sign bit.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.ggml_search import GROUP_MAX_EPS, make_qp_quants
from qviz.formats.iq_lattice import Lattice, LatticePoints, lattice, pack_levels
from qviz.formats.rounding import fp16_bits, fp16_field, fp16_from_field, nearest_int, nearest_int_array
from qviz.formats.spec import FP16, QK, QK_K, Unpacked, register_ggml

# name, ggml_type, block size, bits, sub-block size; general.file_type (MOSTLY_IQ2_XXS / _XS); fields.
# llama.cpp's tensor_type_fallback quantizes rows that no 256-block divides as IQ4_NL; both types
# need an imatrix (ggml_quantize_requires_imatrix).
register_ggml(__name__, "IQ2_XXS", 16, QK_K, 2, QK, file_type=19, fallback="IQ4_NL", requires_imatrix=True,
              d=FP16, qs=QK_K // 4)
register_ggml(__name__, "IQ2_XS", 17, QK_K, 2, 16, file_type=20, fallback="IQ4_NL", requires_imatrix=True,
              d=FP16, qs=QK_K // 4, scales=QK_K // 32)

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max
KMAXQ = 3  # the quantizers' kMaxQ: levels 0..2, odd coordinates 1, 3, 5
DIMS = 8  # weights per grid point
#: name -> (lattice, sub-block size, trial steps ``is``)
SPECS = {"IQ2_XXS": ("iq2xxs", 32, range(-6, 7)), "IQ2_XS": ("iq2xs", 16, range(-9, 10))}
#: the signed decoded values the codes index
CODEBOOK = np.array([-43, -25, -8, 8, 25, 43], dtype=F32)
#: codes of the levels 0, 1, 2 when the sign bit is clear (set: ``5 - code``)
POSITIVE_CODE = np.array([3, 4, 5], dtype=np.uint8)
#: fp16 bits of ``d`` (+inf) stored for a super-block where ggml aborts (its assertions: weights that
#: overflow float32, e.g. an imatrix near FLT_MAX); ``qviz.quantize`` sees the infinite scale as an
#: overflow and retries with the imatrix divided by its maximum
ABORTED_D = 0x7C00


def missing_imatrix(type_name: str) -> ValueError:
    """The error of quantizing ``type_name`` without an importance matrix (ggml asserts one)."""
    return ValueError(f"{type_name} needs an importance matrix (imatrix=, e.g. qviz.imatrix(x)): ggml's "
                      f"quantize_{type_name.lower()} asserts one (\"missing quantization weights\")")


# ------------------------------------------------------------ ggml's search

def _fsum(a: np.ndarray) -> np.float32:
    """ggml's ``s = 0; for (i) s += a[i];`` in float32: a sequential sum from +0."""
    return np.cumsum(np.concatenate([np.zeros(1, F32), a]), dtype=F32)[-1]


def _fmax(a: np.ndarray) -> np.float32:
    """ggml's ``m = a[0]; for (i >= 1) m = MAX(m, a[i]);`` (``MAX(x, y) = x > y ? x : y``)."""
    m = a[0]
    for v in a[1:]:
        m = m if m > v else v
    return m


def _signs(xb: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes to quantize and the 7 stored sign bits of each run of 8.

    Parameters
    ----------
    xb, weight : ndarray, shape (n,), float32
        A sub-block and its error weights; n a multiple of 8.

    Returns
    -------
    xval : ndarray, shape (n,), float32
        ``|x|``, except that a run with an odd number of negatives keeps the
        sign of its least important one (first of the smallest ``w * x**2``).
    signs : ndarray, shape (n // 8,), int
        Bit i set where weight i of the run is stored negative, bit 7 dropped.
    """
    xval = np.where(xb >= 0, xb, -xb).astype(F32)
    negative = ~(xb >= 0)
    signs = np.zeros(len(xb) // DIMS, dtype=np.int64)
    for k in range(len(signs)):
        run = slice(DIMS * k, DIMS * (k + 1))
        s = int((negative[run].astype(np.int64) << np.arange(DIMS)).sum())
        if int(negative[run].sum()) % 2:
            ax = weight[run] * xb[run] * xb[run]
            imin = 0
            for i in range(1, DIMS):
                if ax[i] < ax[imin]:
                    imin = i
            xval[DIMS * k + imin] = -xval[DIMS * k + imin]
            s ^= 1 << imin
        signs[k] = s & 127
    return xval, signs


def find_best_neighbour(lat: Lattice, u: int, xval: np.ndarray, waux: np.ndarray, scale: np.float32) -> int:
    """ggml's ``iq2_find_best_neighbour``: the listed neighbour of off-grid point ``u`` nearest to ``xval``.

    Parameters
    ----------
    lat : Lattice
    u : int
        Packed levels of a run of 8 that is not a grid point (``lat.kmap[u] < 0``).
    xval, waux : ndarray, shape (8,), float32
        The run's magnitudes and ``sqrt`` of its error weights.
    scale : float32

    Returns
    -------
    int
        The grid number with the least ``sum(waux * (scale*q - xval)**2)`` (summed in
        order, float32; the first on ties; only sums below FLT_MAX count, as in C);
        -1 when none does (ggml asserts).
    """
    nbrs = lat.neighbours_of(u).astype(np.int64)
    diff = scale * lat.search[nbrs].astype(F32) - xval  # (n, 8)
    terms = waux * diff * diff
    d2 = np.zeros(len(nbrs), dtype=F32)
    for i in range(DIMS):
        d2 += terms[:, i]
    d2 = np.where(d2 < FLT_MAX, d2, np.inf).astype(F32)
    if not np.isfinite(d2).any():  # ggml asserts (aborts) here
        return -1
    return int(nbrs[int(np.argmin(d2))])


def _levels_at(lat: Lattice, xval: np.ndarray, waux: np.ndarray, iscale: np.float32, scale: np.float32,
               runs) -> tuple[np.ndarray, np.ndarray] | None:
    """Level each run of ``runs`` on inverse scale ``iscale``; off-grid runs take their best neighbour.

    Returns the levels (n,) int64 of the listed runs (others 0) and, per run,
    whether its rounded levels were a grid point already; None where ggml aborts.
    """
    levels = np.zeros(len(xval), dtype=np.int64)
    on_grid = np.ones(len(xval) // DIMS, dtype=bool)
    l = np.clip(nearest_int_array(F32(0.5) * (iscale * xval - F32(1))), 0, KMAXQ - 1)
    for k in runs:
        run = slice(DIMS * k, DIMS * (k + 1))
        u = int(pack_levels(l[run], 2))
        g = int(lat.kmap[u])
        if g < 0:
            on_grid[k] = False
            g = find_best_neighbour(lat, u, xval[run], waux[run], scale)
            if g < 0:
                return None
        levels[run] = lat.levels[g]
    return levels, on_grid


def _fit(weight: np.ndarray, xval: np.ndarray, levels: np.ndarray) -> tuple[np.float32, np.float32]:
    """``sumqx = sum(w*x*q)`` and ``sumq2 = sum(w*q*q)`` with ``q = 2l+1``, in order, float32."""
    q = (2 * levels + 1).astype(F32)
    return _fsum(weight * xval * q), _fsum(weight * q * q)


def _sub_block(type_name: str, xb: np.ndarray, weight: np.ndarray) -> tuple[np.float32, np.ndarray, np.ndarray] | None:
    """One sub-block (the body of ggml's ``for ib`` loop of ``quantize_row_iq2_{xxs,xs}_impl``).

    Parameters
    ----------
    type_name : {"IQ2_XXS", "IQ2_XS"}
    xb, weight : ndarray, shape (n,), float32
        The sub-block (n = 32 or 16) and its error weights.

    Returns
    -------
    scale : float32
        The sub-block's scale, >= 0 (0: the sub-block is stored as zeros).
    points : ndarray, shape (n // 8,), int64
        Grid number of each run of 8.
    signs : ndarray, shape (n // 8,), int64
        7 stored sign bits of each run.
    None
        Where ggml aborts (no neighbour nearer than FLT_MAX, or a point off the grid: weights
        that overflow float32).
    """
    name, n, trials = SPECS[type_name]
    lat = lattice(name)
    n_runs = n // DIMS
    waux = np.sqrt(weight).astype(F32)
    xval, signs = _signs(xb, weight)
    zero = (F32(0), np.zeros(n_runs, np.int64), np.zeros(n_runs, np.int64))
    xmax = _fmax(xval)
    if xmax < GROUP_MAX_EPS:
        return zero
    if type_name == "IQ2_XXS":
        scale = make_qp_quants(n, KMAXQ + 1, xval, np.zeros(n, np.uint8), weight)
        eff_max = scale * F32(KMAXQ)
        if eff_max <= 0:
            return zero
    else:
        scale = xmax / F32(2 * KMAXQ - 1)
        eff_max = xmax
    best = F32(0)
    levels = np.zeros(n, dtype=np.int64)
    on_grid = np.ones(n_runs, dtype=bool)
    for step in trials:
        iscale = (F32(2 * KMAXQ - 1) + F32(step) * F32(0.1)) / eff_max
        trial = _levels_at(lat, xval, waux, iscale, F32(1) / iscale, range(n_runs))
        if trial is None:
            return None
        laux, aux_on_grid = trial
        sumqx, sumq2 = _fit(weight, xval, laux)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            levels, on_grid = laux, aux_on_grid
    # XXS re-levels every run, XS only those that were off the grid
    redo = [k for k in range(n_runs) if type_name == "IQ2_XXS" or not on_grid[k]]
    if redo and scale > 0:
        trial = _levels_at(lat, xval, waux, F32(1) / scale, scale, redo)
        if trial is None:
            return None
        new = trial[0]
        for k in redo:
            levels[DIMS * k:DIMS * (k + 1)] = new[DIMS * k:DIMS * (k + 1)]
        sumqx, sumq2 = _fit(weight, xval, levels)
        if sumq2 > 0:
            scale = sumqx / sumq2
    if scale < 0:  # ggml's "should never happen": flip the scale and every sign
        scale = -scale
        signs = ~signs & 127
    points = lat.kmap[pack_levels(levels.reshape(n_runs, DIMS), 2)].astype(np.int64)
    if (points < 0).any():  # ggml aborts ("Oops: found point ... not on grid")
        return None
    return scale, points, signs


def _super_block(type_name: str, x: np.ndarray, qw: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """One super-block: fp16 bits of ``d``, and per sub-block ``ls`` (4 bits), points and signs.

    Parameters
    ----------
    x, qw : ndarray, shape (256,), float32
        The weights and the imatrix slice.

    Returns
    -------
    d_bits : int
        fp16 bits of ``d``; :data:`ABORTED_D` (+inf, all else zero) where ggml aborts.
    ls : ndarray, shape (n_sub,), int64
    points, signs : ndarray, shape (n_sub, n // 8), int64
    """
    n = SPECS[type_name][1]
    n_sub = QK_K // n
    sigma2 = _fsum(x * x) / F32(QK_K)
    scales = np.zeros(n_sub, dtype=F32)
    points = np.zeros((n_sub, n // DIMS), dtype=np.int64)
    signs = np.zeros((n_sub, n // DIMS), dtype=np.int64)
    max_scale = F32(0)
    for ib in range(n_sub):
        xb, w = x[n * ib:n * (ib + 1)], qw[n * ib:n * (ib + 1)]
        weight = (w * np.sqrt(sigma2 + xb * xb)).astype(F32)
        got = _sub_block(type_name, xb, weight)
        if got is None:
            return ABORTED_D, np.zeros(n_sub, np.int64), np.zeros_like(points), np.zeros_like(signs)
        scales[ib], points[ib], signs[ib] = got
        max_scale = max_scale if max_scale > scales[ib] else scales[ib]
    ls = np.zeros(n_sub, dtype=np.int64)
    if max_scale == 0:  # ggml stores d = 0 and zero qs (and scales)
        return 0, ls, np.zeros_like(points), np.zeros_like(signs)
    d = max_scale / F32(31)
    inv = F32(1) / d
    for ib in range(n_sub):
        ls[ib] = max(0, min(15, nearest_int(F32(0.5) * (inv * scales[ib] - F32(1)))))
    return fp16_bits(d), ls, points, signs


def _quantize(type_name: str, x: np.ndarray, imatrix: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """(d bits (n_rows, n_blocks), ls, points, signs (n_rows, n_blocks, n_sub[, runs])) of every super-block."""
    if imatrix is None:
        raise missing_imatrix(type_name)
    n = SPECS[type_name][1]
    n_rows, n_blocks = x.shape[0], x.shape[1] // QK_K
    blocks = x.reshape(n_rows, n_blocks, QK_K)
    im = np.asarray(imatrix, dtype=F32)
    d = np.zeros((n_rows, n_blocks), dtype=np.uint16)
    ls = np.zeros((n_rows, n_blocks, QK_K // n), dtype=np.int64)
    points = np.zeros((n_rows, n_blocks, QK_K // n, n // DIMS), dtype=np.int64)
    signs = np.zeros_like(points)
    with np.errstate(all="ignore"):  # huge rows overflow to inf/NaN, as in C
        for r, i in np.ndindex(n_rows, n_blocks):
            d[r, i], ls[r, i], points[r, i], signs[r, i] = _super_block(
                type_name, blocks[r, i], im[QK_K * i:QK_K * (i + 1)])
    return d, ls, points, signs


_IMATRIX = "Importance of each column (required): error weights ``imatrix * sqrt(sigma2 + x**2)``\n" \
           "    with ``sigma2 = mean(x**2)`` of the super-block. None raises ValueError, as ggml asserts."
_NOTES = "ggml-quants.c ``quantize_{lower}`` -> ``quantize_row_{lower}_impl`` with\n" \
         "``iq2_find_best_neighbour`` (the path of ``ggml_quantize_chunk``, which requires an imatrix)."
_EXAMPLE = (">>> rng = np.random.default_rng(0)\n"
            ">>> x = rng.standard_normal((2, 256)).astype(np.float32)\n"
            ">>> quantize_{lower}(x, np.ones(256, np.float32)).shape\n(2, {type_size})")


@describe(QUANTIZE, "IQ2_XXS",
          summary="Each 32-weight sub-block: signs with even parity per run of 8, a scale from\n"
                  "``make_qp_quants`` refined over 13 trials of inverse scales, each run of 8 on the\n"
                  "256-point ``iq2xxs`` grid (nearest listed neighbour when off the grid), and the\n"
                  "scale stored in 4 bits of ``d = max_scale/31``.",
          imatrix=_IMATRIX, notes=_NOTES, examples=_EXAMPLE)
def quantize_iq2_xxs(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, ls, points, signs = _quantize("IQ2_XXS", x, imatrix)
    # per sub-block: uint32 of 4 grid bytes, uint32 of 4 x 7 sign bits and ls << 28
    grid_word = (points << (8 * np.arange(4))).sum(axis=-1)
    sign_word = (signs << (7 * np.arange(4))).sum(axis=-1) | (ls << 28)
    words = np.stack([grid_word, sign_word], axis=-1).astype("<u4")  # (n_rows, n_blocks, 8, 2)
    qs = words.reshape(*d.shape, 16).view(np.uint8)
    return assemble("IQ2_XXS", d=fp16_field(d), qs=qs)


@describe(QUANTIZE, "IQ2_XS",
          summary="Each 16-weight sub-block: signs with even parity per run of 8, 19 trials of\n"
                  "inverse scales around ``5/max``, each run of 8 on the 512-point ``iq2xs`` grid\n"
                  "(nearest listed neighbour when off the grid), the off-grid runs levelled again on\n"
                  "the best scale, which is stored in 4 bits of ``d = max_scale/31``.",
          imatrix=_IMATRIX, notes=_NOTES, examples=_EXAMPLE)
def quantize_iq2_xs(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    d, ls, points, signs = _quantize("IQ2_XS", x, imatrix)
    qs = (points | (signs << 9)).astype("<u2").reshape(*d.shape, 32).view(np.uint8)
    scales = (ls[..., 0::2] | (ls[..., 1::2] << 4)).astype(np.uint8)
    return assemble("IQ2_XS", d=fp16_field(d), qs=qs, scales=scales)


# ------------------------------------------------------- unpack, dequantize

def _points_signs(type_name: str, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid numbers (n_rows, n_cols // 8), sign bits (n_rows, n_cols) bool and ls (n_rows, n_groups)."""
    f = fields(type_name, packed)
    n_rows, n_blocks = f["d"].shape[:2]
    if type_name == "IQ2_XXS":
        words = np.ascontiguousarray(f["qs"]).view("<u4").astype(np.int64).reshape(n_rows, n_blocks, 8, 2)
        points = (words[..., 0:1] >> (8 * np.arange(4))) & 0xFF  # (n_rows, n_blocks, 8, 4)
        seven = (words[..., 1:2] >> (7 * np.arange(4))) & 127
        ls = words[..., 1] >> 28  # (n_rows, n_blocks, 8)
    else:
        q = np.ascontiguousarray(f["qs"]).view("<u2").astype(np.int64)  # (n_rows, n_blocks, 32)
        points, seven = q & 511, q >> 9
        sc = f["scales"].astype(np.int64)
        ls = np.stack([sc & 0xF, sc >> 4], axis=-1)  # (n_rows, n_blocks, 8, 2)
    seven = seven.reshape(n_rows, -1)
    parity = np.unpackbits(seven.astype(np.uint8)[..., None], axis=-1).sum(axis=-1).astype(np.int64) & 1
    signs = seven | (parity << 7)  # ggml's ksigns_iq2xs
    negative = ((signs[..., None] >> np.arange(DIMS)) & 1).astype(bool).reshape(n_rows, -1)
    return points.reshape(n_rows, -1), negative, ls.reshape(n_rows, -1)


def _unpack(type_name: str, packed: np.ndarray) -> Unpacked:
    lat = lattice(SPECS[type_name][0])
    n_rows = packed.shape[0]
    points, negative, ls = _points_signs(type_name, packed)
    d = fp16_from_field(fields(type_name, packed)["d"])  # (n_rows, n_blocks)
    db = (np.repeat(d, QK_K // SPECS[type_name][1], axis=1) * (F32(0.5) + ls.astype(F32))) * F32(0.25)
    level_codes = POSITIVE_CODE[lat.levels[points].astype(np.int64)].reshape(n_rows, -1)  # (n_rows, n_cols)
    codes = np.where(negative, np.uint8(5) - level_codes, level_codes).astype(np.uint8)
    return Unpacked(codes, db.astype(F32), codebook=CODEBOOK.copy())


def _points(type_name: str, packed: np.ndarray) -> LatticePoints:
    points, negative, _ = _points_signs(type_name, packed)
    return LatticePoints(SPECS[type_name][0], points.astype(np.uint16), negative)


_CODES = "0..5, indices into ``codebook = [-43, -25, -8, 8, 25, 43]`` (the signed grid values)"
_SCALES = "the steps ``db = d * (0.5 + ls) * 0.25``"


@describe(UNPACK, "IQ2_XXS", codes=_CODES, scales=_SCALES,
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> u = unpack_iq2_xxs(quantize_iq2_xxs(x, np.ones(256, np.float32)))\n"
                   ">>> u.codes.shape, u.scales.shape, u.codebook[:3]\n"
                   "((2, 256), (2, 8), array([-43., -25.,  -8.], dtype=float32))")
def unpack_iq2_xxs(packed: npt.NDArray[np.uint8]) -> Unpacked:
    return _unpack("IQ2_XXS", packed)


@describe(UNPACK, "IQ2_XS", codes=_CODES, scales=_SCALES,
          examples=">>> x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)\n"
                   ">>> u = unpack_iq2_xs(quantize_iq2_xs(x, np.ones(256, np.float32)))\n"
                   ">>> u.codes.shape, u.scales.shape\n((2, 256), (2, 16))")
def unpack_iq2_xs(packed: npt.NDArray[np.uint8]) -> Unpacked:
    return _unpack("IQ2_XS", packed)


def _dequantize(type_name: str, packed: np.ndarray) -> np.ndarray:
    u = _unpack(type_name, packed)
    n_rows, n = u.codes.shape[0], SPECS[type_name][1]
    values = u.codebook[u.codes].reshape(n_rows, -1, n)  # (n_rows, n_groups, n)
    return (u.scales[..., None] * values).reshape(n_rows, -1)


_FORMULA = "``(d * (0.5 + ls) * 0.25) * grid[point][j] * (+-1)`` per weight"
_DEQ_EXAMPLE = (">>> x = np.linspace(-1, 1, 256, dtype=np.float32)[None]\n"
                ">>> y = dequantize_{lower}(quantize_{lower}(x, np.ones(256, np.float32)))\n"
                ">>> float(np.abs(y - x).max()) < 0.5\nTrue")


@describe(DEQUANTIZE, "IQ2_XXS", formula=_FORMULA, examples=_DEQ_EXAMPLE)
def dequantize_iq2_xxs(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _dequantize("IQ2_XXS", packed)


@describe(DEQUANTIZE, "IQ2_XS", formula=_FORMULA, examples=_DEQ_EXAMPLE)
def dequantize_iq2_xs(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _dequantize("IQ2_XS", packed)


def points_iq2_xxs(packed: npt.NDArray[np.uint8]) -> LatticePoints:
    """The ``iq2xxs`` grid point of each run of 8 weights and each weight's sign bit.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 66), uint8

    Returns
    -------
    LatticePoints
        ``index`` uint16 (n_rows, n_cols // 8), 0..255; ``negative`` bool (n_rows, n_cols),
        the 7 stored bits of each run and their parity (ggml's ``ksigns_iq2xs``).
    """
    return _points("IQ2_XXS", packed)


def points_iq2_xs(packed: npt.NDArray[np.uint8]) -> LatticePoints:
    """The ``iq2xs`` grid point of each run of 8 weights and each weight's sign bit.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 74), uint8

    Returns
    -------
    LatticePoints
        ``index`` uint16 (n_rows, n_cols // 8), 0..511; ``negative`` bool (n_rows, n_cols).
    """
    return _points("IQ2_XS", packed)
