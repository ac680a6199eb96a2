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

Costs. A header of N bytes is parsed in O(N) time with a small constant
(about 0.15 s for the 8 MiB header of a million empty strings, the densest
case; ``benchmarks/bench_gguf_reader.py``) and O(N) memory: arrays of more
than :data:`LIST_MAX_ITEMS` numbers become read-only numpy arrays (a copy of
their bytes, never a Python list of them), so the parsed metadata and tensor
list take at most about ten times the header's bytes even for a header made
of nothing but tiny strings, arrays or tensor infos.

A file changed under the map. The file stays open while the
:class:`GGUFFile` is; before each read of the file's bytes (:meth:`~GGUFFile.raw`,
:meth:`~GGUFFile.decode`, :meth:`~GGUFFile.tensor_bytes`, :meth:`~GGUFFile.encoded`,
:meth:`~GGUFFile.result`) its size and modification time are checked
against those :func:`read` saw (``fstat`` of the open file), and a file
changed in place (truncated, rewritten, copied over) raises
:class:`GGUFError` instead of letting the process die of ``SIGBUS``. What
remains: a truncation in the instant between that check and the read, and
arrays already handed out by :meth:`~GGUFFile.raw`, :meth:`~GGUFFile.tensor_bytes`
and :meth:`~GGUFFile.result`, which are views of the map (copy them,
``np.array(f.raw(name))``, to keep them past a change of the file). A file
replaced by renaming another over it is not a change of the open file: the
:class:`GGUFFile` keeps reading the version it parsed, which stays intact.
"""
from __future__ import annotations

import difflib
import functools
import math
import mmap
import os
import struct
import weakref
from array import array
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
#: metadata arrays of numbers (or bools) with more elements are read-only numpy
#: arrays instead of Python lists (a tokenizer's scores, a large array a header claims)
LIST_MAX_ITEMS = 256
_INT64_MAX = 2**63 - 1
_MAGIC = b"GGUF"

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ARRAY_HEAD = struct.Struct("<IQ")  # element type, count
_TYPE_OFFSET = struct.Struct("<IQ")  # a tensor's ggml type and data offset
#: GGUF value type ids, as plain ints: the parser's hot loops compare these
_STRING, _ARRAY, _BOOL = int(GGUFValueType.STRING), int(GGUFValueType.ARRAY), int(GGUFValueType.BOOL)
_VALUE_TYPES = {int(t): t for t in GGUFValueType}

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
#: scalar type id -> its struct (BOOL: "?", any non-zero byte is True)
_SCALAR_STRUCTS = {int(t): struct.Struct("<" + code) for t, code in {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}.items()}
#: fewest bytes one value of a type can take (string: its length; array: type + count)
_MIN_VALUE_BYTES = {**{int(t): d.itemsize for t, d in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
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


def _label(name: str, limit: int = 64) -> str:
    """``repr(name)``, shortened: a corrupt file can hold megabyte-long names."""
    r = repr(name[:limit])
    return r if len(name) <= limit and len(r) <= limit else r[:limit] + "…"


#: integer types whose values CPython does not all cache (it caches -5..256)
_SMALL_INTS = (int(GGUFValueType.INT8), int(GGUFValueType.UINT16), int(GGUFValueType.INT16))


@functools.lru_cache(maxsize=None)
def _shared_ints(vtype: int) -> list[int]:
    """Every value of the 8- or 16-bit integer type ``vtype``, indexed by itself.

    Signed types list 0..max then min..-1, so a negative value indexes from
    the end and ``table[v] == v`` throughout. A list of small integers built
    from the table holds shared objects: 8 bytes an element, where fresh ints
    take 36, so a header of INT8/INT16 arrays costs a few times its bytes,
    not tens. Built on first use (2.3 MB for a 16-bit type).
    """
    info = np.iinfo(_SCALARS[GGUFValueType(vtype)])
    return [*range(0, int(info.max) + 1), *range(int(info.min), 0)]


class _Cursor:
    """Reads GGUF values from a byte buffer; every read first checks the bytes left.

    Nothing is allocated or looped over for a count or length before it is
    checked against the bytes that remain, and every element an array
    claims is paid for by bytes of the file, so parsing N bytes costs O(N).
    """

    __slots__ = ("buf", "pos", "size", "source")

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

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.take(8, what))[0]

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

    def text(self, start: int, n: int, what: str) -> str:
        """Bytes [start, start + n) of ``what`` as UTF-8."""
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"{what} is not valid UTF-8 ({e.reason} at byte "
                             f"{start + e.start})", start) from None

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        return self.text(self.take(n, what), n, what)

    def value_type(self, what: str) -> int:
        at = self.pos
        raw = self.u32(what)
        if raw not in _VALUE_TYPES:
            raise self.error(f"{what} is {raw}, not a GGUF value type "
                             f"(valid: 0..{int(max(GGUFValueType))})", at)
        return raw

    def value(self, vtype: int, key: str):
        """Read the value of metadata ``key``, of type ``vtype``, as a Python object.

        See :attr:`GGUFFile.metadata` for what each type becomes. Labels for
        messages are only made when something is wrong.
        """
        if vtype == _ARRAY:
            return self.array(f"value of {_label(key)}", 0)
        if vtype == _STRING:
            pos, left = self.pos, self.size - self.pos
            if left >= 8 and (n := _U64.unpack_from(self.buf, pos)[0]) <= left - 8:
                self.pos = pos + 8 + n
                return self.text(pos + 8, n, key) if n else ""
            return self.string(f"value of {_label(key)}")  # raises, saying why
        unpacker = _SCALAR_STRUCTS[vtype]
        if self.size - self.pos < unpacker.size:
            self.take(unpacker.size, f"value of {_label(key)}")  # raises
        self.pos += unpacker.size
        return unpacker.unpack_from(self.buf, self.pos - unpacker.size)[0]

    def array(self, what: str, depth: int):
        """An array value (element type, count, elements) -> list, or ndarray for many numbers."""
        if depth >= MAX_NESTING:
            raise self.error(f"{what} nests arrays deeper than {MAX_NESTING} levels")
        pos, left = self.pos, self.size - self.pos
        if left >= 12:
            etype, n = _ARRAY_HEAD.unpack_from(self.buf, pos)
            least = _MIN_VALUE_BYTES.get(etype)
        if left >= 12 and least is not None and n * least <= left - 12:
            self.pos = pos + 12
        else:  # the checked reads, which raise naming the field
            etype = self.value_type(f"element type of {what}")
            n = self.count(f"length of {what}", _MIN_VALUE_BYTES[etype])
        if etype == _STRING:
            return self.strings(n, what)
        if etype == _ARRAY:
            items, i = [], 0
            try:
                for i in range(n):
                    items.append(self.array(what, depth + 1))
            except GGUFError as e:  # name the element only now: a label per element costs
                raise self.error(f"{str(e).split(': ', 2)[-1]} (in element {i} of {what})",
                                 e.offset) from None
            return items
        if not n:
            return []
        start, unpacker = self.pos, _SCALAR_STRUCTS[etype]
        self.pos += n * unpacker.size  # checked above
        if n <= LIST_MAX_ITEMS:
            items = struct.unpack_from(f"<{n}{unpacker.format[1]}", self.buf, start)
            if etype in _SMALL_INTS:
                table = _shared_ints(etype)
                return [table[v] for v in items]
            return list(items)
        dtype = _SCALARS[GGUFValueType(etype)]
        items = np.frombuffer(self.buf, dtype, n, start)
        items = (items != 0) if etype == _BOOL else items.copy()  # never a view of the file
        items.flags.writeable = False
        return items

    def strings(self, n: int, what: str) -> list[str]:
        """``n`` strings (each a u64 length and its bytes) -> list."""
        buf, pos, end, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out = [""] * n
        for i in range(n):
            if end - pos < 8:
                self.pos = pos
                raise self.error(f"length of {what}[{i}] needs 8 bytes but only {end - pos} "
                                 f"are left (a truncated or corrupt file of {end} bytes)")
            length = unpack(buf, pos)[0]
            pos += 8
            if length > end - pos:
                raise self.error(f"length of {what}[{i}] is {length}, but only {end - pos} "
                                 f"bytes are left (a corrupt length, or a truncated file)",
                                 pos - 8)
            if length:
                try:
                    out[i] = str(buf[pos:pos + length], "utf-8")
                except UnicodeDecodeError:
                    self.text(pos, length, f"{what}[{i}]")  # raises, naming the byte
                pos += length
        self.pos = pos
        return out


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


class _Values:
    """Where each metadata value lies, compactly: key order and [start, end) of its encoded bytes.

    Two integers a key (no tuple, no second dict), so that a header of many
    tiny values costs little more than the values themselves.
    """

    def __init__(self):
        self.keys: list[str] = []
        self.starts = array("q")
        self.ends = array("q")
        self._index: dict[str, int] | None = None

    def add(self, key: str, start: int, end: int) -> None:
        self.keys.append(key)
        self.starts.append(start)
        self.ends.append(end)

    def span(self, key: str) -> tuple[int, int]:
        """[start, end) of ``key``'s value, the value type being the 4 bytes before it.

        Raises
        ------
        KeyError
            For a key the file does not have.
        """
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        i = self._index[key]
        return self.starts[i], self.ends[i]


def _read_metadata(cur: _Cursor, n_kv: int) -> tuple[dict, _Values]:
    """The key/value section -> (key -> Python value, where each value lies)."""
    metadata, values = {}, _Values()
    buf, size = cur.buf, cur.size
    for i in range(n_kv):
        at, left = cur.pos, size - cur.pos
        # the usual case in one go: key length, key and value type all in the file
        if (left >= 8 and (n := _U64.unpack_from(buf, at)[0]) <= left - 12
                and (vtype := _U32.unpack_from(buf, at + 8 + n)[0]) in _VALUE_TYPES):
            key = cur.text(at + 8, n, f"key of metadata entry {i}") if n else ""
            cur.pos = at + 12 + n
        else:  # the checked reads, which raise naming the field
            key = cur.string(f"key of metadata entry {i}")
            vtype = cur.value_type(f"value type of {_label(key)}")
        if key in metadata:
            raise cur.error(f"metadata key {_label(key)} appears twice", at)
        start = cur.pos
        metadata[key] = cur.value(vtype, key)
        values.add(key, start, cur.pos)
    return metadata, values


def _tensor_fields(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int, int]:
    """Tensor info ``i``'s fields -> (name, ggml dims, ggml type, data offset, where dims start)."""
    buf, at = cur.buf, cur.pos
    left = cur.size - at
    if left >= 8 and (n := _U64.unpack_from(buf, at)[0]) <= left - 12:
        n_dims = _U32.unpack_from(buf, at + 8 + n)[0]
        if 1 <= n_dims <= MAX_DIMS and left >= 24 + n + 8 * n_dims:  # the usual case in one go
            name = cur.text(at + 8, n, f"name of tensor {i}") if n else ""
            dims_at = at + 12 + n
            dims = struct.unpack_from(f"<{n_dims}Q", buf, dims_at)
            raw_type, offset = _TYPE_OFFSET.unpack_from(buf, dims_at + 8 * n_dims)
            cur.pos = dims_at + 8 * n_dims + 12
            return name, dims, raw_type, offset, dims_at
    # the checked reads, which raise naming the field
    name = cur.string(f"name of tensor {i}")
    n_dims = cur.u32(f"n_dims of tensor {_label(name)}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.error(f"tensor {_label(name)} has n_dims = {n_dims}; ggml allows 1 to "
                        f"{MAX_DIMS}", cur.pos - 4)
    dims_at = cur.take(8 * n_dims, f"dimensions of tensor {_label(name)}")
    dims = struct.unpack_from(f"<{n_dims}Q", buf, dims_at)
    raw_type = cur.u32(f"type of tensor {_label(name)}")
    offset = cur.u64(f"data offset of tensor {_label(name)}")
    return name, dims, raw_type, offset, dims_at


