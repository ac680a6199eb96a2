"""Fuzzing qviz.io.gguf.read: a mutated GGUF file parses or raises GGUFError.

Never another exception, never a hang, never a large allocation. The
mutations are seeded: 10,000 copies in CI, ``QVIZ_FUZZ_N`` to run more
(``QVIZ_FUZZ_N=1000000 pytest tests/test_gguf_fuzz.py``).
"""
from __future__ import annotations

import os
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gguf_file import build_small_gguf_bytes

from qviz.io.gguf import GGUFError, read

N_CASES = int(os.environ.get("QVIZ_FUZZ_N", "10000"))
SEED = 20240531
#: one parse of a ~3 kB file takes about a millisecond; this bound is for a hang
MAX_SECONDS_PER_CASE = 2.0
#: values that break counts, lengths, dims, types and offsets
ABSURD = (0, 1, 2, 31, 33, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
          2**62, 2**63 - 1, 2**63, 2**64 - 1)


def _mutate(base: bytes, rng: np.random.Generator, header_end: int) -> tuple[bytes, str]:
    """One random mutation of ``base`` -> (bytes, description).

    Positions fall in the header, metadata and tensor infos (``[0, header_end)``)
    nine times in ten: that is where parsing happens; the rest is tensor data.
    """
    data = bytearray(base)

    def pos(width: int = 1) -> int:
        end = header_end if rng.random() < 0.9 else len(data)
        return int(rng.integers(0, max(1, end - width + 1)))

    kind = int(rng.integers(7))
    if kind == 0:
        flips = [(pos(), 1 << int(rng.integers(8))) for _ in range(int(rng.integers(1, 9)))]
        for p, bit in flips:
            data[p] ^= bit
        return bytes(data), f"bit flips {flips}"
    if kind == 1:
        n = int(rng.integers(0, len(data)))
        return bytes(data[:n]), f"truncated to {n} bytes"
    if kind == 2:
        p, extra = pos(), rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        return bytes(data[:p] + extra + data[p:]), f"inserted {extra.hex()} at {p}"
    if kind == 3:
        p = pos()
        n = int(rng.integers(1, 33))
        return bytes(data[:p] + data[p + n:]), f"deleted {n} bytes at {p}"
    if kind == 4:  # the header's counts
        p = (8, 16)[int(rng.integers(2))]
        v = ABSURD[int(rng.integers(len(ABSURD)))]
        struct.pack_into("<Q", data, p, v)
        return bytes(data), f"u64 {v} at header offset {p}"
    if kind == 5:  # a length, count, dim or offset anywhere
        p, v = pos(8), ABSURD[int(rng.integers(len(ABSURD)))]
        struct.pack_into("<Q", data, p, v)
        return bytes(data), f"u64 {v} at {p}"
    p, v = pos(4), ABSURD[int(rng.integers(len(ABSURD)))] & 0xFFFFFFFF  # a type or n_dims
    struct.pack_into("<I", data, p, v)
    return bytes(data), f"u32 {v} at {p}"


def _header_end(base: bytes) -> int:
    """Where the data section starts."""
    return read(base).data_offset


def _parse(data: bytes) -> None:
    """Parse ``data`` and touch every tensor's bytes; GGUFError is the only way out."""
    try:
        f = read(data)
    except GGUFError as e:
        assert 0 <= e.offset <= max(len(data), 4) and f"byte {e.offset}:" in str(e)
        return
    for t in f.tensors:
        assert f.raw(t.name).nbytes == t.n_bytes


def test_fuzz_mutated_files_parse_or_raise_gguf_error():
    base = build_small_gguf_bytes()
    header_end = _header_end(base)
    rng = np.random.default_rng(SEED)
    failures, slowest, parsed = [], (0.0, ""), 0
    start = time.perf_counter()
    for i in range(N_CASES):
        data, what = _mutate(base, rng, header_end)
        t0 = time.perf_counter()
        try:
            _parse(data)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            failures.append(f"case {i} ({what}): {type(e).__name__}: {e}")
        dt = time.perf_counter() - t0
        slowest = max(slowest, (dt, f"case {i} ({what})"))
    elapsed = time.perf_counter() - start
    assert not failures, f"{len(failures)} of {N_CASES} mutated files escaped GGUFError:\n" + \
        "\n".join(failures[:10])
    assert slowest[0] < MAX_SECONDS_PER_CASE, f"slowest parse took {slowest[0]:.2f} s: {slowest[1]}"
    assert elapsed < N_CASES * MAX_SECONDS_PER_CASE


def test_absurd_counts_allocate_nothing_large():
    """Counts and lengths are checked against the bytes left before any allocation."""
    base = build_small_gguf_bytes()
    header_end = _header_end(base)
    rng = np.random.default_rng(SEED + 1)
    tracemalloc.start()
    try:
        for _ in range(300):
            data = bytearray(base)
            p, v = int(rng.integers(0, header_end - 7)), ABSURD[int(rng.integers(len(ABSURD)))]
            struct.pack_into("<Q", data, p, v)
            tracemalloc.reset_peak()
            _parse(bytes(data))
            peak = tracemalloc.get_traced_memory()[1]
            # the parsed metadata and tensor list of a 3 kB file: a few tens of kB at most
            assert peak < 64 * len(base), f"u64 {v} at byte {p}: peak allocation {peak} bytes"
    finally:
        tracemalloc.stop()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 10**6))
def test_fuzz_hypothesis(edits, cut):
    base = build_small_gguf_bytes()
    header_end = _header_end(base)
    data = bytearray(base)
    for p, b in edits:
        data[p % header_end] = b
    _parse(bytes(data[: len(data) - cut % 64]))


@pytest.mark.parametrize("n", [0, 1, 3, 4, 8, 23, 24])
def test_tiny_prefixes(n):
    with pytest.raises(GGUFError):
        read(build_small_gguf_bytes()[:n])
