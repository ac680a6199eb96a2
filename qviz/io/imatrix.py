"""llama.cpp importance-matrix files in and out: the legacy ``.dat`` and the GGUF one.

``llama-imatrix`` runs text through a model and keeps, for every weight matrix
``blk.N.*.weight``, the sum of the squared activations that reach each of its
input columns and how many tokens (rows) that sum covers. ``llama-quantize
--imatrix FILE`` turns each entry into one float32 vector per tensor, the
per-column weights of its quantization error. :func:`read_imatrix` returns
exactly those vectors (an :class:`Imatrix` is a mapping of tensor name to
vector), and keeps everything else the file holds so :func:`write_imatrix`
writes it back field for field.

Sources: llama.cpp ``tools/imatrix/imatrix.cpp`` (``save_imatrix_legacy``,
``save_imatrix``, ``load_imatrix_legacy``, ``load_imatrix``; commit
006e7ef9913f4ed2dc7ebc00890f4e287b6cfcea) and ``tools/quantize/quantize.cpp``
(``load_legacy_imatrix``, ``load_imatrix``, ``prepare_imatrix``; commit
42ea59bcf104ce81f167a66020a5eeafa428ecb2).

The legacy format (all integers int32, little-endian)::

    n_entries
    n_entries × (name_len, name: name_len bytes, ncall, n_values, n_values × float32)
    chunks, dataset_len, dataset: dataset_len bytes      (files since 2024; absent before)

    stored value = mean x² × ncall; llama-quantize divides by ncall (when > 0)

The GGUF format (``llama-imatrix --output-format gguf``, the default since
mid-2025): a GGUF v3 file with metadata ``general.type = "imatrix"``,
``imatrix.datasets`` (array of strings), ``imatrix.chunk_count`` and
``imatrix.chunk_size`` (uint32), and per weight ``W`` the F32 tensors
``W.in_sum2`` (ggml ne = (n_cols, n_mat): Σx² per column, one row per expert
matrix), ``W.counts`` (ne = (1, n_mat): tokens per matrix) and, in newer files,
``W.in_sum`` (Σx). llama-quantize uses ``in_sum2 / counts`` per matrix, and
all ones for a matrix whose count is 0 (it never saw a token).

The reader is chosen by content (GGUF magic), the writer by the file name
(``.gguf`` → GGUF, else legacy) unless ``format=`` says otherwise. Files
are validated completely before anything is returned: a truncated or
corrupt file, non-finite or negative values, counts that claim more than
the file holds, names that are not UTF-8 raise :class:`ImatrixError` naming
the byte offset and the entry.
"""
from __future__ import annotations

import math
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from qviz.io import gguf_reader

#: the two layouts, as ``format=`` spells them
FORMATS = ("gguf", "dat")
#: metadata keys of the GGUF format (imatrix.cpp's LLM_KV_IMATRIX_*)
KEY_TYPE, KEY_DATASETS = "general.type", "imatrix.datasets"
KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.chunk_count", "imatrix.chunk_size"
#: tensor name suffixes of the GGUF format
SUM2, COUNTS, SUM = ".in_sum2", ".counts", ".in_sum"
#: ggml's GGML_MAX_NAME: a GGUF tensor name has at most 63 bytes
MAX_TENSOR_NAME = 63
#: chunk size written when none is given (llama-imatrix's default context)
DEFAULT_CHUNK_SIZE = 512
#: dataset name written when none is given (mainline llama-quantize reads the first name unconditionally)
DEFAULT_DATASET = "qviz"

_I32 = struct.Struct("<i")
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_GGUF_MAGIC = b"GGUF"
_GGUF_ALIGNMENT = 32
#: smallest legacy entry: name_len, a 1-byte name, ncall, n_values, one value
_MIN_ENTRY_BYTES = 4 + 1 + 4 + 4 + 4


