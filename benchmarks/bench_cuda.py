"""The CUDA path on one GPU: dequantize bandwidth, fused int4 vs fp16 matmul, GPTQ (a benchmark, not a test).

(a) GGUF dequantize (torch kernels, 4096×4096 weights): GB/s counting packed
    bytes read + float32 bytes written, against a device-to-device copy (the
    card's practical memory bandwidth, read + write) measured here.
(b) QuantLinear int4 g128 (fused Triton kernel) vs fp16 ``nn.Linear`` at batch
    1, 4, 16 for (out, in) = 4096×4096, 11008×4096 and 4096×11008:
    "kernel" = one call between CUDA events after an L2 flush (median of 50),
    "graph"  = a CUDA graph of 100 calls over rotating weight copies larger
               than L2, replayed (median of 5): kernels back to back;
    "eager"  = the same 100 calls from Python (includes launch time per call).
    Goal on an H100/H200: int4 >= 2.5× faster than fp16 at batch 1.
(c) GPTQ 4-bit g128 of a 4096×4096 layer: ``qviz.algorithms.gptq.gptq`` with
    CUDA tensors (runs on the GPU) and ``qviz.quantize(W_cuda, "gptq", hessian=H_cuda)``.

    python benchmarks/bench_cuda.py [--quick]

Finishes in a few minutes on an H100 (Triton compiles and tunes once per shape).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
from torch import nn

from qviz import registry
from qviz.formats.spec import FORMATS
from qviz.kernels.torch import dequant as td
from qviz.kernels.torch import triton_int4 as ti
from qviz.models.qlinear import QuantLinear

DEV = torch.device("cuda")
_FLUSH = None


def flush_l2() -> None:
    """Overwrite 256 MiB so no operand stays in L2 (50-60 MB on Hopper)."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=DEV)
    _FLUSH.zero_()


def kernel_time(fn, reps: int = 50) -> float:
    """Median seconds of one call, L2 flushed before each, CUDA events around the call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush_l2()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3)
    return statistics.median(times)


def loop_time(fns, calls: int = 100, repeats: int = 5) -> float:
    """Median seconds per call of ``calls`` back-to-back calls cycling through ``fns``."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(calls):
            fns[i % len(fns)]()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3 / calls)
    return statistics.median(times)


