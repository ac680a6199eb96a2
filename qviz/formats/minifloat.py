"""Small floating-point element formats: FP4 (E2M1), FP6 (E2M3, E3M2), FP8 (E4M3, E5M2) and the E8M0 scale.

The element formats of the OCP Microscaling spec (MX v1.0, Section 5.3) and
of FP8 checkpoints. A code is ``sign | exponent | mantissa``; with ``b`` the
bias, a code of exponent field ``e`` and mantissa field ``m`` is worth
``(1 + m / 2**M) * 2**(e - b)`` (``e >= 1``) or ``m / 2**M * 2**(1 - b)``
(``e == 0``: subnormal)::

    name  bits  layout (bit 7 .. 0 of the code)   bias  max     special codes
    e2m1  4     . . . . s e e m                   1     6       none
    e2m3  6     . . s e e m m m                   1     7.5     none
    e3m2  6     . . s e e e m m                   3     28      none
    e4m3  8     s e e e e m m m                   7     448     0x7F, 0xFF NaN (OCP "e4m3fn": no inf)
    e5m2  8     s e e e e e m m                   15    57344   e = 31: m = 0 inf, m != 0 NaN (IEEE-like)
    e8m0  8     e e e e e e e e                   127   2**127  0xFF NaN; no sign, no zero: 2**(e - 127)

:func:`encode` rounds float32 values to the nearest code, ties to even
mantissa, and saturates anything beyond ``max`` to ``±max``, as torch's
casts ``.to(torch.float8_e4m3fn)`` and torchao's ``_f32_to_floatx_unpacked``
(``torchao.prototype.custom_fp_utils``; FP4/FP6) do for finite values. torch's
``.to(torch.float8_e5m2)`` does *not* saturate (from 61440 up it gives inf):
the FP8 and MX owners clamp to ``±max`` before that cast, as qviz does. The
sign of a value that rounds to zero is kept (``-1e-9`` gives the code of
``-0``), as in torch's and torchao's casts.

With a fixed number of mantissa bits ``M`` and the smallest normal exponent
``emin = 1 - b``, rounding is one formula for normal and subnormal values
alike: with ``E = max(floor(log2 |x|), emin)`` the nearest code's magnitude is
``((E - emin) << M) + rint(|x| / 2**(E - M))``. The ``rint`` term lies in
``[2**M, 2**(M+1)]`` for normal values (``2**(M+1)`` carries into the next
exponent by itself) and in ``[0, 2**M]`` for subnormal ones (``2**M`` is the
smallest normal code); both divisions by a power of two are exact.

Blocks of a scaled tensor go through two primitives shared by the FP8, MX
and NVFP4 methods (:mod:`qviz.formats.fp8`, :mod:`qviz.formats.mx`,
:mod:`qviz.formats.nvfp4`); their numba twins live in
:mod:`qviz.kernels.numba.minifloat` under the same names:

* :func:`group_amax`: the largest ``|w|`` of every tile of ``row_block`` rows
  × ``group_size`` columns;
* :func:`encode_groups`: ``encode(w / factor)`` (or ``w * factor``) with one
  float32 factor per tile, and the count of values the saturation clamped.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qviz.registry import Option

__all__ = ["ElementFormat", "E2M1", "E2M3", "E3M2", "E4M3", "E5M2", "E8M0_VALUES", "E8M0_MAX",
           "ELEMENT_FORMATS", "element_format", "encode", "decode", "encode_e8m0", "group_amax",
           "encode_groups", "OPS", "ZERO_SIGNS", "BACKENDS", "BACKEND_OPTION", "primitives"]

F32 = np.float32


@dataclass(frozen=True)
class ElementFormat:
    """A signed minifloat element format.

    Attributes
    ----------
    name : str
        ``"e2m1"``, ``"e2m3"``, ``"e3m2"``, ``"e4m3"`` or ``"e5m2"``.
    ebits, mbits : int
        Exponent and mantissa bits (one sign bit on top).
    max_code : int
        The code of the largest finite value (the saturation target).
    special : {"none", "fn", "ieee"}
        No special codes (FP4, FP6); OCP "fn" (only the all-ones code is NaN,
        no inf: E4M3); IEEE-like (the top exponent is inf/NaN: E5M2).
    torch_dtype : str or None
        The torch dtype of the same format, where torch has one.
    """

    name: str
    ebits: int
    mbits: int
    max_code: int
    special: str = "none"
    torch_dtype: str | None = None

    @property
    def bits(self) -> int:
        """Code width: sign, exponent and mantissa."""
        return 1 + self.ebits + self.mbits

    @property
    def bias(self) -> int:
        """Exponent bias ``2**(ebits - 1) - 1``."""
        return (1 << (self.ebits - 1)) - 1

    @property
    def emin(self) -> int:
        """The smallest normal exponent ``1 - bias``."""
        return 1 - self.bias

    @property
    def sign_bit(self) -> int:
        """The sign's bit in a code: ``1 << (ebits + mbits)``."""
        return 1 << (self.ebits + self.mbits)

    @property
    def values(self) -> np.ndarray:
        """ndarray, shape (2**bits,), float32: the value of every code (NaN codes NaN, E5M2's inf codes inf)."""
        return _table(self)

    @property
    def max(self) -> float:
        """The largest finite value."""
        return float(self.values[self.max_code])


