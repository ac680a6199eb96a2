"""``"nvfp4"`` against torchao 0.18's NVFP4Tensor and compressed-tensors 0.20's nvfp4-pack-quantized, bit for bit."""
import numpy as np
import pytest

import qviz
from edge_rows import CASES, edge_rows
from qviz.formats.minifloat import E2M1, E4M3
from qviz.formats.nvfp4 import CONVENTIONS, quantize_nvfp4

torch = pytest.importorskip("torch")
pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
pytest.importorskip("compressed_tensors")

F32 = np.float32
LAYERS = ["encoder.layer.0.attention.self.query", "encoder.layer.2.intermediate.dense",
          "encoder.layer.5.output.dense"]
ALL_LAYERS = [n for n in qviz.demo.layers() if n.startswith("encoder.")]

EXTRA = {
    "elem_max": lambda n, rng: np.where(n > 0, F32(6), F32(-6)).astype(F32),
    "scale_range": lambda n, rng: (n * F32(10.0) ** rng.uniform(-6, 3, (n.shape[0], 1))).astype(F32),
    "negative_zero": lambda n, rng: np.where(n > 0.5, n, F32(-0.0)).astype(F32),
    "zero_rows": lambda n, rng: np.where(np.arange(n.shape[0])[:, None] % 2, n, F32(0)).astype(F32),
}
#: a weight that is zero everywhere has no torchao per-tensor scale (its NaN result is refused)
ALL_CASES = [c for c in CASES if c != "zero"] + list(EXTRA)


def unpack(u):
    """Two E2M1 codes a byte, the first in the low nibble (both owners)."""
    return np.stack([u & 15, u >> 4], axis=-1).reshape(u.shape[0], -1)


def torchao_nvfp4(w):
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    t = torch.from_numpy(np.array(w))
    pts = per_tensor_amax_to_scale(torch.max(torch.abs(t)))
    nt = NVFP4Tensor.to_nvfp4(t, per_tensor_scale=pts)
    return (unpack(nt.qdata.view(torch.uint8).numpy()), {"block_scale": nt.scale.view(torch.uint8).numpy(),
            "per_tensor_scale": pts.numpy()}, nt.dequantize(torch.float32).numpy())


def ct_nvfp4(w):
    """compressed-tensors: generate_gparam, per-group calculate_qparams, quantize_and_pack_fp4, dequantize."""
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    t = torch.from_numpy(np.array(w))
    args = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16, symmetric=True,
                            scale_dtype=torch.float8_e4m3fn)
    gs = generate_gparam(t.min(), t.max())
    groups = t.unflatten(-1, (-1, 16))
    scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=gs)
    codes = unpack(quantize_and_pack_fp4(t, scale, global_scale=gs, group_size=16).numpy())
    decoded = dequantize(torch.from_numpy(E2M1.values[codes]), scale, args=args, global_scale=gs,
                         dtype=torch.float32).numpy()
    return codes, {"weight_scale": scale.to(torch.float8_e4m3fn).view(torch.uint8).numpy(),
                   "weight_global_scale": gs.numpy()}, decoded


OWNERS = {"torchao": torchao_nvfp4, "compressed-tensors": ct_nvfp4}


def check(w, convention, backend="numba"):
    r = quantize_nvfp4(w, convention=convention, backend=backend)
    codes, stored, decoded = OWNERS[convention](w)
    np.testing.assert_array_equal(r.codes, codes)
    assert set(r.stored) == set(stored)
    for k, v in stored.items():
        assert r.stored[k].shape == v.shape and r.stored[k].dtype == v.dtype, k
        np.testing.assert_array_equal(r.stored[k], v)
    np.testing.assert_array_equal(r.dequantize().view(np.int32), decoded.view(np.int32))
    return r


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("case", ALL_CASES)
def test_edge_rows_equal_the_owner(case, convention):
    check(edge_rows(case, 32, 256, np.random.default_rng(5), extra_cases=EXTRA), convention)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("layer", LAYERS)
def test_minilm_layers_equal_the_owner(layer, convention):
    check(qviz.demo.layer(layer), convention)


@pytest.mark.slow
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("layer", ALL_LAYERS)
def test_all_minilm_layers_equal_the_owner(layer, convention):
    check(qviz.demo.layer(layer), convention)


def test_the_two_conventions_differ_in_bits_on_real_weights():
    w = qviz.demo.layer(LAYERS[1])
    a, b = quantize_nvfp4(w), quantize_nvfp4(w, convention="compressed-tensors")
    assert not np.array_equal(a.scales, b.scales)  # why there are two
    assert (a.codes != b.codes).mean() < 0.01


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_numba_twin_equals_the_numpy_reference(rng, convention):
    w = (rng.standard_normal((64, 512)) * rng.choice([1e-3, 1.0, 1e3], (64, 1))).astype(F32)
    a = quantize_nvfp4(w, convention=convention, backend="numpy")
    b = quantize_nvfp4(w, convention=convention, backend="numba")
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scales, b.scales)
    assert a.info["saturated"] == b.info["saturated"]


def test_all_zero_weight(rng):
    w = np.zeros((4, 32), F32)
    with pytest.raises(ValueError, match="convention='compressed-tensors'"):
        quantize_nvfp4(w)
    r = check(w, "compressed-tensors")
    assert r.stored["weight_global_scale"].tolist() == [1.0] and (r.codes == 0).all()
    assert (E4M3.values[r.stored["weight_scale"]] == 0.125).all()


def test_result_fields(rng):
    w = rng.standard_normal((8, 64)).astype(F32)
    r = qviz.quantize(w, "nvfp4")
    assert (r.bits, r.group_size, r.scales.shape, r.codebook.shape) == (4, 16, (8, 4), (16,))
    assert r.stored["per_tensor_scale"].shape == () and r.stored["block_scale"].dtype == np.uint8
    assert r.bits_per_weight == 4 + 8 / 16 + 32 / (8 * 64)
    assert r.info["fmt"] == "e2m1" and r.info["granularity"] == "tensor_group"
    assert r.info["convention"] == "torchao" and r.info["saturated"] >= 0
    m = qviz.methods()["nvfp4"]
    assert m.label == "nvfp4 (NVIDIA)" and m.exports == ("compressed-tensors",) and not m.quantlinear
    assert qviz.quantize(w, "NVFP4").method == "NVFP4"  # ggml's type keeps its own name


def test_rows_not_a_multiple_of_16_are_refused(rng):
    w = rng.standard_normal((4, 40)).astype(F32)
    before = w.copy()
    with pytest.raises(ValueError, match=r"nvfp4 needs rows that are a multiple of 16.*40 columns"):
        qviz.quantize(w, "nvfp4")
    np.testing.assert_array_equal(w, before)
