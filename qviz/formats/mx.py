"""``"mxfp4"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp8"``: OCP Microscaling (MX v1.0) tensors, as torchao computes them.

Every run of 32 consecutive weights of a row (along the input dimension)
shares one E8M0 scale ``X = 2**(e - 127)``, and every weight is an element
code (:mod:`qviz.formats.minifloat`) decoded as ``X * value(code)`` (OCP MX
v1.0, Section 5, "Microscaling formats"; Section 6.3, the conversion)::

    method       element  bits  max of element   emax_elem = floor(log2(max))
    mxfp4        e2m1     4     6                2
    mxfp6_e2m3   e2m3     6     7.5              2
    mxfp6_e3m2   e3m2     6     28               4
    mxfp8        e4m3     8     448              8      (fmt="e5m2": 57344, 15)

    block of 32: scale  e        1 byte, E8M0 (bias 127; 0xFF NaN, never produced here)
                 codes  q[0..31] 32 × bits (packing is the checkpoint writer's business)

The scale and codes are torchao 0.18's ``to_mx``
(``torchao/prototype/mx_formats/mx_tensor.py``), with its
``ScaleCalculationMode`` as ``scale_rule``; ``amax`` is a block's largest
``|w|`` and ``exp(v)`` the float32 exponent field of ``v`` minus 127:

* ``"floor"`` (the spec; default): ``e = exp(amax) - emax_elem + 127``.
* ``"even"``: the same after rounding ``amax`` to ``1 + M`` mantissa bits
  (its bits ``+ 2**(22 - M)``, then the mantissa cleared; ``M`` the
  element's mantissa bits).
* ``"ceil"``: ``exp(amax) + 1`` when ``amax`` is not a power of two.
* ``"rceil"``: ``e = ceil(log2(amax / max)) + 127`` with ``log2`` in float32
  (as torch's CPU ``log2``, which rounds correctly here), clamped to 0..254
  (NVIDIA's cuBLAS rule, "Computing scaling and conversion factors for FP8
  with UE8M0 scales").

``e`` is clamped to 0..255 (floor/even/ceil) or 0..254 (rceil). Each element
is then ``encode(w / divisor)`` (round to nearest even, saturating at the
element's max; the values beyond it are counted in ``info["saturated"]``,
frequent under ``"floor"``, where a block's largest weights may exceed the
element's max by up to 2×). The divisor is ``2**(e - 127)``, except for
``e == 0``: torchao divides by ``2**-126`` there (floor/even/ceil clamp the
scale to float32's smallest normal) or by 1 (rceil), while it decodes with
``2**-127``. :attr:`QuantResult.scales` is the decode factor ``2**(e - 127)``
(torchao ``get_fp_scale``), so :meth:`QuantResult.dequantize` equals
torchao's ``to_dtype(..., torch.float32)`` bit for bit.

A row whose length is not a multiple of 32 is refused, as ``to_mx`` refuses
it (torchao does not pad).

The result (what ``qviz.io.compressed_tensors`` reads): ``codes`` the
element codes (uint8, sign in bit ``bits - 1``), ``codebook`` the element's
values, ``stored["scale"]`` the E8M0 bytes (n_rows, n_cols / 32) uint8,
``info["fmt"]`` the element format, ``info["scale_rule"]``,
``info["granularity"] == "group"``. compressed-tensors' own MX observer
(``generate_mx_scales``) rounds ``amax`` like ``"even"`` but with E2M1's
mantissa width for MXFP8 too, so its scales can differ from torchao's; the
decode ``2**(e - 127) * value`` is the same.
"""
from __future__ import annotations

import numpy as np

from qviz.formats.minifloat import BACKEND_OPTION, E8M0_VALUES, ElementFormat, element_format, primitives
from qviz.registry import Method, Option, register_method
from qviz.result import QuantResult

__all__ = ["BLOCK", "SCALE_RULES", "ELEMENTS", "choose_params_mx", "quantize_mx"]

F32 = np.float32
#: weights per MX block (OCP MX v1.0: k = 32)
BLOCK = 32
#: torchao's ScaleCalculationMode values, by their ``.value``
SCALE_RULES = ("floor", "even", "ceil", "rceil")
#: method name -> element format (mxfp8's is an option)
ELEMENTS = {"mxfp4": "e2m1", "mxfp6_e2m3": "e2m3", "mxfp6_e3m2": "e3m2", "mxfp8": "e4m3"}


def emax_elem(fmt: ElementFormat) -> int:
    """``floor(log2(max))`` of the element format (torchao's ``*_MAX_POW2``)."""
    return int(np.frexp(np.float32(fmt.max))[1]) - 1