def _table(fmt: ElementFormat) -> np.ndarray:
    code = np.arange(1 << fmt.bits)
    mag = code & (fmt.sign_bit - 1)
    e, m = mag >> fmt.mbits, mag & ((1 << fmt.mbits) - 1)
    value = np.where(e == 0, np.ldexp(m.astype(np.float64), fmt.emin - fmt.mbits),
                     np.ldexp(1.0 + m / (1 << fmt.mbits), e - fmt.bias))
    if fmt.special == "fn":
        value = np.where(mag == fmt.sign_bit - 1, np.nan, value)
    elif fmt.special == "ieee":
        top = e == (1 << fmt.ebits) - 1
        value = np.where(top, np.where(m == 0, np.inf, np.nan), value)
    value = np.where(code & fmt.sign_bit, -value, value)
    return value.astype(F32)


E2M1 = ElementFormat("e2m1", 2, 1, 0x7, torch_dtype="float4_e2m1fn_x2")
E2M3 = ElementFormat("e2m3", 2, 3, 0x1F)
E3M2 = ElementFormat("e3m2", 3, 2, 0x1F)
E4M3 = ElementFormat("e4m3", 4, 3, 0x7E, "fn", "float8_e4m3fn")
E5M2 = ElementFormat("e5m2", 5, 2, 0x7B, "ieee", "float8_e5m2")

#: every element format by name
ELEMENT_FORMATS = {f.name: f for f in (E2M1, E2M3, E3M2, E4M3, E5M2)}

#: E8M0 (OCP MX Section 5.4.1, torch ``float8_e8m0fnu``): ``2**(e - 127)`` by code; 0xFF is NaN. (256,) float32
E8M0_VALUES = np.where(np.arange(256) == 255, np.nan,
                       np.ldexp(1.0, np.arange(256) - 127)).astype(F32)
#: the largest E8M0 value, 2**127
E8M0_MAX = float(2.0 ** 127)

#: where :func:`group_amax` and :func:`encode_groups` run: the numba twins or this reference
BACKENDS = ("numba", "numpy")
#: the ``backend`` option of the FP8, MX and NVFP4 methods
BACKEND_OPTION = Option("backend", "str", "numba", "the fast kernels or the readable reference (same bits)",
                        choices=BACKENDS)
#: how :func:`encode_groups` applies a tile's factor
OPS = ("divide", "multiply")
#: what a zero weight's code carries: its own sign (torch's casts) or always + (``torch.sign`` of -0.0 is 0)
ZERO_SIGNS = ("keep", "positive")


def element_format(fmt: str | ElementFormat) -> ElementFormat:
    """The element format called ``fmt`` (or ``fmt`` itself).

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    """
    if isinstance(fmt, ElementFormat):
        return fmt
    try:
        return ELEMENT_FORMATS[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"element format {fmt!r}; valid formats: {', '.join(ELEMENT_FORMATS)}") from None


def encode(x: npt.ArrayLike, fmt: str | ElementFormat) -> tuple[np.ndarray, int]:
    """Round float32 values to codes of ``fmt``: nearest, ties to even, saturating at ``±max``.

    Parameters
    ----------
    x : array_like, float32, finite
    fmt : str or ElementFormat
        ``"e2m1"``, ``"e2m3"``, ``"e3m2"``, ``"e4m3"`` or ``"e5m2"``.

    Returns
    -------
    codes : ndarray, shape of ``x``, uint8
        ``sign_bit | magnitude``; the sign of ``x`` is kept, also for zeros.
    saturated : int
        How many values lay beyond ``±max`` and were clamped to it.

    Examples
    --------
    >>> encode(np.array([0.25, 0.75, 5.0, 7.0, -1e-9], np.float32), "e2m1")
    (array([0, 2, 6, 7, 8], dtype=uint8), 1)
    """
    f = element_format(fmt)
    x = np.asarray(x, dtype=F32)
    bits = x.view(np.uint32)
    a = np.abs(x)
    # E: the exponent of |x|, never below the smallest normal one (float32 subnormals are far below)
    E = np.maximum(((bits >> 23) & 0xFF).astype(np.int32) - 127, f.emin)
    m = np.rint(np.ldexp(a, f.mbits - E))  # exact scaling, then round half to even
    mag = ((E - f.emin) << f.mbits) + m.astype(np.int32)
    beyond = a > f.max
    mag = np.where(beyond, f.max_code, mag)
    sign = ((bits >> 31).astype(np.int32)) * f.sign_bit
    return (mag | sign).astype(np.uint8), int(beyond.sum())


