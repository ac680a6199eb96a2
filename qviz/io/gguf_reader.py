"""GGUF files in: a validating, memory-mapped reader.

:func:`read` is qviz's own parser of the GGUF v2/v3 container
(llama.cpp ``docs/gguf.md``, ``ggml/src/gguf.cpp``). It trusts nothing in the
file: every count and length is checked against the bytes that are left
before anything is allocated or looped over, so a truncated, corrupted or
hostile file raises :class:`GGUFError` naming what is wrong and at which byte,
never a crash, a hang or a huge allocation. Tensor data stays in the file
(``np.memmap``, read-only) until :meth:`GGUFFile.raw` or
:meth:`GGUFFile.decode` asks for it.

Layout of a GGUF file (all integers little-endian)::

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv × (key: string, value type: u32, value)
    n_tensors × (name: string, n_dims: u32, n_dims × dim: u64, ggml type: u32, offset: u64)
    padding to general.alignment (default 32)
    data section: each tensor at data start + offset (a multiple of the alignment)

    string = length: u64, that many utf-8 bytes
    array  = element type: u32, count: u64, count × element

A tensor's ggml type is looked up in gguf-py's table first, then among the
types registered in :mod:`qviz.registry` (:func:`storage_type`), so a file
holding a type qviz registered reads, decodes and wraps as a result too.
The writer, :func:`qviz.io.gguf_writer.requantize`, lives in its own module.
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import NamedTuple

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

SUPPORTED_VERSIONS = (2, 3)
#: ggml's GGML_MAX_DIMS
MAX_DIMS = 4
#: deepest array-of-array nesting read (ggml itself reads none)
MAX_NESTING = 8
_INT64_MAX = 2**63 - 1
_MAGIC = b"GGUF"

#: scalar GGUF value types and how they are stored
_SCALARS = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
#: fewest bytes one value of a type can take (string: its length; array: type + count)
_MIN_VALUE_BYTES = {**{t: d.itemsize for t, d in _SCALARS.items()},
                    GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
#: key length + value type + the smallest value
_MIN_KV_BYTES = 8 + 4 + 1
#: name length + n_dims + one dim + type + offset
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8

#: ggml types stored as plain arrays, and their numpy dtype (BF16: the raw 16 bits)
PLAIN_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"), "I8": np.dtype("<i1"), "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
}


class GGUFError(ValueError):
    """A GGUF file that breaks the format.

    Attributes
    ----------
    offset : int
        Byte offset in the file where the problem is.
    """

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


class TensorInfo(NamedTuple):
    """One tensor of a GGUF file.

    Attributes
    ----------
    name : str
    type_name : str
        The ggml type, upstream spelling (``"Q4_1"``, ``"F32"``).
    shape : tuple of int
        numpy order: ggml's ``ne`` reversed, so a weight is (n_rows, n_cols).
    n_bytes : int
        Bytes of its data.
    offset : int
        Absolute byte offset of its data in the file.
    """

    name: str
    type_name: str
    shape: tuple[int, ...]
    n_bytes: int
    offset: int

    @property
    def n_elements(self) -> int:
        """Number of weights."""
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight of its data."""
        return self.n_bytes * 8 / self.n_elements if self.n_elements else 0.0


class StorageType(NamedTuple):
    """How a ggml type stores weights.

    Attributes
    ----------
    name : str
        Upstream spelling (``"Q4_K"``, ``"F16"``).
    ggml_type : int
        The ``enum ggml_type`` value written in a tensor info.
    block_size : int
        Weights per block (1 for the plain types).
    type_size : int
        Bytes per block.
    """

    name: str
    ggml_type: int
    block_size: int
    type_size: int

    def row_bytes(self, n_cols: int) -> int:
        """Bytes of one row of ``n_cols`` weights (a multiple of ``block_size``)."""
        return n_cols // self.block_size * self.type_size