class ImatrixError(ValueError):
    """An imatrix file that breaks its format.

    Attributes
    ----------
    offset : int or None
        Byte offset in the file where the problem is (None when it is not one place).
    """

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # a private copy
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Imatrix(Mapping):
    """An importance matrix: tensor name -> the vector llama-quantize uses.

    As a mapping it gives, for every tensor, ``ndarray float32, shape
    (n_mat · n_cols,)`` (read-only): ``(n_cols,)`` for an ordinary weight, the
    experts' vectors one after the other for a 3-D expert tensor, exactly as
    llama-quantize hands them to ``llama_model_quantize``. The fields are what
    the file stores, so :func:`write_imatrix` writes it back unchanged.

    Attributes
    ----------
    sums : mapping of str to ndarray, shape (n_mat, n_cols), float32
        GGUF: ``in_sum2``, Σx² per column. Legacy: the stored values, mean x²
        × ncall (n_mat is 1; the legacy format keeps no expert split).
    counts : mapping of str to ndarray, shape (n_mat,)
        GGUF: ``counts``, float32, tokens per matrix. Legacy: int32, shape
        (1,), the entry's ncall (chunks, rounded up).
    chunks : int or None
        Chunks of text the matrix was computed on (``imatrix.chunk_count``;
        the legacy trailer's count; None for a legacy file without trailer).
    datasets : tuple of str
        Names of the calibration texts (``imatrix.datasets``; the legacy
        trailer's one name).
    chunk_size : int or None
        Tokens per chunk (``imatrix.chunk_size``; None for legacy).
    in_sums : mapping of str to ndarray, shape (n_mat, n_cols), float32
        GGUF ``in_sum`` (Σx), for the tensors whose file has it.
    format : {"gguf", "dat"}
        The layout the fields follow.

    Examples
    --------
    >>> m = from_vectors({"blk.0.attn_q.weight": np.array([1.0, 4.0], dtype=np.float32)})
    >>> m["blk.0.attn_q.weight"], m.counts["blk.0.attn_q.weight"], m.format
    (array([1., 4.], dtype=float32), array([1.], dtype=float32), 'gguf')
    """

    sums: Mapping[str, np.ndarray]
    counts: Mapping[str, np.ndarray]
    chunks: int | None
    datasets: tuple[str, ...]
    chunk_size: int | None = None
    in_sums: Mapping[str, np.ndarray] = field(default_factory=dict)
    format: str = "gguf"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r}: use 'gguf' or 'dat'")
        sums, counts, in_sums = dict(self.sums), dict(self.counts), dict(self.in_sums)
        if set(sums) != set(counts):
            odd = sorted(set(sums) ^ set(counts))
            raise ValueError(f"sums and counts name different tensors: {odd[:5]}; give both for each tensor")
        if not set(in_sums) <= set(sums):
            raise ValueError(f"in_sums for tensors without sums: {sorted(set(in_sums) - set(sums))[:5]}")
        if self.format == "dat" and (in_sums or self.chunk_size is not None):
            raise ValueError("the legacy format has no in_sums and no chunk_size; leave them out "
                             "(or use format='gguf')")
        for name in sums:
            _check_name(name, self.format)
            s = np.asarray(sums[name])
            if s.ndim == 1:
                s = s[None]
            if s.ndim != 2 or s.shape[1] == 0 or s.shape[0] == 0:
                raise ValueError(f"sums[{name!r}] has shape {np.shape(sums[name])}; use (n_mat, n_cols) "
                                 f"or (n_cols,) with n_cols > 0")
            sums[name] = _frozen(_finite(s, f"sums[{name!r}]", np.float32, nonneg=True))
            c = np.asarray(counts[name]).reshape(-1)
            if self.format == "dat":
                if c.shape != (1,) or not np.issubdtype(c.dtype, np.integer) or not 0 <= int(c[0]) <= _INT32_MAX:
                    raise ValueError(f"counts[{name!r}] = {counts[name]!r}: a legacy entry's count is one "
                                     f"ncall, an integer in [0, 2**31)")
                if s.shape[0] != 1 or s.size > _INT32_MAX:
                    raise ValueError(f"sums[{name!r}] has shape {s.shape}; a legacy entry is one vector "
                                     f"of at most 2**31 - 1 values")
                counts[name] = _frozen(c.astype(np.int32))
            else:
                if c.shape != (s.shape[0],):
                    raise ValueError(f"counts[{name!r}] has {c.size} values for {s.shape[0]} matrices "
                                     f"(sums shape {s.shape}); give one count per matrix")
                counts[name] = _frozen(_finite(c, f"counts[{name!r}]", np.float32, nonneg=True))
            if name in in_sums:
                a = np.asarray(in_sums[name])
                if a.size != s.size:
                    raise ValueError(f"in_sums[{name!r}] has {a.size} values, sums {s.size}; they must match")
                in_sums[name] = _frozen(_finite(a.reshape(s.shape), f"in_sums[{name!r}]", np.float32))
        for what in ("chunks", "chunk_size"):
            v = getattr(self, what)
            top = _UINT32_MAX if self.format == "gguf" else _INT32_MAX
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= top):
                raise ValueError(f"{what}={v!r}: use an integer in [0, {top}] (or None)")
        datasets = tuple(self.datasets) if not isinstance(self.datasets, str) else (self.datasets,)
        for d in datasets:
            if not isinstance(d, str):
                raise TypeError(f"datasets must be strings, got {d!r}")
            _utf8(d, "a dataset name")
        object.__setattr__(self, "sums", MappingProxyType(sums))
        object.__setattr__(self, "counts", MappingProxyType(counts))
        object.__setattr__(self, "in_sums", MappingProxyType(in_sums))
        object.__setattr__(self, "datasets", datasets)
        object.__setattr__(self, "chunks", None if self.chunks is None else int(self.chunks))
        object.__setattr__(self, "chunk_size", None if self.chunk_size is None else int(self.chunk_size))
        object.__setattr__(self, "_vectors", MappingProxyType(
            {n: _frozen(_quantize_vector(sums[n], counts[n], self.format)) for n in sorted(sums)}))

    __eq__ = object.__eq__  # Mapping's would compare arrays elementwise
    __hash__ = object.__hash__

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._vectors[name]
        except KeyError:
            raise KeyError(f"no imatrix entry {name!r}; it has {len(self)} entries") from None

    def __iter__(self):
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def __repr__(self) -> str:
        return (f"Imatrix({len(self)} tensors, format={self.format!r}, chunks={self.chunks}, "
                f"datasets={list(self.datasets)})")