def decode(codes: npt.ArrayLike, fmt: str | ElementFormat) -> np.ndarray:
    """The float32 values of ``codes`` (a table lookup); shape of ``codes``."""
    return element_format(fmt).values[np.asarray(codes, dtype=np.intp)]


def encode_e8m0(x: npt.ArrayLike) -> np.ndarray:
    """E8M0 codes of float32 values, as torch's ``.to(torch.float8_e8m0fnu)``, saturating at 2**127.

    torch (``c10/util/Float8_e8m0fnu.h``, ``fp8e8m0fnu_from_fp32_value``)
    keeps the float32 exponent field and rounds up on the dropped mantissa:
    when its top bit is set and any lower bit is, or when it alone is set and
    the exponent field is not 0 (a tie rounds up, except below 2**-126). The
    sign is ignored; 0 and the float32 subnormals up to 2**-127 give code 0
    (2**-127). Where torch's rounding reaches 0xFF (NaN) from a finite value
    (from ``1.5 * 2**127`` up), qviz saturates to 0xFE (2**127).

    Parameters
    ----------
    x : array_like, float32, finite

    Returns
    -------
    ndarray, shape of ``x``, uint8

    Examples
    --------
    >>> encode_e8m0(np.array([1.0, 1.5, 3.0, 0.7, 0.0], np.float32))
    array([127, 128, 129, 126,   0], dtype=uint8)
    """
    bits = np.asarray(x, dtype=F32).view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.int32)
    g = (bits & 0x400000) != 0
    rest = (bits & 0x3FFFFF) != 0
    up = g & (rest | (e > 0))
    return np.minimum(e + up, 254).astype(np.uint8)


def group_amax(w: np.ndarray, row_block: int, group_size: int) -> np.ndarray:
    """The largest ``|w|`` of every tile of ``row_block`` rows × ``group_size`` columns.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32, finite
    row_block : int
        Rows per tile (1: every row on its own; ``n_rows``: one tile row).
    group_size : int
        Columns per tile; the last tile of a row or column of tiles may be
        smaller (as compressed-tensors' zero padding leaves it).

    Returns
    -------
    ndarray, shape (ceil(n_rows / row_block), ceil(n_cols / group_size)), float32
    """
    n_rows, n_cols = w.shape
    rb, gb = -(-n_rows // row_block), -(-n_cols // group_size)
    a = np.zeros((rb * row_block, gb * group_size), dtype=F32)  # |w|, zero-padded to whole tiles
    np.abs(w, out=a[:n_rows, :n_cols])
    return a.reshape(rb, row_block, gb, group_size).max(axis=(1, 3))  # (rb, gb)


def encode_groups(w: np.ndarray, factor: np.ndarray, row_block: int, group_size: int,
                  fmt: str | ElementFormat, op: str = "divide",
                  zero_sign: str = "keep") -> tuple[np.ndarray, int]:
    """Codes of ``w / factor`` (or ``w * factor``) with one factor per tile, and the saturated count.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32, finite
    factor : ndarray, shape (ceil(n_rows / row_block), ceil(n_cols / group_size)), float32
        The scale each tile is divided by (``op="divide"``) or its reciprocal
        it is multiplied by (``op="multiply"``), in float32 arithmetic.
    row_block, group_size : int
        The tile, as for :func:`group_amax`.
    fmt : str or ElementFormat
    op : {"divide", "multiply"}
    zero_sign : {"keep", "positive"}
        ``"positive"``: a zero weight (``±0``) gets code 0, as where an
        owner's sign comes from ``torch.sign`` or a zero point is added.

    Returns
    -------
    codes : ndarray, shape (n_rows, n_cols), uint8
    saturated : int
        Values beyond ``±max`` of ``fmt`` after scaling, clamped to it.
    """
    if op not in OPS or zero_sign not in ZERO_SIGNS:
        raise ValueError(f"op={op!r}, zero_sign={zero_sign!r}; valid: {OPS}, {ZERO_SIGNS}")
    n_rows, n_cols = w.shape
    f = np.repeat(np.repeat(factor.astype(F32), row_block, axis=0)[:n_rows], group_size, axis=1)[:, :n_cols]
    scaled = w / f if op == "divide" else w * f  # float32, like the owners'
    codes, saturated = encode(scaled, fmt)
    if zero_sign == "positive":
        codes[w == 0] = 0
    return codes, saturated


def primitives(backend: str = "numba"):
    """The module whose ``group_amax`` / ``encode_groups`` a method runs.

    ``"numba"``: :mod:`qviz.kernels.numba.minifloat` (imported on first use);
    ``"numpy"``: this reference. Both give the same bits.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "numpy":
        return sys.modules[__name__]
    return importlib.import_module("qviz.kernels.numba.minifloat")
