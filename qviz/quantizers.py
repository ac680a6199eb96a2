"""The built-in methods and their records: RTN, GPTQ, AWQ, k-means and every quant type.

Each method is a small function ``f(w, **options) -> QuantResult`` (``w``
already validated: float32, (n_rows, n_cols)) plus its :class:`~qviz.registry.Method`
record: label, options schema, calibration, exports. The records are what
:func:`qviz.quantize`, the explorers and ``quantize_model`` look up; the
algorithms themselves live in :mod:`qviz.algorithms` and load on first use.

A quant type (``"Q4_K"`` …) needs no record here: the registry makes one of
every registered type, run by :func:`quantize_type`.
"""
from __future__ import annotations

import numpy as np

from qviz.arrays import as_importance, check_group_size
from qviz.registry import Method, Option, QuantType, quant_type, register_method, types
from qviz.result import QuantResult

BACKENDS = ("numba", "numpy")

# ----------------------------------------------------------------- shared options

BITS = Option("bits", "int", 4, "code width", low=2, high=8, control=True)
GROUP_SIZE = Option("group_size", "int", 128, "input columns per group; -1 for one group per row",
                    control=True)
SYM = Option("sym", "bool", False, "symmetric: zero fixed at 2**(bits-1)", control=True)
CALIB = Option("calib", "array", None, "the layer's input activations, shape (n_samples, n_cols)",
               role="calibration", optional=True)
DEVICE = Option("device", "str", None, "where the algorithm runs: 'cpu' (default) or 'cuda'",
                optional=True)
#: checkpoint formats an affine integer result exports to (qviz.io.export, qviz.io.compressed_tensors)
AFFINE_EXPORTS = ("gptq", "awq", "compressed-tensors")


def quantize_rtn(w: np.ndarray, *, bits: int = 4, group_size: int = 128, sym: bool = False,
                 per_tensor: bool = False) -> QuantResult:
    """Round-to-nearest with the GPTQ reference's conventions (see :mod:`qviz.formats.rtn`).

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    bits : int
        2..8.
    group_size : int
        Consecutive input columns per group; -1 for per channel. The last
        group of a row is shorter when ``group_size`` does not divide it.
    sym : bool
        Symmetric (zero fixed at 2**(bits-1)) instead of asymmetric.
    per_tensor : bool
        One scale (and zero) for the whole matrix; ``group_size`` must still
        be valid (it is then unused).
    """
    g = check_group_size(group_size, w.shape[1])  # checked even when per_tensor leaves it unused
    if per_tensor:
        g = w.shape[1]
    from qviz.kernels.numba.rtn import choose_params_and_quantize  # numba loads on first use

    # formats/rtn.py's choose_params and quantize in one numba pass: the same numbers
    codes, scales, zeros = choose_params_and_quantize(
        w, int(bits), sym=bool(sym), group_size=g, per_tensor=bool(per_tensor))
    return QuantResult("rtn", w.shape, bits, g, codes, scales, None if sym else zeros,
                       info={"sym": sym, "per_tensor": per_tensor})


register_method(Method(
    "rtn", "RTN", quantize_rtn,
    (BITS, GROUP_SIZE, SYM, Option("per_tensor", "bool", False, "one scale for the whole matrix",
                                   control=True)),
    exports=AFFINE_EXPORTS, quantlinear=True))


def quantize_gptq(w: np.ndarray, *, bits: int = 4, group_size: int = 128, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, damp: float = 0.01,
                  blocksize: int = 128, calib=None, hessian=None, device=None) -> QuantResult:
    """GPTQ (Frantar et al. 2022, Algorithm 1), as IST-DASLab/gptq's ``fasterquant``.

    See :mod:`qviz.algorithms.gptq`. The grid is RTN's (same scales, zeros, codes
    rule); GPTQ chooses what each weight rounds from.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    bits, group_size, sym
        As for ``"rtn"``.
    act_order : bool
        Quantize columns by descending Hessian diagonal; the result's
        ``g_idx`` gives each column's group when groups are not contiguous.
    static_groups : bool
        Fix every group's scale/zero up front from the original weights.
    damp : float
        Damping, a fraction of mean(diag(H)); raised ×10 while the Cholesky fails.
    blocksize : int
        Columns per lazy batch update.
    calib : array_like, shape (n_samples, n_cols), optional
        The layer's input activations; ``H = (2/n)·XᵀX``.
    hessian : array_like, shape (n_cols, n_cols), optional
        A precomputed Hessian instead of ``calib`` (exactly one is required).
    device : str, optional
        Where the algorithm runs: ``"cpu"`` (default) or ``"cuda"``.
    """
    g = check_group_size(group_size, w.shape[1])
    from qviz.algorithms import gptq  # torch loads only when GPTQ runs
    from qviz.arrays import torch_device

    dev = torch_device(device)
    H = gptq.resolve_hessian(w.shape[1], calib, hessian).to(dev)
    if dev.type != "cpu":
        w = gptq.as_tensor(w, dev)
    return gptq.gptq(w, H, gptq.RTNFormat(int(bits), bool(sym), g), act_order=act_order,
                     static_groups=static_groups, damp=damp, blocksize=blocksize)


