"""``"fp8"`` against compressed-tensors' own calculate_qparams + quantize + dequantize, bit for bit."""
import numpy as np
import pytest

import qviz
from edge_rows import CASES, edge_rows
from qviz.formats.fp8 import quantize_fp8

torch = pytest.importorskip("torch")
ct = pytest.importorskip("compressed_tensors")

F32 = np.float32
LAYERS = ["encoder.layer.0.attention.self.query", "encoder.layer.2.intermediate.dense",
          "encoder.layer.5.output.dense"]
ALL_LAYERS = [n for n in qviz.demo.layers() if n.startswith("encoder.")]

#: this file's own edge rows: ±max of E4M3, E4M3 subnormals after scaling, -0.0, float32 subnormals
EXTRA = {
    "elem_max": lambda n, rng: np.where(n > 0, F32(448), F32(-448)).astype(F32),
    "elem_subnormal": lambda n, rng: (n * F32(2.0 ** -8)).astype(F32) * (np.arange(n.shape[1]) % 7 == 0)
    + np.where(np.arange(n.shape[1]) == 0, F32(448), F32(0)),
    "negative_zero": lambda n, rng: np.where(n > 0.5, n, F32(-0.0)).astype(F32),
    "f32_subnormal": lambda n, rng: (n * F32(1e-40)).astype(F32),
}
ALL_CASES = CASES + list(EXTRA)


