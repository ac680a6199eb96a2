"""Hostile GGUF inputs (issue 12): headers that claim a lot, files changed under the map,
interrupted and misused ``requantize``.

The size attacks are built here byte by byte (:func:`strings`, :func:`nested_empty`,
:func:`numbers`, :func:`tensor_infos`, :func:`many_kv`); the fuzz test and
``benchmarks/bench_gguf_reader.py`` use them too. Costs are checked without
timing anything: memory with ``tracemalloc`` (peak allocation against the
file's size), time by counting the parser's Python-level calls per item a
header holds (a per-item loop in Python is what made a 64 MiB header take a
minute), and only blow-ups by a wall-clock bound.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from test_gguf_file import write_gguf

from qviz.io import gguf_reader
from qviz.io.gguf import LIST_MAX_ITEMS, GGUFError, Requantized, read, requantize

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# size attacks: whole GGUF files, built without any GGUF library


def _string(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(kvs: list[bytes], tensor_infos: bytes = b"", n_tensors: int = 0, data: bytes = b"") -> bytes:
    """A GGUF v3 file from encoded key/value entries, tensor infos and the data section."""
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs) + tensor_infos
    return head + b"\0" * (-len(head) % 32 if data else 0) + data


def array_kv(key: bytes, etype: int, n: int, body: bytes) -> bytes:
    return _string(key) + struct.pack("<IIQ", V.ARRAY, etype, n) + body


def strings(n: int, length: int = 0) -> bytes:
    """One array of ``n`` strings of ``length`` bytes (8 + length bytes each)."""
    return gguf_bytes([array_kv(b"a", V.STRING, n, (_string(b"x" * length)) * n)])


def nested_empty(n: int) -> bytes:
    """One array of ``n`` empty arrays (12 bytes each)."""
    return gguf_bytes([array_kv(b"a", V.ARRAY, n, struct.pack("<IQ", V.UINT8, 0) * n)])


def numbers(n: int, etype: int = V.UINT8, fill: int = 7) -> bytes:
    """One array of ``n`` numbers of type ``etype``."""
    code = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.FLOAT32: "f", V.INT32: "i"}[etype]
    return gguf_bytes([array_kv(b"a", etype, n, struct.pack(f"<{n}{code}", *[fill] * n))])


def small_arrays(n: int, etype: int = V.INT8, fill: int = -100) -> bytes:
    """``n`` keys, each an array of :data:`LIST_MAX_ITEMS` small numbers (read as lists)."""
    k = LIST_MAX_ITEMS
    code = {V.INT8: "b", V.INT16: "h"}[etype]
    body = struct.pack(f"<{k}{code}", *[fill] * k)
    return gguf_bytes([array_kv(b"%07d" % i, etype, k, body) for i in range(n)])


def many_kv(n: int) -> bytes:
    """``n`` keys, each an INT8 scalar (16 bytes each)."""
    return gguf_bytes([_string(b"%03x" % i if n <= 4096 else b"%06d" % i) + struct.pack("<Ib", V.INT8, -100)
                       for i in range(n)])


def tensor_infos(n: int) -> bytes:
    """``n`` one-element I8 tensors, alignment 1: about 40 bytes of header each."""
    kvs = [_string(b"general.alignment") + struct.pack("<II", V.UINT32, 1)]
    infos = b"".join(_string(b"t%d" % i) + struct.pack("<IQIQ", 1, 1, T.I8, i) for i in range(n))
    head = b"GGUF" + struct.pack("<IQQ", 3, n, len(kvs)) + b"".join(kvs) + infos
    return head + bytes(range(256)) * (n // 256 + 1)


#: name -> builder of a file of about ``size`` bytes
ATTACKS = {
    "empty strings": lambda size: strings(size // 8),
    "2-byte strings": lambda size: strings(size // 10, 2),
    "nested empty arrays": lambda size: nested_empty(size // 12),
    "uint8 array": lambda size: numbers(size),
    "int8 lists": lambda size: small_arrays(size // (LIST_MAX_ITEMS + 35)),
    "int16 lists": lambda size: small_arrays(size // (2 * LIST_MAX_ITEMS + 35), V.INT16, -30000),
    "scalar keys": lambda size: many_kv(size // 19),
    "tensor infos": lambda size: tensor_infos(size // 40),
}


def peak_allocation(fn, *args) -> int:
    """Bytes ``fn(*args)`` allocated at its peak (``tracemalloc``)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------
