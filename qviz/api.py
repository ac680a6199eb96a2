"""The public entry points: ``quantize`` and ``dequantize``.

``quantize`` validates and normalizes its input once, picks the method, and
wraps what the method returns in a :class:`QuantResult`. Methods are small
functions registered in :data:`METHODS`; every GGUF type of
:data:`qviz.formats.spec.FORMATS` is a method too, implemented by its numpy
reference and its numba kernel (``backend=``).
"""
from __future__ import annotations

import importlib
import inspect

import numpy as np

from qviz.arrays import as_weight, check_finite, check_group_size
from qviz.formats.spec import FORMATS, MODULES, layout
from qviz.result import QuantResult

BACKENDS = ("numba", "numpy")


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"bits={bits!r}: choose an integer from 2 to 8")


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
        One scale (and zero) for the whole matrix.
    """
    _check_bits(bits)
    g = w.shape[1] if per_tensor else check_group_size(group_size, w.shape[1])
    from qviz.kernels.numba.rtn import choose_params_and_quantize  # numba loads on first use

    # formats/rtn.py's choose_params and quantize in one numba pass: the same numbers
    codes, scales, zeros = choose_params_and_quantize(
        w, int(bits), sym=bool(sym), group_size=g, per_tensor=bool(per_tensor))
    return QuantResult("rtn", w.shape, bits, g, codes, scales, None if sym else zeros,
                       info={"sym": sym, "per_tensor": per_tensor})


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
    _check_bits(bits)
    g = check_group_size(group_size, w.shape[1])
    from qviz.algorithms import gptq  # torch loads only when GPTQ runs
    from qviz.arrays import torch_device

    dev = torch_device(device)
    H = gptq.resolve_hessian(w.shape[1], calib, hessian).to(dev)
    if dev.type != "cpu":
        w = gptq._tensor(w, dev)
    return gptq.gptq(w, H, gptq.RTNFormat(int(bits), bool(sym), g), act_order=act_order,
                     static_groups=static_groups, damp=damp, blocksize=blocksize)



def quantize_awq(w: np.ndarray, *, bits: int = 4, group_size: int = 128, sym: bool = False,
                 calib=None, duo_scaling: bool = False, clip: bool = True,
                 device=None) -> QuantResult:
    """AWQ (Lin et al. 2024), as mit-han-lab/llm-awq's auto_scale and auto_clip.

    See :mod:`qviz.algorithms.awq`. The codes, scales and zeros are those of the
    scaled weight ``W·diag(s)``; ``info["input_scale"]`` holds ``s`` and the
    layer's own weight is ``dequantize() / info["input_scale"]``.

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
    _check_bits(bits)
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


def quantize_nf4(w: np.ndarray, *, group_size: int = 64) -> QuantResult:
    """QLoRA's NF4: 16 normal-float levels times each block's absmax (fp16).

    See :mod:`qviz.algorithms.codebook`.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    group_size : int
        Columns per block (64; -1 per row).
    """
    from qviz.algorithms import codebook

    return codebook.nf4(w, group_size)

def _gguf_modules(name: str, backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; valid backends: {', '.join(BACKENDS)}")
    ref, kernel = MODULES[layout(name).family]
    return importlib.import_module(f"qviz.{ref}"), importlib.import_module(f"qviz.{kernel if backend == 'numba' else ref}")


def check_imatrix(imatrix, n_cols: int) -> np.ndarray | None:
    """Validate an importance vector: float32 (n_cols,), finite, >= 0."""
    if imatrix is None:
        return None
    im = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32)).reshape(-1)
    if im.shape[0] != n_cols:
        raise ValueError(f"imatrix has {im.shape[0]} values but the rows have {n_cols} columns; "
                         f"pass one importance per input column")
    check_finite(im[None, :], "imatrix")
    if (im < 0).any():
        raise ValueError(f"imatrix has {int((im < 0).sum())} negative values; importances are "
                         f"means of squared activations and must be >= 0")
    return im


def resolve_gguf_type(name: str, n_cols: int, fallback: bool) -> str:
    """The type a row of ``n_cols`` really gets: ``name``, or llama-quantize's fallback.

    Raises
    ------
    ValueError
        When the row is not a multiple of the block and ``fallback`` is False
        (the message names what llama.cpp would use instead).
    """
    lay = layout(name)
    if n_cols % lay.block_size == 0:
        return name
    alt = lay.fallback
    alt_ok = alt is not None and n_cols % FORMATS[alt].block_size == 0
    if fallback and alt_ok:
        return alt
    hint = (f"llama-quantize falls back to {alt} for such rows (pass fallback=True)" if alt_ok
            else "llama-quantize keeps such tensors in F16")
    raise ValueError(f"{name} needs rows that are a multiple of its block size "
                     f"{lay.block_size}, but the rows have {n_cols} columns; {hint}")


