"""GGUF files out: ``requantize`` writes a copy with its weight matrices re-quantized.

:func:`requantize` reads the source with :func:`qviz.io.gguf_reader.read`,
decides a type per tensor (:func:`requested_type`, then the row-length
fallback of llama-quantize), and writes a new file with gguf-py's
``GGUFWriter``: every weight matrix re-quantized with :func:`qviz.quantize`,
everything else (tensors and metadata) copied byte for byte. The types it
writes are the registered quant types (:mod:`qviz.registry`) and the plain
floats of :data:`FLOAT_TYPES`; ``general.file_type`` comes from the type
records (:func:`file_type`).
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
import logging
import os
import re
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import gguf
import numpy as np
from gguf import GGUFValueType

from qviz import registry
from qviz.io import gguf_recipes
from qviz.io.gguf_reader import GGUFFile, TensorInfo, read, storage_type
from qviz.io.imatrix import read_imatrix
from qviz.quantizers import resolve_type

log = logging.getLogger(__name__)

#: target types besides the registered quant types: plain floats, also used
#: for rows no block divides
FLOAT_TYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
#: ``general.file_type`` of a file of plain floats (``LlamaFileType``)
FLOAT_FILE_TYPES = {"F32": int(gguf.LlamaFileType.ALL_F32), "F16": int(gguf.LlamaFileType.MOSTLY_F16)}

#: weights llama-quantize never quantizes (``llama_model_quantize_impl``,
#: src/llama-quant.cpp): norms, MoE routers, positional and token-type
#: embeddings, Mamba's conv1d, T5's relative position bias
NEVER_QUANTIZED = ("*_norm.weight", "*ffn_gate_inp.weight", "position_embd.weight",
                   "token_types.weight", "*ssm_conv1d.weight", "*attn_rel_b.weight")


def type_names() -> list[str]:
    """Every type :func:`requantize` writes: the registered quant types, then :data:`FLOAT_TYPES`."""
    return [*registry.types(), *FLOAT_TYPES]


def file_type(type_name: str) -> int | None:
    """``general.file_type`` of a file mostly of ``type_name``, or None when it has none.

    A quant type's comes from its record (:attr:`qviz.registry.QuantType.file_type`;
    a K-quant maps to its ``_S`` mix, the one closest to a single type), a
    float type's from :data:`FLOAT_FILE_TYPES`.

    Examples
    --------
    >>> file_type("Q4_K"), file_type("F16")
    (14, 1)
    """
    if type_name in FLOAT_FILE_TYPES:
        return FLOAT_FILE_TYPES[type_name]
    return registry.quant_type(type_name).file_type


class _FileTypes(Mapping):
    """Type name -> :func:`file_type`, for every type that has one; follows the registry."""

    def _table(self) -> dict[str, int]:
        return {n: ft for n in type_names() if (ft := file_type(n)) is not None}

    def __getitem__(self, name: str) -> int:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


#: the ``general.file_type`` of a file that is mostly one type (a live view of :func:`file_type`)
FILE_TYPES: Mapping[str, int] = _FileTypes()


class _Step(NamedTuple):
    """What requantize does with one tensor."""

    info: TensorInfo
    type_name: str  # the type it gets
    quantize: bool  # False: copied unchanged


class _Encoded(bytes):
    """A metadata value's bytes exactly as the source file stores them."""


class _CopyingWriter(gguf.GGUFWriter):
    """``GGUFWriter`` that writes :class:`_Encoded` values byte for byte.

    Re-encoding would lose the element types of nested arrays and cannot
    write empty arrays; a copy keeps every value exact.
    """

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if isinstance(val, _Encoded):
            return (self._pack("I", vtype) if add_vtype else b"") + val
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def check_types(types) -> dict[str, str]:
    """``types`` as a pattern -> type mapping, each type spelled as registered.

    Parameters
    ----------
    types : str or mapping of str to str
        One type for every tensor, or fnmatch patterns -> types. A name
        resolves exactly, else case-insensitively when that is unique.

    Raises
    ------
    ValueError
        For a type :func:`requantize` does not write, naming the closest ones.

    Examples
    --------
    >>> check_types("q4_k"), check_types({"*ffn_down*": "Q6_K", "*": "f16"})
    ({'*': 'Q4_K'}, {'*ffn_down*': 'Q6_K', '*': 'F16'})
    """
    if isinstance(types, str):
        types = {"*": types}
    if not isinstance(types, Mapping):
        raise TypeError(f"types must be a type name such as 'Q4_K' or a mapping of name "
                        f"patterns to type names, got {type(types).__name__}")
    names, out = type_names(), {}
    for pattern, name in types.items():
        if not isinstance(pattern, str):
            raise TypeError(f"types: the key {pattern!r} ({type(pattern).__name__}) is not a "
                            f"pattern; keys are fnmatch patterns of tensor names such as "
                            f"'*ffn_down*' or 'blk.0.attn_q.weight', values type names")
        try:
            out[pattern] = registry.resolve_name(name, names, "type")
        except (TypeError, ValueError) as e:
            raise type(e)(f"types[{pattern!r}]: {e}") from None
    return out


