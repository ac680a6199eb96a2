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

AWQ's per-input-column scale ``s`` (a result's ``input_scale``, kept where no
op before the layer could absorb ``1/s``) is stored as AutoAWQ stores it for
layers that read an activation: AutoAWQ wraps that activation in a
``ScaledActivation`` whose parameter ``<activation>.scales`` (fp16, (in,))
divides the activation's output, so the layer computes
``Q(W·diag(s)) · (act(x) / s)``. Which layers read which activation is
recorded in the safetensors metadata (``"qviz.scaled_activations"``, JSON
``{activation: [layer, …]}``) so that :func:`load_awq` puts ``s`` back in each
result's ``input_scale``. A layer whose ``s`` has no such activation (it reads
a LayerNorm that also feeds the residual, as in post-LayerNorm BERT) cannot be
written: export raises naming it. GPTQ checkpoints have no input scale at all.

A checkpoint is written as a whole folder: into a temporary folder beside the
target, then renamed into place, so a failed export leaves nothing behind and
a folder never holds half a checkpoint or the configs of an older one. A
non-empty target is refused unless ``overwrite=True``, which replaces it whole.
Reading checks every config field against the tensors' shapes and never
unpickles anything.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
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
#: bit widths GPTQ checkpoints pack
GPTQ_BITS = (2, 3, 4, 8)
FP16_MAX = 65504.0
#: smallest normal fp16: input scales below it would lose precision when stored
FP16_TINY = 6.103515625e-05
#: safetensors metadata key: JSON {activation module: [layer, …]} of AWQ input scales
SCALED_ACTIVATIONS_KEY = "qviz.scaled_activations"

#: config keys that follow from the results and may not be overridden
_DERIVED = ("bits", "group_size", "sym", "desc_act", "static_groups", "quant_method",
            "checkpoint_format", "zero_point", "version", "model_file_base_name")