def quantize_gguf(w: np.ndarray, name: str, *, imatrix=None, backend: str = "numba",
                  fallback: bool = False) -> QuantResult:
    """A GGUF type, byte-identical to ggml's ``ggml_quantize_chunk``.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    name : str
        A type of :data:`qviz.formats.spec.FORMATS`, e.g. ``"Q4_K"``.
    imatrix : array_like, shape (n_cols,), optional
        llama.cpp importance (mean squared activation per input column).
    backend : {"numba", "numpy"}
        The fast kernel or the readable reference (same bytes).
    fallback : bool
        Use llama-quantize's fallback type for rows that are not a multiple
        of the block, instead of raising.
    """
    real = resolve_gguf_type(name, w.shape[1], fallback)
    im = check_imatrix(imatrix, w.shape[1])
    _, impl = _gguf_modules(real, backend)
    packed = getattr(impl, f"quantize_{real.lower()}")(w, im)
    res = gguf_result(real, packed)
    info = dict(res.info, imatrix=im is not None, backend=backend)
    if real != name:
        info["requested"] = name
    return QuantResult(**{**res.__dict__, "info": info})


def gguf_result(name: str, packed: np.ndarray) -> QuantResult:
    """Wrap ggml-packed rows of type ``name`` in a :class:`QuantResult`.

    Parameters
    ----------
    name : str
        A type of :data:`qviz.formats.spec.FORMATS`.
    packed : ndarray, shape (n_rows, row_bytes), uint8
        ggml's bytes, ``row_bytes`` a multiple of the type size.
    """
    lay = layout(name)
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] % lay.type_size:
        raise ValueError(f"{name} rows are whole blocks of {lay.type_size} bytes; "
                         f"got packed shape {packed.shape}")
    _, kernel = _gguf_modules(name, "numba")  # the numba twin of the reference's unpack: same arrays
    u = getattr(kernel, f"unpack_{name.lower()}")(packed)
    n_cols = packed.shape[1] // lay.type_size * lay.block_size
    return QuantResult(name, (packed.shape[0], n_cols), lay.bits, lay.group_size,
                       u.codes, u.scales, None, u.mins, u.codebook, packed)


#: method name -> function(w, **options) -> QuantResult
METHODS = {"rtn": quantize_rtn, "gptq": quantize_gptq, "awq": quantize_awq,
           "kmeans": quantize_kmeans, "nf4": quantize_nf4}


def method_names() -> list[str]:
    """Every method ``quantize`` accepts."""
    return list(METHODS) + list(FORMATS)


def quantize(weight, method: str = "rtn", **options) -> QuantResult:
    """Quantize a 2-D weight.

    Parameters
    ----------
    weight : ndarray, torch.Tensor or nn.Linear, shape (n_rows, n_cols)
        out × in, float16/bfloat16/float32/float64. Never modified.
    method : str
        ``"rtn"``, ``"gptq"``, ``"awq"``, ``"kmeans"``, ``"nf4"`` or a GGUF type
        name (``"Q4_K"``, ``"Q8_0"``, …); :func:`method_names` lists them all.
    **options
        The method's options: for ``"rtn"`` ``bits``, ``group_size``, ``sym``,
        ``per_tensor``; for ``"awq"`` also ``calib``, ``duo_scaling``, ``clip``,
        ``device``; for ``"kmeans"`` ``bits``, ``importance``; for ``"nf4"``
        ``group_size``; for GGUF types ``imatrix``, ``backend``, ``fallback``.

    Returns
    -------
    QuantResult

    Examples
    --------
    >>> import numpy as np, qviz
    >>> w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    >>> qviz.quantize(w, "rtn", bits=4, group_size=128).bits_per_weight
    4.15625
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string such as 'rtn' or 'Q4_K', got {method!r}")
    w = as_weight(weight)
    if method in FORMATS:
        fn = quantize_gguf
        options = dict(options, name=method)
    elif method.lower() in METHODS:
        fn = METHODS[method.lower()]
    else:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(method_names())}")
    params = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = [p for p in params if p not in ("w", "name")]
        raise TypeError(f"method {method!r} takes no option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(valid)}")
    return fn(w, **options)


def dequantize(result: QuantResult) -> np.ndarray:
    """Decode a :class:`QuantResult` to float32, shape (n_rows, n_cols)."""
    if not isinstance(result, QuantResult):
        raise TypeError(f"dequantize takes a QuantResult (from qviz.quantize), got {type(result).__name__}")
    return result.dequantize()
