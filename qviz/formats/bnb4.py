"""bitsandbytes' blockwise 4-bit formats: NF4 and FP4, with QLoRA's double quantization.

Both keep a block's largest magnitude (its *absmax*) and one 4-bit code per
weight into a fixed table of 16 levels in [-1, 1]; a weight decodes as
``absmax * table[code]`` (:class:`~qviz.result.QuantResult`'s codebook rule).
The arithmetic is that of bitsandbytes 0.50's CPU backend
(``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit``, the kernels
of ``backends/default/ops.py`` and ``csrc/cpu_ops.cpp``).

Layout
------
::

    weight (n_rows, n_cols) float32, blocks of g = blocksize consecutive weights of a row
    codes     4 bits a weight, two a byte, first weight in the high nibble  (bnb: the weight tensor)
    absmax    one a block: float32                        32 bits a block   (bnb: quant_state.absmax)
      or, with double_quant (QLoRA, bnb: compress_statistics=True):
    absmax    one a block: uint8 code into DYNAMIC_MAP     8 bits a block   (quant_state.absmax)
    absmax2   one per 256 blocks: float32                                    (quant_state.state2.absmax)
    offset    one per tensor: float32, the mean absmax                       (quant_state.offset)

    decode    w = absmax[b] * table[code]                          (float32 product)
              absmax[b] = DYNAMIC_MAP[q[b]] * absmax2[b // 256] + offset   (with double_quant; two
                                                                    float32 roundings, in that order)

The tables (``get_4bit_type``): :data:`NF4` (QLoRA's normal-float quantiles,
ascending) and :data:`FP4` (a sign bit, 2 exponent bits, 1 mantissa bit with
bitsandbytes' bias, listed by bit pattern and divided by 12), and the 8-bit
:data:`DYNAMIC_MAP` (``create_dynamic_map()``: Dettmers' dynamic type) for
the absmax. None of them is stored per weight: they are the format's.

Quantizing (``quantize_4bit``): per block ``scaled = clamp(w * (1 / max(absmax,
1e-38)), -1, 1)`` in float32 (a short last block is divided instead, and its
absmax is kept clamped to 1e-38), and the code is the level whose bucket
between float32 midpoints of adjacent levels (ascending) holds ``scaled``,
a value on a midpoint going to the lower level (``torch.bucketize``). FP4's
two zeros (codes 0 and 8) share the bucket ending at 0: a value in (-m, 0]
takes code 0, one in (0, m] code 8 (``m`` the first midpoint).

Double quantization (``quantize_4bit(..., compress_statistics=True)``):
``offset`` is the float32 mean of the absmax as torch sums it on the CPU
(:func:`torch_sum`), and ``absmax - offset`` is quantized in blocks of 256
with :data:`DYNAMIC_MAP` as bitsandbytes' CPU ``quantize_blockwise`` does it
(:func:`quantize_dynamic`: a 65,536-entry table of the nearest level).

bitsandbytes runs its blocks over the flattened weight; these run over each
row. The two agree when ``blocksize`` divides ``n_cols`` (every MiniLM and
LLM weight) or for one row; otherwise a row's last block is short here
(``info["layout"] == "per-row"``) and :mod:`qviz.io.bnb_state` refuses to
write it as a bitsandbytes state.

Notes
-----
Dettmers, Pagnoni, Holtzman, Zettlemoyer, "QLoRA: Efficient Finetuning of
Quantized LLMs", NeurIPS 2023, arXiv:2305.14314, Section 3 (NF4, double
quantization) and Appendix E (the NF4 values). Dettmers, "8-Bit
Approximations for Parallelism in Deep Learning", ICLR 2016,
arXiv:1511.04561 (the dynamic type).
"""
from __future__ import annotations

import numpy as np

from qviz.arrays import as_weight, check_group_size
from qviz.registry import Method, Option, register_method
from qviz.result import QuantResult

