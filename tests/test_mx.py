"""``"mxfp4"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp8"`` against torchao 0.18's to_mx / to_dtype, bit for bit."""
import numpy as np
import pytest

import qviz
from edge_rows import CASES, edge_rows
from qviz.formats import minifloat as mf
from qviz.formats.mx import ELEMENTS, SCALE_RULES, choose_params_mx, quantize_mx

torch = pytest.importorskip("torch")
mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")

F32 = np.float32
LAYERS = ["encoder.layer.0.attention.self.query", "encoder.layer.2.intermediate.dense",
          "encoder.layer.5.output.dense"]
ALL_LAYERS = [n for n in qviz.demo.layers() if n.startswith("encoder.")]
#: (method, fmt) pairs: every element format
VARIANTS = [("mxfp4", None), ("mxfp6_e2m3", None), ("mxfp6_e3m2", None), ("mxfp8", "e4m3"), ("mxfp8", "e5m2")]

EXTRA = {
    "elem_max": lambda n, rng: np.where(n > 0, F32(6), F32(-448)).astype(F32),
    "elem_subnormal": lambda n, rng: (n * F32(2.0 ** -10)).astype(F32) * (np.arange(n.shape[1]) % 5 == 0)
    + np.where(np.arange(n.shape[1]) % 32 == 0, F32(6), F32(0)),
    "negative_zero": lambda n, rng: np.where(n > 0.5, n, F32(-0.0)).astype(F32),
    "f32_subnormal": lambda n, rng: (n * F32(1e-40)).astype(F32),
    "near_max_float": lambda n, rng: (n * F32(1e37)).astype(F32),
}
ALL_CASES = CASES + list(EXTRA)


def torch_dtype(name, fmt):
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2

    return {"mxfp4": torch.float4_e2m1fn_x2, "mxfp6_e2m3": DTYPE_FP6_E2M3, "mxfp6_e3m2": DTYPE_FP6_E3M2,
            "mxfp8": torch.float8_e5m2 if fmt == "e5m2" else torch.float8_e4m3fn}[name]


def torchao_mx(w, name, fmt, rule):
    """torchao's codes (unpacked), E8M0 bytes and float32 decode."""
    from torchao.prototype.mx_formats.config import ScaleCalculationMode

    dt = torch_dtype(name, fmt)
    scale, data = mx_tensor.to_mx(torch.from_numpy(np.array(w)), dt, 32, ScaleCalculationMode(rule))
    decoded = mx_tensor.to_dtype(data, scale, dt, 32, torch.float32).numpy()
    if name == "mxfp4":  # two codes a byte, the first in the low nibble (torchao pack_uint4)
        u = data.view(torch.uint8).numpy()
        codes = np.stack([u & 15, u >> 4], axis=-1).reshape(w.shape)
    else:
        codes = data.view(torch.uint8).numpy()
    return codes, scale.view(torch.uint8).numpy(), decoded


def check(w, name, fmt, rule, backend="numba"):
    r = quantize_mx(w, name=name, fmt=fmt, scale_rule=rule, backend=backend)
    codes, e8m0, decoded = torchao_mx(w, name, fmt, rule)
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.stored["scale"], e8m0)
    np.testing.assert_array_equal(r.dequantize().view(np.int32), decoded.view(np.int32))  # NaN-free, bitwise
    return r


@pytest.mark.parametrize("name,fmt", VARIANTS)
@pytest.mark.parametrize("case", ALL_CASES)
def test_edge_rows_equal_torchao(case, name, fmt):
    w = edge_rows(case, 16, 256, np.random.default_rng(3), extra_cases=EXTRA)
    for rule in SCALE_RULES:
        check(w, name, fmt, rule)


@pytest.mark.parametrize("rule", SCALE_RULES)
@pytest.mark.parametrize("name,fmt", VARIANTS)
@pytest.mark.parametrize("layer", LAYERS)
def test_minilm_layers_equal_torchao(layer, name, fmt, rule):
    check(qviz.demo.layer(layer), name, fmt, rule)


@pytest.mark.slow
@pytest.mark.parametrize("rule", SCALE_RULES)
@pytest.mark.parametrize("name,fmt", VARIANTS)
@pytest.mark.parametrize("layer", ALL_LAYERS)
def test_all_minilm_layers_equal_torchao(layer, name, fmt, rule):
    check(qviz.demo.layer(layer), name, fmt, rule)


