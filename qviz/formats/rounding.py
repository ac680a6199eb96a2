"""The one home of rounding rules.

Plain-Python scalar functions that numba compiles unchanged
(``numba.njit(nearest_int)``) and vectorized numpy twins. ggml uses three rules:

* ``nearest_int`` (ggml-quants.c): round half to even, via the 1.5*2^23 trick.
  It equals ``np.rint`` for |x| <= 2^22; ggml only asserts that bound in debug
  builds, and its searches do go beyond it (a near-empty sub-block's trial
  scales, an infinite inverse scale), where the trick wraps. :func:`nearest_int`
  keeps the trick, so it is ggml's for every float32. Round half to even
  without wrapping (RTN, ``formats/rtn.py``) is plain ``np.rint``.
* ``roundf`` (Q8_0, Q4_0 scale selection not included): half away from zero.
* fp32 -> fp16: IEEE round to nearest even (F16C ``vcvtps2ph`` / the portable
  ``ggml_compute_fp32_to_fp16``); overflow goes to inf.

fp16 has two spellings here: the scalar pair :func:`fp16_bits` /
:func:`fp16_value` that numba compiles into kernels, and the array pair
:func:`fp16_field` / :func:`fp16_from_field` between values and the two bytes
of a block's fp16 field, which every numpy reference uses.
"""
from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


#: 1.5 * 2**23: adding it leaves a float32's integer part in its low 23 bits
_MAGIC = np.float32(12582912.0)


def nearest_int(x: float) -> int:
    """ggml's ``nearest_int``, bit for bit, for any float32.

    ``x`` is rounded to float32 (C's conversion to ``float``), then
    ``x + 1.5 * 2**23`` is rounded to float32: for ``|x| <= 2**22`` that sum
    is ``1.5 * 2**23 + rint(x)`` (round half to even) and its low 23 bits,
    minus ``2**22``, are ``rint(x)``. Beyond that the result wraps, exactly
    as ggml's does: ``+-inf`` give ``-2**22`` and a quiet nan gives 0.
    Float32 bit map of the sum::

        bit 31   30 .. 23   22 .. 0
        sign     exponent   mantissa = 2**22 + rint(x)   (|x| <= 2**22)
    """
    s = np.float32(np.float32(x) + _MAGIC)
    return int(s.view(np.int32) & 0x7FFFFF) - 0x400000


def nearest_int_array(x: np.ndarray) -> np.ndarray:
    """Vectorized :func:`nearest_int`: float32 array in, int32 array out."""
    s = np.asarray(x, dtype=np.float32) + _MAGIC
    return (s.view(np.int32) & 0x7FFFFF) - 0x400000


def round_away(x: float) -> float:
    """C ``roundf``: round half away from zero.

    The ``+ 0.5`` runs in float64: in float32 it would round 0.49999997 up to 1.
    """
    return math.copysign(math.floor(abs(float(x)) + 0.5), x)


def round_away_array(x: np.ndarray) -> np.ndarray:
    """Vectorized :func:`round_away` (C ``roundf``), exact for float32 input."""
    x = np.asarray(x, dtype=np.float64)
    return np.copysign(np.floor(np.abs(x) + 0.5), x)


def fp16_bits(x: float) -> int:
    """IEEE binary16 bit pattern of ``x`` rounded to nearest even.

    Written with ``math.frexp`` and ``np.rint`` so numba compiles it for use
    inside kernels; equals ``np.float16(np.float32(x)).view(np.uint16)``.
    NaN maps to the quiet NaN 0x7E00 with its sign kept (x86's default NaN,
    from 0/0 or inf-inf, is negative: 0xFE00, as ggml stores it).
    """
    sign = 0x8000 if math.copysign(1.0, x) < 0.0 else 0
    if x != x:
        return sign | 0x7E00
    a = abs(x)
    if a == 0.0:
        return sign
    if a == math.inf:
        return sign | 0x7C00
    m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
    if e < -13:  # below the smallest normal 2**-14: a subnormal step of 2**-24
        q = int(np.rint(a * 16777216.0))  # exact: a power-of-two scaling
        return sign | q  # q == 1024 carries into the first normal, as IEEE does
    q = int(np.rint(m * 2048.0))  # 11 significant bits, 1024 <= q <= 2048
    if q == 2048:
        q = 1024
        e += 1
    exp = e + 14  # biased exponent of 2**(e-1)
    if exp >= 31:
        return sign | 0x7C00
    return sign | (exp << 10) | (q - 1024)


def fp16_value(bits: int) -> float:
    """The float value of an IEEE binary16 bit pattern."""
    sign = -1.0 if bits & 0x8000 else 1.0
    exp = (bits >> 10) & 0x1F
    man = bits & 0x3FF
    if exp == 0:
        return sign * man * 2.0 ** -24
    if exp == 31:
        return sign * math.inf if man == 0 else math.nan
    return sign * (1024 + man) * 2.0 ** (exp - 25)


def fp16_round(x: float) -> float:
    """``GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x))``: ``x`` as stored in a fp16 field."""
    return fp16_value(fp16_bits(x))


#: float32 value of every fp16 bit pattern; index with a uint16 (fast decode, also inside kernels).
FP16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def fp16_field(values: npt.ArrayLike) -> np.ndarray:
    """Values as ggml stores them in fp16 fields: two little-endian bytes each.

    Parameters
    ----------
    values : array_like, shape (...), float32, or uint16
        Values to round to fp16 (:func:`fp16_bits`, ggml's rounding), or,
        as uint16, fp16 bit patterns that are stored as they are.

    Returns
    -------
    ndarray, shape (..., 2), uint8

    Examples
    --------
    >>> fp16_field(np.array([1.0, -2.0], dtype=np.float32))
    array([[  0,  60],
           [  0, 192]], dtype=uint8)
    >>> fp16_field(np.uint16(0x3C00)).tolist()
    [0, 60]
    """
    v = np.asarray(values)
    if v.dtype == np.uint16:
        bits = np.ascontiguousarray(v, dtype="<u2")
    else:
        bits = np.array([fp16_bits(float(t)) for t in v.ravel()], dtype="<u2").reshape(v.shape)
    return bits.view(np.uint8).reshape(*v.shape, 2)


def fp16_from_field(field: npt.NDArray[np.uint8]) -> np.ndarray:
    """The float32 values of fp16 fields, exact (``GGML_FP16_TO_FP32``).

    Parameters
    ----------
    field : ndarray, shape (..., 2), uint8
        Two little-endian bytes per value.

    Returns
    -------
    ndarray, shape (...), float32

    Examples
    --------
    >>> fp16_from_field(np.array([[0, 60], [0, 192]], dtype=np.uint8))
    array([ 1., -2.], dtype=float32)
    """
    return FP16_TABLE[np.ascontiguousarray(field).view("<u2")[..., 0]]