__all__ = ["NF4", "FP4", "NF4_MIDPOINTS", "TABLES", "DYNAMIC_MAP", "BLOCKSIZES", "DQ_BLOCKSIZE",
           "ABSMAX_FLOOR", "bucket_bounds", "dynamic_map", "dynamic_lut", "quantize_dynamic",
           "dequantize_dynamic", "torch_sum", "absmax_mean", "quantize_blocks", "quantize_absmax",
           "dequantize_absmax", "pack_4bit", "pack_nf4", "unpack_4bit", "bnb4", "nf4", "fp4",
           "quantize_nf4", "quantize_fp4"]

F32 = np.float32

#: QLoRA's NF4 levels (Appendix E; bitsandbytes ``get_4bit_type("nf4")``), code 0 … 15, ascending
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=F32)

#: bitsandbytes' FP4 levels by bit pattern ``s e1 e0 m``: ``(-1)**s * 2**(e - 2) * (1 + m/2)``
#: with e = 0 subnormal (0 or 1/16), times 4 and divided by the largest (12) in float32,
#: as ``get_4bit_type("fp4")``; (16,) float32, codes 0 and 8 both +0.0
FP4 = (np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=F32)
       / F32(12)).astype(F32)

#: the tables by bitsandbytes' ``quant_type``
TABLES = {"nf4": NF4, "fp4": FP4}

#: the blocksizes ``quantize_4bit`` accepts
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)

#: blocks of absmax values per second-level scale (``quantize_blockwise(..., blocksize=256)``)
DQ_BLOCKSIZE = 256

#: the smallest absmax bitsandbytes divides by (``absmax.clamp(min=1e-38)``), float32
ABSMAX_FLOOR = F32(1e-38)

#: the largest finite fp16 value: an absmax rounded to fp16 must fit
FP16_MAX = 65504.0

#: values handled per step, so temporaries stay a few MB
CHUNK = 1 << 18

#: how :func:`bnb4` may store each block's absmax
ABSMAX_DTYPES = ("float32", "float16")

#: entries of bitsandbytes' CPU lookup table from a scaled value to its nearest 8-bit code
LUT_SIZE = 65536