def ct_fp8(w: np.ndarray, granularity: str, block=(128, 128)):
    """compressed-tensors: min/max per tile (zero-padded blocks), calculate_qparams, quantize, dequantize."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    t = torch.from_numpy(np.array(w))  # a writable copy: demo layers are read-only
    extra = {"block_structure": list(block)} if granularity == "block" else {}
    args = QuantizationArgs(num_bits=8, type="float", strategy=granularity, symmetric=True, **extra)
    if granularity == "tensor":
        mn, mx = torch.aminmax(t)
    elif granularity == "channel":
        mn, mx = t.amin(1, keepdim=True), t.amax(1, keepdim=True)
    else:
        (bh, bw), (r, c) = block, t.shape
        p = torch.nn.functional.pad(t, (0, -c % bw, 0, -r % bh))
        tiles = p.reshape(p.shape[0] // bh, bh, p.shape[1] // bw, bw)
        mn, mx = tiles.amin((1, 3)), tiles.amax((1, 3))
    scale, zp = calculate_qparams(mn, mx, args)
    q = quantize(t, scale, zp, args, dtype=torch.float8_e4m3fn)
    d = dequantize(q, scale, zp, args, dtype=torch.float32)
    return q.view(torch.uint8).numpy(), scale.numpy(), d.numpy()


def check(w, granularity, block=(128, 128), backend="numba"):
    kw = {"block": block} if granularity == "block" else {}
    r = quantize_fp8(w, granularity=granularity, backend=backend, **kw)
    codes, scale, decoded = ct_fp8(w, granularity, block)
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.stored["weight_scale"], scale)
    assert r.stored["weight_scale"].shape == scale.shape and r.stored["weight_scale"].dtype == np.float32
    np.testing.assert_array_equal(r.dequantize().view(np.int32), decoded.view(np.int32))  # bit for bit
    return r


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
@pytest.mark.parametrize("case", ALL_CASES)
def test_edge_rows_equal_compressed_tensors(granularity, case):
    w = edge_rows(case, 160, 320, np.random.default_rng(7), extra_cases=EXTRA)
    check(w, granularity, (64, 128))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
@pytest.mark.parametrize("name", LAYERS)
def test_minilm_layers_equal_compressed_tensors(granularity, name):
    check(qviz.demo.layer(name), granularity)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
@pytest.mark.parametrize("name", ALL_LAYERS)
def test_all_minilm_layers_equal_compressed_tensors(granularity, name):
    check(qviz.demo.layer(name), granularity)


@pytest.mark.parametrize("block", [(128, 128), (100, 96), (7, 500), (1, 1)])
def test_blocks_that_do_not_divide_are_padded_as_compressed_tensors_pads(rng, block):
    w = (rng.standard_normal((300, 400)) * 3).astype(F32)
    r = check(w, "block", block)
    bh, bw = block
    assert r.scales.shape == (300, -(-400 // bw)) and r.group_size == bw
    assert r.stored["weight_scale"].shape == (-(-300 // bh), -(-400 // bw))
    assert r.info["padding"] == (-300 % bh, -400 % bw) and r.info["block"] == block


@pytest.mark.parametrize("granularity", ["tensor", "channel", "block"])
def test_numba_twin_equals_the_numpy_reference(rng, granularity):
    w = (rng.standard_normal((200, 300)) * 5).astype(F32)
    for fmt in ("e4m3", "e5m2"):
        a = quantize_fp8(w, fmt=fmt, granularity=granularity, backend="numpy")
        b = quantize_fp8(w, fmt=fmt, granularity=granularity, backend="numba")
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.scales, b.scales)
        assert a.info["saturated"] == b.info["saturated"]


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_e5m2_is_the_same_rule_with_e5m2s_max(rng, granularity):
    """compressed-tensors quantizes FP8 to E4M3 only; E5M2 follows its rule with max 57344."""
    w = (rng.standard_normal((64, 256)) * 3).astype(F32)
    w[0] = 0
    r = quantize_fp8(w, fmt="e5m2", granularity=granularity)
    t = torch.from_numpy(w)
    amax = t.abs().amax() if granularity == "tensor" else t.abs().amax(1, keepdim=True)
    scale = amax / 57344.0
    scale = torch.where(scale == 0, torch.finfo(torch.float32).eps, scale)
    q = (t / scale + 0.0).clamp(-57344, 57344).to(torch.float8_e5m2)
    np.testing.assert_array_equal(r.codes, q.view(torch.uint8).numpy())
    np.testing.assert_array_equal(r.dequantize(), (q.float() * scale).numpy())
    assert r.bits == 8 and r.codebook.shape == (256,) and np.isinf(r.codebook).sum() == 2


def test_result_fields_and_honest_bits(rng):
    w = rng.standard_normal((256, 512)).astype(F32)
    t = quantize_fp8(w, granularity="tensor")
    c = quantize_fp8(w)
    b = quantize_fp8(w, granularity="block")
    assert (t.scales.shape, t.group_size, t.stored["weight_scale"].shape) == ((1, 1), 512, (1,))
    assert (c.scales.shape, c.group_size, c.stored["weight_scale"].shape) == ((256, 1), 512, (256, 1))
    assert (b.scales.shape, b.group_size, b.stored["weight_scale"].shape) == ((256, 4), 128, (2, 4))
    np.testing.assert_array_equal(b.scales[:128], np.repeat(b.stored["weight_scale"][:1], 128, axis=0))
    assert c.bits_per_weight == 8 + 32 / 512 and b.bits_per_weight == 8 + 8 * 32 / (256 * 512)
    assert c.info["fmt"] == "e4m3" and c.info["granularity"] == "channel"
    assert np.isnan(c.codebook[[0x7F, 0xFF]]).all() and c.codebook[0x7E] == 448
    assert np.isfinite(c.levels(0, 0)).all()


def test_saturation_is_counted(rng):
    w = rng.standard_normal((8, 64)).astype(F32)
    r = quantize_fp8(w)
    scaled = w / r.scales
    assert r.info["saturated"] == int((np.abs(scaled) > 448).sum())


def test_bad_options_name_the_fix(rng):
    w = rng.standard_normal((8, 64)).astype(F32)
    with pytest.raises(ValueError, match=r"block=\(0, 128\).*two positive integers"):
        quantize_fp8(w, granularity="block", block=(0, 128))
    with pytest.raises(ValueError, match="granularity='block' only"):
        quantize_fp8(w, granularity="channel", block=(64, 64))
    with pytest.raises(ValueError, match="valid fmt values"):
        quantize_fp8(w, fmt="e4m4")


def test_registered_and_leaves_the_caller_alone(rng):
    w = rng.standard_normal((16, 64)).astype(F32)
    before = w.copy()
    r = qviz.quantize(w, "fp8", granularity="block", block=(8, 32))
    np.testing.assert_array_equal(w, before)
    m = qviz.methods()["fp8"]
    assert m.label == "fp8 (E4M3/E5M2)" and "compressed-tensors" in m.exports and not m.quantlinear
    assert [o.name for o in m.controls] == ["fmt", "granularity"]
    assert r.method == "fp8" and r.stored["weight_scale"].shape == (2, 2)
    with pytest.raises(ValueError, match="granularity=.row.; valid granularit"):
        qviz.quantize(w, "fp8", granularity="row")