def requested_type(info: TensorInfo, types: Mapping[str, str]) -> str | None:
    """The type asked for tensor ``info``: the first matching pattern's, or None to copy it.

    Only weight matrices are quantized: a tensor of two or more dimensions,
    not empty, whose name ends in ``weight`` and matches none of
    :data:`NEVER_QUANTIZED`.

    Parameters
    ----------
    info : TensorInfo
    types : mapping of str to str
        fnmatch patterns of tensor names -> type names, first match wins.

    Examples
    --------
    >>> info = TensorInfo("blk.0.attn_q.weight", "F32", (4, 64), 1024, 0)
    >>> requested_type(info, {"*ffn*": "Q8_0", "*": "Q4_K"}), requested_type(info, {"*ffn*": "Q8_0"})
    ('Q4_K', None)
    """
    pattern = _deciding_pattern(info, types)
    return None if pattern is None else types[pattern]


def _deciding_pattern(info: TensorInfo, types: Mapping[str, str]) -> str | None:
    """The pattern that decides tensor ``info``'s type (see :func:`requested_type`), or None."""
    if len(info.shape) < 2 or not info.n_elements or not info.name.endswith("weight"):
        return None
    if any(fnmatch.fnmatchcase(info.name, p) for p in NEVER_QUANTIZED):
        return None
    return next((p for p in types if fnmatch.fnmatchcase(info.name, p)), None)


def _real_type(tensor: str, name: str, n_cols: int, fallback: bool) -> str:
    """The type rows of ``n_cols`` really get: ``name``, its fallback, or F16.

    llama.cpp ``llama_tensor_get_type``: a row that is not a multiple of the
    block gets the type's ``fallback``, and F16 when even that does not fit.
    """
    if name in FLOAT_TYPES:
        return name
    try:
        return resolve_type(name, n_cols, fallback)
    except ValueError as e:
        if not fallback:
            raise ValueError(f"tensor {tensor!r}: {e}") from None
        return "F16"


def _check_imatrix(src: GGUFFile, imatrix) -> dict[str, np.ndarray]:
    """``imatrix`` as name -> float32 (n_cols,), each name a tensor of ``src``."""
    if imatrix is None:
        return {}
    if not isinstance(imatrix, Mapping):
        what = type(imatrix).__name__ + (f" of shape {imatrix.shape}" if hasattr(imatrix, "shape") else "")
        raise TypeError(f"imatrix must map tensor names to importance vectors, "
                        f"{{'blk.0.attn_q.weight': ndarray of shape (n_cols,), ...}}, one per tensor "
                        f"(qviz.io.calib.imatrix makes a vector from activations); got {what}")
    out = {}
    for name, v in imatrix.items():
        if not isinstance(name, str):
            raise TypeError(f"imatrix keys are tensor names (str), got {name!r}")
        try:
            n_cols = src.tensor(name).shape[-1]
        except KeyError:
            raise ValueError(f"imatrix has an entry for {name!r}, which is no tensor of "
                             f"{src.path}") from None
        v = np.asarray(v, dtype=np.float32)
        if v.shape != (n_cols,):
            raise ValueError(f"imatrix[{name!r}] has shape {v.shape}; that tensor's rows need "
                             f"one importance per column, shape ({n_cols},)")
        out[name] = v
    return out


