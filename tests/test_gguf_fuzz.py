"""Fuzzing qviz.io.gguf.read: a mutated GGUF file parses or raises GGUFError.

Never another exception, never a hang, never a large allocation. The
mutations are seeded: 10,000 in CI (one in twenty a size attack: a header
that really holds up to a quarter of a million strings, nested arrays,
numbers, keys or tensor infos, then mutated too), 100,000 in the slow test,
``QVIZ_FUZZ_N`` to run more (``QVIZ_FUZZ_N=1000000 pytest tests/test_gguf_fuzz.py``).
Each input must parse or fail within :data:`MAX_SECONDS_PER_CASE` and
allocate at most :data:`MAX_PEAK_PER_BYTE` times its size (``tracemalloc``):
bounds on blow-ups, not speed (``benchmarks/bench_gguf_reader.py`` measures that).
"""
from __future__ import annotations

import os
import resource
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gguf_file import build_small_gguf_bytes
from gguf import GGUFValueType as V
from test_hostile_gguf import ATTACKS, numbers

from qviz.io.gguf import GGUFError, read

N_CASES = int(os.environ.get("QVIZ_FUZZ_N", "10000"))
SEED = 20240531
#: one parse of a ~3 kB file takes about a millisecond, of a 256 kB attack tens; this bound is for a hang
MAX_SECONDS_PER_CASE = 3.0
#: peak allocation per byte of input, beyond a fixed allowance for the parser itself and its error:
#: measured at most about 8 (tensor infos, tiny keys); the bound is for blow-ups
MAX_PEAK_PER_BYTE, PEAK_ALLOWANCE = 24, 64 << 10
#: every how many cases a size attack comes, and the largest one (bytes; sizes are log-uniform from 256)
ATTACK_EVERY, ATTACK_MAX_BYTES = 20, 1 << 16
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


def _attack(rng: np.random.Generator) -> tuple[bytes, str]:
    """A size attack of random kind and size, most often with one more mutation."""
    name = list(ATTACKS)[int(rng.integers(len(ATTACKS)))]
    size = int(2 ** rng.uniform(8, np.log2(ATTACK_MAX_BYTES)))
    data = ATTACKS[name](size)
    if rng.random() < 0.75:
        data, what = _mutate(data, rng, len(data))
        return data, f"{name} of {size} bytes, {what}"
    return data, f"{name} of {size} bytes"


def fuzz(n_cases: int, seed: int = SEED) -> dict:
    """Run ``n_cases`` seeded mutations -> figures (failures, slowest case, peak allocation, RSS).

    Also run by ``benchmarks/bench_gguf_reader.py`` for BENCHMARKS.md.
    """
    base = build_small_gguf_bytes()
    header_end = _header_end(base)
    rng = np.random.default_rng(seed)
    failures, slowest, heaviest, attacks = [], (0.0, ""), (-np.inf, 0, 0, ""), 0
    for etype in (V.INT8, V.UINT16, V.INT16):  # the reader's one-time table of their ints (2.3 MB)
        read(numbers(4, etype))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    tracemalloc.start()
    try:
        for i in range(n_cases):
            if i % ATTACK_EVERY == ATTACK_EVERY - 1:
                data, what = _attack(rng)
                attacks += 1
            else:
                data, what = _mutate(base, rng, header_end)
            tracemalloc.reset_peak()
            base_mem = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            try:
                _parse(data)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                failures.append(f"case {i} ({what}): {type(e).__name__}: {e}")
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] - base_mem
            slowest = max(slowest, (dt, f"case {i} ({what}), {len(data)} bytes"))
            over = peak - MAX_PEAK_PER_BYTE * len(data) - PEAK_ALLOWANCE  # < 0 within the bound
            heaviest = max(heaviest, (over, peak, len(data), f"case {i} ({what})"))
    finally:
        tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"cases": n_cases, "size_attacks": attacks, "failures": failures,
            "seconds": time.perf_counter() - start, "slowest": slowest, "heaviest": heaviest,
            "max_rss_growth": rss_after - rss_before}


def _check(figures: dict) -> None:
    failures, n = figures["failures"], figures["cases"]
    assert not failures, f"{len(failures)} of {n} mutated files escaped GGUFError:\n" + \
        "\n".join(failures[:10])
    seconds, which = figures["slowest"]
    assert seconds < MAX_SECONDS_PER_CASE, f"slowest parse took {seconds:.2f} s: {which}"
    over, peak, size, which = figures["heaviest"]
    assert over < 0, f"{which} allocated {peak} bytes for {size} bytes of input"
    # the process as a whole: the largest attack is 64 kB, so RSS must not grow by hundreds of MB
    assert figures["max_rss_growth"] < 256 << 20, f"max RSS grew by {figures['max_rss_growth']} bytes"


def test_fuzz_mutated_files_parse_or_raise_gguf_error():
    figures = fuzz(N_CASES)
    assert figures["size_attacks"] >= N_CASES // ATTACK_EVERY
    _check(figures)


@pytest.mark.slow
def test_fuzz_100k():
    _check(fuzz(100_000, SEED + 2))


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