@pytest.mark.parametrize("name,fmt", VARIANTS)
def test_rceil_and_the_power_of_two_edges_of_every_binade(name, fmt):
    """Block maxima at and just above ``max * 2**k`` for every k: where ceil(log2) and the mantissa tests flip."""
    f = mf.element_format(fmt or ELEMENTS[name])
    k = np.arange(-140, 120)
    with np.errstate(over="ignore"):
        base = (np.ldexp(1.0, k) * f.max).astype(F32)
    base = base[np.isfinite(base) & (base > 0)]
    ups = [base]
    for _ in range(40):  # the first 40 float32s above each: torch's log2 rounds some of them down to k
        ups.append(np.nextafter(ups[-1], F32(np.inf)))
    amax = np.concatenate(ups + [np.nextafter(base, F32(0))])
    w = np.zeros((amax.size, 32), dtype=F32)
    w[:, 0] = amax
    w[:, 1] = -amax / F32(3)
    for rule in SCALE_RULES:
        check(w, name, fmt, rule)


@pytest.mark.parametrize("name,fmt", VARIANTS)
def test_numba_twin_equals_the_numpy_reference(rng, name, fmt):
    w = (rng.standard_normal((64, 512)) * rng.choice([1e-3, 1.0, 1e3], (64, 1))).astype(F32)
    for rule in SCALE_RULES:
        a = quantize_mx(w, name=name, fmt=fmt, scale_rule=rule, backend="numpy")
        b = quantize_mx(w, name=name, fmt=fmt, scale_rule=rule, backend="numba")
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.stored["scale"], b.stored["scale"])
        assert a.info["saturated"] == b.info["saturated"]


def test_result_fields_and_saturation(rng):
    w = rng.standard_normal((8, 64)).astype(F32)
    r = quantize_mx(w, name="mxfp4")
    assert (r.bits, r.group_size, r.codes.dtype, r.stored["scale"].dtype) == (4, 32, np.uint8, np.uint8)
    assert r.stored["scale"].shape == (8, 2) and r.codebook.shape == (16,)
    np.testing.assert_array_equal(r.scales, np.ldexp(F32(1), r.stored["scale"].astype(int) - 127))
    assert r.bits_per_weight == 4 + 8 / 32
    assert r.info == {"fmt": "e2m1", "granularity": "group", "scale_rule": "floor",
                      "saturated": int((np.abs(w / np.repeat(r.scales, 32, axis=1)) > 6).sum()),
                      "backend": "numba"}
    assert r.info["saturated"] > 0  # floor's scale lets a block's largest weights pass 6
    assert quantize_mx(w, name="mxfp4", scale_rule="ceil").info["saturated"] == 0
    assert quantize_mx(w, name="mxfp6_e3m2").bits == 6 and quantize_mx(w, name="mxfp8").bits == 8


def test_scale_examples():
    e, divisor = choose_params_mx(np.array([[0.0, 1e-45, 6.0]], F32), "e2m1", "floor")
    assert e.tolist() == [[0, 0, 127]] and divisor.tolist() == [[2.0 ** -126, 2.0 ** -126, 1.0]]
    e, divisor = choose_params_mx(np.array([[0.0, 6.0]], F32), "e2m1", "rceil")
    assert e.tolist() == [[0, 127]] and divisor.tolist() == [[1.0, 1.0]]


def test_rows_not_a_multiple_of_32_are_refused_as_torchao_refuses_them(rng):
    w = rng.standard_normal((4, 48)).astype(F32)
    with pytest.raises(ValueError, match=r"mxfp4 needs rows that are a multiple of 32.*48 columns.*pad"):
        qviz.quantize(w, "mxfp4")
    with pytest.raises(AssertionError, match="divisible by block_size"):
        mx_tensor.to_mx(torch.from_numpy(w), torch.float8_e4m3fn, 32)


def test_registered_names_labels_and_the_ggml_type_beside_them(rng):
    ms = qviz.methods()
    for name in ELEMENTS:
        # compressed-tensors' FP6 is E2M3 only: the E3M2 record does not claim an export it refuses
        want = () if name == "mxfp6_e3m2" else ("compressed-tensors",)
        assert ms[name].label == f"{name} (OCP MX)" and ms[name].exports == want
        assert not ms[name].quantlinear
    assert [o.name for o in ms["mxfp8"].controls] == ["fmt", "scale_rule"]
    assert [o.name for o in ms["mxfp4"].controls] == ["scale_rule"]
    w = rng.standard_normal((4, 64)).astype(F32)
    assert qviz.quantize(w, "mxfp4").method == "mxfp4" and qviz.quantize(w, "mxfp4").packed is None
    ggml = qviz.quantize(w, "MXFP4")  # exact names first: ggml's bytes, not the OCP tensor format
    assert ggml.method == "MXFP4" and ggml.packed is not None
    assert qviz.quantize(w, "mxfp8", fmt="e5m2").info["fmt"] == "e5m2"
    with pytest.raises(TypeError, match="takes no option"):
        qviz.quantize(w, "mxfp4", fmt="e5m2")
    before = w.copy()
    qviz.quantize(w, "mxfp6_e2m3", scale_rule="rceil")
    np.testing.assert_array_equal(w, before)