def _quantize_vector(sums: np.ndarray, counts: np.ndarray, fmt: str) -> np.ndarray:
    """llama-quantize's vector of one entry (quantize.cpp ``load_imatrix`` / ``load_legacy_imatrix``).

    sums : float32 (n_mat, n_cols); counts : (n_mat,) float32 (GGUF) or (1,) int32 ncall (legacy).
    Returns float32 (n_mat · n_cols,).
    """
    if fmt == "dat":
        ncall = int(counts[0])
        # `v /= ncall` on a float: ncall converts to float, one float32 division
        return (sums / np.float32(ncall) if ncall > 0 else sums).reshape(-1)
    out = np.ones_like(sums)  # a matrix that saw no token gets ones
    seen = counts > 0
    out[seen] = sums[seen] / counts[seen, None]  # (n_mat, n_cols) / (n_mat, 1), float32
    return out.reshape(-1)


def _finite(a, what: str, dtype, nonneg: bool = False) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{what} has dtype {a.dtype}; give numbers (float32)")
    a = a.astype(dtype)
    bad = ~np.isfinite(a) | ((a < 0) if nonneg else False)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), a.shape)
        kind = "non-negative finite" if nonneg else "finite"
        raise ValueError(f"{what}{list(i)} = {float(a[i])}: values must be {kind} (squared activations and "
                         f"counts cannot be {'negative, ' if nonneg else ''}NaN or infinite)")
    return a


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} {text!r} cannot be written as UTF-8 ({e.reason}); use valid text") from None


def _check_name(name, fmt: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"tensor names are strings, got {name!r}")
    raw = _utf8(name, "tensor name")
    if not name or "\0" in name:
        raise ValueError(f"tensor name {name!r} is empty or holds a NUL byte; use the GGUF tensor name "
                         f"('blk.0.attn_q.weight')")
    if fmt == "gguf" and len(raw) + len(SUM2) > MAX_TENSOR_NAME:
        raise ValueError(f"tensor name {name!r} is {len(raw)} bytes; GGUF tensor names hold at most "
                         f"{MAX_TENSOR_NAME} bytes, so with '{SUM2}' it may have {MAX_TENSOR_NAME - len(SUM2)} "
                         f"(or write format='dat')")


def from_vectors(vectors: Mapping, *, counts=1, chunks: int | None = 0, chunk_size: int | None = None,
                 datasets=(DEFAULT_DATASET,), format: str = "gguf") -> Imatrix:
    """An :class:`Imatrix` of mean-x² vectors (what :func:`qviz.io.calib.imatrix` computes).

    Parameters
    ----------
    vectors : mapping of str to ndarray, shape (n_cols,), float32
        GGUF tensor name -> mean of squared inputs per column, non-negative.
    counts : int or mapping of str to int
        Tokens behind each vector (GGUF ``counts``; legacy ``ncall``). With the
        default 1 the vectors read back are the given ones, bit for bit;
        otherwise sums are ``vector × count`` and read back within float32
        rounding.
    chunks, chunk_size : int, optional
        Recorded as the file's chunk count and size (chunk_size default
        :data:`DEFAULT_CHUNK_SIZE` for GGUF, None for legacy).
    datasets : sequence of str
        Names of the calibration texts.
    format : {"gguf", "dat"}

    Returns
    -------
    Imatrix
        ``result[name]`` equals ``vectors[name]`` (when counts are 1).

    Examples
    --------
    >>> m = from_vectors({"blk.0.ffn_down.weight": np.full(4, 0.5, np.float32)}, format="dat")
    >>> m["blk.0.ffn_down.weight"], m.counts["blk.0.ffn_down.weight"]
    (array([0.5, 0.5, 0.5, 0.5], dtype=float32), array([1], dtype=int32))
    """
    if not isinstance(vectors, Mapping):
        raise TypeError(f"vectors must map GGUF tensor names to vectors, got {type(vectors).__name__}")
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use 'gguf' or 'dat'")
    sums, cs = {}, {}
    for name, v in vectors.items():
        _check_name(name, format)
        v = np.asarray(v)
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"vectors[{name!r}] has shape {v.shape}; an importance vector is 1-D, "
                             f"one value per input column")
        v = _finite(v, f"vectors[{name!r}]", np.float32, nonneg=True)
        c = counts[name] if isinstance(counts, Mapping) else counts
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0:
            raise ValueError(f"counts for {name!r} = {c!r}: use a number of tokens, an integer >= 0")
        sums[name] = v if c == 1 else (v.astype(np.float64) * int(c)).astype(np.float32)
        cs[name] = np.array([c], dtype=np.int32 if format == "dat" else np.float32)
    if format == "gguf" and chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE
    return Imatrix(sums, cs, chunks, tuple(datasets), chunk_size, {}, format)


# ---------------------------------------------------------------------------
# reading