class Requantized(dict):
    """What :func:`requantize` wrote: tensor name -> the type it has in the new file.

    A plain ``dict`` for every existing use, with one more attribute.

    Attributes
    ----------
    unmatched : tuple of str
        The ``types`` patterns that decided no tensor's type (they match no
        weight matrix, or an earlier pattern always wins), in the order
        given; empty when every pattern was used.
    """

    unmatched: tuple[str, ...] = ()


def _plan(src: GGUFFile, types: dict[str, str], fallback: bool) -> tuple[list[_Step], tuple[str, ...]]:
    """Each tensor's step, and the patterns that decide none."""
    steps, used = [], set()
    for info in src.tensors:
        pattern = _deciding_pattern(info, types)
        if pattern is None:
            steps.append(_Step(info, info.type_name, False))
        else:
            used.add(pattern)
            steps.append(_Step(info, _real_type(info.name, types[pattern], info.shape[-1],
                                                fallback), True))
    return steps, tuple(p for p in types if p not in used)


def _mostly(plan: list[_Step]) -> str | None:
    """The type that holds most quantized weights, or None when nothing is quantized."""
    weights: dict[str, int] = {}
    for step in plan:
        if step.quantize:
            weights[step.type_name] = weights.get(step.type_name, 0) + step.info.n_elements
    return max(weights, key=weights.get) if weights else None


def _encode(src: GGUFFile, info: TensorInfo, type_name: str, imatrix) -> np.ndarray:
    """Decode tensor ``info`` and store it as ``type_name`` -> uint8 (n_rows, row_bytes)."""
    import qviz

    w = src.decode(info.name).reshape(-1, info.shape[-1])  # (n_rows, n_cols)
    if type_name in FLOAT_TYPES:
        return w.astype(FLOAT_TYPES[type_name]).view(np.uint8)
    try:
        return qviz.quantize(w, type_name, imatrix=imatrix).packed
    except (ValueError, TypeError) as e:  # NaN at (row, col), a scale beyond fp16: name the tensor
        raise type(e)(f"tensor {info.name!r}: {e}") from e


def _write_metadata(src: GGUFFile, plan: list[_Step], kv: dict, path: Path,
                    file_type_id: int | None = None) -> None:
    """Copy every metadata value of ``src`` into ``kv`` byte for byte; set the two keys requantize owns.

    ``general.file_type`` names the type that holds most quantized weights
    (a recipe's own file type, ``file_type_id``, when one is given).
    When that type has no file type, the copied key would be wrong, so it is
    dropped (llama.cpp then guesses the file type from the tensors) and a
    warning is logged. With nothing quantized the source's key stays.
    """
    from gguf.gguf_writer import GGUFValue

    for key in src.metadata:
        vtype, raw = src.encoded(key)
        kv[key] = GGUFValue(_Encoded(raw), vtype)
    mostly = _mostly(plan)
    ftype = file_type_id if file_type_id is not None else None if mostly is None else file_type(mostly)
    if ftype is not None:
        kv["general.file_type"] = GGUFValue(ftype, GGUFValueType.UINT32)
    elif mostly is not None:
        kv.pop("general.file_type", None)
        log.warning("%s: %s holds most weights but has no general.file_type (its QuantType "
                    "sets none); the key is left out", path, mostly)
    kv["general.quantization_version"] = GGUFValue(gguf.GGML_QUANT_VERSION, GGUFValueType.UINT32)