register_method(Method(
    "gptq", "GPTQ", quantize_gptq,
    (BITS, GROUP_SIZE, SYM,
     Option("act_order", "bool", False, "quantize columns by descending Hessian diagonal", control=True),
     Option("static_groups", "bool", False, "fix every group's scale and zero up front"),
     Option("damp", "float", 0.01, "damping, a fraction of mean(diag(H))", control=True),
     Option("blocksize", "int", 128, "columns per lazy batch update", low=1),
     CALIB,
     Option("hessian", "array", None, "a precomputed Hessian (n_cols, n_cols) instead of calib",
            optional=True),
     DEVICE),
    needs_calibration=True, exports=AFFINE_EXPORTS, quantlinear=True,
    driver="qviz.models.gptq_model:quantize_blocks"))


def quantize_awq(w: np.ndarray, *, bits: int = 4, group_size: int = 128, sym: bool = False,
                 calib=None, duo_scaling: bool = False, clip: bool = True,
                 device=None) -> QuantResult:
    """AWQ (Lin et al. 2024), as mit-han-lab/llm-awq's auto_scale and auto_clip.

    See :mod:`qviz.algorithms.awq`. The codes, scales and zeros are those of the
    scaled weight ``W·diag(s)``; ``input_scale`` holds ``s`` and the layer's own
    weight is what ``dequantize()`` returns.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    bits, group_size : int
        AWQ's ``w_bit`` (4) and ``q_group_size`` (128; -1 per channel).
    sym : bool
        No zero point (AWQ's ``zero_point=False``).
    calib : array_like, shape (n_samples, n_cols)
        The layer's input activations (required).
    duo_scaling : bool
        AutoAWQ's ``s = mean|x|^α / mean|w|^(1-α)``.
    clip : bool
        Search the clip (pass False for query/key projections).
    device : str, optional
        ``"cpu"`` (default) or ``"cuda"``.
    """
    g = check_group_size(group_size, w.shape[1])
    if calib is None:
        raise ValueError(
            f"AWQ needs the layer's input activations: pass calib= of shape (n_samples, {w.shape[1]}), "
            f"e.g. captured with a forward hook on the nn.Linear "
            f"(layer.register_forward_hook(lambda m, args, out: xs.append(args[0]))) while running the "
            f"model on some text (see qviz.io.calib); a few hundred tokens are enough")
    from qviz.algorithms import awq  # torch loads only when AWQ runs

    return awq.awq(w, calib, awq.AWQFormat(int(bits), g, zero_point=not sym),
                   duo_scaling=duo_scaling, clip=clip, device=device)


register_method(Method(
    "awq", "AWQ", quantize_awq,
    (BITS, GROUP_SIZE, SYM, CALIB,
     Option("duo_scaling", "bool", False, "AutoAWQ's s = mean|x|^a / mean|w|^(1-a)", control=True),
     Option("clip", "bool", True, "search the clip (off for query/key projections)", control=True),
     DEVICE),
    needs_calibration=True, exports=AFFINE_EXPORTS, quantlinear=True,
    driver="qviz.models.awq_model:quantize_blocks"))


def quantize_kmeans(w: np.ndarray, *, bits: int = 3, importance=None, n_init: int = 1,
                    random_state: int = 0) -> QuantResult:
    """Per-row weighted k-means codebooks of ``2**bits`` centroids (SqueezeLLM).

    See :mod:`qviz.algorithms.codebook`.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    bits : int
        2..8.
    importance : array_like, shape (n_cols,), optional
        Column weights of the k-means objective (e.g. ``qviz.imatrix(x)``).
    n_init, random_state : int
        scikit-learn ``KMeans`` starts and seed.
    """
    from qviz.algorithms import codebook

    return codebook.kmeans(w, bits, importance, n_init=n_init, random_state=random_state)


register_method(Method(
    "kmeans", "k-means", quantize_kmeans,
    (Option("bits", "int", 3, "log2 of the centroids per row", low=2, high=8, control=True),
     Option("importance", "array", None, "column weights of the k-means objective, shape (n_cols,)",
            control=True, role="importance", optional=True),
     Option("n_init", "int", 1, "scikit-learn KMeans starts", low=1, control=True),
     Option("random_state", "int", 0, "scikit-learn KMeans seed")),
    ))


# ----------------------------------------------------------------- quant types

def check_imatrix(imatrix, n_cols: int) -> np.ndarray | None:
    """Validate an importance vector (:func:`qviz.arrays.as_importance`) that must be >= 0."""
    if imatrix is None:
        return None
    im = as_importance(imatrix, n_cols, name="imatrix")
    if (im < 0).any():
        raise ValueError(f"imatrix has {int((im < 0).sum())} negative values; importances are "
                         f"means of squared activations and must be >= 0")
    return im


