"""The GGUF reader on hostile headers, and the fuzz figures (issue 12, item 7).

For each size attack of ``tests/test_hostile_gguf.py`` (a header made of
nothing but empty strings, nested empty arrays, numbers, tiny keys or tensor
infos) at ``--mib`` MiB, and for the 8 MiB header of a million empty strings
the issue timed (6–7 s before): the reader's median time over ``--repeats``
parses and its peak allocation (``tracemalloc``, a separate parse) as a
multiple of the file's size. With ``--baseline REV`` the reader of that git
revision (``git show REV:qviz/io/gguf_reader.py``) is timed beside it.

Then the fuzz loop of ``tests/test_gguf_fuzz.py`` over ``--fuzz`` seeded
inputs: how many, how many size attacks, crashes (anything but GGUFError),
the slowest input, the largest peak allocation and the growth of max RSS.

Usage::

    python benchmarks/bench_gguf_reader.py [--mib 8] [--repeats 3] [--fuzz 100000] [--baseline HEAD~1]
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import machine  # noqa: E402
from test_gguf_fuzz import fuzz  # noqa: E402
from test_hostile_gguf import ATTACKS, strings  # noqa: E402

from qviz.io.gguf import read  # noqa: E402


def reader_at(rev: str):
    """``read`` of qviz/io/gguf_reader.py as it was at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:qviz/io/gguf_reader.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = pathlib.Path(tempfile.mkdtemp()) / "gguf_reader_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("gguf_reader_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read


def seconds(fn, data: bytes, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak(fn, data: bytes) -> int:
    tracemalloc.start()
    try:
        fn(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=8, help="size of each attack file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fuzz", type=int, default=100_000, help="fuzz inputs (0: none)")
    parser.add_argument("--baseline", help="git revision whose reader to time beside")
    args = parser.parse_args()
    print(machine())
    baseline = reader_at(args.baseline) if args.baseline else None

    size = int(args.mib * (1 << 20))
    cases = {"1M empty strings (the issue's 8 MiB header)": strings(1 << 20)}
    cases.update({f"{name}, {args.mib:g} MiB": build(size) for name, build in ATTACKS.items()})
    print("\n| header | MiB | read s | peak / size |" + (" baseline s | baseline peak / size |"
                                                        if baseline else ""))
    print("| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if baseline else ""))
    for name, data in cases.items():
        row = (f"| {name} | {len(data) / 2**20:.1f} | {seconds(read, data, args.repeats):.3f} | "
               f"{peak(read, data) / len(data):.1f} |")
        if baseline:
            row += (f" {seconds(baseline, data, 1):.2f} | {peak(baseline, data) / len(data):.1f} |")
        print(row, flush=True)

    if args.fuzz:
        t0 = time.perf_counter()
        figures = fuzz(args.fuzz)
        slowest_s, slowest = figures["slowest"]
        _, heaviest, heaviest_size, which = figures["heaviest"]
        print(f"\nfuzz: {figures['cases']} inputs ({figures['size_attacks']} size attacks), "
              f"{len(figures['failures'])} crashes (exceptions other than GGUFError), "
              f"{time.perf_counter() - t0:.0f} s")
        print(f"slowest input: {slowest_s * 1e3:.1f} ms, {slowest}")
        print(f"input closest to the memory bound: peak {heaviest / 2**20:.2f} MiB for {heaviest_size} bytes "
              f"({heaviest / heaviest_size:.1f}× its size), {which}")
        print(f"max RSS growth over the run: {figures['max_rss_growth'] / 2**20:.1f} MiB")
        for failure in figures["failures"][:10]:
            print("  ", failure)


if __name__ == "__main__":
    main()