def _read_tensor_info(cur: _Cursor, i: int, known: dict) -> TensorInfo:
    """One tensor info -> TensorInfo whose offset is still relative to the data section.

    ``known``: ggml type id -> StorageType, the ids already looked up.
    """
    name, dims, raw_type, offset, dims_at = _tensor_fields(cur, i)
    extent = 1
    for d in dims:
        extent *= d or 1  # a zero dim must not hide a huge one
    if extent > _INT64_MAX:
        raise cur.error(f"tensor {_label(name)} has dimensions {list(dims)}, which overflow "
                        f"ggml's int64", dims_at)
    type_at = dims_at + 8 * len(dims)
    qtype = known.get(raw_type)
    if qtype is None:
        try:
            qtype = known[raw_type] = storage_type(raw_type)
        except KeyError:
            raise cur.error(f"tensor {_label(name)} has ggml type {raw_type}, which is not a "
                            f"known type", type_at) from None
    if dims[0] % qtype.block_size:
        raise cur.error(f"tensor {_label(name)} is {qtype.name} with rows of {dims[0]} weights, "
                        f"not a multiple of its block size {qtype.block_size}", type_at)
    shape = dims[::-1]
    n_bytes = math.prod(shape) // qtype.block_size * qtype.type_size
    return TensorInfo(name, qtype.name, shape, n_bytes, offset)