def bucket_bounds(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float32 midpoints between a table's levels in ascending order, and that order.

    Parameters
    ----------
    table : ndarray, shape (k,), float32

    Returns
    -------
    bounds : ndarray, shape (k - 1,), float32
        ``(sorted[i] + sorted[i + 1]) / 2`` in float32.
    order : ndarray, shape (k,), intp
        The codes in ascending order of level; equal levels by code (a stable
        sort, as torch's CPU ``argsort`` of 16 values). Bucket ``i`` (the
        number of bounds below a value) is code ``order[i]``.

    Notes
    -----
    bitsandbytes' ``_get_4bit_quantize_bounds``.

    Examples
    --------
    >>> bounds, order = bucket_bounds(FP4)
    >>> order[6:10].tolist(), bounds[7]
    ([9, 0, 8, 1], np.float32(0.0))
    """
    order = np.argsort(table, kind="stable")
    s = table[order].astype(F32)
    return ((s[:-1] + s[1:]) / F32(2)).astype(F32), order


#: the 15 NF4 bucket bounds (NF4 ascends: bucket i is code i)
NF4_MIDPOINTS = bucket_bounds(NF4)[0]
#: (bounds, order) of each table
BOUNDS = {name: bucket_bounds(t) for name, t in TABLES.items()}


def _linspace(start: float, stop: float, n: int) -> np.ndarray:
    """torch's float32 ``linspace`` on x86 (AVX2 and AVX-512 kernels): each point one fused multiply-add.

    The first half counts up from ``start``, the rest down from ``stop``, by the float32
    step ``(stop - start) / (n - 1)``; ``a + b * i`` rounds once (exact in float64 here).
    """
    a, b = F32(start), F32(stop)
    step = F32((b - a) / F32(n - 1))
    i = np.arange(n, dtype=np.float64)
    up = (np.float64(a) + np.float64(step) * i).astype(F32)
    down = (np.float64(b) - np.float64(step) * (n - 1 - i)).astype(F32)
    return np.where(np.arange(n) < n // 2, up, down)


def dynamic_map(max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """Dettmers' signed dynamic 8-bit type, as bitsandbytes' ``create_dynamic_map()`` builds it.

    For each exponent ``i`` (0 … 6) the midpoints of ``2**i + 1`` points evenly
    spaced over [0.1, 1] are scaled by ``10**(i - 6)``, with both signs; 0 and
    1 complete the 256 values.

    Returns
    -------
    ndarray, shape (2**total_bits,), float32, ascending

    Examples
    --------
    >>> m = dynamic_map()
    >>> m.shape, m[0], m[127], m[-1]
    ((256,), np.float32(-0.99296874), np.float32(0.0), np.float32(1.0))
    """
    values = [np.zeros(1, F32), np.ones(1, F32)]
    non_sign = total_bits - 1
    for i in range(max_exponent_bits):
        points = _linspace(0.1, 1.0, 2 ** (i + non_sign - max_exponent_bits) + 1)
        means = ((points[:-1] + points[1:]) / F32(2)).astype(F32)
        level = (F32(10.0 ** (i - (max_exponent_bits - 1))) * means).astype(F32)  # float32 product
        values += [level, -level]
    out = np.sort(np.concatenate(values))
    if out.size != 2 ** total_bits:
        raise ValueError(f"max_exponent_bits={max_exponent_bits} and total_bits={total_bits} give "
                         f"{out.size} values, not {2 ** total_bits}")
    return out


#: bitsandbytes' default 8-bit code for the absmax of double quantization; (256,) float32
DYNAMIC_MAP = dynamic_map()


def dynamic_lut(code: np.ndarray = DYNAMIC_MAP) -> np.ndarray:
    """bitsandbytes' CPU table from a scaled value's bin to its 8-bit code (``build_quantize_lut``).

    Bin ``i`` of 65,536 stands for ``v_i = -1 + 2i / 65535`` (float32) and
    holds the number of float32 midpoints ``(code[j] + code[j+1]) / 2`` below
    ``v_i``.

    Parameters
    ----------
    code : ndarray, shape (256,), float32, ascending

    Returns
    -------
    ndarray, shape (65536,), uint8
    """
    code = np.asarray(code, dtype=F32)
    mid = (F32(0.5) * (code[:-1] + code[1:])).astype(F32)
    i = np.arange(LUT_SIZE, dtype=F32)
    v = (F32(-1) + (F32(2) * i) / F32(LUT_SIZE - 1)).astype(F32)
    return np.searchsorted(mid, v, side="left").astype(np.uint8)


def lut_index(v: np.ndarray) -> np.ndarray:
    """The bin of scaled float32 values: ``uint16((clamp(v, -1, 1) + 1) * 0.5 * 65535 + 0.5)`` in float32.

    A NaN (``0 * inf``, when a block's absmax is so small that its reciprocal
    overflows) takes bin 0, as bitsandbytes' x86 build converts it.
    """
    v = np.clip(v, F32(-1), F32(1))
    t = ((v + F32(1)) * F32(0.5)).astype(F32)
    t = (t * F32(LUT_SIZE - 1)).astype(F32)
    t = (t + F32(0.5)).astype(F32)
    return np.where(np.isnan(t), F32(0), t).astype(np.int64)


def quantize_dynamic(a, blocksize: int = DQ_BLOCKSIZE, code: np.ndarray = DYNAMIC_MAP
                     ) -> tuple[np.ndarray, np.ndarray]:
    """8-bit blockwise quantization of a 1-D float32 array, as bitsandbytes' CPU ``quantize_blockwise``.

    Parameters
    ----------
    a : ndarray, shape (n,), float32, finite
    blocksize : int
        Values per block (the last one may be shorter).
    code : ndarray, shape (256,), float32
        The 8-bit table (:data:`DYNAMIC_MAP`).

    Returns
    -------
    codes : ndarray, shape (n,), uint8
        ``lut[bin(a_i * (1 / absmax))]`` (:func:`dynamic_lut`); 0 in a block whose absmax is 0.
    absmax : ndarray, shape (ceil(n / blocksize),), float32
        ``max |a|`` of each block.

    Notes
    -----
    ``csrc/cpu_ops.cpp`` ``quantize_cpu_impl``: the reciprocal of the block's
    absmax, one float32 product per value and a table look-up of its bin
    (:func:`lut_index`), so the code is the nearest level up to the table's
    resolution of 2/65535.
    """
    a = np.asarray(a, dtype=F32).reshape(-1)
    n = a.size
    starts = np.arange(0, n, blocksize)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(0, F32)
    absmax = np.maximum.reduceat(np.abs(a), starts).astype(F32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = (F32(1) / absmax).astype(F32)  # inf for a zero (or subnormal) absmax
        scaled = (a * np.repeat(inv, blocksize)[:n]).astype(F32)
    codes = dynamic_lut(code)[lut_index(scaled)]
    codes[np.repeat(absmax == 0, blocksize)[:n]] = 0  # bitsandbytes writes 0 for an all-zero block
    return codes, absmax


def dequantize_dynamic(codes, absmax, blocksize: int = DQ_BLOCKSIZE,
                       code: np.ndarray = DYNAMIC_MAP) -> np.ndarray:
    """``code[codes[i]] * absmax[i // blocksize]`` in float32 (``dequantize_blockwise``); (n,) float32."""
    codes = np.asarray(codes).reshape(-1)
    per = np.repeat(np.asarray(absmax, dtype=F32), blocksize)[:codes.size]
    return (np.asarray(code, dtype=F32)[codes] * per).astype(F32)


#: lanes of torch's float32 ``Vectorized`` sum on x86 (AVX2 and AVX-512 alike) and ARM
SUM_LANES = 8
#: torch's ``row_sum``: rows of this many vectors are summed side by side
SUM_ILP = 4
#: torch's ``multi_row_sum``: levels of the cascade
SUM_LEVELS = 4


def _multi_row_sum(rows: np.ndarray) -> np.ndarray:
    """torch's ``multi_row_sum``: a 4-level cascade over ``rows`` (size, ...) float32 -> (...)."""
    size = rows.shape[0]
    power = max(4, (int(size - 1).bit_length() if size > 1 else 0) // SUM_LEVELS)
    step, mask = 1 << power, (1 << power) - 1
    acc = np.zeros((SUM_LEVELS,) + rows.shape[1:], F32)
    i = 0
    while i + step <= size:
        for j in range(step):
            acc[0] += rows[i + j]
        i += step
        for j in range(1, SUM_LEVELS):
            acc[j] += acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * power)):
                break
    for j in range(i, size):
        acc[0] += rows[j]
    for j in range(1, SUM_LEVELS):
        acc[0] += acc[j]
    return acc[0]


def _row_sum(data: np.ndarray) -> np.ndarray:
    """torch's ``row_sum``: (size, ...) float32 as rows of 4 summed side by side, then folded."""
    size = data.shape[0]
    n_ilp = size // SUM_ILP
    partial = _multi_row_sum(data[:n_ilp * SUM_ILP].reshape((n_ilp, SUM_ILP) + data.shape[1:]))
    for i in range(n_ilp * SUM_ILP, size):
        partial[0] += data[i]
    for k in range(1, SUM_ILP):
        partial[0] += partial[k]
    return partial[0]


def torch_sum(x) -> np.float32:
    """The float32 sum of a 1-D array in the order torch's CPU ``sum`` adds it, one thread.

    Parameters
    ----------
    x : array_like, shape (n,), float32

    Returns
    -------
    numpy.float32

    Notes
    -----
    ATen ``SumKernel.cpp`` ``cascade_sum`` over a contiguous row: the
    ``n // 8`` whole vectors of 8 lanes are summed as rows of 4 vectors in a
    4-level cascade (levels of ``2**max(4, ceil(log2(rows)) // 4)`` rows), the
    4 partial vectors folded into the first; then the ``n % 8`` last values
    and the 8 lanes are added to a float32 accumulator in order. A row of
    fewer than 8 values takes the same cascade on scalars. With several
    threads torch splits sums of 32,768 values or more into per-thread parts,
    which can change the last bit.

    Examples
    --------
    >>> float(torch_sum(np.full(10, 0.1, np.float32)))
    1.0000001192092896
    """
    x = np.asarray(x, dtype=F32).reshape(-1)
    n = x.size
    if n < SUM_LANES:
        return F32(F32(0) + _row_sum(x))
    n_vec = n // SUM_LANES
    lanes = _row_sum(x[:n_vec * SUM_LANES].reshape(n_vec, SUM_LANES))
    acc = F32(0)
    for v in x[n_vec * SUM_LANES:]:
        acc = F32(acc + v)
    for v in lanes:
        acc = F32(acc + v)
    return F32(F32(0) + acc)


def absmax_mean(absmax) -> np.float32:
    """Double quantization's ``offset``: ``torch_sum(absmax) / n`` in float32 (``absmax.mean()``)."""
    a = np.asarray(absmax, dtype=F32).reshape(-1)
    return F32(torch_sum(a) / F32(a.size))


def quantize_absmax(absmax) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """QLoRA's double quantization of the block absmax (``compress_statistics=True``).

    Parameters
    ----------
    absmax : ndarray, shape (n_blocks,), float32
        In bitsandbytes' block order (row-major).

    Returns
    -------
    q : ndarray, shape (n_blocks,), uint8
        Codes into :data:`DYNAMIC_MAP` of ``absmax - offset``.
    absmax2 : ndarray, shape (ceil(n_blocks / 256),), float32
        ``max |absmax - offset|`` of each run of 256 blocks (the last run may be shorter).
    offset : numpy.float32
        :func:`absmax_mean`.
    """
    a = np.asarray(absmax, dtype=F32).reshape(-1)
    offset = absmax_mean(a)
    q, absmax2 = quantize_dynamic((a - offset).astype(F32), DQ_BLOCKSIZE)
    return q, absmax2, offset


def dequantize_absmax(q, absmax2, offset, code: np.ndarray = DYNAMIC_MAP,
                   blocksize: int = DQ_BLOCKSIZE) -> np.ndarray:
    """The absmax bitsandbytes decodes with: ``code[q] * absmax2[b // 256] + offset``; (n_blocks,) float32."""
    return (dequantize_dynamic(q, absmax2, blocksize, code) + F32(offset)).astype(F32)


def quantize_blocks(w: np.ndarray, group_size: int, quant_type: str = "nf4", absmax: str = "float32"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Codes and absmax of ``quantize_4bit``'s rule, blocks of ``group_size`` columns of each row.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32, finite
    group_size : int
        Columns per block, 1 … n_cols; a row's last block is shorter when it
        does not divide ``n_cols``.
    quant_type : {"nf4", "fp4"}
    absmax : {"float32", "float16"}
        ``"float16"``: each absmax is rounded to fp16 before the weights are
        scaled by it (qviz's half-storage variant).

    Returns
    -------
    codes : ndarray, shape (n_rows, n_cols), uint8
        Indices into ``TABLES[quant_type]``.
    absmax : ndarray, shape (n_rows, n_groups), float32
        Each block's ``max |w|``; with float32 a short last block's is at
        least 1e-38 (bitsandbytes keeps its tail block's absmax clamped).
    """
    bounds, order = BOUNDS[quant_type]
    n_rows, n_cols = w.shape
    g = group_size
    starts = np.arange(0, n_cols, g)
    full = n_cols // g * g  # columns in whole blocks
    out = np.empty((n_rows, starts.size), dtype=F32)
    codes = np.empty((n_rows, n_cols), dtype=np.uint8)
    step = max(1, CHUNK // n_cols)
    for r0 in range(0, n_rows, step):  # a few rows at a time: temporaries stay small
        rows = w[r0:r0 + step]  # (r, n_cols)
        amax = np.maximum.reduceat(np.abs(rows), starts, axis=1)  # (r, n_groups)
        if absmax == "float16":
            amax = _fp16(amax)
        den = np.maximum(amax, ABSMAX_FLOOR)  # bitsandbytes' absmax.clamp(min=1e-38)
        scaled = np.empty_like(rows)
        if full:
            inv = F32(1) / den[:, :full // g]  # float32 reciprocals
            scaled[:, :full] = (rows[:, :full].reshape(rows.shape[0], -1, g)
                                * inv[:, :, None]).reshape(rows.shape[0], full)
        if full < n_cols:  # the short last block: divided, its absmax kept clamped
            scaled[:, full:] = rows[:, full:] / den[:, -1:]
            if absmax == "float32":
                amax[:, -1] = den[:, -1]
        out[r0:r0 + step] = amax
        np.clip(scaled, F32(-1), F32(1), out=scaled)
        codes[r0:r0 + step] = order[np.searchsorted(bounds, scaled, side="left")]
    return codes, out


def pack_4bit(codes: np.ndarray, absmax: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """The storage bytes of a 4-bit weight, row by row, in bitsandbytes' nibble order.

    Parameters
    ----------
    codes : ndarray, shape (n_rows, n_cols), uint8
        Codes 0..15.
    absmax : ndarray, shape (n_rows, n_groups), float32
    dtype : {"float32", "float16"}
        How each absmax is stored.

    Returns
    -------
    ndarray, shape (n_rows, ceil(n_cols / 2) + n_groups * (4 | 2)), uint8

    Notes
    -----
    One row::

        byte j < ceil(n_cols / 2):    bit 7 6 5 4 | 3 2 1 0
                                          code 2j | code 2j+1   (0 past the row's end)
        then n_groups absmax values, little-endian float32 (4 bytes) or float16 (2 bytes)

    The code bytes are bitsandbytes' ``quantize_4bit`` packing (``q[::2] << 4 | q[1::2]``
    over the flattened weight: the same bytes when ``n_cols`` is even); bitsandbytes
    keeps the absmax in a tensor of its own, here it follows the row's codes.

    Examples
    --------
    >>> pack_4bit(np.array([[1, 2, 15]], np.uint8), np.array([[2.0]], np.float32), "float16").tolist()
    [[18, 240, 0, 64]]
    """
    n_rows, n_cols = codes.shape
    half = -(-n_cols // 2)
    pairs = n_cols // 2
    store = np.dtype("<f4" if dtype == "float32" else "<f2")
    out = np.zeros((n_rows, half + absmax.shape[1] * store.itemsize), dtype=np.uint8)
    out[:, :pairs] = (codes[:, 0:2 * pairs:2] << 4) | codes[:, 1:2 * pairs:2]
    if n_cols % 2:
        out[:, half - 1] = codes[:, -1] << 4
    out[:, half:] = np.ascontiguousarray(absmax, dtype=store).view(np.uint8).reshape(n_rows, -1)
    return out


#: the name NF4 results were packed by before FP4 joined it
pack_nf4 = pack_4bit


def unpack_4bit(packed, n: int) -> np.ndarray:
    """bitsandbytes' packed code bytes (any shape, uint8) -> the first ``n`` codes, high nibble first; (n,) uint8."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if p.size * 2 < n:
        raise ValueError(f"{p.size} packed bytes hold {p.size * 2} codes, fewer than the {n} weights")
    return np.stack([p >> 4, p & 15], axis=1).reshape(-1)[:n]


def _fp16(x: np.ndarray) -> np.ndarray:
    """``x`` as stored in fp16 and read back (numpy's cast rounds to nearest even)."""
    return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def _check_options(quant_type: str, absmax: str, double_quant: bool, backend: str) -> None:
    if quant_type not in TABLES:
        raise ValueError(f"quant_type={quant_type!r}: choose 'nf4' or 'fp4'")
    if absmax not in ABSMAX_DTYPES:
        raise ValueError(f"absmax={absmax!r}: choose 'float32' (bitsandbytes' absmax, 32 bits "
                         f"per block) or 'float16' (rounded to fp16, 16 bits)")
    if double_quant and absmax != "float32":
        raise ValueError("double_quant=True quantizes bitsandbytes' float32 absmax to 8 bits; "
                         "absmax='float16' cannot be combined with it: leave absmax='float32'")
    if backend not in ("numba", "numpy"):
        raise ValueError(f"backend={backend!r}; valid backends: 'numba', 'numpy'")


def bnb4(w, quant_type: str = "nf4", group_size: int = 64, absmax: str = "float32",
         double_quant: bool = False, backend: str = "numpy") -> QuantResult:
    """bitsandbytes' blockwise 4-bit quantization (NF4 or FP4), optionally double-quantized.

    Parameters
    ----------
    w : array_like, shape (n_rows, n_cols), float
        Never modified.
    quant_type : {"nf4", "fp4"}
        The table: :data:`NF4` or :data:`FP4`.
    group_size : int
        Consecutive columns per block (bitsandbytes' ``blocksize``, 64; -1 for
        one block per row). A row's last block is shorter when it does not
        divide ``n_cols``.
    absmax : {"float32", "float16"}
        How each block's absmax is kept without double quantization: float32
        as bitsandbytes does (32 bits a block), or rounded to fp16 (16 bits;
        the weight must then stay within fp16's range).
    double_quant : bool
        QLoRA's double quantization: 8-bit absmax codes, a float32 scale per
        256 blocks and a float32 offset (``compress_statistics=True``).
    backend : {"numpy", "numba"}
        This readable reference, or its numba twin (the same codes and absmax).

    Returns
    -------
    QuantResult
        ``method=quant_type``, ``bits=4``; codes uint8 (n_rows, n_cols) index
        ``codebook`` (the table, (16,) float32); ``scales`` float32 (n_rows,
        n_groups) the absmax bitsandbytes decodes with. Without double
        quantization ``packed`` holds the storage bytes (:func:`pack_4bit`);
        with it ``stored`` holds ``absmax`` uint8 (n_rows, n_groups),
        ``absmax2`` float32 (ceil(n_blocks / 256),) and ``offset`` float32 (1,),
        so ``bits_per_weight`` is 4 + 8/64 + 32/(64·256) ≈ 4.127 at blocksize 64.

    Raises
    ------
    ValueError
        An unknown ``quant_type``, ``absmax`` or ``backend``, a bad
        ``group_size``, ``absmax="float16"`` with ``double_quant`` or a weight
        beyond fp16's range.

    Examples
    --------
    >>> r = bnb4(np.array([[-2.0, 0.1, 1.0, 2.0]], np.float32), "fp4", group_size=4)
    >>> r.codes  # scaled by 1/2: -1, 0.05, 0.5, 1; 0.05 is below FP4's midpoint 0.0859
    array([[11,  1,  5,  3]], dtype=uint8)
    >>> r.dequantize()[0].tolist()  # code 1 is 1/192 of the absmax
    [-2.0, 0.010416666977107525, 1.0, 2.0]
    """
    w = as_weight(w)
    n_rows, n_cols = w.shape
    g = check_group_size(group_size, n_cols)
    _check_options(quant_type, absmax, double_quant, backend)
    if absmax == "float16":
        big = max(float(w.max()), -float(w.min()))
        if big > FP16_MAX:
            raise ValueError(f"the weight reaches |w| = {big:g}, beyond fp16's {FP16_MAX:g}, where "
                             f"absmax='float16' stores it; use absmax='float32'")
    if backend == "numba":
        from qviz.kernels.numba import bnb4 as twin  # numba loads on first use

        codes, scales = twin.quantize_blocks(w, g, quant_type, absmax)
    else:
        codes, scales = quantize_blocks(w, g, quant_type, absmax)
    layout = "bitsandbytes" if n_cols % g == 0 or n_rows == 1 else "per-row"
    info = {"codebook": {"nf4": "NF4 (QLoRA)", "fp4": "FP4 (bitsandbytes)"}[quant_type],
            "absmax": absmax, "double_quant": bool(double_quant), "layout": layout}
    if not double_quant:
        return QuantResult(quant_type, w.shape, 4, g, codes, scales, codebook=TABLES[quant_type].copy(),
                           packed=pack_4bit(codes, scales, absmax), info=info)
    if backend == "numba":
        q, absmax2, offset = twin.quantize_absmax(scales.reshape(-1))
    else:
        q, absmax2, offset = quantize_absmax(scales.reshape(-1))
    if not (np.isfinite(offset) and np.isfinite(absmax2).all()):
        raise ValueError(f"double_quant: the absmax of this weight's blocks sum beyond float32 (their "
                         f"mean is {float(offset):g}), so bitsandbytes' offset and scales would not be "
                         f"finite; use double_quant=False or scale the weight down")
    decoded = dequantize_absmax(q, absmax2, offset).reshape(scales.shape)
    stored = {"absmax": q.reshape(scales.shape), "absmax2": absmax2,
              "offset": np.array([offset], dtype=F32)}
    return QuantResult(quant_type, w.shape, 4, g, codes, decoded, codebook=TABLES[quant_type].copy(),
                       stored=stored, info=info)


def nf4(w, group_size: int = 64, absmax: str = "float32", double_quant: bool = False,
        backend: str = "numpy") -> QuantResult:
    """NF4: QLoRA's 16 normal-float levels times each block's absmax, as bitsandbytes computes it.

    :func:`bnb4` with ``quant_type="nf4"``.

    Examples
    --------
    >>> r = nf4(np.array([[-2.0, 0.1, 1.0, 2.0]], np.float32), group_size=4)
    >>> r.codes  # 0.1/2 = 0.05 is above the midpoint 0.0398; 1/2 = 0.5 below 0.5017
    array([[ 0,  8, 12, 15]], dtype=uint8)
    >>> r.dequantize().round(4)
    array([[-2.    ,  0.1592,  0.8814,  2.    ]], dtype=float32)
    >>> r.bits_per_weight  # 4 codes in 2 bytes, one float32 absmax
    12.0
    """
    return bnb4(w, "nf4", group_size, absmax, double_quant, backend)


def fp4(w, group_size: int = 64, absmax: str = "float32", double_quant: bool = False,
        backend: str = "numpy") -> QuantResult:
    """bitsandbytes' FP4 times each block's absmax: :func:`bnb4` with ``quant_type="fp4"``.

    Examples
    --------
    >>> w = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)
    >>> round(fp4(w, double_quant=True).bits_per_weight, 3)  # QLoRA's 4 + 8/64 + 32/(64·256)
    4.127
    """
    return bnb4(w, "fp4", group_size, absmax, double_quant, backend)


def quantize_nf4(w: np.ndarray, *, group_size: int = 64, absmax: str = "float32",
                 double_quant: bool = False, backend: str = "numba") -> QuantResult:
    """QLoRA's NF4 as bitsandbytes computes it (:func:`bnb4`); ``w`` float32 (n_rows, n_cols)."""
    return bnb4(w, "nf4", group_size, absmax, double_quant, backend)


def quantize_fp4(w: np.ndarray, *, group_size: int = 64, absmax: str = "float32",
                 double_quant: bool = False, backend: str = "numba") -> QuantResult:
    """bitsandbytes' FP4 (:func:`bnb4`); ``w`` float32 (n_rows, n_cols)."""
    return bnb4(w, "fp4", group_size, absmax, double_quant, backend)


def _options(table: str) -> tuple[Option, ...]:
    return (
        Option("group_size", "int", 64, "columns per block (bitsandbytes' blocksize: 32, 64, … 4096); "
               "-1 for one block per row", control=True),
        Option("absmax", "str", "float32", "each block's absmax: float32 as bitsandbytes keeps it "
               "(32 bits per block) or rounded to fp16 (16 bits)", choices=ABSMAX_DTYPES),
        Option("double_quant", "bool", False, f"QLoRA's double quantization of the {table} absmax: "
               "8 bits a block, a float32 scale per 256 blocks", control=True),
        Option("backend", "str", "numba", "the numba kernel or the readable reference (same codes)",
               choices=("numba", "numpy")),
    )


register_method(Method("nf4", "NF4", quantize_nf4, _options("NF4")))
register_method(Method("fp4", "FP4 (bitsandbytes)", quantize_fp4, _options("FP4")))