def layer_name(name) -> str:
    """A checkpoint's layer name: ``name`` without a trailing ``.weight`` (a non-empty string)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"layer names must be non-empty strings, got {name!r}")
    return name[: -len(".weight")] if name.endswith(".weight") else name


def check_results(results) -> dict[str, QuantResult]:
    """``{layer name: QuantResult}`` checked: a non-empty mapping, results only, names unique.

    Raises
    ------
    TypeError, ValueError
        Naming the entry and the fix.
    """
    if not isinstance(results, Mapping) or not results:
        raise TypeError("results must be a non-empty dict {layer name: QuantResult}, "
                        f"got {type(results).__name__}")
    out = {}
    for name, r in results.items():
        layer = layer_name(name)
        if not isinstance(r, QuantResult):
            raise TypeError(f"results[{name!r}] is a {type(r).__name__}, not a QuantResult "
                            f"(quantize it with qviz.quantize(w, method), e.g. 'gptq', 'rtn', 'fp8')")
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


def check_unrotated(name: str, r: QuantResult, checkpoint: str) -> None:
    """Refuse a result quantized after a rotation: ``checkpoint`` files hold no rotation of the input.

    Raises
    ------
    ValueError
        Naming the layer and the fix (quantize without ``rotate=``).
    """
    if r.rotation is not None:
        raise ValueError(f"layer {name!r} was quantized after a rotation (rotate={r.rotation.kind!r}): its "
                         f"codes are those of W·R, and {checkpoint} checkpoints hold no rotation for the "
                         f"layer's input, so a loader would compute with the wrong weights. Quantize it "
                         f"without rotate= to export it")


def _check_method(name: str, r: QuantResult, checkpoint: str) -> None:
    """Only affine results (scale·(code − zero) per group) of an exporting method fit a checkpoint."""
    check_unrotated(name, r, checkpoint.upper())
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


def check_target(folder: Path, overwrite: bool) -> None:
    """Refuse a non-folder, or a non-empty folder without ``overwrite`` (or one that is no checkpoint)."""
    if not (folder.exists() or folder.is_symlink()):
        return
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder; choose a folder path for the checkpoint")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return
    shown = ", ".join(entries[:5]) + (" …" if len(entries) > 5 else "")
    if not overwrite:
        raise FileExistsError(f"{folder} is not empty ({len(entries)} entries: {shown}); a checkpoint is "
                              f"written as a whole folder: pass overwrite=True to replace it whole "
                              f"(everything in it is deleted), or choose a new or empty folder")
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    if subfolders:
        raise ValueError(f"overwrite=True replaces a checkpoint folder whole, but {folder} holds "
                         f"sub-folders ({', '.join(subfolders[:5])}), so it is not one; nothing was "
                         f"deleted: choose another folder")


def write_folder(folder, files: dict, overwrite: bool) -> Path:
    """Write a complete folder: ``files[name](path)`` into a temporary folder beside it, then rename.

    A failure leaves neither the temporary folder nor a changed target; with
    ``overwrite`` the old folder is swapped out and deleted only once the new
    one is in place.
    """
    folder = Path(os.path.abspath(folder))
    check_target(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    tmp = folder.parent / f".{folder.name}.{tag}.part"
    old = None
    tmp.mkdir()
    try:
        for name, write in files.items():
            write(tmp / name)
        if folder.exists() or folder.is_symlink():
            old = folder.parent / f".{folder.name}.{tag}.old"
            os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except BaseException:
            if old is not None:
                os.rename(old, folder)
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
        if old is not None:
            if old.is_symlink() or not old.is_dir():
                old.unlink(missing_ok=True)
            else:
                shutil.rmtree(old, ignore_errors=True)
    return folder


def _write_checkpoint(folder, tensors: dict, extra, config_file: str, derived: dict, config: dict,
                      model_config, overwrite: bool, metadata: dict | None = None) -> Path:
    """Write ``tensors`` (and ``extra``) and the quantization config merged from ``derived`` and ``config``.

    ``config_file`` names the config's file; with a ``model_config``,
    ``config.json`` holds it too (its ``"quantization_config"``). The folder
    is written whole (:func:`write_folder`).
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
    meta = {"format": "pt", **(metadata or {})}
    files = {WEIGHTS_FILE: lambda path: save_file(tensors, str(path), metadata=meta)}
    for file_name, text in texts.items():
        files[file_name] = lambda path, text=text: path.write_text(text)
    return write_folder(folder, files, overwrite)


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
    if r.bits not in GPTQ_BITS:
        raise ValueError(f"layer {name!r} has {r.bits}-bit codes; GPTQ checkpoints pack "
                         f"{', '.join(map(str, GPTQ_BITS))} bits: quantize with one of those")
    if r.input_scale is not None:
        raise ValueError(f"layer {name!r} keeps an AWQ input scale s (its codes are those of "
                         f"W·diag(s)); GPTQ checkpoints have no place for s, so the layer would decode "
                         f"to Q(W·diag(s)) instead of its weight: write it with export_awq (which stores "
                         f"s where an activation precedes the layer), or quantize it with 'gptq'/'rtn'")
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
        why = (f"32 is not a multiple of {r.bits}, so AWQ's interleaved word has no {r.bits}-bit layout"
               if 32 % r.bits else "AutoAWQ's GEMM kernels pack only 4-bit codes")
        raise ValueError(f"layer {name!r} has {r.bits}-bit codes: {why}; AWQ-GEMM checkpoints hold "
                         f"{AWQ_BITS}-bit codes only: quantize with bits={AWQ_BITS}, or write a GPTQ "
                         f"checkpoint (export_gptq takes {', '.join(map(str, GPTQ_BITS))} bits)")
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
                model_config: Mapping | None = None, overwrite: bool = False, **config) -> Path:
    """Write a GPTQ checkpoint: ``model.safetensors`` and ``quantize_config.json``.

    Parameters
    ----------
    results : dict of str to QuantResult
        Layer name (``".weight"`` is dropped) -> an affine result ("gptq",
        "rtn" or "awq") of shape (out, in). All layers share bits, sym and
        group size; ``out`` and ``in`` fill whole int32 words (multiples of
        8 for 4 bits, 32 for 3 bits) and ``in`` whole groups.
    folder : str or path
        A new or empty folder (created with its parents if missing). The
        checkpoint is written into a temporary folder beside it and renamed
        into place: a failed export leaves nothing.
    checkpoint_format : {"gptq", "gptq_v2"}
        v1 (AutoGPTQ) stores zero − 1, so a zero point of 0 cannot be written
        (use v2, GPTQModel's layout, which stores the zero).
    extra : dict of str to array, optional
        Unquantized tensors to store as given (biases, norms, embeddings).
    model_config : dict, optional
        The model's Hugging Face config; when given, ``config.json`` is
        written with it and ``"quantization_config"`` set, as transformers reads it.
    overwrite : bool
        Replace a non-empty ``folder`` whole (everything in it is deleted once
        the new checkpoint is in place; a folder with sub-folders is refused).
        Without it a non-empty folder raises ``FileExistsError``.
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
    results = check_results(results)
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
    return _write_checkpoint(folder, tensors, extra, GPTQ_CONFIG_FILE, derived, config, model_config,
                             overwrite)


def export_awq(results: Mapping[str, QuantResult], folder: str | os.PathLike, *,
               scaled_activations: Mapping[str, str] | None = None, extra: Mapping | None = None,
               model_config: Mapping | None = None, overwrite: bool = False, **config) -> Path:
    """Write an AWQ-GEMM checkpoint: ``model.safetensors`` and ``quant_config.json``.

    Parameters
    ----------
    results : dict of str to QuantResult
        Layer name -> a 4-bit affine result ("awq", "rtn", "gptq" without
        act_order), shape (out, in), ``out`` a multiple of 8, ``in`` of the
        group size. Symmetric results are written with their implied zero 8
        (GEMM kernels always read zeros, so ``zero_point`` is true).
    folder : str or path
        A new or empty folder, written whole (see :func:`export_gptq`).
    scaled_activations : dict of str to str, optional
        Layer name -> module name of the activation whose output the layer
        reads (``"transformer.h.0.mlp.act"``), for results that keep their
        AWQ scale ``s`` (``input_scale``). ``s`` is stored as that module's
        ``scales`` (fp16, (in,)), AutoAWQ's ``ScaledActivation`` parameter.
        Default: each result's ``info["scaled_activation"]``, which
        :func:`qviz.models.quantize_model` sets where it knows the activation.
    extra : dict of str to array, optional
        Unquantized tensors to store as given.
    model_config : dict, optional
        The model's Hugging Face config; ``config.json`` is written with
        ``"quantization_config"`` set (where AutoAWQ and transformers read it).
    overwrite : bool
        Replace a non-empty ``folder`` whole (see :func:`export_gptq`).
    **config
        Further config entries (``modules_to_not_convert``).

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    ValueError
        Results that keep an input scale with no activation to hold it (the
        message lists them), layers sharing an activation with different
        scales, scales beyond fp16's normal range, and the layout errors of
        :func:`awq_tensors`.

    Notes
    -----
    AutoAWQ keeps AWQ's per-input-channel scaling ``s`` out of the layer: it
    folds ``1/s`` into the preceding operation (a norm or linear), or, before
    a layer that reads an activation (GELU), divides the activation's output
    by ``s`` (``ScaledActivation``). An "awq" result's codes and scales are
    those of ``W·diag(s)``. Where ``s`` was folded (``input_scale`` None, the
    op before divided by ``s``), pass that op's new weights in ``extra`` for a
    runnable model. Where the result keeps ``s``, it is written as the
    activation's ``scales`` or, without an activation, refused: a checkpoint
    without ``s`` would decode to ``Q(W·diag(s))``, not the layer's weight.
    """
    results = check_results(results)
    tensors = {}
    for name, r in results.items():
        tensors.update(awq_tensors(name, r))
    acts = _activation_scales(results, scaled_activations)
    for act, (s, layers) in acts.items():
        key = f"{act}.scales"
        if key in tensors or act in results:
            raise ValueError(f"activation {act!r} (holding the input scale of {', '.join(layers)}) has the "
                             f"name of a quantized layer or tensor; name the activation module")
        tensors[key] = s
    metadata = {}
    if acts:
        metadata[SCALED_ACTIVATIONS_KEY] = json.dumps({act: layers for act, (_, layers) in acts.items()})
    derived = {
        "quant_method": "awq",
        "zero_point": True,
        "group_size": _config_group_size(results),
        "bits": AWQ_BITS,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    return _write_checkpoint(folder, tensors, extra, AWQ_CONFIG_FILE, derived, config, model_config,
                             overwrite, metadata)


def _activation_scales(results: dict[str, QuantResult], scaled_activations) -> dict:
    """Activation -> (s as fp16 (in,), [layers]) for every result that keeps an input scale.

    Raises naming every layer whose scale no activation can hold.
    """
    if scaled_activations is not None and not isinstance(scaled_activations, Mapping):
        raise TypeError(f"scaled_activations must be a dict {{layer: activation module name}}, "
                        f"got {type(scaled_activations).__name__}")
    given = {layer_name(k): v for k, v in (scaled_activations or {}).items()}
    unknown = sorted(set(given) - set(results))
    if unknown:
        raise ValueError(f"scaled_activations names layers that are not among the results: {', '.join(unknown)}")
    acts: dict[str, tuple[np.ndarray, list[str]]] = {}
    homeless = []
    for name, r in results.items():
        if r.input_scale is None:
            continue
        act = given.get(name, r.info.get("scaled_activation"))
        if act is None:
            homeless.append(name)
            continue
        if not isinstance(act, str) or not act:
            raise TypeError(f"the activation of layer {name!r} must be a module name, got {act!r}")
        s = np.asarray(r.input_scale, np.float32).reshape(-1)
        if s.shape != (r.shape[1],):
            raise ValueError(f"layer {name!r} has {s.size} input scales for {r.shape[1]} input columns")
        if not (np.isfinite(s).all() and (s >= FP16_TINY).all() and (s <= FP16_MAX).all()):
            bad = s[~(np.isfinite(s) & (s >= FP16_TINY) & (s <= FP16_MAX))]
            raise ValueError(f"layer {name!r} has input scales outside fp16's normal range "
                             f"[{FP16_TINY:g}, {FP16_MAX:g}] (e.g. {float(bad[0]):g}); checkpoints "
                             f"store them in fp16")
        s16 = s.astype(np.float16)
        if act in acts:
            if not np.array_equal(acts[act][0], s16):
                raise ValueError(f"layers {', '.join(acts[act][1])} and {name!r} read activation {act!r} "
                                 f"but have different input scales; one activation holds one scale")
            acts[act][1].append(name)
        else:
            acts[act] = (s16, [name])
    if homeless:
        shown = ", ".join(homeless[:8]) + (f" … ({len(homeless)} in all)" if len(homeless) > 8 else "")
        raise ValueError(
            f"{len(homeless)} layer(s) keep an AWQ input scale s that no op before them absorbed: {shown}. "
            f"Their codes are those of W·diag(s), and an AWQ checkpoint without s would decode to "
            f"Q(W·diag(s)) instead of the layer's weight. AutoAWQ holds s only in the op before a layer "
            f"(a norm or Linear divided by s) or in a ScaledActivation before it: pass "
            f"scaled_activations={{layer: activation module name}} for layers that read an activation "
            f"(a GELU), and quantize the others (e.g. layers reading a LayerNorm that also feeds the "
            f"residual, as in post-LayerNorm BERT) with 'rtn' or 'gptq', or leave them out. Where you "
            f"have divided the op before a layer by s yourself, export dataclasses.replace(result, "
            f"input_scale=None) and that op's new weights in extra=")
    return acts


def _read_config(folder: Path, method: str) -> tuple[dict, str]:
    """The quantization config of a checkpoint folder, checked to be ``method``'s, and its file name.

    Looks in ``quantize_config.json`` (AutoGPTQ), ``quant_config.json`` (AutoAWQ)
    and ``config.json``'s ``quantization_config``, in that order.
    """
    cfg, source = None, None
    for file_name, default in ((GPTQ_CONFIG_FILE, "gptq"), (AWQ_CONFIG_FILE, "awq"), ("config.json", None)):
        path = folder / file_name
        if path.is_file():
            try:
                cfg = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from None
            if not isinstance(cfg, dict):
                raise ValueError(f"{path} holds a {type(cfg).__name__}, not a JSON object")
            cfg = cfg.get("quantization_config") if file_name == "config.json" else cfg
            if cfg is not None:
                if not isinstance(cfg, dict):
                    raise ValueError(f"{path}: quantization_config is a {type(cfg).__name__}, not an object")
                cfg = {"quant_method": default, **cfg}
                source = file_name
                break
    if cfg is None:
        raise FileNotFoundError(f"{folder} has neither {GPTQ_CONFIG_FILE}, {AWQ_CONFIG_FILE} nor a "
                                f"config.json with quantization_config: not a {method} checkpoint")
    cfg = {"bits": cfg.get("w_bit"), "group_size": cfg.get("q_group_size"), **cfg}  # AutoAWQ's old names
    found = cfg["quant_method"]
    if found != method:
        other = {"gptq": "load_gptq", "awq": "load_awq"}.get(found, "another reader")
        raise ValueError(f"{folder} holds a {found!r} checkpoint, not {method!r}; read it with {other}")
    return cfg, source


def _config_int(cfg: dict, key: str, source: str, valid: tuple | None, fix: str) -> int:
    """An integer field of a config (not a bool), in ``valid`` when given."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or (valid is not None and value not in valid):
        raise ValueError(f"{source}: {key}={value!r} is not valid; {fix}")
    return value


