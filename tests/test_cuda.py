"""The CUDA path: torch kernels on the GPU, the fused int4 Triton kernel, QuantLinear, GPTQ.

Skipped as a whole without CUDA. The chain of trust: CPU torch kernels equal
ggml and numba (test_torch_kernels.py); here the GPU equals the CPU bit for bit
for the integer and dequantize work, and the fused matmul stays within the
rounding bounds stated at each check against a float64 reference.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import qviz  # noqa: E402
from qviz import registry  # noqa: E402
from qviz.formats.spec import FORMATS  # noqa: E402
from qviz.kernels.torch import dequant as td  # noqa: E402
from qviz.kernels.torch import pack as tp  # noqa: E402
from qviz.models.qlinear import QuantLinear  # noqa: E402

CUDA = torch.device("cuda")


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().view(np.uint32)


def _random_blocks(type_name: str, n_rows: int, n_blocks: int, seed: int) -> torch.Tensor:
    """Random bytes with finite fp16 fields, (n_rows, n_blocks * type_size) uint8."""
    rng = np.random.default_rng(seed)
    lay = FORMATS[type_name]
    blocks = rng.integers(0, 256, (n_rows * n_blocks, lay.type_size), dtype=np.uint8)
    off = 0
    for f in lay.fields:
        if f.name in ("d", "dmin", "m"):
            v = (rng.standard_normal(n_rows * n_blocks) * 0.01).astype(np.float16)
            blocks[:, off:off + 2] = v.view(np.uint8).reshape(-1, 2)
        off += f.nbytes
    return torch.from_numpy(blocks.reshape(n_rows, -1))


@pytest.mark.parametrize("type_name", td.torch_types())
def test_dequantize_on_gpu_equals_cpu(type_name):
    """Separate multiply and subtract kernels, no FMA: the GPU gives ggml's bits too."""
    packed = _random_blocks(type_name, 64, 16, seed=len(type_name))
    fn = registry.quant_type(type_name).function("dequantize", "torch")
    np.testing.assert_array_equal(_bits(fn(packed.to(CUDA))), _bits(fn(packed)))


@pytest.mark.parametrize("bits,order", [(4, "gptq"), (4, "awq"), (3, "gptq"), (8, "awq"), (2, "gptq")])
def test_pack_on_gpu_equals_cpu(bits, order):
    codes = torch.randint(0, 2**bits, (33, 256), dtype=torch.uint8)
    words = tp.pack(codes, bits, order)
    assert torch.equal(tp.pack(codes.to(CUDA), bits, order).cpu(), words)
    assert torch.equal(tp.unpack(words.to(CUDA), bits, order).cpu(), codes)


# ---------------------------------------------------------------- fused int4

def _int4_layer(N: int, K: int, G: int, act_order: bool, seed: int):
    """Random GPTQ-packed operands and the float64 pieces of the reference."""
    g = torch.Generator().manual_seed(seed)
    ng = -(-K // G)
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g)
    zeros = torch.randint(0, 16, (ng, N), dtype=torch.uint8, generator=g)
    scales = (torch.rand(ng, N, generator=g) * 0.02 + 0.001).half()
    gi = torch.arange(K, dtype=torch.int32) // G
    if act_order:
        gi = gi[torch.randperm(K, generator=g)].contiguous()
    ops = dict(qweight=tp.pack(codes, 4).T.contiguous().to(CUDA), scales=scales.to(CUDA),
               qzeros=tp.pack(zeros, 4).to(CUDA), group_size=G,
               g_idx=gi.to(CUDA) if act_order else None)
    gl = gi.long()
    s = scales.double()[gl].T  # (N, K)
    W = (codes.double() - zeros.double()[gl].T) * s
    size = (codes.double() + zeros.double()[gl].T) * s  # magnitudes the sums cancel
    return ops, W, size


def _check(y, x, W, size, tol):
    x64 = x.double().cpu()
    err = ((y.double().cpu() - x64 @ W.T).abs() / (x64.abs() @ size.T).clamp_min(1e-30)).max().item()
    assert err <= tol, err


#: float16: inputs exact, products exact in float32; the dequantized fp16 weight (general path)
#: and the fp16 output each round once (2 · 2⁻¹¹), plus float32 sums (K · 2⁻²⁴, K <= 512).
TOL = {torch.float16: 2 * 2**-11 + 512 * 2**-24,
       torch.bfloat16: 2 * 2**-8 + 512 * 2**-24,   # the same with bfloat16's 8-bit mantissa
       torch.float32: 512 * 2**-24 * 2}             # IEEE float32 dot: summation order only


def _configs():
    from qviz.kernels.torch import triton_int4 as ti

    return ti.GEMV_CONFIGS + ti.DOT_CONFIGS


# Triton compiles once per constant set and per integer "specialization" (== 1, % 16 == 0):
# the shapes below share N = 264 (masked edges for every BLOCK_N), K = 512 and M in {1, 5, 13},
# so the whole module compiles about two dozen kernels.
N, K = 264, 512


@pytest.mark.parametrize("cfg", _configs(), ids=str)
def test_every_kernel_config_is_right(cfg):
    """Each candidate the tuner may pick, float16, group 128 (factored, or general when BLOCK_K > 128)."""
    from qviz.kernels.torch import triton_int4 as ti

    ops, W, size = _int4_layer(N, K, 128, False, seed=1)
    M = 1 if cfg.block_m == 1 else 5
    x = torch.randn(M, K, device=CUDA).half()
    y = ti.matmul_int4(x, config=cfg, **ops)
    assert y.dtype == torch.float16 and y.shape == (M, N)
    _check(y, x, W, size, TOL[torch.float16])