def first_overflowing_block(res: QuantResult, w: np.ndarray, t: QuantType) -> tuple[int, int] | None:
    """(row, column) where a block's stored scale overflowed, or None.

    A block overflowed when its decoded scale or min is not finite, or (only
    possible beyond the scale's range, ``t.scale_max``: Q3_K and Q6_K then store
    a zero scale) when its largest decoded magnitude is under half the
    weight's largest there.
    """
    block_size = t.block_size
    for p in (res.scales, res.mins):
        if p is not None and not np.isfinite(p).all():
            row, group = np.argwhere(~np.isfinite(p))[0]
            return int(row), int(group) * res.group_size
    if max(float(w.max()), -float(w.min())) <= t.scale_max:
        return None  # every scale is at most max|w|: nothing can overflow
    n_rows, n_cols = w.shape
    amax = np.abs(w).reshape(n_rows, -1, block_size).max(axis=2)  # (n_rows, n_blocks)
    dmax = np.abs(res.dequantize()).reshape(n_rows, -1, block_size).max(axis=2)
    lost = np.argwhere(dmax < amax / 2)
    return None if not len(lost) else (int(lost[0][0]), int(lost[0][1]) * block_size)


def resolve_type(name: str, n_cols: int, fallback: bool) -> str:
    """The type a row of ``n_cols`` really gets: ``name``, or llama-quantize's fallback.

    Raises
    ------
    ValueError
        When the row is not a multiple of the block and ``fallback`` is False
        (the message names what llama.cpp would use instead).
    """
    t = quant_type(name)
    if n_cols % t.block_size == 0:
        return t.name
    alt = t.fallback
    alt_ok = alt is not None and n_cols % quant_type(alt).block_size == 0
    if fallback and alt_ok:
        return alt
    hint = (f"llama-quantize falls back to {alt} for such rows (pass fallback=True)" if alt_ok
            else "llama-quantize keeps such tensors in F16")
    raise ValueError(f"{t.name} needs rows that are a multiple of its block size "
                     f"{t.block_size}, but the rows have {n_cols} columns; {hint}")


def quantize_type(w: np.ndarray, name: str, *, imatrix=None, backend: str = "numba",
                  fallback: bool = False) -> QuantResult:
    """A quant type, byte-identical to its owner's (ggml's ``ggml_quantize_chunk``).

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    name : str
        A registered type, e.g. ``"Q4_K"`` (:func:`qviz.registry.types`).
    imatrix : array_like, shape (n_cols,), optional
        llama.cpp importance (mean squared activation per input column).
    backend : {"numba", "numpy"}
        The fast kernel or the readable reference (same bytes).
    fallback : bool
        Use llama-quantize's fallback type for rows that are not a multiple
        of the block, instead of raising.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; valid backends: {', '.join(BACKENDS)}")
    real = resolve_type(name, w.shape[1], fallback)
    t = quant_type(real)
    im = check_imatrix(imatrix, w.shape[1])
    if im is None and t.requires_imatrix:
        raise ValueError(f"{t.name} needs an importance matrix (imatrix=, e.g. qviz.imatrix(x)): "
                         f"llama-quantize refuses it without one (\"Missing importance matrix for tensor "
                         f"in a very low-bit quantization. The result will be garbage, so bailing out\")")
    res = type_result(real, t.function("quantize", backend)(w, im))
    bad = first_overflowing_block(res, w, t)
    rescaled = False
    if bad is not None and im is not None and im.max() > 0:
        # ggml's search overflows float32 for huge importances; only their ratios matter
        res = type_result(real, t.function("quantize", backend)(w, im / im.max()))
        bad, rescaled = first_overflowing_block(res, w, t), True
    if bad is not None:
        row, col = bad
        block = col // t.block_size
        cols = slice(block * t.block_size, (block + 1) * t.block_size)
        big = float(np.abs(w[row, cols]).max())
        raise ValueError(f"{t.name}: row {row}, block {block} (columns {cols.start}..{cols.stop - 1}) "
                         f"reaches |w| = {big:g}, so its scale would be beyond {t.scale_format}'s "
                         f"{t.scale_max:g} (inf/NaN, zeros or clipped values when decoded); scale the "
                         f"weight down (and the scale up elsewhere) or keep this tensor in F32")
    info = dict(res.info, imatrix=im is not None, backend=backend)
    if rescaled:
        info["imatrix_rescaled"] = True
    if real != name:
        info["requested"] = name
    return QuantResult(**{**res.__dict__, "info": info})


def type_result(name: str, packed: np.ndarray) -> QuantResult:
    """Wrap packed rows of quant type ``name`` in a :class:`QuantResult`.

    Parameters
    ----------
    name : str
        A registered quant type.
    packed : ndarray, shape (n_rows, row_bytes), uint8
        The owner's bytes, ``row_bytes`` a multiple of the type size.
    """
    t = quant_type(name)
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] % t.type_size:
        raise ValueError(f"{t.name} rows are whole blocks of {t.type_size} bytes; "
                         f"got packed shape {packed.shape}")
    u = t.function("unpack", "numba")(packed)  # the numba twin of the reference's unpack: same arrays
    n_cols = packed.shape[1] // t.type_size * t.block_size
    return QuantResult(t.name, (packed.shape[0], n_cols), t.bits, t.group_size,
                       u.codes, u.scales, None, u.mins, u.codebook, packed)


def type_names() -> list[str]:
    """Every registered quant type's name."""
    return list(types())