def read_imatrix(path: str | os.PathLike) -> Imatrix:
    """Read a llama.cpp imatrix file, legacy or GGUF (told apart by the GGUF magic).

    Parameters
    ----------
    path : path
        A file written by ``llama-imatrix`` (``-o x.dat`` / ``--output-format
        dat``, or GGUF), or by :func:`write_imatrix`.

    Returns
    -------
    Imatrix
        ``m[name]``: the float32 vector llama-quantize uses for tensor
        ``name``; the file's fields in ``m.sums``, ``m.counts``, ``m.chunks``,
        ``m.datasets``, ``m.chunk_size``, ``m.in_sums``.

    Raises
    ------
    ImatrixError
        For a truncated or corrupt file, naming the byte offset and entry;
        nothing is returned partially.

    Notes
    -----
    What llama-quantize accepts is the bound, with stricter checks: it
    rejects a file without entries or an entry without values, and (GGUF)
    one without ``imatrix.datasets``, ``imatrix.chunk_count`` or
    ``imatrix.chunk_size``. qviz also rejects what llama-quantize would read
    as garbage or silently: non-F32 tensors, ``counts`` of the wrong length,
    NaN, infinite or negative values, names that are not UTF-8 or hold a
    NUL, a name given twice, and bytes after the legacy trailer.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "imatrix.gguf")
    >>> write_imatrix(path, {"blk.0.attn_q.weight": np.array([1.0, 4.0], dtype=np.float32)})
    >>> m = read_imatrix(path)
    >>> m["blk.0.attn_q.weight"], m.chunk_size, m.datasets
    (array([1., 4.], dtype=float32), 512, ('qviz',))
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == _GGUF_MAGIC:
        return _read_gguf(path)
    return _read_legacy(path.read_bytes(), str(path))


def _read_legacy(buf: bytes, source: str) -> Imatrix:
    size = len(buf)
    pos = 0

    def i32(what: str) -> int:
        nonlocal pos
        if pos + 4 > size:
            raise ImatrixError(f"{source}: truncated at byte {pos} reading {what} (the file has "
                               f"{size} bytes); the file is incomplete", pos)
        v = _I32.unpack_from(buf, pos)[0]
        pos += 4
        return v

    def text(n: int, what: str) -> str:
        nonlocal pos
        if n > size - pos:
            raise ImatrixError(f"{source}: {what} of {n} bytes at byte {pos} runs past the end of "
                               f"the file ({size - pos} bytes left); the file is truncated or corrupt", pos)
        try:
            s = buf[pos:pos + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ImatrixError(f"{source}: {what} at byte {pos} is not UTF-8 ({e.reason} at its byte "
                               f"{e.start})", pos + e.start) from None
        pos += n
        return s

    n_entries = i32("the entry count")
    cap = (size - 4) // _MIN_ENTRY_BYTES
    if n_entries < 1 or n_entries > cap:
        raise ImatrixError(f"{source}: entry count {n_entries} at byte 0 is impossible for a file of "
                           f"{size} bytes (1 to {cap}); this is no legacy imatrix file (or a corrupt one)", 0)
    sums, counts = {}, {}
    for i in range(n_entries):
        entry = f"entry {i}"
        at = pos
        n = i32(f"{entry}'s name length")
        if not 1 <= n <= size - pos:
            raise ImatrixError(f"{source}: {entry}'s name length {n} at byte {at} is impossible "
                               f"({size - pos} bytes left); the file is truncated or corrupt", at)
        name = text(n, f"{entry}'s name")
        entry = f"entry {i} ({name!r})"
        if "\0" in name:
            raise ImatrixError(f"{source}: {entry} at byte {at + 4} holds a NUL byte; not a tensor name", at + 4)
        if name in sums:
            raise ImatrixError(f"{source}: {entry} at byte {at + 4} repeats an earlier entry's name", at + 4)
        at = pos
        ncall = i32(f"{entry}'s ncall")
        if ncall < 0:
            raise ImatrixError(f"{source}: {entry}'s ncall {ncall} at byte {at} is negative", at)
        at = pos
        nval = i32(f"{entry}'s value count")
        if not 1 <= nval <= (size - pos) // 4:
            raise ImatrixError(f"{source}: {entry}'s value count {nval} at byte {at} is impossible "
                               f"({size - pos} bytes left, 4 per value); the file is truncated or corrupt", at)
        v = np.frombuffer(buf, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            j = int(np.argmax(bad))
            raise ImatrixError(f"{source}: {entry}'s value {j} at byte {pos + 4 * j} is {float(v[j])}; "
                               f"importance values are finite and non-negative", pos + 4 * j)
        pos += 4 * nval
        sums[name], counts[name] = v[None], np.array([ncall], dtype=np.int32)
    chunks, datasets = None, ()
    if pos < size:  # the trailer: chunk count and dataset name
        at = pos
        chunks = i32("the chunk count after the last entry")
        if chunks < 0:
            raise ImatrixError(f"{source}: chunk count {chunks} at byte {at} is negative", at)
        at = pos
        n = i32("the dataset name's length")
        if not 0 <= n <= size - pos:
            raise ImatrixError(f"{source}: dataset name length {n} at byte {at} is impossible "
                               f"({size - pos} bytes left); the file is truncated or corrupt", at)
        datasets = (text(n, "the dataset name"),)
        if pos != size:
            raise ImatrixError(f"{source}: {size - pos} unexpected bytes after the dataset name, from byte "
                               f"{pos}; the file is corrupt (or not a legacy imatrix)", pos)
    return Imatrix(sums, counts, chunks, datasets, None, {}, "dat")


def _read_gguf(path: Path) -> Imatrix:
    source = str(path)
    try:
        f = gguf_reader.read(path)
    except gguf_reader.GGUFError as e:
        raise ImatrixError(f"{source}: not a readable GGUF imatrix: {e}", e.offset) from None
    with f:
        meta = f.metadata
        kind = meta.get(KEY_TYPE)
        if kind is not None and kind != "imatrix":
            raise ImatrixError(f"{source}: general.type is {kind!r}, not 'imatrix': this GGUF is no "
                               f"importance matrix (a model file?)")
        for key in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
            if key not in meta:
                raise ImatrixError(f"{source}: metadata {key!r} is missing; llama-quantize refuses an "
                                   f"imatrix GGUF without it (was it written by llama-imatrix?)")
        for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
            vtype, _ = f.encoded(key)
            if vtype != gguf_reader.GGUFValueType.UINT32:
                raise ImatrixError(f"{source}: metadata {key!r} is {vtype.name}; llama.cpp reads it as UINT32")
        datasets = meta[KEY_DATASETS]
        if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
            raise ImatrixError(f"{source}: metadata {KEY_DATASETS!r} must be an array of strings, "
                               f"got {type(datasets).__name__}")
        end = max((t.offset + t.n_bytes + _pad(t.n_bytes) for t in f.tensors), default=f.data_offset)
        size = path.stat().st_size
        if size < end:  # ggml reads every tensor's padding too, the last one's included
            raise ImatrixError(f"{source}: the data section ends at byte {end} (padding included) but the "
                               f"file has {size} bytes; the file is truncated", size)
        parts: dict[str, dict[str, gguf_reader.TensorInfo]] = {}
        for info in f.tensors:
            for suffix in (SUM2, COUNTS, SUM):
                if info.name.endswith(suffix):
                    parts.setdefault(info.name[:-len(suffix)], {})[suffix] = info
                    break
        if not parts:
            raise ImatrixError(f"{source}: no '<tensor>{SUM2}' / '<tensor>{COUNTS}' tensors; the file "
                               f"holds no importance data")
        sums, counts, in_sums = {}, {}, {}
        for name in sorted(parts):
            p = parts[name]
            if SUM2 not in p or COUNTS not in p:
                missing = SUM2 if SUM2 not in p else COUNTS
                raise ImatrixError(f"{source}: tensor {name!r} has no '{name}{missing}' to go with "
                                   f"its other data (llama-quantize: mismatched sums and counts)")
            for suffix, info in p.items():
                if info.type_name != "F32":
                    raise ImatrixError(f"{source}: tensor {info.name!r} is {info.type_name}; imatrix "
                                       f"tensors are F32", info.offset)
                if len(info.shape) > 2 or not info.n_elements:
                    raise ImatrixError(f"{source}: tensor {info.name!r} has shape {info.shape}; imatrix "
                                       f"tensors are 1-D or 2-D and not empty", info.offset)
            s_info, c_info = p[SUM2], p[COUNTS]
            n_mat, n_cols = (1, *s_info.shape) if len(s_info.shape) == 1 else s_info.shape
            if c_info.n_elements != n_mat:
                raise ImatrixError(f"{source}: tensor {c_info.name!r} has {c_info.n_elements} counts for "
                                   f"{n_mat} matrices ({s_info.name!r} has shape {s_info.shape})", c_info.offset)
            sums[name] = _checked(f, s_info, (n_mat, n_cols), source, nonneg=True)
            counts[name] = _checked(f, c_info, (n_mat,), source, nonneg=True)
            if SUM in p:
                if p[SUM].n_elements != s_info.n_elements:
                    raise ImatrixError(f"{source}: tensor {p[SUM].name!r} has {p[SUM].n_elements} values, "
                                       f"{s_info.name!r} {s_info.n_elements}", p[SUM].offset)
                in_sums[name] = _checked(f, p[SUM], (n_mat, n_cols), source, nonneg=False)
        return Imatrix(sums, counts, int(meta[KEY_CHUNK_COUNT]), tuple(datasets), int(meta[KEY_CHUNK_SIZE]),
                       in_sums, "gguf")


def _checked(f, info, shape: tuple, source: str, nonneg: bool) -> np.ndarray:
    """Tensor ``info`` of ``f`` as a float32 copy of ``shape``, finite (and >= 0 when ``nonneg``)."""
    a = np.array(f.raw(info.name), dtype=np.float32).reshape(shape)
    flat = a.reshape(-1)
    bad = ~np.isfinite(flat) | ((flat < 0) if nonneg else False)
    if bad.any():
        j = int(np.argmax(bad))
        raise ImatrixError(f"{source}: tensor {info.name!r} value {j} at byte {info.offset + 4 * j} is "
                           f"{float(flat[j])}; it must be finite{' and non-negative' if nonneg else ''}",
                           info.offset + 4 * j)
    return a


# ---------------------------------------------------------------------------
# writing


def write_imatrix(path: str | os.PathLike, data, *, format: str | None = None, counts=1,
                  chunks: int | None = None, chunk_size: int | None = None, datasets=None) -> None:
    """Write an imatrix file llama-quantize reads: GGUF for a ``.gguf`` name, else legacy.

    Parameters
    ----------
    path : path
        Written to a temporary file in the same folder, then renamed: on an
        error nothing is left and an existing file is untouched.
    data : Imatrix, or mapping of str to ndarray, shape (n_cols,), float32
        An :class:`Imatrix` (written field for field; converted the way
        ``llama-imatrix --in-file`` converts when the other format is
        asked for), or GGUF tensor names -> mean-x² vectors
        (:func:`qviz.io.calib.imatrix`; see :func:`from_vectors`).
    format : {"gguf", "dat"}, optional
        Overrides the choice by file name.
    counts : int or mapping of str to int
        Tokens behind each vector, for a mapping ``data`` (:func:`from_vectors`).
    chunks, chunk_size, datasets : optional
        Replace those fields (defaults: the Imatrix's own, or
        :func:`from_vectors`'s).

    Raises
    ------
    ValueError
        For an unknown format, a bad name (not UTF-8, empty, too long for a
        GGUF tensor name) or vector (not 1-D, NaN, negative), naming it.
    TypeError
        For ``data`` that is not a mapping.

    Notes
    -----
    Legacy → GGUF multiplies the stored values and ncall by ``chunk_size``
    (default :data:`DEFAULT_CHUNK_SIZE`), as ``load_imatrix_legacy`` does;
    GGUF → legacy stores ``(in_sum2 / count) × ncall`` with ``ncall =
    ceil(max count / chunk_size)``, as ``save_imatrix_legacy`` does (a matrix
    with count 0 stores 1s). Both keep the vectors llama-quantize uses up to
    float32 rounding, except that the legacy format cannot keep experts'
    separate counts.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "imatrix.dat")
    >>> write_imatrix(path, {"blk.0.attn_q.weight": np.array([1.0, 4.0], dtype=np.float32)}, chunks=3)
    >>> m = read_imatrix(path)
    >>> m.format, m["blk.0.attn_q.weight"], m.chunks
    ('dat', array([1., 4.], dtype=float32), 3)
    """
    path = Path(path)
    if format is None:
        format = "gguf" if path.suffix.lower() == ".gguf" else "dat"
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use 'gguf' (llama-imatrix's default) or 'dat' (the legacy layout)")
    if not isinstance(data, Imatrix):
        data = from_vectors(data, counts=counts, chunks=0 if chunks is None else chunks,
                            chunk_size=chunk_size, datasets=(DEFAULT_DATASET,) if datasets is None else datasets,
                            format=format)
    elif counts != 1:
        raise ValueError("counts= is for a mapping of vectors; an Imatrix carries its own counts")
    data = _converted(data, format, chunk_size)
    if chunks is not None or datasets is not None or (chunk_size is not None and format == "gguf"):
        data = Imatrix(data.sums, data.counts, data.chunks if chunks is None else chunks,
                       data.datasets if datasets is None else datasets,
                       data.chunk_size if chunk_size is None or format == "dat" else chunk_size,
                       data.in_sums, data.format)
    if not len(data):
        raise ValueError("the imatrix has no entries; llama-quantize refuses a file without data")
    payload = _gguf_bytes(data) if format == "gguf" else _legacy_bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _converted(m: Imatrix, fmt: str, chunk_size: int | None) -> Imatrix:
    """``m`` in layout ``fmt`` (itself when it already is)."""
    if m.format == fmt:
        return m
    if fmt == "gguf":  # load_imatrix_legacy: values and counts scaled by the chunk size
        cs = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
        sums = {n: (s.astype(np.float64) * cs).astype(np.float32) for n, s in m.sums.items()}
        counts = {n: np.array([float(c[0]) * cs], dtype=np.float32) for n, c in m.counts.items()}
        return Imatrix(sums, counts, 0 if m.chunks is None else m.chunks, m.datasets, cs, {}, "gguf")
    cs = m.chunk_size or DEFAULT_CHUNK_SIZE  # save_imatrix_legacy
    sums, counts = {}, {}
    for n, s in m.sums.items():
        c = m.counts[n]
        ncall = int((int(c.max()) + cs - 1) // cs)
        value = np.where(c[:, None] > 0, s, np.float32(1))
        count = np.where(c > 0, c, np.float32(1))[:, None]
        sums[n] = ((value / count) * np.float32(ncall)).astype(np.float32).reshape(1, -1)
        counts[n] = np.array([ncall], dtype=np.int32)
    return Imatrix(sums, counts, m.chunks, m.datasets[-1:], None, {}, "dat")


def _legacy_bytes(m: Imatrix) -> bytes:
    """The legacy layout of ``m`` (save_imatrix_legacy's field order, names sorted)."""
    out = [_I32.pack(len(m))]
    for name in sorted(m.sums):
        raw = name.encode("utf-8")
        values = m.sums[name].reshape(-1)
        out += [_I32.pack(len(raw)), raw, _I32.pack(int(m.counts[name][0])), _I32.pack(values.size),
                values.astype("<f4").tobytes()]
    if m.chunks is not None or m.datasets:
        dataset = m.datasets[-1].encode("utf-8") if m.datasets else b""
        out += [_I32.pack(0 if m.chunks is None else m.chunks), _I32.pack(len(dataset)), dataset]
    return b"".join(out)


def _gguf_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pad(n: int) -> int:
    return -n % _GGUF_ALIGNMENT


def _gguf_bytes(m: Imatrix) -> bytes:
    """The GGUF layout of ``m`` as ggml's gguf_write_to_file lays out save_imatrix's context.

    Metadata in imatrix.cpp's order; per tensor (names sorted) in_sum2, counts,
    then in_sum; ggml dimensions with trailing 1s dropped (``ggml_n_dims``);
    every tensor's data aligned to 32 bytes.
    """
    if not m.datasets:
        raise ValueError("a GGUF imatrix needs at least one dataset name (mainline llama-quantize reads "
                         "the first unconditionally); pass datasets=['my-text']")
    V = gguf_reader.GGUFValueType
    kv = [
        _gguf_string(KEY_TYPE) + struct.pack("<I", V.STRING) + _gguf_string("imatrix"),
        _gguf_string(KEY_DATASETS) + struct.pack("<IIQ", V.ARRAY, V.STRING, len(m.datasets))
        + b"".join(_gguf_string(d) for d in m.datasets),
        _gguf_string(KEY_CHUNK_COUNT) + struct.pack("<II", V.UINT32, m.chunks or 0),
        _gguf_string(KEY_CHUNK_SIZE) + struct.pack("<II", V.UINT32,
                                                   DEFAULT_CHUNK_SIZE if m.chunk_size is None else m.chunk_size),
    ]
    tensors = []  # (name, ggml ne, data)
    for name in sorted(m.sums):
        s = m.sums[name]
        n_mat, n_cols = s.shape
        tensors.append((name + SUM2, (n_cols, n_mat), s))
        tensors.append((name + COUNTS, (1, n_mat), m.counts[name]))
        if name in m.in_sums:
            tensors.append((name + SUM, (n_cols, n_mat), m.in_sums[name]))
    infos, blobs, offset = [], [], 0
    for name, ne, data in tensors:
        dims = list(ne)
        while len(dims) > 1 and dims[-1] == 1:
            dims.pop()
        infos.append(_gguf_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, offset))
        raw = np.ascontiguousarray(data, dtype="<f4").tobytes()
        blobs += [raw, bytes(_pad(len(raw)))]
        offset += len(raw) + _pad(len(raw))
    head = _GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + b"".join(infos)
    return head + bytes(_pad(len(head))) + b"".join(blobs)