def graph_time(fns, calls: int = 100, repeats: int = 5) -> float:
    """Median seconds per call of a CUDA graph of ``calls`` calls cycling through ``fns``
    (no Python or launch time between kernels: what a captured decode step sees)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up off the capture stream, as torch.cuda.graphs asks
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3 / calls)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, bytes read + written."""
    src = torch.empty(2**30 // 4, dtype=torch.float32, device=DEV).uniform_()
    dst = torch.empty_like(src)
    t = kernel_time(lambda: dst.copy_(src), reps=10)
    return 2 * src.numel() * 4 / t / 1e9


def random_blocks(type_name: str, n_rows: int, n_cols: int) -> torch.Tensor:
    """Random GGUF bytes with finite fp16 scale fields, on the GPU."""
    lay = FORMATS[type_name]
    g = torch.Generator(device=DEV).manual_seed(0)
    n_blocks = n_rows * n_cols // lay.block_size
    blocks = torch.randint(0, 256, (n_blocks, lay.type_size), dtype=torch.uint8, device=DEV, generator=g)
    off = 0
    for f in lay.fields:
        if f.name in ("d", "dmin", "m"):
            v = (torch.randn(n_blocks, device=DEV, generator=g) * 0.01).half()
            blocks[:, off:off + 2] = v.view(torch.uint8).reshape(-1, 2)
        off += f.nbytes
    return blocks.reshape(n_rows, -1)


def bench_dequant(peak: float) -> None:
    print("\n(a) dequantize 4096×4096 to float32 (GB/s = packed read + fp32 written)")
    print(f"{'type':6s} {'ms':>8s} {'GB/s':>8s} {'of copy':>8s}")
    for name in td.torch_types():
        fn = registry.quant_type(name).function("dequantize", "torch")
        packed = random_blocks(name, 4096, 4096)
        t = kernel_time(lambda: fn(packed), reps=20)
        gbs = (packed.numel() + 4096 * 4096 * 4) / t / 1e9
        print(f"{name:6s} {t * 1e3:8.3f} {gbs:8.0f} {gbs / peak:8.0%}")


def int4_layer(n_out: int, n_in: int, seed: int) -> QuantLinear:
    """A 4-bit g128 GPTQ-order QuantLinear with random codes, zeros and fp16 scales, on the GPU."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    q = QuantLinear(n_in, n_out, 4, 128, device=DEV)
    q.qweight.copy_(torch.randint(-2**31, 2**31 - 1, q.qweight.shape, device=DEV, generator=g, dtype=torch.int64)
                    .to(torch.int32))
    q.qzeros.copy_(torch.randint(-2**31, 2**31 - 1, q.qzeros.shape, device=DEV, generator=g, dtype=torch.int64)
                   .to(torch.int32))
    q.scales.copy_((torch.rand(q.scales.shape, device=DEV, generator=g) * 0.01 + 1e-3).half())
    return q


def bench_matmul(shapes, batches) -> dict:
    print("\n(b) y = x Wᵀ, fp16 activations: fused int4 g128 QuantLinear vs fp16 nn.Linear (µs)")
    print("kern: one call after an L2 flush; graph: CUDA-graph replay of 100 calls over weight copies")
    print("larger than L2; eager: the same 100 calls from Python. Speedup = fp16 time / int4 time.")
    print(f"{'out×in':12s} {'batch':>5s} {'fp16 kern':>9s} {'int4 kern':>9s} {'×':>6s} "
          f"{'fp16 graph':>10s} {'int4 graph':>10s} {'×':>6s} {'fp16 eager':>10s} {'int4 eager':>10s} {'×':>6s} "
          f"{'rel err':>8s}  config")
    ratios = {}
    l2 = 64e6  # bytes; rotate over more weight bytes than any Hopper L2
    for n_out, n_in in shapes:
        n16 = max(2, int(3 * l2 // (n_out * n_in * 2)) + 1)
        n4 = max(2, int(3 * l2 // (n_out * n_in // 2)) + 1)
        lin = [nn.Linear(n_in, n_out, bias=False, device=DEV, dtype=torch.float16) for _ in range(n16)]
        q4 = [int4_layer(n_out, n_in, s) for s in range(n4)]
        ref = QuantLinear(n_in, n_out, 4, 128, kernel="torch", device=DEV)
        ref.load_state_dict(q4[0].state_dict())
        for m in batches:
            x = torch.randn(m, n_in, device=DEV, dtype=torch.float16)
            with torch.no_grad():
                y4, yr = q4[0](x).float(), ref(x).float()
                err = ((y4 - yr).abs().max() / yr.abs().max()).item()
                t16k = kernel_time(lambda: lin[0](x))
                t4k = kernel_time(lambda: q4[0](x))
                f16 = [lambda L=L: L(x) for L in lin]
                f4 = [lambda L=L: L(x) for L in q4]
                t16g, t4g = graph_time(f16), graph_time(f4)
                t16l, t4l = loop_time(f16), loop_time(f4)
            cfg = ti.tuned_configs().get((ti._bucket(m), n_out, n_in, 128, False, torch.float16, DEV.index or 0))
            ratios[(n_out, n_in, m)] = (t16k / t4k, t16g / t4g, t16l / t4l)
            print(f"{n_out}×{n_in:<6d} {m:5d} {t16k * 1e6:9.1f} {t4k * 1e6:9.1f} {t16k / t4k:5.2f}× "
                  f"{t16g * 1e6:10.1f} {t4g * 1e6:10.1f} {t16g / t4g:5.2f}× "
                  f"{t16l * 1e6:10.1f} {t4l * 1e6:10.1f} {t16l / t4l:5.2f}× {err:8.1e}  "
                  f"{tuple(cfg) if cfg else ''}")
        del lin, q4
        torch.cuda.empty_cache()
    return ratios


def bench_gptq() -> None:
    import qviz
    from qviz.algorithms import gptq

    print("\n(c) GPTQ int4 g128, 4096×4096, H from 4096 random activations")
    g = torch.Generator(device=DEV).manual_seed(0)
    W = torch.randn(4096, 4096, device=DEV, generator=g)
    X = torch.randn(4096, 4096, device=DEV, generator=g) * torch.linspace(0.2, 2, 4096, device=DEV)
    H = gptq.hessian(X, device=DEV)
    fmt = gptq.RTNFormat(4, False, 128)
    gptq.gptq(W[:256, :512], H[:512, :512], fmt)  # warm-up: CUDA libraries, Cholesky
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = gptq.gptq(W, H, fmt)
    torch.cuda.synchronize()
    t_gpu = time.perf_counter() - t0
    print(f"gptq.gptq(W_cuda, H_cuda):              {t_gpu:7.2f} s  loss {r.info['loss']:.4g}")
    t0 = time.perf_counter()
    r2 = qviz.quantize(W, "gptq", hessian=H)
    t_api = time.perf_counter() - t0
    print(f"qviz.quantize(W_cuda, 'gptq', hessian=H_cuda): {t_api:7.2f} s  loss {r2.info['loss']:.4g} "
          f"(as_weight turns W into numpy: this path runs on the CPU)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one shape, batch 1 only")
    args = ap.parse_args()
    t_start = time.perf_counter()
    props = torch.cuda.get_device_properties(DEV)
    import triton

    print(f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs; "
          f"torch {torch.__version__}, triton {triton.__version__}, {datetime.date.today().isoformat()}")
    peak = copy_bandwidth()
    print(f"device-to-device copy: {peak:.0f} GB/s (read + write)")
    bench_dequant(peak)
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096), (4096, 11008)]
    ratios = bench_matmul(shapes, [1] if args.quick else [1, 4, 16])
    k, gr, l = ratios[(4096, 4096, 1)]
    print(f"\nbatch 1, 4096×4096: int4 fused vs fp16 = {k:.2f}× (kernel), {gr:.2f}× (graph), "
          f"{l:.2f}× (eager); goal 2.5×: {'met' if max(k, gr) >= 2.5 else 'not met'}")
    bench_gptq()
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