def _config_bool(cfg: dict, key: str, source: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {key}={value!r} is not valid; it must be true or false")
    return value


def _config_group_size_field(cfg: dict, source: str) -> int:
    g = cfg.get("group_size")
    if isinstance(g, bool) or not isinstance(g, int) or not (g == -1 or g >= 1):
        raise ValueError(f"{source}: group_size={g!r} is not valid; it must be -1 (per channel) or a "
                         f"positive number of input columns")
    return g


def _layers(folder: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], dict, dict]:
    """Tensors of the checkpoint's files.

    Returns
    -------
    layers : dict
        Layer -> {part: array} for every tensor named ``<layer>.qweight/.qzeros/.scales/.g_idx``
        of a layer that has a qweight.
    act_scales : dict
        ``<module>.scales`` tensors of modules without a qweight (AutoAWQ's
        ``ScaledActivation`` scales), by module name.
    where : dict
        Tensor name -> the file it came from.
    metadata : dict
        The files' safetensors metadata, merged.
    """
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors file")
    layers: dict[str, dict[str, np.ndarray]] = {}
    where, metadata = {}, {}
    for path in files:
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata.update(f.metadata() or {})
                for key in f.keys():
                    layer, _, part = key.rpartition(".")
                    if part in ("qweight", "qzeros", "scales", "g_idx") and layer:
                        layers.setdefault(layer, {})[part] = f.get_tensor(key)
                        where[key] = path.name
        except (OSError, ValueError, TypeError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    act_scales = {k: v["scales"] for k, v in layers.items() if "qweight" not in v and "scales" in v}
    layers = {k: v for k, v in layers.items() if "qweight" in v}
    if not layers:
        raise ValueError(f"{folder} has no '<layer>.qweight' tensors: not a GPTQ/AWQ checkpoint")
    return layers, act_scales, where, metadata


def _tensor(name: str, parts: dict, part: str, shape: tuple, dtype, where: dict, why: str = "") -> np.ndarray:
    key = f"{name}.{part}"
    if part not in parts:
        raise ValueError(f"layer {name!r} has a qweight but no {key}")
    t = parts[part]
    if t.shape != shape or t.dtype != np.dtype(dtype):
        raise ValueError(f"{key} (in {where.get(key, '?')}) is {t.dtype} {t.shape}, expected "
                         f"{np.dtype(dtype)} {shape}{why}")
    return t


def _check_scales(name: str, scales: np.ndarray, where: dict) -> None:
    bad = ~np.isfinite(scales)
    if bad.any():
        g, o = (int(i) for i in np.argwhere(bad)[0])
        key = f"{name}.scales"
        raise ValueError(f"{key} (in {where.get(key, '?')}) holds {int(bad.sum())} non-finite scale(s), "
                         f"the first at (group, output) = ({g}, {o}): the checkpoint is damaged")


def _expected_groups(name: str, n_cols: int, group_cfg: int, n_groups: int, source: str, where: dict) -> int:
    """The group size of a layer: the config's (-1 or >= n_cols: one group), checked against the scales."""
    group_size = n_cols if group_cfg == -1 else min(group_cfg, n_cols)
    want = -(-n_cols // group_size)
    if n_groups != want:
        key = f"{name}.scales"
        raise ValueError(f"group_size={group_cfg} in {source} contradicts layer {name!r}: {n_cols} input "
                         f"columns in groups of {group_size} make {want} group(s), but {key} "
                         f"(in {where.get(key, '?')}) has {n_groups} rows")
    return group_size


def _check_g_idx(name: str, g_idx: np.ndarray, n_groups: int, group_size: int, where: dict) -> None:
    """Group ids within [0, G), each group holding ``group_size`` columns (the last fewer)."""
    key = f"{name}.g_idx"
    bad = (g_idx < 0) | (g_idx >= n_groups)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{key} (in {where.get(key, '?')}) holds group id {int(g_idx[i])} at column {i}, "
                         f"outside [0, {n_groups}) ({n_groups} groups of scales)")
    n_cols = g_idx.shape[0]
    want = np.full(n_groups, group_size)
    want[-1] = n_cols - group_size * (n_groups - 1)
    counts = np.bincount(g_idx, minlength=n_groups)
    if not np.array_equal(counts, want):
        g = int(np.argmax(counts != want))
        raise ValueError(f"{key} (in {where.get(key, '?')}) puts {int(counts[g])} columns in group {g}; "
                         f"with group_size={group_size} every group holds {group_size} columns "
                         f"(the last {int(want[-1])})")


def _result(method: str, codes, scales, zeros, bits: int, group_size: int,
            sym: bool, g_idx, info: dict, input_scale=None) -> QuantResult:
    n_rows, n_cols = codes.shape
    zeros = zeros.astype(np.float32)
    if sym and (zeros == (1 << (bits - 1))).all():
        zeros = None
    if g_idx is not None and np.array_equal(g_idx, np.arange(n_cols) // group_size):
        g_idx = None
    return QuantResult(method, (n_rows, n_cols), bits, group_size, codes,
                       np.ascontiguousarray(scales, np.float32), zeros,
                       g_idx=None if g_idx is None else g_idx.astype(np.int32),
                       input_scale=input_scale, info=info)


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

    Raises
    ------
    ValueError
        A config field that is missing or invalid (``bits`` not 2/3/4/8,
        ``group_size`` not -1 or positive, non-boolean ``sym``/``desc_act``),
        or that contradicts a layer's tensors (shapes and dtypes of
        ``qweight``/``qzeros``/``scales``/``g_idx``, group ids out of range,
        groups of the wrong size, ``sym`` with other zero points, non-finite
        scales). The message names the file, tensor and field.
    """
    folder = Path(folder)
    cfg, source = _read_config(folder, "gptq")
    fmt = cfg.get("checkpoint_format", "gptq")
    if fmt not in GPTQ_FORMATS:
        raise ValueError(f"{source}: checkpoint_format {fmt!r} is not read here; readable: "
                         f"{', '.join(GPTQ_FORMATS)}")
    bits = _config_int(cfg, "bits", source, GPTQ_BITS,
                       f"GPTQ checkpoints pack {', '.join(map(str, GPTQ_BITS))}-bit codes")
    group_cfg = _config_group_size_field(cfg, source)
    sym = _config_bool(cfg, "sym", source, True)
    info = {"checkpoint_format": fmt, "sym": sym, "desc_act": _config_bool(cfg, "desc_act", source, False)}
    per_word = 32 // math.gcd(32, bits)
    layers, _, where, _ = _layers(folder)
    out = {}
    for name, parts in layers.items():
        qweight = parts["qweight"]
        if qweight.ndim != 2 or (qweight.shape[0] * 32) % bits:
            raise ValueError(f"{name}.qweight (in {where.get(name + '.qweight', '?')}) has shape "
                             f"{qweight.shape}; {bits}-bit GPTQ codes need a 2-D (in·{bits}/32, out) "
                             f"tensor{' whose rows are a multiple of 3' if bits == 3 else ''}")
        n_cols, n_rows = qweight.shape[0] * 32 // bits, qweight.shape[1]
        _tensor(name, parts, "qweight", (n_cols * bits // 32, n_rows), np.int32, where)
        if n_rows % per_word:
            raise ValueError(f"layer {name!r} has {n_rows} outputs; {bits}-bit zero points packed into "
                             f"int32 words (qzeros) need a multiple of {per_word}: bits={bits} in {source} "
                             f"does not fit this layer")
        scales = parts.get("scales")
        n_groups = scales.shape[0] if scales is not None and scales.ndim == 2 else 0
        scales = _tensor(name, parts, "scales", (n_groups, n_rows), np.float16, where)
        qzeros = _tensor(name, parts, "qzeros", (n_groups, n_rows * bits // 32), np.int32, where,
                         f" ({n_groups} groups × {n_rows} outputs of {bits} bits, as bits={bits} in {source})")
        _check_scales(name, scales, where)
        group_size = _expected_groups(name, n_cols, group_cfg, n_groups, source, where)
        g_idx = None
        if "g_idx" in parts:
            g_idx = _tensor(name, parts, "g_idx", (n_cols,), np.int32, where)
            _check_g_idx(name, g_idx, n_groups, group_size, where)
        codes = np.ascontiguousarray(unpack(np.ascontiguousarray(qweight.T), bits, "gptq"))  # (out, in)
        zeros = unpack(qzeros, bits, "gptq").T.astype(np.int64)                                # (out, G)
        if fmt == "gptq":
            zeros = zeros + 1  # what AutoGPTQ's kernels add back
        mid = 1 << (bits - 1)
        if sym and (zeros != mid).any():
            o, g = (int(i) for i in np.argwhere(zeros != mid)[0])
            raise ValueError(f"sym=true in {source}, but {name}.qzeros holds zero point {int(zeros[o, g])} "
                             f"at (output, group) = ({o}, {g}); symmetric {bits}-bit checkpoints store "
                             f"{mid}{' (as ' + str(mid - 1) + ', v1 stores zero − 1)' if fmt == 'gptq' else ''}")
        out[name] = _result("gptq", codes, scales.T, zeros, bits, group_size, sym, g_idx, dict(info))
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
        float32 (out, G) (the stored fp16 values), zeros float32 (out, G),
        ``input_scale`` float32 (in,) where the checkpoint's metadata names an
        activation scale the layer reads (:func:`export_awq`), so that
        ``dequantize()`` is the layer's weight. Other ``<module>.scales``
        tensors without a qweight (AutoAWQ's ``ScaledActivation`` scales
        whose readers are not recorded) give a warning: those layers decode
        to ``Q(W·diag(s))``.

    Raises
    ------
    ValueError
        As :func:`load_gptq`: invalid config fields (``bits``/``w_bit`` not
        4, ``version`` not gemm, ``group_size`` not -1 or positive), tensors
        that contradict them or each other, activation scales that are not
        positive finite (in,) vectors.
    """
    folder = Path(folder)
    cfg, source = _read_config(folder, "awq")
    version = str(cfg.get("version", "gemm")).lower()
    bits = AWQ_BITS if cfg.get("bits") is None else cfg["bits"]  # AwqConfig's default
    if version != "gemm" or isinstance(bits, bool) or bits != AWQ_BITS:
        raise ValueError(f"{source}: only {AWQ_BITS}-bit AWQ 'gemm' checkpoints are read here; this one "
                         f"says bits={bits!r}, version={cfg.get('version')!r}")
    group_cfg = _config_group_size_field(cfg, source)
    info = {"version": "gemm", "zero_point": _config_bool(cfg, "zero_point", source, True)}
    layers, act_scales, where, metadata = _layers(folder)
    readers = _scaled_activation_readers(metadata, act_scales, layers)
    per_word = 32 // AWQ_BITS
    out = {}
    for name, parts in layers.items():
        qweight = parts["qweight"]
        if qweight.ndim != 2:
            raise ValueError(f"{name}.qweight (in {where.get(name + '.qweight', '?')}) has shape "
                             f"{qweight.shape}; AWQ codes are a 2-D (in, out/{per_word}) tensor")
        n_cols, n_rows = qweight.shape[0], qweight.shape[1] * per_word
        _tensor(name, parts, "qweight", (n_cols, n_rows // per_word), np.int32, where)
        scales = parts.get("scales")
        n_groups = scales.shape[0] if scales is not None and scales.ndim == 2 else 0
        scales = _tensor(name, parts, "scales", (n_groups, n_rows), np.float16, where,
                         f" ({n_rows} outputs, from {name}.qweight's {n_rows // per_word} words per input)")
        qzeros = _tensor(name, parts, "qzeros", (n_groups, n_rows // per_word), np.int32, where)
        _check_scales(name, scales, where)
        group_size = _expected_groups(name, n_cols, group_cfg, n_groups, source, where)
        if n_cols % group_size:
            raise ValueError(f"layer {name!r} has {n_cols} input columns ({name}.qweight's rows), not a "
                             f"multiple of group_size={group_cfg} in {source}; AWQ-GEMM layers hold whole "
                             f"groups")
        codes = np.ascontiguousarray(unpack(qweight, AWQ_BITS, "awq").T)  # (out, in)
        zeros = unpack(qzeros, AWQ_BITS, "awq").T                          # (out, G)
        s_in = None
        if name in readers:
            act = readers[name]
            s = act_scales[act]
            key = f"{act}.scales"
            if s.shape != (n_cols,) or s.dtype.kind != "f":
                raise ValueError(f"{key} (in {where.get(key, '?')}) is {s.dtype} {s.shape}; layer {name!r} "
                                 f"reads it and has {n_cols} input columns: expected float ({n_cols},)")
            s_in = s.astype(np.float32)
            if not (np.isfinite(s_in).all() and (s_in > 0).all()):
                raise ValueError(f"{key} (in {where.get(key, '?')}) holds scales that are not positive and "
                                 f"finite: the checkpoint is damaged")
        out[name] = _result("awq", codes, scales.T, zeros, AWQ_BITS, group_size, False, None,
                            dict(info), input_scale=s_in)
    return out


def _scaled_activation_readers(metadata: dict, act_scales: dict, layers: dict) -> dict[str, str]:
    """Layer -> the activation whose ``scales`` it reads, from :data:`SCALED_ACTIVATIONS_KEY`."""
    text = metadata.get(SCALED_ACTIVATIONS_KEY)
    mapping = {}
    if text is not None:
        try:
            mapping = json.loads(text)
        except ValueError:
            mapping = None
        if not isinstance(mapping, dict) or not all(
                isinstance(a, str) and isinstance(ls, list) and all(isinstance(x, str) for x in ls)
                for a, ls in mapping.items()):
            raise ValueError(f"the safetensors metadata {SCALED_ACTIVATIONS_KEY!r} must be JSON "
                             f"{{activation: [layer, …]}}, got {text[:200]!r}")
    readers = {}
    for act, names in mapping.items():
        if act not in act_scales:
            raise ValueError(f"the metadata says {', '.join(names)} read activation scales {act}.scales, "
                             f"but the checkpoint has no such tensor")
        for n in names:
            if n not in layers:
                raise ValueError(f"the metadata says layer {n!r} reads {act}.scales, but the checkpoint "
                                 f"has no {n}.qweight")
            readers[n] = act
    unread = sorted(set(act_scales) - set(mapping))
    if unread:
        warnings.warn(f"the checkpoint holds activation scales {', '.join(a + '.scales' for a in unread[:4])} "
                      f"(AutoAWQ's ScaledActivation) without a record of the layers that read them; those "
                      f"layers' results decode to Q(W·diag(s)): divide their columns by the scales",
                      stacklevel=3)
    return readers