# ---------------------------------------------------------------------------
# against a model


def check_imatrix_for(model, imatrix: Mapping) -> None:
    """Raise unless every entry of ``imatrix`` fits a tensor of ``model``.

    Parameters
    ----------
    model : path or GGUFFile
        The GGUF model the imatrix is meant for.
    imatrix : Imatrix or mapping of str to ndarray
        Tensor name -> importance vector.

    Raises
    ------
    ValueError
        Naming the first entry that is no tensor of the model (with the
        closest names), or whose length is not the tensor's row length
        (times its experts, for a 3-D tensor: llama.cpp's ``ne[0] · ne[2]``),
        a sign of an imatrix made for another model.

    Examples
    --------
    >>> import gguf, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.gguf")
    >>> w = gguf.GGUFWriter(path, "llama")
    >>> w.add_tensor("blk.0.attn_q.weight", np.ones((4, 64), dtype=np.float32))
    >>> w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    >>> check_imatrix_for(path, {"blk.0.attn_q.weight": np.ones(64, np.float32)})
    >>> check_imatrix_for(path, {"blk.0.attn_q.weight": np.ones(32, np.float32)})
    Traceback (most recent call last):
    ...
    ValueError: imatrix entry 'blk.0.attn_q.weight' has 32 values, but that tensor of m.gguf has rows of 64 (shape (4, 64)), so it needs 64: this imatrix was made for another model
    """
    if not isinstance(imatrix, Mapping):
        raise TypeError(f"imatrix must map tensor names to vectors, got {type(imatrix).__name__}")
    if isinstance(model, gguf_reader.GGUFFile):
        _check_against(model, imatrix)
        return
    with gguf_reader.read(model) as f:
        _check_against(f, imatrix)


