"""GPTQ and AWQ checkpoints (safetensors) from QuantResults, and back.

A checkpoint folder holds ``model.safetensors`` and a JSON config; every
quantized ``nn.Linear`` called ``name`` (out × in, ``G`` groups of
``group_size`` input columns) becomes a few int32/fp16 tensors.

GPTQ (AutoGPTQ's ``QuantLinear.pack``, ``quantize_config.json``)::

    name.qweight  int32 (in·bits/32, out)   codes packed along the INPUT dim:
                                            word r of column o holds inputs
                                            r·32/bits … (LSB first, see below)
    name.qzeros   int32 (G, out·bits/32)    zero points packed along the OUTPUT dim;
                                            v1 ("gptq") stores zero − 1,
                                            v2 ("gptq_v2", GPTQModel) stores zero
    name.scales   fp16  (G, out)
    name.g_idx    int32 (in,)               group of every input column

    4-bit word, codes k..k+7 of one column (GPTQ order, a plain bit stream):
    bit   31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
    code   k+7    k+6    k+5    k+4    k+3    k+2   k+1    k+0

AWQ-GEMM (AutoAWQ's ``WQLinear_GEMM.from_linear``, 4-bit only)::

    name.qweight  int32 (in, out/8)         codes packed along the OUTPUT dim
    name.qzeros   int32 (G, out/8)          zero points, same order, no −1
    name.scales   fp16  (G, out)

    word of outputs k..k+7 (AWQ order [0, 2, 4, 6, 1, 3, 5, 7]):
    bit   31..28 27..24 23..20 19..16 15..12 11..8  7..4   3..0
    code   k+7    k+5    k+3    k+1    k+6    k+4   k+2    k+0

Both decode ``w = scale · (code − zero)``, the rule of every affine
:class:`~qviz.result.QuantResult` (no mins, no codebook) of a method whose
registry record lists the format in its ``exports`` ("rtn", "gptq", "awq"
list both; :func:`exporters`): the codes are
written as the result holds them (AutoGPTQ and AutoAWQ instead re-round the
float weight against the fp16 scales, which can move a code by one), and the
scales are stored in fp16, as both tools store them. Symmetric results store
their implied zero ``2**(bits-1)`` (v1: ``2**(bits-1) - 1``, the familiar
``0x77777777`` of 4-bit symmetric AutoGPTQ checkpoints).

Files are written to a temporary name in the target folder and renamed, so a
folder never holds half a checkpoint; reading never unpickles anything.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from qviz import registry
from qviz.formats.pack import check_pack_args
from qviz.kernels.numba.pack import pack, unpack
from qviz.result import QuantResult

#: ``checkpoint_format`` values: AutoGPTQ's v1 (zero − 1 stored) and GPTQModel's v2 (zero stored)
GPTQ_FORMATS = ("gptq", "gptq_v2")
WEIGHTS_FILE = "model.safetensors"
GPTQ_CONFIG_FILE = "quantize_config.json"
AWQ_CONFIG_FILE = "quant_config.json"
#: the only width AutoAWQ's GEMM kernels pack
AWQ_BITS = 4
FP16_MAX = 65504.0

#: config keys that follow from the results and may not be overridden
_DERIVED = ("bits", "group_size", "sym", "desc_act", "static_groups", "quant_method",
            "checkpoint_format", "zero_point", "version", "model_file_base_name")


def _layer_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"layer names must be non-empty strings, got {name!r}")
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _check_results(results) -> dict[str, QuantResult]:
    if not isinstance(results, Mapping) or not results:
        raise TypeError("results must be a non-empty dict {layer name: QuantResult}, "
                        f"got {type(results).__name__}")
    out = {}
    for name, r in results.items():
        layer = _layer_name(name)
        if not isinstance(r, QuantResult):
            raise TypeError(f"results[{name!r}] is a {type(r).__name__}, not a QuantResult "
                            f"(quantize it with qviz.quantize(w, 'gptq' or 'rtn'))")
        if layer in out:
            raise ValueError(f"two results are both called {layer!r} (with and without '.weight')")
        out[layer] = r
    return out


def exporters(checkpoint: str) -> list[str]:
    """The methods whose records list ``checkpoint`` (``"gptq"``, ``"awq"``) in their ``exports``.

    Examples
    --------
    >>> exporters("awq")
    ['rtn', 'gptq', 'awq']
    """
    return [n for n, m in registry.methods().items() if checkpoint in m.exports]


def _check_method(name: str, r: QuantResult, checkpoint: str) -> None:
    """Only affine results (scale·(code − zero) per group) of an exporting method fit a checkpoint."""
    method = registry.METHODS.get(r.method)
    if r.mins is None and r.codebook is None and method is not None and checkpoint in method.exports:
        return
    kind = " (with mins)" if r.mins is not None else " (with a codebook)" if r.codebook is not None else ""
    raise ValueError(
        f"layer {name!r} is a {r.method!r} result{kind}; {checkpoint.upper()} checkpoints hold affine "
        f"integer codes decoded as scale·(code − zero). Quantize it with one of "
        f"{', '.join(exporters(checkpoint))} (GGUF types are written as GGUF files: qviz.gguf.requantize)")


def _affine_params(name: str, r: QuantResult) -> tuple[np.ndarray, np.ndarray]:
    """Scales and whole-number zeros of an affine result, broadcast to (out, G).

    Returns
    -------
    scales : ndarray, shape (n_rows, n_groups), float32
    zeros : ndarray, shape (n_rows, n_groups), int64
    """
    n_rows = r.shape[0]
    scales = np.broadcast_to(np.asarray(r.scales, np.float32), (n_rows, r.n_groups))
    if not np.isfinite(scales).all() or (np.abs(scales) > FP16_MAX).any():
        raise ValueError(f"layer {name!r} has scales beyond fp16's range (±{FP16_MAX:g}); "
                         f"checkpoints store scales in fp16")
    if r.zeros is None:
        zeros = np.full((n_rows, r.n_groups), 1 << (r.bits - 1), dtype=np.int64)
    else:
        z = np.broadcast_to(np.asarray(r.zeros, np.float32), (n_rows, r.n_groups))
        if not np.array_equal(z, np.rint(z)):
            raise ValueError(f"layer {name!r} has zero points that are not whole numbers; "
                             f"checkpoints store integer zeros")
        zeros = z.astype(np.int64)
    return np.ascontiguousarray(scales), zeros


def _check_zero_range(name: str, zeros: np.ndarray, bits: int, lo: int, fix: str) -> None:
    """Zeros must fit the stored field: ``lo <= zero <= lo + 2**bits - 1``."""
    hi = lo + (1 << bits) - 1
    bad = (zeros < lo) | (zeros > hi)
    if bad.any():
        row, group = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"layer {name!r}: {int(bad.sum())} zero point(s) outside [{lo}, {hi}], "
                         f"the first {int(zeros[row, group])} at (row, group) = ({row}, {group}); {fix}")


def _check_width(name: str, what: str, n: int, bits: int) -> None:
    """A dimension of ``n`` ``bits``-wide codes must fill whole int32 words."""
    try:
        check_pack_args(n, bits, "gptq")
    except ValueError:
        multiple = 32 // math.gcd(32, bits)
        raise ValueError(f"layer {name!r} has {n} {what}; {bits}-bit codes packed into int32 "
                         f"words need a multiple of {multiple}") from None


def _check_groups(name: str, r: QuantResult) -> None:
    n_cols = r.shape[1]
    if r.n_groups > 1 and n_cols % r.group_size:
        raise ValueError(f"layer {name!r} has {n_cols} input columns, not a multiple of its "
                         f"group size {r.group_size}; checkpoint kernels need whole groups "
                         f"(choose a group size that divides {n_cols}, or -1 for per channel)")


def _config_group_size(results: dict[str, QuantResult]) -> int:
    """One group size for the whole checkpoint; -1 when every layer is per channel."""
    sizes = {r.group_size for r in results.values() if r.n_groups > 1}
    if len(sizes) > 1:
        raise ValueError(f"the layers use different group sizes {sorted(sizes)}; a checkpoint "
                         f"has one group_size: quantize every layer with the same one")
    if not sizes:
        return -1
    size = int(sizes.pop())
    for name, r in results.items():
        if r.n_groups == 1 and r.shape[1] > size:
            raise ValueError(f"layer {name!r} is per channel ({r.shape[1]} columns in one group) "
                             f"but the others use groups of {size}")
    return size


def _common(results: dict[str, QuantResult], attr: str, get) -> object:
    values = {name: get(r) for name, r in results.items()}
    if len(set(values.values())) > 1:
        raise ValueError(f"the layers disagree on {attr}: {values}; a checkpoint has one {attr}")
    return next(iter(values.values()))


def _is_sym(r: QuantResult) -> bool:
    return r.zeros is None


def _merge_config(derived: dict, config: dict) -> dict:
    for key, value in config.items():
        if key in _DERIVED and key in derived and value != derived[key]:
            raise ValueError(f"{key}={value!r} contradicts the results ({key}={derived[key]!r}); "
                             f"it is read from the results, leave it out")
    return {**derived, **{k: v for k, v in config.items() if k not in _DERIVED}}


def _as_array(obj) -> np.ndarray:
    if hasattr(obj, "detach"):  # a torch tensor; torch is never imported here
        t = obj.detach().cpu()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()
    return np.asarray(obj)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary name next to ``path``, then rename it."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.part"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_checkpoint(folder, tensors: dict, extra, config_file: str, derived: dict, config: dict,
                      model_config) -> Path:
    """Write ``tensors`` (and ``extra``) and the quantization config merged from ``derived`` and ``config``.

    ``config_file`` names the config's file; with a ``model_config``,
    ``config.json`` holds it too (its ``"quantization_config"``).
    """
    from safetensors.numpy import save_file

    quant_config = _merge_config(derived, config)
    configs = {config_file: quant_config}
    if model_config is not None:
        configs["config.json"] = _model_config(model_config, quant_config)
    for key, value in (extra or {}).items():
        if key in tensors:
            raise ValueError(f"extra tensor {key!r} has the name of a quantized tensor")
        tensors[key] = np.ascontiguousarray(_as_array(value))
    texts = {file_name: json.dumps(obj, indent=2) + "\n" for file_name, obj in configs.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / WEIGHTS_FILE,
                  lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    for file_name, text in texts.items():
        _atomic_write(folder / file_name, lambda tmp: tmp.write_text(text))
    return folder


def _model_config(model_config, quant_config: dict) -> dict:
    if not isinstance(model_config, Mapping):
        raise TypeError(f"model_config must be a dict (e.g. model.config.to_dict()), "
                        f"got {type(model_config).__name__}")
    return {**model_config, "quantization_config": quant_config}


def gptq_tensors(name: str, r: QuantResult, checkpoint_format: str = "gptq") -> dict[str, np.ndarray]:
    """The four GPTQ tensors of one layer.

    Parameters
    ----------
    name : str
        Layer name, the prefix of the tensor names.
    r : QuantResult
        An affine result ("rtn", "gptq", "awq"), shape (out, in), 2/3/4/8 bits.
    checkpoint_format : {"gptq", "gptq_v2"}

    Returns
    -------
    dict
        ``name.qweight`` int32 (in·bits/32, out), ``name.qzeros`` int32
        (G, out·bits/32), ``name.scales`` float16 (G, out), ``name.g_idx``
        int32 (in,).

    Examples
    --------
    >>> codes = np.arange(8, dtype=np.uint8)[None].repeat(8, 0)   # (8 out, 8 in)
    >>> r = QuantResult("rtn", (8, 8), 4, 8, codes, np.ones((8, 1), np.float32))
    >>> t = gptq_tensors("fc", r)
    >>> hex(t["fc.qweight"].view(np.uint32)[0, 0]), hex(t["fc.qzeros"].view(np.uint32)[0, 0])
    ('0x76543210', '0x77777777')
    """
    if checkpoint_format not in GPTQ_FORMATS:
        raise ValueError(f"checkpoint_format={checkpoint_format!r}; valid formats: "
                         f"{', '.join(GPTQ_FORMATS)} (v1 stores zero − 1, v2 the zero itself)")
    _check_method(name, r, "gptq")
    if r.bits not in (2, 3, 4, 8):
        raise ValueError(f"layer {name!r} has {r.bits}-bit codes; GPTQ checkpoints pack 2, 3, 4 or 8 bits")
    n_rows, n_cols = r.shape
    _check_width(name, "input columns", n_cols, r.bits)
    _check_width(name, "output rows", n_rows, r.bits)
    _check_groups(name, r)
    scales, zeros = _affine_params(name, r)
    v1 = checkpoint_format == "gptq"
    _check_zero_range(name, zeros, r.bits, 1 if v1 else 0,
                      "AutoGPTQ's v1 layout stores zero − 1 and cannot hold a zero of 0: write "
                      "checkpoint_format='gptq_v2'" if v1 else "quantize with this bit width")
    stored = (zeros - 1 if v1 else zeros).astype(np.uint8)  # (out, G)
    g_idx = (np.arange(n_cols, dtype=np.int32) // r.group_size if r.g_idx is None
             else np.asarray(r.g_idx, np.int32))
    return {
        f"{name}.qweight": np.ascontiguousarray(pack(r.codes, r.bits, "gptq").T),  # (in·bits/32, out)
        f"{name}.qzeros": pack(np.ascontiguousarray(stored.T), r.bits, "gptq"),   # (G, out·bits/32)
        f"{name}.scales": np.ascontiguousarray(scales.T.astype(np.float16)),     # (G, out)
        f"{name}.g_idx": g_idx,
    }


def awq_tensors(name: str, r: QuantResult) -> dict[str, np.ndarray]:
    """The three AWQ-GEMM tensors of one layer.

    Parameters
    ----------
    name : str
    r : QuantResult
        A 4-bit affine result with contiguous groups, shape (out, in).

    Returns
    -------
    dict
        ``name.qweight`` int32 (in, out/8), ``name.qzeros`` int32 (G, out/8),
        ``name.scales`` float16 (G, out).

    Examples
    --------
    >>> codes = np.arange(8, dtype=np.uint8)[:, None].repeat(8, 1)  # code = output row
    >>> r = QuantResult("rtn", (8, 8), 4, 8, codes, np.ones((8, 1), np.float32))
    >>> hex(awq_tensors("fc", r)["fc.qweight"].view(np.uint32)[0, 0])
    '0x75316420'
    """
    _check_method(name, r, "awq")
    if r.bits != AWQ_BITS:
        why = ("32 is not a multiple of 3, so AWQ's interleaved word has no 3-bit layout"
               if 32 % r.bits else "AutoAWQ's GEMM kernels pack only 4-bit codes")
        raise ValueError(f"layer {name!r} has {r.bits}-bit codes: {why}; quantize with bits=4, "
                         f"or write a GPTQ checkpoint (export_gptq takes 2, 3, 4 and 8 bits)")
    if r.g_idx is not None:
        raise ValueError(f"layer {name!r} has act_order groups (a g_idx per column); AWQ "
                         f"checkpoints have no g_idx: quantize without act_order (or with "
                         f"static_groups=True), or write a GPTQ checkpoint")
    n_rows, n_cols = r.shape
    if n_rows % (32 // AWQ_BITS):
        raise ValueError(f"layer {name!r} has {n_rows} output rows; AWQ packs 8 outputs per "
                         f"int32 word and needs a multiple of 8")
    _check_groups(name, r)
    scales, zeros = _affine_params(name, r)
    _check_zero_range(name, zeros, r.bits, 0, "quantize with this bit width")
    return {
        f"{name}.qweight": pack(np.ascontiguousarray(r.codes.T), AWQ_BITS, "awq"),        # (in, out/8)
        f"{name}.qzeros": pack(np.ascontiguousarray(zeros.T.astype(np.uint8)), AWQ_BITS, "awq"),  # (G, out/8)
        f"{name}.scales": np.ascontiguousarray(scales.T.astype(np.float16)),             # (G, out)
    }


def export_gptq(results: Mapping[str, QuantResult], folder: str | os.PathLike,
                checkpoint_format: str = "gptq", *, extra: Mapping | None = None,
                model_config: Mapping | None = None, **config) -> Path:
    """Write a GPTQ checkpoint: ``model.safetensors`` and ``quantize_config.json``.

    Parameters
    ----------
    results : dict of str to QuantResult
        Layer name (``".weight"`` is dropped) -> an affine result ("gptq",
        "rtn" or "awq") of shape (out, in). All layers share bits, sym and
        group size; ``out`` and ``in`` fill whole int32 words (multiples of
        8 for 4 bits, 32 for 3 bits) and ``in`` whole groups.
    folder : str or path
        Created if missing; ``model.safetensors`` and the configs in it are replaced.
    checkpoint_format : {"gptq", "gptq_v2"}
        v1 (AutoGPTQ) stores zero − 1, so a zero point of 0 cannot be written
        (use v2, GPTQModel's layout, which stores the zero).
    extra : dict of str to array, optional
        Unquantized tensors to store as given (biases, norms, embeddings).
    model_config : dict, optional
        The model's Hugging Face config; when given, ``config.json`` is
        written with it and ``"quantization_config"`` set, as transformers reads it.
    **config
        Further ``quantize_config.json`` entries: ``damp_percent`` (default the
        smallest damping the GPTQ results used, else 0.01), ``true_sequential``
        (default True), ``model_name_or_path``. Layout keys follow from the
        results and may only repeat them.

    Returns
    -------
    Path
        The folder.

    Examples
    --------
    >>> import tempfile, qviz
    >>> w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    >>> folder = export_gptq({"fc": qviz.quantize(w, "rtn", bits=4, group_size=32)}, tempfile.mkdtemp())
    >>> sorted(p.name for p in folder.iterdir())
    ['model.safetensors', 'quantize_config.json']
    """
    results = _check_results(results)
    tensors = {}
    for name, r in results.items():
        tensors.update(gptq_tensors(name, r, checkpoint_format))
    damps = [r.info["damp"] for r in results.values() if "damp" in r.info]
    derived = {
        "bits": _common(results, "bits", lambda r: int(r.bits)),
        "group_size": _config_group_size(results),
        "damp_percent": float(min(damps)) if damps else 0.01,
        "desc_act": any(bool(r.info.get("act_order")) for r in results.values()),
        "static_groups": any(bool(r.info.get("static_groups")) for r in results.values()),
        "sym": _common(results, "sym", _is_sym),
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": Path(WEIGHTS_FILE).stem,
        "quant_method": "gptq",
        "checkpoint_format": checkpoint_format,
    }
    return _write_checkpoint(folder, tensors, extra, GPTQ_CONFIG_FILE, derived, config, model_config)


def export_awq(results: Mapping[str, QuantResult], folder: str | os.PathLike, *,
               extra: Mapping | None = None, model_config: Mapping | None = None,
               **config) -> Path:
    """Write an AWQ-GEMM checkpoint: ``model.safetensors`` and ``quant_config.json``.

    Parameters
    ----------
    results : dict of str to QuantResult
        Layer name -> a 4-bit affine result ("awq", "rtn", "gptq" without
        act_order), shape (out, in), ``out`` a multiple of 8, ``in`` of the
        group size. Symmetric results are written with their implied zero 8
        (GEMM kernels always read zeros, so ``zero_point`` is true).
    folder : str or path
    extra : dict of str to array, optional
        Unquantized tensors to store as given.
    model_config : dict, optional
        The model's Hugging Face config; ``config.json`` is written with
        ``"quantization_config"`` set (where AutoAWQ and transformers read it).
    **config
        Further config entries (``modules_to_not_convert``).

    Returns
    -------
    Path
        The folder.

    Notes
    -----
    AWQ's per-input-channel scaling ``s`` is not stored in the layer: AutoAWQ
    folds ``1/s`` into the preceding operation (a norm or linear). An "awq"
    result's codes and scales are those of ``W·diag(s)`` (``s`` is its
    ``input_scale``), which is what is written here; divide the
    preceding op by ``s`` (or pass it in ``extra``) for a runnable model.
    """
    results = _check_results(results)
    tensors = {}
    for name, r in results.items():
        tensors.update(awq_tensors(name, r))
    derived = {
        "quant_method": "awq",
        "zero_point": True,
        "group_size": _config_group_size(results),
        "bits": AWQ_BITS,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    return _write_checkpoint(folder, tensors, extra, AWQ_CONFIG_FILE, derived, config, model_config)


def _read_config(folder: Path, method: str) -> dict:
    """The quantization config of a checkpoint folder, checked to be ``method``'s.

    Looks in ``quantize_config.json`` (AutoGPTQ), ``quant_config.json`` (AutoAWQ)
    and ``config.json``'s ``quantization_config``, in that order.
    """
    cfg = None
    for file_name, default in ((GPTQ_CONFIG_FILE, "gptq"), (AWQ_CONFIG_FILE, "awq"), ("config.json", None)):
        path = folder / file_name
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg = cfg.get("quantization_config") if file_name == "config.json" else cfg
            if cfg is not None:
                cfg = {"quant_method": default, **cfg}
                break
    if cfg is None:
        raise FileNotFoundError(f"{folder} has neither {GPTQ_CONFIG_FILE}, {AWQ_CONFIG_FILE} nor a "
                                f"config.json with quantization_config: not a {method} checkpoint")
    cfg = {"bits": cfg.get("w_bit"), "group_size": cfg.get("q_group_size"), **cfg}  # AutoAWQ's old names
    found = cfg["quant_method"]
    if found != method:
        other = {"gptq": "load_gptq", "awq": "load_awq"}.get(found, "another reader")
        raise ValueError(f"{folder} holds a {found!r} checkpoint, not {method!r}; read it with {other}")
    return cfg


def _layers(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every tensor whose name ends in .qweight/.qzeros/.scales/.g_idx, by layer."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors file")
    layers: dict[str, dict[str, np.ndarray]] = {}
    for path in files:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                layer, _, part = key.rpartition(".")
                if part in ("qweight", "qzeros", "scales", "g_idx") and layer:
                    layers.setdefault(layer, {})[part] = f.get_tensor(key)
    layers = {k: v for k, v in layers.items() if "qweight" in v}
    if not layers:
        raise ValueError(f"{folder} has no '<layer>.qweight' tensors: not a GPTQ/AWQ checkpoint")
    return layers


def _tensor(name: str, parts: dict, part: str, shape: tuple, dtype) -> np.ndarray:
    if part not in parts:
        raise ValueError(f"layer {name!r} has a qweight but no {part}")
    t = parts[part]
    if t.shape != shape or t.dtype != np.dtype(dtype):
        raise ValueError(f"layer {name!r}: {part} is {t.dtype} {t.shape}, expected "
                         f"{np.dtype(dtype)} {shape}")
    return t


def _result(method: str, name: str, codes, scales, zeros, bits: int, group_cfg: int,
            sym: bool, g_idx, info: dict) -> QuantResult:
    n_rows, n_cols = codes.shape
    group_size = n_cols if group_cfg in (-1, None) else min(int(group_cfg), n_cols)
    zeros = zeros.astype(np.float32)
    if sym and (zeros == (1 << (bits - 1))).all():
        zeros = None
    if g_idx is not None and np.array_equal(g_idx, np.arange(n_cols) // group_size):
        g_idx = None
    n_groups = scales.shape[1]
    if g_idx is None and n_groups != -(-n_cols // group_size):
        raise ValueError(f"layer {name!r} has {n_groups} groups of scales, but {n_cols} columns in "
                         f"groups of {group_size} make {-(-n_cols // group_size)}")
    return QuantResult(method, (n_rows, n_cols), bits, group_size, codes,
                       np.ascontiguousarray(scales, np.float32), zeros,
                       g_idx=None if g_idx is None else g_idx.astype(np.int32), info=info)


def load_gptq(folder: str | os.PathLike) -> dict[str, QuantResult]:
    """Read a GPTQ checkpoint (v1 or v2) back into QuantResults.

    Parameters
    ----------
    folder : str or path
        Holds ``*.safetensors`` and ``quantize_config.json`` (or a
        ``config.json`` with ``quantization_config``).

    Returns
    -------
    dict of str to QuantResult
        Layer name -> ``method="gptq"`` result: codes uint8 (out, in), scales
        float32 (out, G) (the stored fp16 values), zeros float32 (None for a
        symmetric checkpoint whose zeros are all ``2**(bits-1)``), g_idx when
        the groups are not consecutive columns.
    """
    folder = Path(folder)
    cfg = _read_config(folder, "gptq")
    fmt = cfg.get("checkpoint_format", "gptq")
    if fmt not in GPTQ_FORMATS:
        raise ValueError(f"checkpoint_format {fmt!r} is not read here; readable: {', '.join(GPTQ_FORMATS)}")
    bits = int(cfg["bits"])
    info = {"checkpoint_format": fmt, "sym": bool(cfg.get("sym", True)),
            "desc_act": bool(cfg.get("desc_act", False))}
    out = {}
    for name, parts in _layers(folder).items():
        qweight = parts["qweight"]
        n_cols, n_rows = qweight.shape[0] * 32 // bits, qweight.shape[1]
        _tensor(name, parts, "qweight", (n_cols * bits // 32, n_rows), np.int32)
        scales = parts.get("scales")
        n_groups = 0 if scales is None else scales.shape[0]
        scales = _tensor(name, parts, "scales", (n_groups, n_rows), np.float16)
        qzeros = _tensor(name, parts, "qzeros", (n_groups, n_rows * bits // 32), np.int32)
        g_idx = _tensor(name, parts, "g_idx", (n_cols,), np.int32) if "g_idx" in parts else None
        codes = np.ascontiguousarray(unpack(np.ascontiguousarray(qweight.T), bits, "gptq"))  # (out, in)
        zeros = unpack(qzeros, bits, "gptq").T.astype(np.int64)                                # (out, G)
        if fmt == "gptq":
            zeros = zeros + 1  # what AutoGPTQ's kernels add back
        out[name] = _result("gptq", name, codes, scales.T, zeros, bits, cfg.get("group_size"),
                            info["sym"], g_idx, dict(info))
    return out


def load_awq(folder: str | os.PathLike) -> dict[str, QuantResult]:
    """Read an AWQ-GEMM checkpoint back into QuantResults.

    Parameters
    ----------
    folder : str or path
        Holds ``*.safetensors`` and ``quant_config.json`` (or a ``config.json``
        with ``quantization_config``).

    Returns
    -------
    dict of str to QuantResult
        Layer name -> ``method="awq"`` result: codes uint8 (out, in), scales
        float32 (out, G) (the stored fp16 values), zeros float32 (out, G).
    """
    folder = Path(folder)
    cfg = _read_config(folder, "awq")
    version = str(cfg.get("version", "gemm")).lower()
    if version != "gemm" or int(cfg.get("bits", AWQ_BITS)) != AWQ_BITS:
        raise ValueError(f"only 4-bit AWQ 'gemm' checkpoints are read here; this one is "
                         f"{cfg.get('bits')}-bit {version!r}")
    info = {"version": "gemm", "zero_point": bool(cfg.get("zero_point", True))}
    out = {}
    for name, parts in _layers(folder).items():
        qweight = parts["qweight"]
        n_cols, n_rows = qweight.shape[0], qweight.shape[1] * 32 // AWQ_BITS
        _tensor(name, parts, "qweight", (n_cols, n_rows * AWQ_BITS // 32), np.int32)
        n_groups = parts["scales"].shape[0] if "scales" in parts else 0
        scales = _tensor(name, parts, "scales", (n_groups, n_rows), np.float16)
        qzeros = _tensor(name, parts, "qzeros", (n_groups, n_rows * AWQ_BITS // 32), np.int32)
        codes = np.ascontiguousarray(unpack(qweight, AWQ_BITS, "awq").T)  # (out, in)
        zeros = unpack(qzeros, AWQ_BITS, "awq").T                          # (out, G)
        out[name] = _result("awq", name, codes, scales.T, zeros, AWQ_BITS, cfg.get("group_size"),
                            False, None, dict(info))
    return out