def storage_type(key: str | int) -> StorageType:
    """The ggml type named or numbered ``key``: gguf-py's table, else :mod:`qviz.registry`.

    Parameters
    ----------
    key : str or int
        A type name in upstream spelling (exact) or a ggml type id.

    Raises
    ------
    KeyError
        For a type neither gguf-py nor the registry knows.

    Examples
    --------
    >>> storage_type("Q4_K"), storage_type(0).name
    (StorageType(name='Q4_K', ggml_type=12, block_size=256, type_size=144), 'F32')
    """
    try:
        qtype = GGMLQuantizationType[key] if isinstance(key, str) else GGMLQuantizationType(key)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        return StorageType(qtype.name, int(qtype), block_size, type_size)
    except (KeyError, ValueError):
        pass
    from qviz.registry import types  # loads the built-in types; only for ids gguf-py lacks

    for t in types().values():
        if key == (t.name if isinstance(key, str) else t.ggml_type):
            return StorageType(t.name, t.ggml_type, t.block_size, t.type_size)
    raise KeyError(f"no ggml type {key!r} in gguf-py or qviz.registry")


class _Value(NamedTuple):
    """Where a metadata value lies: its type and its encoded bytes [start, end)."""

    type: GGUFValueType
    start: int
    end: int


def _label(name: str, limit: int = 64) -> str:
    """``repr(name)``, shortened: a corrupt file can hold megabyte-long names."""
    r = repr(name)
    return r if len(r) <= limit else r[:limit] + "…"


class _Cursor:
    """Reads GGUF values from a byte buffer; every read first checks the bytes left."""

    def __init__(self, buf: memoryview, source: str):
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.source = source

    def error(self, message: str, offset: int | None = None) -> GGUFError:
        at = self.pos if offset is None else offset
        return GGUFError(f"{self.source}: byte {at}: {message}", at)

    def take(self, n: int, what: str) -> int:
        """Advance over ``n`` bytes of ``what``; return where they start."""
        left = self.size - self.pos
        if n > left:
            raise self.error(f"{what} needs {n} bytes but only {left} are left "
                             f"(a truncated or corrupt file of {self.size} bytes)")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, dtype: np.dtype, what: str):
        start = self.take(dtype.itemsize, what)
        return np.frombuffer(self.buf, dtype, 1, start)[0].item()

    def u32(self, what: str) -> int:
        return self.scalar(_SCALARS[GGUFValueType.UINT32], what)

    def u64(self, what: str) -> int:
        return self.scalar(_SCALARS[GGUFValueType.UINT64], what)

    def count(self, what: str, min_item_bytes: int) -> int:
        """Read a u64 count of items that take at least ``min_item_bytes`` each."""
        at = self.pos
        n = self.u64(what)
        left = self.size - self.pos
        if n * min_item_bytes > left:
            raise self.error(f"{what} is {n}, which needs at least {n * min_item_bytes} "
                             f"bytes, but only {left} are left (a corrupt count, or a "
                             f"truncated file)", at)
        return n

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        start = self.take(n, what)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"{what} is not valid UTF-8 ({e.reason} at byte "
                             f"{start + e.start})", start) from None

    def value_type(self, what: str) -> GGUFValueType:
        at = self.pos
        raw = self.u32(what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.error(f"{what} is {raw}, not a GGUF value type "
                             f"(valid: 0..{int(max(GGUFValueType))})", at) from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0):
        """Read one value of type ``vtype`` as a plain Python object."""
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype != GGUFValueType.ARRAY:
            v = self.scalar(_SCALARS[vtype], what)
            return bool(v) if vtype == GGUFValueType.BOOL else v
        if depth >= MAX_NESTING:
            raise self.error(f"{what} nests arrays deeper than {MAX_NESTING} levels")
        etype = self.value_type(f"element type of {what}")
        n = self.count(f"length of {what}", _MIN_VALUE_BYTES[etype])
        if etype in _SCALARS:
            dtype = _SCALARS[etype]
            start = self.take(n * dtype.itemsize, what)
            items = np.frombuffer(self.buf, dtype, n, start)
            return (items != 0).tolist() if etype == GGUFValueType.BOOL else items.tolist()
        return [self.value(etype, f"{what}[{i}]", depth + 1) for i in range(n)]


def _read_header(cur: _Cursor) -> tuple[int, int, int]:
    """Magic, version and the two counts -> (version, n_tensors, n_kv)."""
    magic = bytes(cur.buf[cur.take(4, "magic"):4])
    if magic != _MAGIC:
        raise cur.error(f"magic is {magic!r}, expected {_MAGIC!r}: not a GGUF file", 0)
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
            hint = "this is a big-endian GGUF; qviz reads little-endian files only"
        elif version == 1:
            hint = "GGUF v1 predates llama.cpp's 2023 format; reconvert the model"
        else:
            hint = "the version field is corrupt or from a newer llama.cpp"
        raise cur.error(f"GGUF version {version} is not supported "
                        f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))}); {hint}", 4)
    n_tensors = cur.count("tensor count", _MIN_TENSOR_INFO_BYTES)
    n_kv = cur.count("metadata key/value count", _MIN_KV_BYTES)
    return version, n_tensors, n_kv