def _check_against(f, imatrix: Mapping) -> None:
    where = f.path.name if f.path is not None else "the model"
    for name, v in imatrix.items():
        try:
            shape = f.tensor(name).shape
        except KeyError as e:
            raise ValueError(f"imatrix entry {name!r} is no tensor of {where}: {e.args[0]}; this "
                             f"imatrix was made for another model") from None
        need = shape[-1] * (math.prod(shape[:-2]) if len(shape) > 2 else 1)
        n = np.size(v)
        if len(shape) < 2 or n != need:
            raise ValueError(f"imatrix entry {name!r} has {n} values, but that tensor of {where} has "
                             f"rows of {shape[-1]} (shape {shape}), so it needs {need}: this imatrix "
                             f"was made for another model")


# ---------------------------------------------------------------------------
# from a model's activations


def gguf_name(module: str, *, tied: bool = False) -> str | None:
    """The GGUF tensor name of a transformers LLaMA Linear (None for one llama-imatrix skips).

    Examples
    --------
    >>> gguf_name("model.layers.3.mlp.down_proj"), gguf_name("lm_head")
    ('blk.3.ffn_down.weight', 'output.weight')
    """
    from qviz.io.models import LLAMA_BLOCK_NAMES

    if module == "lm_head":
        return None if tied else "output.weight"
    parts = module.split(".")
    if len(parts) >= 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        kind = {v: k for k, v in LLAMA_BLOCK_NAMES.items()}.get(".".join(parts[3:]))
        if kind is not None:
            return f"blk.{parts[2]}.{kind}.weight"
    raise ValueError(f"module {module!r} has no GGUF name qviz knows: collect() maps transformers "
                     f"LLaMA-family models (model.layers.N.self_attn.q_proj …, lm_head) only")