@pytest.mark.parametrize("dtype,G,act_order", [
    (torch.bfloat16, 128, False), (torch.float32, 128, False),   # other activation dtypes
    (torch.float16, 32, False), (torch.float16, 128, True),      # small groups, act-order g_idx
])
@pytest.mark.parametrize("M", [1, 5])
def test_dtypes_and_group_layouts(dtype, G, act_order, M):
    from qviz.kernels.torch import triton_int4 as ti

    ops, W, size = _int4_layer(N, K, G, act_order, seed=M + G)
    x = torch.randn(M, K, device=CUDA).to(dtype)
    cfg = ti.Config(1, 32, 128) if M == 1 else ti.Config(16, 64, 128)
    y = ti.matmul_int4(x, config=cfg, **ops)
    assert y.dtype == dtype
    _check(y, x, W, size, TOL[dtype])


def test_tuner_picks_a_right_config():
    from qviz.kernels.torch import triton_int4 as ti

    ops, W, size = _int4_layer(N, K, 128, False, seed=3)
    for M in (1, 13):
        x = torch.randn(M, K, device=CUDA).half()
        _check(ti.matmul_int4(x, **ops), x, W, size, TOL[torch.float16])
        assert (ti._bucket(M), N, K, 128, False, torch.float16, x.device.index) in ti.tuned_configs()
    x = torch.randn(16, K, device=CUDA).half()  # the largest batch QuantLinear sends
    _check(ti.matmul_int4(x, config=ti.Config(16, 64, 128), **ops), x, W, size, TOL[torch.float16])


def test_bad_operands():
    from qviz.kernels.torch import triton_int4 as ti

    ops, _, _ = _int4_layer(N, K, 128, False, seed=4)
    with pytest.raises(ValueError, match="qweight has shape"):
        ti.matmul_int4(torch.randn(1, K + 8, device=CUDA).half(), **ops)
    with pytest.raises(TypeError, match="float16/bfloat16/float32"):
        ti.matmul_int4(torch.ones(1, K, device=CUDA, dtype=torch.int32), **ops)
    with pytest.raises(ValueError, match="one device"):
        ti.matmul_int4(torch.randn(1, K).half(), **ops)


def test_quantlinear_fused_and_fallback_agree(rng):
    """Fused (1-16 rows) against the torch fallback on the same buffers; 17 rows fall back.

    The weight is N × K as above, so the tuned kernels compiled earlier in this module are reused."""
    w = rng.standard_normal((N, K)).astype(np.float32)
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    bias = rng.standard_normal(N).astype(np.float32)
    fused = QuantLinear.from_result(r, bias).to(CUDA).half()
    torch_path = QuantLinear.from_result(r, bias, kernel="torch").to(CUDA).half()
    W = torch.from_numpy(r.dequantize()).double()
    for M in (1, 4, 13):
        x = torch.randn(M, K, device=CUDA).half()
        yf, yt = fused(x), torch_path(x)
        ref = x.double().cpu() @ W.T + torch.from_numpy(bias).double()
        scale = x.double().cpu().abs() @ W.abs().T + 1
        # fp16 scales and weights, fp16 outputs: a few fp16 roundings of |x|·|W|
        assert ((yf.double().cpu() - ref).abs() <= 4 * 2**-11 * scale).all()
        assert ((yt.double().cpu() - ref).abs() <= 4 * 2**-11 * scale).all()
    x17 = torch.randn(17, K, device=CUDA).half()
    assert torch.equal(fused(x17), torch_path(x17))
    with pytest.raises(RuntimeError, match="kernel='auto'"):
        QuantLinear.from_result(r, kernel="triton").to(CUDA)(x17.float())


@pytest.mark.parametrize("type_name", td.torch_types())
def test_gguf_quantlinear_on_gpu(rng, type_name):
    w = rng.standard_normal((64, 512)).astype(np.float32)
    r = qviz.quantize(w, type_name)
    layer = QuantLinear.from_result(r).to(CUDA)
    np.testing.assert_array_equal(_bits(layer.dequantized_weight()), r.dequantize().view(np.uint32))
    x = torch.randn(3, 512, device=CUDA)
    torch.testing.assert_close(layer(x), x @ torch.from_numpy(r.dequantize()).to(CUDA).T)


def test_gptq_on_gpu_matches_cpu(rng):
    """Same algorithm, float32 Cholesky and updates on another device: not the same codes, but
    the loss and SQNR within 5% (single code flips move a 128×512 layer's loss by ~1e-3 each)."""
    from qviz.algorithms import gptq
    from qviz.metrics import sqnr_db

    W = rng.standard_normal((128, 512)).astype(np.float32)
    X = rng.standard_normal((1024, 512)).astype(np.float32) * np.linspace(0.2, 2, 512, dtype=np.float32)
    H = gptq.hessian(X)
    fmt = gptq.RTNFormat(4, False, 128)
    cpu = gptq.gptq(W, H, fmt)
    gpu = gptq.gptq(torch.from_numpy(W).to(CUDA), H.to(CUDA), fmt)
    assert abs(gpu.info["loss"] / cpu.info["loss"] - 1) < 0.05
    assert abs(sqnr_db(W, gpu.dequantize()) - sqnr_db(W, cpu.dequantize())) < 0.05 * abs(sqnr_db(W, cpu.dequantize()))
    assert (gpu.codes == cpu.codes).mean() > 0.9