def _write(src: GGUFFile, plan: list[_Step], path: Path, imatrix: dict, progress: bool,
           file_type_id: int | None = None) -> None:
    """Write the planned tensors of ``src`` and its metadata to ``path``."""
    from tqdm.auto import tqdm

    arch = src.metadata.get("general.architecture")
    writer = _CopyingWriter(path, arch if isinstance(arch, str) else "")
    try:
        writer.data_alignment = src.alignment
        _write_metadata(src, plan, writer.kv_data[0], path, file_type_id)
        for info, type_name, _ in plan:
            st = storage_type(type_name)
            # the element shape: with a raw_dtype, GGUFWriter takes a non-uint8 shape as is
            writer.add_tensor_info(info.name, info.shape, np.dtype(np.float32),
                                   info.n_elements // st.block_size * st.type_size,
                                   raw_dtype=st.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for info, type_name, quantize in tqdm(plan, desc="requantize", unit="tensor",
                                              disable=not progress):
            data = (_encode(src, info, type_name, imatrix.get(info.name)) if quantize
                    else src.tensor_bytes(info.name))
            writer.write_tensor_data(data)
    finally:
        writer.close()


def _part(dst: Path) -> Path:
    """The one temporary name of ``dst`` (same folder, so the final rename is atomic)."""
    return dst.parent / f".{dst.name}.part"


def _remove_stale_parts(dst: Path) -> None:
    """Delete ``.<name>.<12 hex>.part`` files that earlier qviz versions left for ``dst``."""
    stale = re.compile(rf"\.{re.escape(dst.name)}\.[0-9a-f]{{12}}\.part")
    with contextlib.suppress(OSError):
        for p in dst.parent.iterdir():
            if stale.fullmatch(p.name):
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(part: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``part`` (creating it), so two writers of one target never share it.

    A process that dies releases its lock, so a stale part is simply reused.
    """
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another requantize is writing {part.parent / part.name[1:-5]} "
                                   f"(it holds {part}); wait for it, or choose another "
                                   f"destination") from None
        yield
    finally:
        os.close(fd)


class _Terminated(BaseException):
    """SIGTERM arrived while requantize was writing."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` inside the block, then deliver it as before.

    So a terminated requantize removes its temporary file. The previous
    handler is restored on the way out, and a SIGTERM that arrived is then
    raised again for it (the default handler ends the process, as it would
    have). Only in the main thread (where Python runs signal handlers), and
    not when SIGTERM is ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN or previous is None:
        yield
        return
    received = []

    def handler(signum, frame):
        if not received:  # once: a second SIGTERM must not interrupt the cleanup
            received.append(signum)
            raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        signal.raise_signal(signal.SIGTERM)
        raise InterruptedError("requantize was interrupted by SIGTERM; its temporary file is removed")


def _warn_unused_imatrix(plan: list[_Step], weights: dict) -> None:
    unused = [step.info.name for step in plan if step.info.name in weights
              and (not step.quantize or step.type_name in FLOAT_TYPES)]
    if unused:
        warnings.warn(f"requantize: imatrix entries for {len(unused)} tensor(s) that are not "
                      f"quantized (copied, or stored as a float type) are unused: "
                      f"{', '.join(map(repr, unused[:8]))}{' …' if len(unused) > 8 else ''}",
                      UserWarning, stacklevel=3)


def _recipe_of(types, recipe, options: dict) -> str | None:
    """The recipe ``requantize`` was asked for (by ``recipe=`` or a recipe name as ``types``), or None."""
    if recipe is not None:
        if types is not None:
            raise ValueError(f"give types={types!r} or recipe={recipe!r}, not both (a recipe decides "
                             f"every tensor's type; tensor_types= overrides it for some)")
        return gguf_recipes.recipe(recipe).name
    if isinstance(types, str):
        try:
            registry.resolve_name(types, type_names(), "type")
        except ValueError:
            if types.casefold() in {r.casefold() for r in gguf_recipes.RECIPES}:
                return gguf_recipes.recipe(types).name  # else check_types names the closest types
    if types is None:
        raise TypeError("requantize needs types= (a type such as 'Q4_K', or patterns -> types) or "
                        "recipe= (a llama-quantize file type such as 'Q4_K_M')")
    # types= always re-quantizes: allow_requantize=True asks for nothing more
    given = [k for k, v in options.items() if v not in (None, False) and k != "allow_requantize"]
    if given:
        also = (f"; for llama-quantize's {types} recipe pass recipe={types!r}"
                if isinstance(types, str) and types.upper() in gguf_recipes.RECIPES else "")
        raise ValueError(f"{', '.join(given)} apply to a llama-quantize recipe (recipe='Q4_K_M', ...); "
                         f"with types={types!r} every matched weight gets its type as given{also}")
    return None


def _recipe_steps(src: GGUFFile, table, imatrix, allow_requantize: bool) -> list[_Step]:
    """A recipe's plan as requantize's steps, refusing what llama-quantize refuses before writing."""
    steps = []
    for info, row in zip(src.tensors, table.rows):
        if row.needs_imatrix and (imatrix is None or row.name not in imatrix):
            raise ValueError(f"{table.recipe.name}: {row.name!r} becomes {row.type}, which llama-quantize "
                             f"refuses to write without an importance matrix for it (\"this quantization "
                             f"requires an imatrix\"); pass imatrix= (a file of llama-imatrix, or "
                             f"qviz.io.calib.imatrix)")
        if row.converted and row.source_type not in FLOAT_TYPES and row.source_type != "BF16" \
                and not allow_requantize:
            raise ValueError(f"{row.name!r} is already quantized ({row.source_type}); re-quantizing it "
                             f"loses more than quantizing the original weights. llama-quantize refuses "
                             f"this unless told: pass allow_requantize=True")
        if row.converted and row.type not in FLOAT_TYPES and row.type not in registry.types():
            raise ValueError(f"{table.recipe.name}: {row.name!r} gets {row.type} ({row.why}), a type qviz "
                             f"cannot write yet (registered: {', '.join(registry.types())})")
        steps.append(_Step(info, row.type, row.converted))
    return steps


def requantize(src: str | os.PathLike, dst: str | os.PathLike, types=None, imatrix=None,
               fallback: bool = True, progress: bool = False, *, recipe: str | None = None,
               pure: bool = False, output_tensor_type: str | None = None,
               token_embedding_type: str | None = None, tensor_types=None,
               leave_output_tensor: bool = False, allow_requantize: bool = False) -> Requantized:
    """Write a copy of a GGUF file with its weight matrices re-quantized by qviz.

    Every tensor of two or more dimensions whose name ends in ``weight`` is
    decoded to float32 and quantized with :func:`qviz.quantize`, except those
    llama-quantize never quantizes (:data:`NEVER_QUANTIZED`). Everything else
    (1-D norms and biases, unmatched tensors) is copied byte for byte, as is
    all metadata, tokenizer included. ``general.file_type`` names the type
    that holds the most weights; ``general.quantization_version`` is ggml's.

    Parameters
    ----------
    src, dst : path
        Source and destination; they must differ. ``dst`` appears only when
        complete: it is written to ``.<dst name>.part`` in its folder (one
        fixed name, reused by the next run after a crash), then renamed.
        An error, ``KeyboardInterrupt`` or SIGTERM removes that file (SIGTERM
        is then delivered to the handler it had before, which by default
        ends the process); only SIGKILL or a power cut leaves it, and the
        next run overwrites it. Two requantize runs cannot write one
        ``dst`` at once (the second raises ``RuntimeError``).
    types : str or mapping of str to str
        One type for all weight matrices (``"Q4_K"``), or fnmatch patterns of
        tensor names mapped to types (``{"*ffn_down*": "Q6_K", "*": "Q4_K"}``);
        the first matching pattern wins, unmatched tensors are copied. Types
        are the registered quant types (:func:`qviz.registry.types`; a unique
        case-insensitive spelling such as ``"q4_k"`` works too) or
        ``"F16"``/``"F32"``. A pattern that decides no tensor's type gives a
        ``UserWarning`` and is listed in the result's ``unmatched``.
        A name that is not a type but a llama-quantize recipe (``"Q4_K_M"``,
        ``"IQ2_M"``, ``"Q3_K_L"``, :data:`qviz.io.gguf_recipes.RECIPES`) means
        ``recipe=`` that name.
    imatrix : mapping of str to ndarray, shape (n_cols,), float32, or path, optional
        Importance vectors (llama.cpp imatrix) of tensors by name
        (:func:`qviz.io.calib.imatrix` makes one), or the path of an imatrix
        file (read with :func:`qviz.io.imatrix.read_imatrix`). An entry for a
        tensor that is not quantized (copied, or stored as F16/F32) gives a
        ``UserWarning``.
    fallback : bool
        For rows that are not a multiple of a type's block, use the type
        llama-quantize falls back to (F16 when that does not fit either);
        with False such a tensor raises ``ValueError`` before anything is
        written.
    progress : bool
        Show a progress bar (tqdm).
    recipe : str, optional
        A llama-quantize file type instead of ``types`` (needed for the names
        that are also one type: ``recipe="Q8_0"``, ``recipe="Q6_K"``): each
        tensor's type then follows llama.cpp's rules
        (:func:`qviz.io.gguf_recipes.plan` shows them), a tensor already of its
        type is copied unchanged, only the tensors llama-quantize quantizes
        are, and ``general.file_type`` is the recipe's.
    pure, output_tensor_type, token_embedding_type, tensor_types, leave_output_tensor
        llama-quantize's ``--pure``, ``--output-tensor-type``,
        ``--token-embedding-type``, ``--tensor-type`` (regex -> type) and
        ``--leave-output-tensor``, for a recipe only (see
        :func:`qviz.io.gguf_recipes.plan`).
    allow_requantize : bool
        ``--allow-requantize``, for a recipe only: without it a recipe refuses
        a source tensor that is already quantized (as llama-quantize does);
        ``types`` always re-quantizes.

    Returns
    -------
    Requantized
        A dict: each tensor's name -> the type it really has in ``dst``; its
        ``unmatched`` attribute lists the patterns that decided no tensor.

    Raises
    ------
    ValueError
        For an unknown type, a bad imatrix entry, or a tensor qviz cannot
        quantize (NaN/Inf weights, a block scale beyond fp16's range); the
        message names the tensor, and no file is left.
    TypeError
        For ``types`` or ``imatrix`` of the wrong kind (a pattern that is not
        a string, an imatrix that is not a mapping), saying what they must be.

    Examples
    --------
    >>> import gguf, numpy as np, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> src, dst = os.path.join(folder, "f32.gguf"), os.path.join(folder, "mixed.gguf")
    >>> w = gguf.GGUFWriter(src, "llama")
    >>> w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    >>> w.add_tensor("blk.0.attn_q.weight", np.ones((4, 64), dtype=np.float32))
    >>> w.add_tensor("blk.0.ffn_down.weight", np.ones((4, 64), dtype=np.float32))
    >>> w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    >>> done = requantize(src, dst, {"*ffn_down*": "Q8_0", "*": "Q4_K"})
    >>> done, done.unmatched
    ({'blk.0.attn_norm.weight': 'F32', 'blk.0.attn_q.weight': 'Q5_0', 'blk.0.ffn_down.weight': 'Q8_0'}, ())
    """
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"dst {str(dst)!r} is the source file itself; requantize writes a "
                         f"new file: choose another destination")
    recipe = _recipe_of(types, recipe, {"pure": pure, "output_tensor_type": output_tensor_type,
                                        "token_embedding_type": token_embedding_type,
                                        "tensor_types": tensor_types,
                                        "leave_output_tensor": leave_output_tensor,
                                        "allow_requantize": allow_requantize})
    if recipe is None:
        try:
            types = check_types(types)
        except ValueError as e:
            near = difflib.get_close_matches(str(types).upper(), list(gguf_recipes.RECIPES), n=2, cutoff=0.75) \
                if isinstance(types, str) else []
            if near:
                raise ValueError(f"{e}; or the llama-quantize recipe {' or '.join(map(repr, near))}? "
                                 f"(recipe=, qviz.gguf.RECIPES)") from None
            raise
    if gguf_recipes.checked_imatrix_path(imatrix):
        imatrix = dict(read_imatrix(imatrix))
    file_type_id = None
    with read(src) as f:
        if recipe is None:
            plan, unmatched = _plan(f, types, fallback)
            weights = _check_imatrix(f, imatrix)
        else:
            weights = _check_imatrix(f, imatrix)
            table = gguf_recipes.plan(f, recipe, pure=pure, output_tensor_type=output_tensor_type,
                                      token_embedding_type=token_embedding_type,
                                      tensor_types=tensor_types, leave_output_tensor=leave_output_tensor,
                                      imatrix=None if imatrix is None else weights)
            plan, unmatched = _recipe_steps(f, table, weights if imatrix is not None else None,
                                            allow_requantize), ()
            file_type_id = table.recipe.file_type
        if unmatched:
            warnings.warn(f"requantize: the pattern(s) {', '.join(map(repr, unmatched))} decide "
                          f"no tensor of {src.name} (they match no weight matrix, or an earlier "
                          f"pattern wins); what they were meant for is copied unchanged",
                          UserWarning, stacklevel=2)
        _warn_unused_imatrix(plan, weights)
        _remove_stale_parts(dst)
        tmp = _part(dst)
        with _locked(tmp), _sigterm_raises():
            try:
                _write(f, plan, tmp, weights, progress, file_type_id)
                os.replace(tmp, dst)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    done = Requantized((step.info.name, step.type_name) for step in plan)
    done.unmatched = unmatched
    return done