def collect(model_or_gguf, data=None, *, tokenizer=None, seq_len: int = 512, n_sequences: int = 128,
            batch_size: int = 8, process_output: bool = False, dataset: str | None = None,
            progress: bool = False) -> Imatrix:
    """Importance matrix of a whole model from its activations, named as llama-quantize needs.

    Runs text through the model in torch and sums x² per input column of
    every Linear of the blocks (and ``lm_head`` with ``process_output``), as
    ``llama-imatrix`` does with ggml.

    Parameters
    ----------
    model_or_gguf : path, GGUFFile, or transformers LLaMA-family model
        A llama-architecture GGUF (built in torch by
        :func:`qviz.io.models.load_smollm2`, tokenizer included) or a
        ``LlamaForCausalLM``-style model (``model.layers.N.self_attn.q_proj``
        …), whose Linears map to ``blk.N.attn_q.weight`` … .
    data : str, list of str, or token ids, optional
        Text (needs a tokenizer; default the calibration part of
        :func:`qviz.io.calib.default_texts`) or token ids (a tensor (n, seq),
        or a list of tensors or of dicts with ``input_ids``).
    tokenizer : transformers tokenizer, optional
        For text with a torch model (a GGUF brings its own).
    seq_len, n_sequences, batch_size : int
        How text is cut (:func:`qviz.io.calib.calibration_batches`);
        ``seq_len`` is recorded as the chunk size.
    process_output : bool
        Also collect ``output.weight`` (``llama-imatrix --process-output``);
        skipped for a model whose output is tied to its embedding.
    dataset : str, optional
        Name recorded in ``imatrix.datasets`` (default ``"qviz default_texts"``
        or ``"qviz"``).
    progress : bool

    Returns
    -------
    Imatrix
        GGUF layout: ``sums`` Σx² (float32 of a float64 sum), ``counts`` tokens
        per tensor, ``chunks`` sequences run, ``chunk_size`` ``seq_len``;
        ``m[name]`` is the mean x², as llama-quantize reads it back.

    Examples
    --------
    >>> import qviz, torch
    >>> m = collect(qviz.demo.smollm2_gguf(), torch.arange(64)[None])    # doctest: +SKIP
    >>> m["blk.0.attn_q.weight"].shape, m.counts["blk.0.attn_q.weight"]  # doctest: +SKIP
    ((576,), array([64.], dtype=float32))
    """
    import torch

    from qviz.io import calib

    if isinstance(model_or_gguf, (str, os.PathLike, gguf_reader.GGUFFile)):
        from qviz.io.models import load_smollm2

        path = model_or_gguf.path if isinstance(model_or_gguf, gguf_reader.GGUFFile) else model_or_gguf
        if path is None:
            raise ValueError("collect needs a GGUF file on disk (this GGUFFile was read from bytes)")
        model, own_tokenizer = load_smollm2(path)
        tokenizer = tokenizer or own_tokenizer
    else:
        model = model_or_gguf
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    names = {}
    for module in calib.linear_layers(model):
        name = gguf_name(module, tied=tied)
        if name is not None and (process_output or name != "output.weight"):
            names[module] = name
    is_text = data is None or isinstance(data, str) or (
        isinstance(data, list) and bool(data) and all(isinstance(t, str) for t in data))
    if is_text:
        if tokenizer is None:
            raise ValueError("text needs a tokenizer: pass tokenizer= (or token ids as data)")
        batches = calib.resolve_data(model, tokenizer, data, seq_len=seq_len, n_sequences=n_sequences,
                                     batch_size=batch_size)
        default_name = "qviz default_texts" if data is None else "qviz"
    else:
        batches = calib.resolve_data(model, data, batch_size=batch_size)
        default_name = "qviz"
    layers = calib.pick_layers(model, list(names))
    gen = torch.Generator().manual_seed(0)
    acc = {m: calib.Accumulator(layer.in_features, 0, gen, hessian=False) for m, layer in layers.items()}
    calib.run_batches(model, batches, {layers[m]: acc[m].add for m in layers}, progress=progress)
    unseen = [m for m, a in acc.items() if a.n == 0]
    if unseen:
        raise ValueError(f"layers {unseen[:3]} saw no inputs: the model never called them on this data")
    n_chunks = sum(int(b["input_ids"].shape[0]) for b in batches)
    return Imatrix({names[m]: a.sq_sum.float().numpy()[None] for m, a in acc.items()},
                   {names[m]: np.array([a.n], dtype=np.float32) for m, a in acc.items()},
                   n_chunks, (dataset or default_name,), seq_len, {}, "gguf")