def _read_metadata(cur: _Cursor, n_kv: int) -> tuple[dict, dict[str, _Value]]:
    """The key/value section -> (key -> Python value, key -> where its value lies)."""
    metadata, values = {}, {}
    for i in range(n_kv):
        at = cur.pos
        key = cur.string(f"key of metadata entry {i}")
        if key in metadata:
            raise cur.error(f"metadata key {_label(key)} appears twice", at)
        vtype = cur.value_type(f"value type of {_label(key)}")
        start = cur.pos
        metadata[key] = cur.value(vtype, f"value of {_label(key)}")
        values[key] = _Value(vtype, start, cur.pos)
    return metadata, values


def _read_tensor_info(cur: _Cursor, i: int) -> tuple[str, StorageType, tuple, int, int]:
    """One tensor info -> (name, type, numpy shape, offset in data section, info position)."""
    at = cur.pos
    name = cur.string(f"name of tensor {i}")
    what = f"tensor {_label(name)}"
    n_dims = cur.u32(f"n_dims of {what}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.error(f"{what} has n_dims = {n_dims}; ggml allows 1 to {MAX_DIMS}", cur.pos - 4)
    dims = [cur.u64(f"dimension {j} of {what}") for j in range(n_dims)]
    if math.prod(max(d, 1) for d in dims) > _INT64_MAX:  # a zero dim must not hide a huge one
        raise cur.error(f"{what} has dimensions {dims}, which overflow ggml's int64",
                        cur.pos - 8 * n_dims)
    type_at = cur.pos
    raw_type = cur.u32(f"type of {what}")
    try:
        qtype = storage_type(raw_type)
    except KeyError:
        raise cur.error(f"{what} has ggml type {raw_type}, which is not a known type", type_at) from None
    if dims[0] % qtype.block_size:
        raise cur.error(f"{what} is {qtype.name} with rows of {dims[0]} weights, not a "
                        f"multiple of its block size {qtype.block_size}", type_at)
    offset = cur.u64(f"data offset of {what}")
    return name, qtype, tuple(reversed(dims)), offset, at


def _check_alignment(cur: _Cursor, values: dict[str, _Value], metadata: dict) -> int:
    value = values.get("general.alignment")
    if value is None:
        return gguf.GGUF_DEFAULT_ALIGNMENT
    alignment = metadata["general.alignment"]
    if value.type != GGUFValueType.UINT32:
        raise cur.error(f"general.alignment has type {value.type.name}; it must be UINT32",
                        value.start)
    if alignment == 0 or alignment & (alignment - 1):
        raise cur.error(f"general.alignment is {alignment}; it must be a power of two",
                        value.start)
    return alignment


def _read_tensors(cur: _Cursor, n_tensors: int, alignment: int) -> tuple[list[TensorInfo], int]:
    """Tensor infos, checked against the data section -> (tensors, data offset)."""
    infos, positions = [], {}
    for i in range(n_tensors):
        name, qtype, shape, offset, at = _read_tensor_info(cur, i)
        if name in positions:
            raise cur.error(f"tensor name {_label(name)} appears twice", at)
        positions[name] = at
        infos.append((name, qtype, shape, offset))
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, qtype, shape, offset in infos:
        at = positions[name]
        if offset % alignment:
            raise cur.error(f"tensor {_label(name)} has data offset {offset}, not a multiple of "
                            f"the alignment {alignment}", at)
        block_size, type_size = qtype.block_size, qtype.type_size
        n_bytes = math.prod(shape) // block_size * type_size
        start = data_offset + offset
        if n_bytes and start + n_bytes > cur.size:
            raise cur.error(f"tensor {_label(name)} ({qtype.name}, shape {shape}) needs bytes "
                            f"[{start}, {start + n_bytes}), past the end of the "
                            f"{cur.size}-byte file", at)
        # an empty tensor's other dimensions must be sane too: numpy sizes views by them
        extent = -(-math.prod(max(d, 1) for d in shape) // block_size) * type_size
        if not n_bytes and extent > cur.size:
            raise cur.error(f"tensor {_label(name)} has shape {shape}: empty, but its other "
                            f"dimensions would need {extent} bytes, more than the "
                            f"{cur.size}-byte file", at)
        tensors.append(TensorInfo(name, qtype.name, shape, n_bytes, start))
    _check_overlaps(cur, tensors, positions)
    return tensors, data_offset


def _check_overlaps(cur: _Cursor, tensors: list[TensorInfo], positions: dict[str, int]) -> None:
    by_start = sorted((t for t in tensors if t.n_bytes), key=lambda t: t.offset)
    for prev, t in zip(by_start, by_start[1:]):
        if t.offset < prev.offset + prev.n_bytes:
            raise cur.error(f"data of tensors {_label(prev.name)} [{prev.offset}, "
                            f"{prev.offset + prev.n_bytes}) and {_label(t.name)} [{t.offset}, "
                            f"{t.offset + t.n_bytes}) overlap", positions[t.name])


class GGUFFile:
    """A parsed GGUF file; tensor data stays memory-mapped until asked for.

    Made by :func:`read`. Use it as a context manager, or call :meth:`close`,
    to release the memory map.

    Attributes
    ----------
    path : Path or None
        The file, or None when read from bytes.
    version : int
        GGUF version (2 or 3).
    metadata : dict
        key -> Python value (int, float, bool, str, or a list of them).
    tensors : list of TensorInfo
        In file order.
    alignment : int
        Data alignment (``general.alignment``, default 32).
    data_offset : int
        Byte where the data section starts.
    """

    def __init__(self, data: np.ndarray, path: Path | None, version: int, metadata: dict,
                 values: dict[str, _Value], tensors: list[TensorInfo], alignment: int,
                 data_offset: int):
        self._data = data
        self.path = path
        self.version = version
        self.metadata = metadata
        self._values = values
        self.tensors = tensors
        self._by_name = {t.name: t for t in tensors}
        self.alignment = alignment
        self.data_offset = data_offset

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the memory map; it is unmapped once no array from :meth:`raw` uses it."""
        self._data = None

    def __repr__(self) -> str:
        where = self.path if self.path is not None else "<bytes>"
        return (f"GGUFFile({str(where)!r}, version={self.version}, "
                f"{len(self.tensors)} tensors, {len(self.metadata)} metadata keys)")

    def tensor(self, name: str) -> TensorInfo:
        """The :class:`TensorInfo` of tensor ``name``.

        Raises
        ------
        KeyError
            For an unknown name, listing the closest ones.
        """
        try:
            return self._by_name[name]
        except KeyError:
            near = difflib.get_close_matches(name, self._by_name, n=5, cutoff=0.6)
            hint = f"closest: {', '.join(near)}" if near else \
                f"it has {len(self.tensors)} tensors, see .tensors"
            raise KeyError(f"no tensor {name!r} in this GGUF file; {hint}") from None

    def _span(self, start: int, end: int) -> np.ndarray:
        """Bytes [start, end) of the file, uint8, read-only, without copying."""
        if self._data is None:
            raise ValueError("this GGUFFile is closed; read() the file again")
        return self._data[start:end]

    def _rows(self, info: TensorInfo) -> np.ndarray:
        """The data of a tensor as uint8 (n_rows, row_bytes)."""
        return self.tensor_bytes(info.name).reshape(
            math.prod(info.shape[:-1]), storage_type(info.type_name).row_bytes(info.shape[-1]))

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name``, read-only, without copying.

        Returns
        -------
        ndarray, shape (n_bytes,), uint8
        """
        info = self.tensor(name)
        return self._span(info.offset, info.offset + info.n_bytes)

    def encoded(self, key: str) -> tuple[GGUFValueType, bytes]:
        """Metadata value ``key`` exactly as the file stores it: (value type, its bytes).

        The bytes follow the value type in the file (a string's length, an
        array's element type and count included), so writing them back after
        the type copies the value byte for byte.

        Raises
        ------
        KeyError
            For a key the file does not have.
        """
        value = self._values[key]
        return value.type, bytes(self._span(value.start, value.end))

    def raw(self, name: str) -> np.ndarray:
        """The stored data of tensor ``name``, read-only, without copying.

        Returns
        -------
        ndarray
            Plain types (F32, F16, F64, integers): that dtype, the tensor's
            shape. BF16: its raw bits, uint16, the tensor's shape. Block types:
            uint8, shape (n_rows, row_bytes), n_rows the product of all but
            the last dimension.
        """
        info = self.tensor(name)
        dtype = PLAIN_DTYPES.get(info.type_name)
        if dtype is not None:
            return self.tensor_bytes(name).view(dtype).reshape(info.shape)
        return self._rows(info)

    def decode(self, name: str) -> np.ndarray:
        """Tensor ``name`` decoded to float32, in its shape (a new array).

        Block types decode with gguf-py's ``gguf.quants.dequantize``.
        """
        info = self.tensor(name)
        if info.type_name in PLAIN_DTYPES and info.type_name != "BF16":
            return self.raw(name).astype(np.float32)
        if not info.n_elements:  # gguf-py cannot reshape an empty tensor
            return np.zeros(info.shape, dtype=np.float32)
        return np.array(_dequantize(info.type_name, self._rows(info), name),
                        dtype=np.float32).reshape(info.shape)

    def result(self, name: str):
        """Tensor ``name`` as a :class:`~qviz.result.QuantResult` (a registered quant type).

        Raises
        ------
        ValueError
            For a type qviz does not implement, listing the ones it does.
        """
        from qviz.methods import type_result
        from qviz.registry import types

        info = self.tensor(name)
        if info.type_name not in types():
            raise ValueError(f"tensor {name!r} is {info.type_name}; QuantResult covers the "
                             f"types {', '.join(types())} (use .decode() for any type)")
        return type_result(info.type_name, self.raw(name))

    def table(self) -> list[dict]:
        """One row per tensor, for display (``pandas.DataFrame(f.table())``).

        Returns
        -------
        list of dict
            Keys ``name``, ``type``, ``shape``, ``bits_per_weight``, ``bytes``.
        """
        return [{"name": t.name, "type": t.type_name, "shape": t.shape,
                 "bits_per_weight": t.bits_per_weight, "bytes": t.n_bytes}
                for t in self.tensors]


def _dequantize(type_name: str, rows: np.ndarray, tensor: str) -> np.ndarray:
    """Rows of a block type -> float32 (n_rows, n_cols): gguf-py, else the registered type's kernel."""
    from qviz.registry import types

    try:
        return gguf.quants.dequantize(rows, GGMLQuantizationType[type_name])
    except (KeyError, NotImplementedError):
        registered = types().get(type_name)
        if registered is None:
            raise NotImplementedError(f"tensor {tensor!r} is {type_name}, which gguf-py "
                                      f"cannot decode") from None
    return registered.function("dequantize", "numba")(rows)


def _open(source) -> tuple[np.ndarray, Path | None]:
    """Map a path read-only, or view a bytes-like object, as uint8."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = np.frombuffer(source, dtype=np.uint8)
        data.flags.writeable = False
        return data, None
    path = Path(source)
    if path.stat().st_size == 0:
        raise GGUFError(f"{path}: byte 0: the file is empty", 0)
    return np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray), path


def read(source: str | os.PathLike | bytes | bytearray | memoryview) -> GGUFFile:
    """Parse a GGUF v2/v3 file, checking every field.

    Parameters
    ----------
    source : path or bytes-like
        A file (memory-mapped read-only) or its bytes.

    Returns
    -------
    GGUFFile

    Raises
    ------
    GGUFError
        For anything that breaks the format, naming the byte offset.

    Examples
    --------
    >>> import gguf, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
    >>> w = gguf.GGUFWriter(path, "llama")
    >>> w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    >>> w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    >>> with read(path) as f:
    ...     f.metadata["general.architecture"], f.tensors[0], f.decode("output_norm.weight")[:2]
    ('llama', TensorInfo(name='output_norm.weight', type_name='F32', shape=(8,), n_bytes=32, offset=128), array([1., 1.], dtype=float32))
    """
    data, path = _open(source)
    cur = _Cursor(memoryview(data), str(path) if path is not None else "<bytes>")
    version, n_tensors, n_kv = _read_header(cur)
    metadata, values = _read_metadata(cur, n_kv)
    alignment = _check_alignment(cur, values, metadata)
    tensors, data_offset = _read_tensors(cur, n_tensors, alignment)
    return GGUFFile(data, path, version, metadata, values, tensors, alignment, data_offset)