def _check_alignment(cur: _Cursor, values: _Values, metadata: dict) -> int:
    if "general.alignment" not in metadata:
        return gguf.GGUF_DEFAULT_ALIGNMENT
    alignment = metadata["general.alignment"]
    start = values.span("general.alignment")[0]
    vtype = _U32.unpack_from(cur.buf, start - 4)[0]
    if vtype != GGUFValueType.UINT32:
        raise cur.error(f"general.alignment has type {GGUFValueType(vtype).name}; it must be "
                        f"UINT32", start)
    if alignment == 0 or alignment & (alignment - 1):
        raise cur.error(f"general.alignment is {alignment}; it must be a power of two", start)
    return alignment


def _read_tensors(cur: _Cursor, n_tensors: int, alignment: int) -> tuple[list[TensorInfo], int]:
    """Tensor infos, checked against the data section -> (tensors, data offset)."""
    tensors, positions, seen, known = [], array("q"), set(), {}
    for i in range(n_tensors):
        at = cur.pos
        info = _read_tensor_info(cur, i, known)
        if info.name in seen:
            raise cur.error(f"tensor name {_label(info.name)} appears twice", at)
        seen.add(info.name)
        positions.append(at)
        tensors.append(info)
    del seen
    data_offset = -(-cur.pos // alignment) * alignment
    starts, sizes = array("q"), array("q")
    for i, (name, type_name, shape, n_bytes, offset) in enumerate(tensors):
        at = positions[i]
        if offset % alignment:
            raise cur.error(f"tensor {_label(name)} has data offset {offset}, not a multiple of "
                            f"the alignment {alignment}", at)
        start = data_offset + offset
        if n_bytes and start + n_bytes > cur.size:
            raise cur.error(f"tensor {_label(name)} ({type_name}, shape {shape}) needs bytes "
                            f"[{start}, {start + n_bytes}), past the end of the "
                            f"{cur.size}-byte file", at)
        if not n_bytes:  # an empty tensor's other dimensions must be sane too: numpy sizes views by them
            qtype = storage_type(type_name)
            extent = -(-math.prod(max(d, 1) for d in shape) // qtype.block_size) * qtype.type_size
            if extent > cur.size:
                raise cur.error(f"tensor {_label(name)} has shape {shape}: empty, but its other "
                                f"dimensions would need {extent} bytes, more than the "
                                f"{cur.size}-byte file", at)
        tensors[i] = TensorInfo(name, type_name, shape, n_bytes, start)  # the absolute offset
        starts.append(start if n_bytes else 0)  # an empty tensor's offset may be anything
        sizes.append(n_bytes)
    _check_overlaps(cur, tensors, positions, np.frombuffer(starts, np.int64),
                    np.frombuffer(sizes, np.int64))
    return tensors, data_offset


def _check_overlaps(cur: _Cursor, tensors: list[TensorInfo], positions: array, starts: np.ndarray,
                    sizes: np.ndarray) -> None:
    """Raise when the data of two tensors overlap (sorted by start, vectorized).

    ``starts``, ``sizes``: int64 (n_tensors,), each tensor's data offset and bytes.
    """
    order = np.flatnonzero(sizes)
    order = order[np.argsort(starts[order], kind="stable")]
    clash = np.flatnonzero(starts[order[1:]] < starts[order[:-1]] + sizes[order[:-1]])
    if clash.size:
        prev, t = tensors[order[clash[0]]], tensors[order[clash[0] + 1]]
        raise cur.error(f"data of tensors {_label(prev.name)} [{prev.offset}, "
                        f"{prev.offset + prev.n_bytes}) and {_label(t.name)} [{t.offset}, "
                        f"{t.offset + t.n_bytes}) overlap", positions[order[clash[0] + 1]])


class _Mapped:
    """A file mapped read-only, kept open to notice when it changes under the map.

    Reading a page of a map whose file was truncated kills the process with
    ``SIGBUS``; :meth:`span` first compares the open file's size and
    modification time (``fstat``) with those seen when it was mapped.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._closer = weakref.finalize(self, os.close, self.fd)
        st = os.fstat(self.fd)
        self.stamp = (st.st_size, st.st_mtime_ns)
        if st.st_size == 0:
            self.close()
            raise GGUFError(f"{path}: byte 0: the file is empty", 0)
        # read-only; unmapped once neither this nor an array from raw() holds it
        self.data = np.frombuffer(mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ), np.uint8)

    def check(self, at: int) -> None:
        """Raise GGUFError when the open file's size or modification time changed."""
        if not self._closer.alive:
            raise ValueError("this GGUFFile is closed; read() the file again")
        st = os.fstat(self.fd)
        if (st.st_size, st.st_mtime_ns) != self.stamp:
            raise GGUFError(f"{self.path}: byte {at}: the file changed since read() (was "
                            f"{self.stamp[0]} bytes, now {st.st_size}; modified again): "
                            f"read() it again", at)

    def close(self) -> None:
        self._closer()


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
        key -> Python value: int, float, bool, str, or an array as a list of
        them (nested arrays: lists of lists). An array of more than
        :data:`LIST_MAX_ITEMS` numbers or bools is a read-only numpy array
        of its type instead (``tokenizer.ggml.scores`` of a real vocabulary,
        say): index it, iterate it, or ``.tolist()`` it. Metadata is a copy:
        it never reads the file again.
    tensors : list of TensorInfo
        In file order.
    alignment : int
        Data alignment (``general.alignment``, default 32).
    data_offset : int
        Byte where the data section starts.
    """

    def __init__(self, data: np.ndarray, mapped: _Mapped | None, version: int, metadata: dict,
                 values: _Values, tensors: list[TensorInfo], alignment: int, data_offset: int):
        self._data = data
        self._mapped = mapped
        self.path = None if mapped is None else mapped.path
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
        """Close the file and drop the memory map; it is unmapped once no array from :meth:`raw` uses it."""
        self._data = None
        if self._mapped is not None:
            self._mapped.close()

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
        if self._mapped is not None:
            self._mapped.check(start)
        return self._data[start:end]

    def _rows(self, info: TensorInfo) -> np.ndarray:
        """The data of a tensor as uint8 (n_rows, row_bytes)."""
        return self.tensor_bytes(info.name).reshape(
            math.prod(info.shape[:-1]), storage_type(info.type_name).row_bytes(info.shape[-1]))

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name``, read-only, without copying.

        A view of the memory map: copy it to keep it past a change of the
        file (see the module's notes).

        Raises
        ------
        GGUFError
            When the file changed since :func:`read`.

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
        GGUFError
            When the file changed since :func:`read`.
        """
        start, end = self._values.span(key)
        raw = bytes(self._span(start - 4, end))
        return GGUFValueType(_U32.unpack_from(raw)[0]), raw[4:]

    def raw(self, name: str) -> np.ndarray:
        """The stored data of tensor ``name``, read-only, without copying.

        A view of the memory map, like :meth:`tensor_bytes`.

        Raises
        ------
        GGUFError
            When the file changed since :func:`read`.

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

        Raises
        ------
        GGUFError
            When the file changed since :func:`read` (checked before reading).
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
        from qviz.quantizers import type_result
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


def _open(source) -> tuple[np.ndarray, _Mapped | None]:
    """Map a path read-only, or view a bytes-like object, as uint8."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = np.frombuffer(source, dtype=np.uint8)
        data.flags.writeable = False
        return data, None
    mapped = _Mapped(Path(source))
    return mapped.data, mapped


def read(source: str | os.PathLike | bytes | bytearray | memoryview) -> GGUFFile:
    """Parse a GGUF v2/v3 file, checking every field.

    Parameters
    ----------
    source : path or bytes-like
        A file (memory-mapped read-only, and kept open until
        :meth:`GGUFFile.close`) or its bytes.

    Returns
    -------
    GGUFFile

    Raises
    ------
    GGUFError
        For anything that breaks the format, naming the byte offset.

    Notes
    -----
    Parsing takes time and memory in proportion to the header's bytes (see
    the module's notes); large numeric metadata arrays are numpy arrays
    (:attr:`GGUFFile.metadata`).

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
    data, mapped = _open(source)
    try:
        cur = _Cursor(memoryview(data), str(mapped.path) if mapped is not None else "<bytes>")
        version, n_tensors, n_kv = _read_header(cur)
        metadata, values = _read_metadata(cur, n_kv)
        alignment = _check_alignment(cur, values, metadata)
        tensors, data_offset = _read_tensors(cur, n_tensors, alignment)
    except BaseException:
        if mapped is not None:
            mapped.close()
        raise
    return GGUFFile(data, mapped, version, metadata, values, tensors, alignment, data_offset)