# item 7: a header of N bytes costs O(N) time and memory


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_header_memory_is_a_small_multiple_of_its_size(attack):
    data = ATTACKS[attack](1 << 20)
    peak = peak_allocation(read, data)
    # measured: 1x (a numeric array, empty strings) to about 8x (tensor infos, tiny keys);
    # before: 8x (a uint8 array as a list: 2.3 GB for 256 MiB) to 34x (int8 lists)
    bound = 2 if attack == "uint8 array" else 12
    assert peak < bound * len(data), f"{attack}: peak {peak / len(data):.1f}× the {len(data)}-byte file"


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_header_costs_few_python_calls_per_item(attack):
    """The parser's time is linear with a small constant: it counts its Python calls, not seconds.

    Before, every string, array or tensor info took 5 to 12 Python calls
    (and a formatted label): 6–7 s for a 1M-string header, 80 s for 64 MiB of
    nested arrays. Now an array element of any kind takes at most one.
    """
    data = ATTACKS[attack](1 << 16)
    calls = [0]

    def count(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == gguf_reader.__file__:
            calls[0] += 1

    sys.setprofile(count)
    try:
        f = read(data)
    finally:
        sys.setprofile(None)
    items = len(f.tensors) + len(f.metadata) + sum(len(v) for v in f.metadata.values()
                                                   if isinstance(v, (list, np.ndarray)))
    assert calls[0] <= 4 * items + 100, f"{attack}: {calls[0]} calls for {items} items"


def test_a_64_mib_header_parses_in_seconds_not_minutes():
    """Only a blow-up bound (before: 43 s for this file, 80 s for nested arrays); speed is benchmarked."""
    data = strings(8 << 20)
    start = time.perf_counter()
    f = read(data)
    assert len(f.metadata["a"]) == 8 << 20 and f.metadata["a"][-1] == ""
    assert time.perf_counter() - start < 30


def test_large_numeric_arrays_are_read_only_numpy_copies():
    n = LIST_MAX_ITEMS + 1
    data = bytearray(numbers(n, V.FLOAT32, 2))
    f = read(data)
    a = f.metadata["a"]
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (n,)
    assert not a.flags.writeable and (a == 2).all()
    data[-4:] = struct.pack("<f", 5)  # the caller's buffer changes; the metadata does not
    assert a[-1] == 2
    short = read(numbers(LIST_MAX_ITEMS, V.INT8, -100)).metadata["a"]
    assert short == [-100] * LIST_MAX_ITEMS and type(short) is list
    flags = gguf_bytes([array_kv(b"b", V.BOOL, n, b"\x00\x02" * (n // 2) + b"\x01")])
    b = read(flags).metadata["b"]
    assert b.dtype == bool and b.tolist() == [False, True] * (n // 2) + [True]


def test_errors_inside_arrays_still_name_the_element_and_byte():
    data = strings(4, 1)
    bad = data[:-1] + b"\xff"
    with pytest.raises(GGUFError, match=r"value of 'a'\[3\] is not valid UTF-8") as e:
        read(bad)
    assert e.value.offset == len(data) - 1
    nested = bytearray(nested_empty(5))
    struct.pack_into("<Q", nested, len(nested) - 8, 2**40)  # the last inner array's count
    with pytest.raises(GGUFError, match=r"length of value of 'a' is 1099511627776.*element 4") as e:
        read(bytes(nested))
    assert e.value.offset == len(nested) - 8
    with pytest.raises(GGUFError, match=r"length of value of 'a'\[2\] is 1000"):
        read(strings(3)[:-8] + struct.pack("<Q", 1000))


def test_many_tensor_infos_read_and_overlaps_are_found():
    data = tensor_infos(5000)
    f = read(data)
    assert len(f.tensors) == 5000 and f.raw("t4999").view(np.uint8)[0] == 4999 % 256
    infos = bytearray(data)
    p = data.index(_string(b"t7")) + 8 + 2 + 4 + 8 + 4  # t7's data offset -> t6's
    struct.pack_into("<Q", infos, p, 6)
    with pytest.raises(GGUFError, match="'t6'.*'t7'.*overlap"):
        read(bytes(infos))


# ---------------------------------------------------------------------------
# item 8: a file changed under the map raises, never SIGBUS


def _model(path: Path, n: int = 4096) -> Path:
    write_gguf(path, {"w.weight": (np.arange(n, dtype=np.float32).reshape(-1, 64), T.F32)},
               metadata=False)
    return path


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_file_truncated_under_the_map_raises_instead_of_sigbus(tmp_path):
    path = _model(tmp_path / "m.gguf", 64 * 4096)
    other = _model(tmp_path / "small.gguf", 64)
    done = _run(f"""
        import shutil
        from qviz.io.gguf import GGUFError, read
        f = read({str(path)!r})
        shutil.copyfile({str(other)!r}, {str(path)!r})  # `cp other p`: truncates the mapped file
        for call in (lambda: f.decode("w.weight"), lambda: f.raw("w.weight"),
                     lambda: f.encoded("general.architecture"), lambda: f.tensor_bytes("w.weight")):
            try:
                call()
            except GGUFError as e:
                assert "changed since read()" in str(e), e
            else:
                raise SystemExit("no GGUFError")
        print("raised")
    """)
    assert done.returncode == 0, f"exit {done.returncode} (-7 is SIGBUS): {done.stderr[-2000:]}"
    assert done.stdout.strip() == "raised"


def test_file_rewritten_in_place_with_the_same_size_raises(tmp_path):
    path = _model(tmp_path / "m.gguf")
    f = read(path)
    before = f.decode("w.weight")
    data = bytearray(path.read_bytes())
    data[-4:] = struct.pack("<f", -1)
    stat = path.stat()
    with open(path, "r+b") as out:  # same inode, same size
        out.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(GGUFError, match="changed since read"):
        f.decode("w.weight")
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.raw("w.weight")
    with read(path) as g:
        assert g.decode("w.weight").ravel()[-1] == -1 and (g.decode("w.weight").ravel()[:-1] ==
                                                          before.ravel()[:-1]).all()


def test_file_replaced_by_rename_keeps_reading_the_version_parsed(tmp_path):
    path = _model(tmp_path / "m.gguf")
    f = read(path)
    before = f.decode("w.weight")
    _model(tmp_path / "new.gguf", 64).replace(path)  # the map keeps the old, intact file
    assert (f.decode("w.weight") == before).all()
    with read(path) as g:
        assert g.tensor("w.weight").shape == (1, 64)


# ---------------------------------------------------------------------------
# requantize: item 12 (interrupted runs), 2, 13 and 14 (errors and warnings)


@pytest.fixture
def model(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    tensors = {f"blk.{i}.ffn_down.weight": (rng.standard_normal((8, 64)).astype(np.float32), T.F32)
               for i in range(3)}
    tensors["blk.0.attn_norm.weight"] = (np.ones(64, np.float32), T.F32)
    path = tmp_path / "src" / "model.gguf"
    path.parent.mkdir()
    write_gguf(path, tensors)
    return path


_SLOW_REQUANTIZE = """
    import sys, time
    import qviz
    from qviz.io.gguf import requantize
    real = qviz.quantize
    def slow(w, type_name, **options):  # one tensor a second: time to be killed mid-file
        print("writing", flush=True)
        time.sleep(1)
        return real(w, type_name, **options)
    qviz.quantize = slow
    requantize({src!r}, {dst!r}, "Q8_0")
    print("done", flush=True)
"""


def _start_slow_requantize(src: Path, dst: Path) -> subprocess.Popen:
    code = textwrap.dedent(_SLOW_REQUANTIZE.format(src=str(src), dst=str(dst)))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO)
    line = child.stdout.readline()
    assert line.strip() == "writing", child.stderr.read()
    return child


def test_sigterm_removes_the_temporary_file_and_ends_the_process(model, tmp_path):
    dst = tmp_path / "out.gguf"
    child = _start_slow_requantize(model, dst)
    assert [p.name for p in tmp_path.glob(".out.gguf*")] == [".out.gguf.part"]  # one fixed name
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGTERM, child.stderr.read()  # ended by SIGTERM, as it would have
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_after_sigkill_the_next_run_reuses_the_part_and_cleans_old_ones(model, tmp_path):
    dst = tmp_path / "out.gguf"
    old = tmp_path / ".out.gguf.0123456789ab.part"  # the random names of earlier versions
    old.write_bytes(b"stale")
    other = tmp_path / ".other.gguf.0123456789ab.part"  # not this target's: left alone
    other.write_bytes(b"x")
    child = _start_slow_requantize(model, dst)
    child.kill()
    child.wait(timeout=60)
    assert (tmp_path / ".out.gguf.part").exists()  # SIGKILL cannot be handled
    requantize(model, dst, "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "out.gguf", "src"]
    with read(dst) as f:
        assert f.tensor("blk.2.ffn_down.weight").type_name == "Q8_0"


def test_sigterm_goes_to_the_previous_handler_which_is_restored(model, tmp_path, monkeypatch):
    import qviz

    seen = []

    def previous(signum, frame):
        seen.append(signum)

    real = qviz.quantize

    def terminated(w, type_name, **options):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs here
        return real(w, type_name, **options)

    monkeypatch.setattr(qviz, "quantize", terminated)
    old = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(InterruptedError, match="SIGTERM"):
            requantize(model, tmp_path / "out.gguf", "Q8_0")
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [signal.SIGTERM]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_second_writer_of_the_same_target_is_refused(model, tmp_path):
    import fcntl

    part = tmp_path / ".out.gguf.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another requantize is writing"):
            requantize(model, tmp_path / "out.gguf", "Q8_0")
        assert part.exists()  # the other writer's file is not touched
    finally:
        os.close(fd)


def test_block_scale_beyond_fp16_names_the_tensor_and_leaves_no_file(tmp_path):
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    src = tmp_path / "src.gguf"
    write_gguf(src, {"blk.0.attn_q.weight": (w, T.F32), "blk.0.ffn_down.weight": (w * 1e6, T.F32)})
    with pytest.raises(ValueError, match=r"tensor 'blk.0.ffn_down.weight': Q4_0: row \d+, block \d+.*"
                                         r"beyond fp16's 65504"):
        requantize(src, tmp_path / "out.gguf", "Q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.gguf"]


def test_nan_names_the_tensor_and_the_position(tmp_path):
    w = np.ones((4, 64), np.float32)
    w[2, 7] = np.nan
    src = tmp_path / "src.gguf"
    write_gguf(src, {"blk.0.attn_q.weight": (np.ones((4, 64), np.float32), T.F32),
                     "blk.0.ffn_up.weight": (w, T.F32)})
    with pytest.raises(ValueError, match=r"tensor 'blk.0.ffn_up.weight'.*\(2, 7\)"):
        requantize(src, tmp_path / "out.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.gguf"]


def test_a_pattern_that_is_not_a_string_says_what_patterns_are(model, tmp_path):
    with pytest.raises(TypeError, match=r"key 5 \(int\) is not a pattern.*fnmatch patterns of tensor names"):
        requantize(model, tmp_path / "out.gguf", {5: "Q4_K"})


def test_an_imatrix_that_is_not_a_mapping_says_what_it_must_be(model, tmp_path):
    with pytest.raises(TypeError, match=r"imatrix must map tensor names to importance vectors.*"
                                        r"ndarray of shape \(576,\)"):
        requantize(model, tmp_path / "out.gguf", "Q8_0", imatrix=np.ones(576))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_unmatched_patterns_warn_and_are_listed(model, tmp_path):
    with pytest.warns(UserWarning, match=r"'\*ffn_dwn\*', '\*attn_norm\*' decide no tensor"):
        done = requantize(model, tmp_path / "out.gguf",
                          {"*ffn_dwn*": "Q6_K", "*attn_norm*": "Q8_0", "blk.0.*": "Q8_0", "*": "F16"})
    assert isinstance(done, Requantized) and isinstance(done, dict)
    assert done.unmatched == ("*ffn_dwn*", "*attn_norm*")
    assert done == {"blk.0.ffn_down.weight": "Q8_0", "blk.1.ffn_down.weight": "F16",
                    "blk.2.ffn_down.weight": "F16", "blk.0.attn_norm.weight": "F32"}


def test_every_pattern_used_gives_no_warning(model, tmp_path, recwarn):
    done = requantize(model, tmp_path / "out.gguf", {"blk.0.*": "Q8_0", "*": "F16"})
    assert done.unmatched == () and not [w for w in recwarn if w.category is UserWarning]


def test_an_imatrix_entry_for_a_copied_tensor_warns(model, tmp_path):
    imatrix = {"blk.0.ffn_down.weight": np.ones(64, np.float32),
               "blk.1.ffn_down.weight": np.ones(64, np.float32)}
    with pytest.warns(UserWarning, match=r"imatrix entries for 1 tensor.*'blk.1.ffn_down.weight'"):
        requantize(model, tmp_path / "out.gguf", {"blk.0.*": "Q8_0"}, imatrix=imatrix)