def choose_params_mx(amax: np.ndarray, fmt: str | ElementFormat,
                     scale_rule: str = "floor") -> tuple[np.ndarray, np.ndarray]:
    """E8M0 scale of each block and the factor its weights are divided by, as torchao's ``to_mx``.

    Parameters
    ----------
    amax : ndarray, shape (n_rows, n_blocks), float32, finite, >= 0
    fmt : str or ElementFormat
        The element format.
    scale_rule : {"floor", "even", "ceil", "rceil"}

    Returns
    -------
    e : ndarray, shape of ``amax``, uint8
        Biased E8M0 exponents.
    divisor : ndarray, shape of ``amax``, float32
        ``2**(e - 127)``; ``2**-126`` (floor/even/ceil) or 1 (rceil) where ``e == 0``.

    Examples
    --------
    >>> choose_params_mx(np.array([[6.0, 7.0, 0.0]], np.float32), "e2m1")[0]
    array([[127, 127,   0]], dtype=uint8)
    >>> choose_params_mx(np.array([[6.0, 7.0, 0.0]], np.float32), "e2m1", "rceil")[0]
    array([[127, 128,   0]], dtype=uint8)
    """
    f = element_format(fmt)
    amax = np.asarray(amax, dtype=F32)
    if scale_rule == "rceil":
        descale = amax / F32(f.max)  # float32
        with np.errstate(divide="ignore"):
            lg = np.log2(descale.astype(np.float64)).astype(F32)  # log2 in float32, correctly rounded
        e = (np.clip(np.ceil(lg), -127, 127) + 127).astype(np.uint8)
        divisor = np.where(e == 0, F32(1), E8M0_VALUES[e]).astype(F32)
        return e, divisor
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule={scale_rule!r}; valid scale_rules: {', '.join(map(repr, SCALE_RULES))}")
    bits = amax.view(np.int32)
    if scale_rule == "even":  # round amax to 1 + mbits mantissa bits, then drop the mantissa
        bits = (bits + np.int32(1 << (22 - f.mbits))) & np.int32(~0x7FFFFF)
    pow2 = ((bits >> 23) & 0xFF) - 127
    if scale_rule == "ceil":
        pow2 = pow2 + ((bits & 0x7FFFFF) > 0)
    e = (np.clip(pow2 - emax_elem(f), -127, 128) + 127).astype(np.uint8)
    divisor = np.maximum(E8M0_VALUES[np.maximum(e, 1)], F32(2.0 ** -126)).astype(F32)
    return e, divisor


def quantize_mx(w: np.ndarray, *, name: str = "mxfp4", fmt: str | None = None, scale_rule: str = "floor",
                backend: str = "numba") -> QuantResult:
    """An OCP MX tensor: 32-weight blocks, E8M0 scales, element codes, as torchao's ``to_mx``.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
        ``n_cols`` a multiple of 32.
    name : {"mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8"}
    fmt : {"e4m3", "e5m2"}, optional
        mxfp8's element format (E4M3 by default); the others' is fixed.
    scale_rule : {"floor", "even", "ceil", "rceil"}
        torchao's ``ScaleCalculationMode``; ``"floor"`` is the spec's.
    backend : {"numba", "numpy"}

    Returns
    -------
    QuantResult
        ``bits`` 4, 6 or 8, ``group_size`` 32; see the module docstring.

    Examples
    --------
    >>> r = quantize_mx(np.linspace(-1, 1, 32, dtype=np.float32)[None], name="mxfp4")
    >>> int(r.stored["scale"][0, 0]), r.scales[0, 0], r.codes[0, :4]
    (125, np.float32(0.25), array([14, 14, 13, 13], dtype=uint8))
    """
    elem = ELEMENTS[name] if fmt is None else fmt
    if name != "mxfp8" and elem != ELEMENTS[name]:
        raise ValueError(f"{name}: its element format is {ELEMENTS[name]}, not fmt={fmt!r}")
    if name == "mxfp8" and elem not in ("e4m3", "e5m2"):
        raise ValueError(f"mxfp8: fmt={fmt!r}; valid fmt values: 'e4m3', 'e5m2'")
    n_rows, n_cols = w.shape
    if n_cols % BLOCK:
        raise ValueError(f"{name} needs rows that are a multiple of {BLOCK} (one E8M0 scale per {BLOCK} "
                         f"weights), but the rows have {n_cols} columns, and torchao's to_mx does not "
                         f"pad; pad the input dimension with zeros to {-(-n_cols // BLOCK) * BLOCK} "
                         f"or keep this layer in a non-MX format")
    f = element_format(elem)
    prims = primitives(backend)
    e, divisor = choose_params_mx(prims.group_amax(w, 1, BLOCK), f, scale_rule)  # (n_rows, n_blocks)
    codes, saturated = prims.encode_groups(w, divisor, 1, BLOCK, f, "divide", "keep")
    return QuantResult(name, (n_rows, n_cols), f.bits, BLOCK, codes, E8M0_VALUES[e],
                       codebook=f.values, stored={"scale": e},
                       info={"fmt": elem, "granularity": "group", "scale_rule": scale_rule,
                             "saturated": saturated, "backend": backend})


SCALE_RULE = Option("scale_rule", "str", "floor", "E8M0 scale rule (torchao ScaleCalculationMode): floor "
                    "as the OCP spec, or the round-up variants even, ceil, rceil",
                    choices=SCALE_RULES, control=True)


def register_mx_methods() -> None:
    """One record per MX method; mxfp8 also takes ``fmt``."""
    for name in ELEMENTS:
        options = (SCALE_RULE, BACKEND_OPTION)
        if name == "mxfp8":
            options = (Option("fmt", "str", "e4m3", "element format: E4M3 (max 448) or E5M2 (max 57344)",
                              choices=("e4m3", "e5m2"), control=True), *options)
        # compressed-tensors' FP6 is E2M3 only
        exports = () if name == "mxfp6_e3m2" else ("compressed-tensors",)
        register_method(Method(name, f"{name} (OCP MX)", quantize_mx, options,
                               exports=exports, quantlinear=False, fixed={"name": name}))


register_mx_methods()
