"""Q2_K, Q4_K, Q5_K: the K-quants with a scale and a min per sub-block.

A super-block of ``QK_K = 256`` weights stores two fp16 super-scales ``d`` and
``dmin`` and, per sub-block, a small unsigned integer scale ``sc`` and min
``m``. Weight ``i`` of sub-block ``j`` decodes as

    y = (d * sc[j]) * q[i] - (dmin * m[j])

in float32, with ``q`` the stored code (2, 4 or 5 bits). Sub-blocks have 16
weights (Q2_K, 4-bit ``sc`` and ``m``) or 32 (Q4_K and Q5_K, 6-bit ``sc`` and
``m`` packed into 12 bytes).

Quantizing is a two-level search. Each sub-block first gets its own best
float scale and min (``make_qkx2_quants`` without an importance matrix,
``make_qkx3_quants`` with one). The sub-block scales and mins are then
quantized against the super-scales (a plain max without an imatrix,
``make_qp_quants`` with one), and finally every weight is re-rounded against
the scale and min it will actually be decoded with, read back from the
packed bytes.

This is the readable reference: per-block Python that calls the shared scalar
search routines of :mod:`qviz.formats.ggml_search`. The fast twin is
:mod:`qviz.kernels.numba.gguf_k_min`; both are byte-identical to ggml.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from qviz.formats.blocks import DEQUANTIZE, QUANTIZE, UNPACK, assemble, describe, fields
from qviz.formats.ggml_search import make_qkx2_quants, make_qkx3_quants, make_qp_quants
from qviz.formats.rounding import fp16_bits, fp16_field, fp16_from_field, fp16_value, nearest_int_array
from qviz.formats.spec import QK_K, FP16, Unpacked, register_ggml

# name, ggml_type, block size, bits, sub-block size; general.file_type (the _S mix); fields in order
register_ggml(__name__, "Q2_K", 10, QK_K, 2, 16, file_type=10, fallback="Q4_0",
              scales=QK_K // 16, qs=QK_K // 4, d=FP16, dmin=FP16)
register_ggml(__name__, "Q4_K", 12, QK_K, 4, 32, file_type=14, fallback="Q5_0", twins=("numba", "torch"),
              d=FP16, dmin=FP16, scales=12, qs=QK_K // 2)
register_ggml(__name__, "Q5_K", 13, QK_K, 5, 32, file_type=16, fallback="Q5_1",
              d=FP16, dmin=FP16, scales=12, qh=QK_K // 8, qs=QK_K // 2)

f32 = np.float32


class KMinParams(NamedTuple):
    """The per-type constants of ggml's Q2_K/Q4_K/Q5_K quantizers.

    nmax : int       largest code (2**bits - 1)
    sub : int        weights per sub-block
    sc_max : int     largest sub-block scale/min code (4 or 6 bits)
    ref_search : tuple (rmin, rdelta, nstep, use_mad) of ``make_qkx2_quants``
                 in the ``_ref`` path (no imatrix)
    clamp : tuple    (ref, imatrix): whether ggml clamps the scale/min codes
                 to ``sc_max`` in the ``_ref`` and the ``_impl`` path
    """

    nmax: int
    sub: int
    sc_max: int
    ref_search: tuple
    clamp: tuple


PARAMS = {
    "Q2_K": KMinParams(3, 16, 15, (f32(-0.5), f32(0.1), 15, True), (False, False)),
    "Q4_K": KMinParams(15, 32, 63, (f32(-1.0), f32(0.1), 20, False), (True, False)),
    "Q5_K": KMinParams(31, 32, 63, (f32(-0.5), f32(0.1), 15, False), (True, True)),
}
#: (rmin, rdelta, nstep, use_mad) of ``make_qkx3_quants`` in every ``_impl`` path (imatrix).
IMATRIX_SEARCH = (f32(-0.9), f32(0.05), 36, False)


# ---------------------------------------------------------------------------
# Packed fields
# ---------------------------------------------------------------------------

def unpack_scale_min_k4(scales: npt.NDArray[np.uint8]) -> tuple[np.ndarray, np.ndarray]:
    """Eight 6-bit scales and eight 6-bit mins from the 12 bytes of Q4_K/Q5_K.

    Parameters
    ----------
    scales : ndarray, shape (..., 12), uint8
        The ``scales`` field.

    Returns
    -------
    sc, m : ndarray, shape (..., 8), uint8
        Scale and min of each 32-weight sub-block.

    Notes
    -----
    ggml's ``get_scale_min_k4``. Bit map of the 12 bytes; ``sN``/``mN`` is the
    scale/min of sub-block N and ``[5:4]`` its bits 5 and 4::

        byte   bits 7-6   bits 5-0
          0    s4[5:4]    s0
          1    s5[5:4]    s1
          2    s6[5:4]    s2
          3    s7[5:4]    s3
          4    m4[5:4]    m0
          5    m5[5:4]    m1
          6    m6[5:4]    m2
          7    m7[5:4]    m3
               bits 7-4   bits 3-0
          8    m4[3:0]    s4[3:0]
          9    m5[3:0]    s5[3:0]
         10    m6[3:0]    s6[3:0]
         11    m7[3:0]    s7[3:0]
    """
    lo, mid, hi = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], axis=-1)
    m = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, m


def pack_scale_min_k4(ls: npt.NDArray[np.uint8], lm: npt.NDArray[np.uint8]) -> np.ndarray:
    """Inverse of :func:`unpack_scale_min_k4`: eight scales and mins into 12 bytes.

    Parameters
    ----------
    ls, lm : ndarray, shape (..., 8), uint8
        Sub-block scales and mins, each meant to fit in 6 bits.

    Returns
    -------
    ndarray, shape (..., 12), uint8

    Notes
    -----
    The bit map is in :func:`unpack_scale_min_k4`. Like the C (in
    ``quantize_row_q4_K_ref``), values of sub-blocks 0-3 are stored whole, so
    a value above 63 (only possible in Q4_K's imatrix path) spills into bits
    7-6, OR-ed with the high bits of sub-blocks 4-7 (whose values keep only
    their low 6 bits).
    """
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    out = np.empty(ls.shape[:-1] + (12,), dtype=np.uint8)
    out[..., 0:4] = ls[..., 0:4] | ((ls[..., 4:8] >> 4) << 6)
    out[..., 4:8] = lm[..., 0:4] | ((lm[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (ls[..., 4:8] & 0xF) | ((lm[..., 4:8] & 0xF) << 4)
    return out


def _pack_q2_k_qs(L: np.ndarray) -> np.ndarray:
    """2-bit codes (n, 256) -> the 64 ``qs`` bytes of Q2_K, (n, 64).

    Bit map: byte ``32*h + l`` (h = 0, 1 half of the block, l = 0..31) holds
    codes ``128*h + 32*k + l`` for k = 0..3 in bits ``2k+1..2k``::

        bit    7 6      5 4      3 2      1 0
               L[96+l]  L[64+l]  L[32+l]  L[l]      (+128 in the second half)
    """
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)  # (n, half, k, l)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_q2_k_qs(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_q2_k_qs`: (n, 64) -> codes (n, 256) uint8."""
    q = qs.reshape(-1, 2, 1, 32)  # (n, half, 1, l)
    shift = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return ((q >> shift) & 3).reshape(-1, QK_K)


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """Low 4 bits of codes (n, 256) -> the 128 ``qs`` bytes of Q4_K/Q5_K.

    Bit map: byte ``32*c + l`` (c = 0..3 pair of sub-blocks, l = 0..31)::

        bits 7-4: L[64*c + 32 + l] & 15      bits 3-0: L[64*c + l] & 15
    """
    L = L.reshape(-1, 4, 2, 32).astype(np.uint8)  # (n, c, sub-block of the pair, l)
    return ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_nibbles`: (n, 128) -> 4-bit codes (n, 256) uint8."""
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0xF, q >> 4], axis=2).reshape(-1, QK_K)


def _pack_q5_k_qh(L: np.ndarray) -> np.ndarray:
    """Fifth bits of codes (n, 256) -> the 32 ``qh`` bytes of Q5_K.

    Bit map: bit ``s`` of byte ``l`` is bit 4 of code ``32*s + l`` (s = 0..7
    sub-block, l = 0..31)::

        bit    7         6        ...  1        0
               L[224+l]  L[192+l] ...  L[32+l]  L[l]      (each >> 4)
    """
    hi = (L.reshape(-1, 8, 32).astype(np.uint8) >> 4) & 1  # (n, s, l)
    shift = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return np.bitwise_or.reduce(hi << shift, axis=1)


def _unpack_q5_k_qh(qh: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_q5_k_qh`: (n, 32) -> bit 4 of each code, (n, 256) uint8 of 0/16."""
    shift = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return (((qh.reshape(-1, 1, 32) >> shift) & 1) << 4).reshape(-1, QK_K)


# ---------------------------------------------------------------------------
# Unpack and dequantize
# ---------------------------------------------------------------------------

def _unpacked(f: dict[str, np.ndarray], codes: np.ndarray, sc: np.ndarray, m: np.ndarray) -> Unpacked:
    """An :class:`Unpacked` of the rows whose fields are ``f`` (n_rows, n_blocks, nbytes).

    ``scales = d * sc`` and ``mins = dmin * m`` are float32 products, the
    very ``d1``/``m1`` of ggml's dequantizers.
    """
    n_rows = f["d"].shape[0]
    scales = fp16_from_field(f["d"])[..., None] * sc.astype(f32)  # (n_rows, n_blocks, n_sub)
    mins = fp16_from_field(f["dmin"])[..., None] * m.astype(f32)
    return Unpacked(codes.reshape(n_rows, -1), scales.reshape(n_rows, -1), mins.reshape(n_rows, -1))


_UNPACK_EXAMPLE = (">>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)\n"
                   ">>> u = unpack_{lower}(quantize_{lower}(x))\n"
                   ">>> int(u.codes.max()), u.scales.shape, u.mins.shape\n"
                   "({nmax}, (1, {n_groups}), (1, {n_groups}))")


@describe(UNPACK, "Q2_K", scales="``d * (scales & 15)``", mins="``dmin * (scales >> 4)``",
          examples=_UNPACK_EXAMPLE)
def unpack_q2_k(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q2_K", packed)
    return _unpacked(f, _unpack_q2_k_qs(f["qs"]), f["scales"] & 0xF, f["scales"] >> 4)


@describe(UNPACK, "Q4_K", scales="``d * sc``", mins="``dmin * m``", examples=_UNPACK_EXAMPLE)
def unpack_q4_k(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q4_K", packed)
    return _unpacked(f, _unpack_nibbles(f["qs"]), *unpack_scale_min_k4(f["scales"]))


@describe(UNPACK, "Q5_K", scales="``d * sc``", mins="``dmin * m``", examples=_UNPACK_EXAMPLE)
def unpack_q5_k(packed: npt.NDArray[np.uint8]) -> Unpacked:
    f = fields("Q5_K", packed)
    codes = _unpack_nibbles(f["qs"]) | _unpack_q5_k_qh(f["qh"])
    return _unpacked(f, codes, *unpack_scale_min_k4(f["scales"]))


def _decode(u: Unpacked, group_size: int) -> np.ndarray:
    """``scale * code - min`` per weight in float32, ggml's order of operations."""
    s = np.repeat(u.scales, group_size, axis=1)
    m = np.repeat(u.mins, group_size, axis=1)
    return s * u.codes.astype(f32) - m


_DEQUANTIZE_EXAMPLE = (">>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)\n"
                       ">>> float(np.abs(dequantize_{lower}(quantize_{lower}(x)) - x).max()) < {tol}\nTrue")
_FORMULA = "``(d * sc) * q - dmin * m`` per {group_size}-weight sub-block"


@describe(DEQUANTIZE, "Q2_K", formula=_FORMULA, examples=_DEQUANTIZE_EXAMPLE.replace("{tol}", "0.2"))
def dequantize_q2_k(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    return _decode(unpack_q2_k(packed), 16)


@describe(DEQUANTIZE, "Q4_K", formula=_FORMULA, examples=_DEQUANTIZE_EXAMPLE.replace("{tol}", "0.05"))
def dequantize_q4_k(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    return _decode(unpack_q4_k(packed), 32)


@describe(DEQUANTIZE, "Q5_K", formula=_FORMULA, examples=_DEQUANTIZE_EXAMPLE.replace("{tol}", "0.02"))
def dequantize_q5_k(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    return _decode(unpack_q5_k(packed), 32)


# ---------------------------------------------------------------------------
# Quantize
# ---------------------------------------------------------------------------

def _sum_in_order(v: np.ndarray) -> np.float32:
    """float32 sum of ``v`` from first to last, as ggml's loops add (np.sum is pairwise)."""
    s = f32(0.0)
    for a in v:
        s += a
    return s


def _search_weights(x: np.ndarray, qw: np.ndarray | None, name: str) -> np.ndarray:
    """Error weights of one super-block's sub-block searches, (256,) float32.

    Without an imatrix: ``|x|`` for Q2_K; ``av_x + |x|`` for Q4_K/Q5_K with
    ``av_x`` the RMS of the 32-weight sub-block. With an imatrix ``qw``:
    ``qw * sqrt(sigma2 + x**2)``, ``sigma2`` the mean square of the
    super-block (twice that for Q4_K/Q5_K).
    """
    sub = PARAMS[name].sub
    if qw is None:
        if name == "Q2_K":
            return np.abs(x)
        w = np.empty_like(x)
        for j in range(0, QK_K, sub):
            xs = x[j:j + sub]
            av_x = np.sqrt(_sum_in_order(xs * xs) / f32(sub))
            w[j:j + sub] = av_x + np.abs(xs)
        return w
    sum_x2 = _sum_in_order(x * x)
    sigma2 = sum_x2 / f32(QK_K) if name == "Q2_K" else f32(2) * sum_x2 / f32(QK_K)
    return qw * np.sqrt(sigma2 + x * x)


def _quantize_by_max(v: np.ndarray, sc_max: int) -> tuple[np.ndarray, int]:
    """Sub-block scales (or mins) to codes with the step ``max(v)/sc_max``.

    The ``_ref`` path's second level. Returns the codes, uint8 (n_sub,), and
    the fp16 bits of the step (0 when no value is positive: all codes 0).
    The largest value gets code ``sc_max``; a negative one (a sub-block fit
    can return a negative scale) a negative code, kept as ``code & 0xFF``
    like ggml's ``uint8_t`` store.
    """
    vmax = f32(0.0)
    for a in v:
        if a > vmax:
            vmax = a
    if not vmax > 0:
        return np.zeros(v.shape, dtype=np.uint8), fp16_bits(f32(0.0))
    iscale = f32(sc_max) / vmax
    codes = nearest_int_array(iscale * v) & 0xFF
    return codes.astype(np.uint8), fp16_bits(vmax / f32(sc_max))


def _stored_scale_min(ls: np.ndarray, lm: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The scale and min codes as the packed ``scales`` field gives them back.

    Equal to ``ls``, ``lm`` when they fit their 4 or 6 bits. A wrapped code
    does not fit: packing spills its high bits into other sub-blocks' bits
    (bit maps in :func:`pack_scale_min_k4` and :func:`_pack_block`), and ggml
    re-rounds the weights against what it reads back.
    """
    if name == "Q2_K":
        byte = ls | (lm << 4)  # uint8: bits of lm above 3 fall off, bits of ls above 3 spill
        return byte & 0xF, byte >> 4
    return unpack_scale_min_k4(pack_scale_min_k4(ls, lm))


def _requantize(x, L, d, dmin, sc, m, p: KMinParams) -> None:
    """Round every weight again against the scale and min it will decode with.

    ``sc``, ``m`` are the codes as stored (:func:`_stored_scale_min`).
    ``L`` (256,) uint8 is updated in place. A sub-block whose step
    ``d * sc`` is zero keeps the codes of its search, as in ggml.
    """
    for j in range(QK_K // p.sub):
        step = d * f32(sc[j])
        if step == 0:
            continue
        shift = dmin * f32(m[j])
        xs = x[p.sub * j:p.sub * (j + 1)]
        q = nearest_int_array((xs + shift) / step)  # inf (fp16 overflow): -2**22, nan: 0
        L[p.sub * j:p.sub * (j + 1)] = np.clip(q, 0, p.nmax)


def quantize_block(x: np.ndarray, qw: np.ndarray | None, name: str):
    """One super-block of Q2_K, Q4_K or Q5_K, before bit packing.

    Parameters
    ----------
    x : ndarray, shape (256,), float32
        The weights.
    qw : ndarray, shape (256,), float32, or None
        The imatrix entries of these columns.
    name : {"Q2_K", "Q4_K", "Q5_K"}

    Returns
    -------
    d, dmin : int
        fp16 bit patterns of the super-scales.
    ls, lm : ndarray, shape (256 // sub,), uint8
        Sub-block scale and min codes, as ggml packs them: ``0..sc_max``,
        except a wrapped negative code (see below).
    L : ndarray, shape (256,), uint8
        The weight codes, ``0..nmax``.

    Notes
    -----
    Without ``qw``, ggml's ``quantize_row_q{2,4,5}_K_ref``: each sub-block is
    fitted by ``make_qkx2_quants``, and its scale and min are rounded against
    the largest of the block. With ``qw``, ``quantize_row_q{2,4,5}_K_impl``:
    ``make_qkx3_quants`` per sub-block, then ``make_qp_quants`` chooses the
    super-scales, weighting each sub-block by the sum of its error weights.

    A sub-block's fitted scale can come out negative (seen with zero
    importance on the values that set its range). Its code is then negative,
    and ggml keeps it as a ``uint8_t`` (-6 becomes 250). Q4_K and Q5_K clamp
    that to 63 without an imatrix, Q5_K also with one; Q4_K with an imatrix
    and Q2_K keep the wrapped code, and packing spills its high bits into
    other sub-blocks' codes. The weights are re-rounded against the codes as
    read back from the packed bytes.
    """
    p = PARAMS[name]
    n_sub = QK_K // p.sub
    weights = _search_weights(x, qw, name)
    scales = np.empty(n_sub, dtype=np.float32)
    mins = np.empty(n_sub, dtype=np.float32)
    L = np.zeros(QK_K, dtype=np.uint8)
    Laux = np.zeros(p.sub, dtype=np.uint8)
    search = make_qkx2_quants if qw is None else make_qkx3_quants
    rmin, rdelta, nstep, use_mad = p.ref_search if qw is None else IMATRIX_SEARCH
    for j in range(n_sub):
        part = slice(p.sub * j, p.sub * (j + 1))
        scales[j], mins[j] = search(p.sub, p.nmax, x[part], weights[part], L[part], Laux,
                                    rmin, rdelta, nstep, use_mad)
    if qw is None:
        ls, d = _quantize_by_max(scales, p.sc_max)
        lm, dmin = _quantize_by_max(mins, p.sc_max)
    else:
        sw = np.array([_sum_in_order(weights[p.sub * j:p.sub * (j + 1)]) for j in range(n_sub)])
        ls = np.zeros(n_sub, dtype=np.uint8)
        lm = np.zeros(n_sub, dtype=np.uint8)
        d = fp16_bits(make_qp_quants(n_sub, p.sc_max, scales, ls, sw))
        dmin = fp16_bits(make_qp_quants(n_sub, p.sc_max, mins, lm, sw))
    if p.clamp[qw is not None]:
        ls = np.minimum(ls, p.sc_max)
        lm = np.minimum(lm, p.sc_max)
    sc, m = _stored_scale_min(ls, lm, name)
    _requantize(x, L, f32(fp16_value(d)), f32(fp16_value(dmin)), sc, m, p)
    return d, dmin, ls, lm, L


def _quantize(x: np.ndarray, imatrix: np.ndarray | None, name: str) -> np.ndarray:
    """The row driver: every super-block of every row, (n_rows, n_blocks * type_size) uint8."""
    n_rows, nb = x.shape[0], x.shape[1] // QK_K
    n_sub = QK_K // PARAMS[name].sub
    d = np.empty((n_rows, nb), dtype=np.uint16)  # fp16 bits
    dmin = np.empty((n_rows, nb), dtype=np.uint16)
    ls = np.empty((n_rows, nb, n_sub), dtype=np.uint8)
    lm = np.empty((n_rows, nb, n_sub), dtype=np.uint8)
    L = np.empty((n_rows, nb, QK_K), dtype=np.uint8)
    with np.errstate(all="ignore"):  # inf and nan, as C gets them, without numpy's warnings
        for r, i in np.ndindex(n_rows, nb):
            cols = slice(QK_K * i, QK_K * (i + 1))
            qw = None if imatrix is None else imatrix[cols]
            d[r, i], dmin[r, i], ls[r, i], lm[r, i], L[r, i] = quantize_block(x[r, cols], qw, name)
    codes = L.reshape(-1, QK_K)
    if name == "Q2_K":
        # scales byte j: bits 7-4 min code, bits 3-0 scale code of sub-block j
        packed = {"scales": ls | (lm << 4), "qs": _pack_q2_k_qs(codes)}
    else:
        packed = {"scales": pack_scale_min_k4(ls, lm), "qs": _pack_nibbles(codes)}
        if name == "Q5_K":
            packed["qh"] = _pack_q5_k_qh(codes)
    packed = {k: v.reshape(n_rows, nb, v.shape[-1]) for k, v in packed.items()}
    return assemble(name, d=fp16_field(d), dmin=fp16_field(dmin), **packed)


_QUANTIZE_EXAMPLE = (">>> x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)\n"
                     ">>> quantize_{lower}(x).shape\n(2, {type_size})")


@describe(QUANTIZE, "Q2_K", examples=_QUANTIZE_EXAMPLE)
def quantize_q2_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    return _quantize(x, imatrix, "Q2_K")


@describe(QUANTIZE, "Q4_K", examples=_QUANTIZE_EXAMPLE)
def quantize_q4_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    return _quantize(x, imatrix, "Q4_K")


@describe(QUANTIZE, "Q5_K", examples=_QUANTIZE_EXAMPLE)
def quantize_q5_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    return _quantize(x, imatrix, "Q5_K")
