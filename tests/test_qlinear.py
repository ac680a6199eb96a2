"""QuantLinear on the CPU: packed buffers, forward against F.linear, whole-model swaps, memory."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import qviz  # noqa: E402
from qviz import registry  # noqa: E402
from qviz.kernels.numba import pack as nb_pack  # noqa: E402
from qviz.models.qlinear import QuantLinear, memory_bytes, memory_report, to_quantized_modules  # noqa: E402
from qviz.result import QuantResult  # noqa: E402

U16 = 2.0 ** -11  # unit roundoff of float16
U32 = 2.0 ** -24  # unit roundoff of float32


@pytest.fixture
def w(rng):
    return rng.standard_normal((64, 384)).astype(np.float32)


@pytest.fixture
def x():
    return torch.randn(5, 384, generator=torch.Generator().manual_seed(0))


def _deq(result) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(result.dequantize()))


RTN_OPTIONS = [dict(bits=4, group_size=128), dict(bits=4, group_size=100), dict(bits=3, group_size=128),
               dict(bits=8, group_size=64, sym=True), dict(bits=2, group_size=-1),
               dict(bits=4, per_tensor=True)]


@pytest.mark.parametrize("order", ["gptq", "awq"])
@pytest.mark.parametrize("opts", RTN_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_forward_equals_linear_with_dequantized_weight(w, x, opts, order):
    """float32 scales: the decoded weight has the same bits as ``result.dequantize()``, so F.linear
    on the same input gives the same output bits (tolerance 0)."""
    if order == "awq" and opts["bits"] == 3:
        pytest.skip("AWQ has no 3-bit layout")
    r = qviz.quantize(w, "rtn", **opts)
    bias = np.linspace(-1, 1, 64, dtype=np.float32)
    layer = QuantLinear.from_result(r, bias, order=order, scale_dtype=torch.float32)
    assert torch.equal(layer.dequantized_weight(), _deq(r))
    assert torch.equal(layer(x), F.linear(x, _deq(r), torch.from_numpy(bias)))
    assert layer(x[None]).shape == (1, 5, 64)  # leading dims kept


def test_fp16_scales_stay_within_their_rounding(w, x):
    """fp16 scales move each weight by at most 2⁻¹¹ of itself; the output by at most
    2⁻¹¹·(|x| @ |W|ᵀ) plus float32 summation (K·2⁻²⁴ of the same)."""
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    layer = QuantLinear.from_result(r)  # fp16 scales, as checkpoints store them
    assert layer.scales.dtype == torch.float16
    W = _deq(r)
    bound = (U16 + 384 * U32) * (x.abs() @ W.abs().T)
    assert ((layer(x) - F.linear(x, W)).abs() <= bound).all()


def test_gptq_act_order_keeps_g_idx(w, rng):
    calib = rng.standard_normal((256, 384)).astype(np.float32) * np.linspace(0.1, 3, 384, dtype=np.float32)
    r = qviz.quantize(w, "gptq", bits=4, group_size=128, act_order=True, calib=calib)
    assert r.g_idx is not None
    layer = QuantLinear.from_result(r, scale_dtype=torch.float32)
    assert torch.equal(layer.g_idx, torch.from_numpy(r.g_idx))
    assert torch.equal(layer.dequantized_weight(), _deq(r))


def test_awq_layer_divides_input_by_its_scale(w, rng):
    """AWQ stores Q(W·diag(s)); the layer computes (x/s) @ Q(...)ᵀ. Against x @ (Q(...)/s)ᵀ the
    two roundings of the division differ: bound 2·2⁻²⁴·(|x/s| @ |Q|ᵀ) + K·2⁻²⁴ of the same."""
    calib = rng.standard_normal((128, 384)).astype(np.float32)
    r = qviz.quantize(w, "awq", bits=4, group_size=128, calib=calib)
    s = torch.from_numpy(np.asarray(r.info["input_scale"], dtype=np.float32))
    layer = QuantLinear.from_result(r, scale_dtype=torch.float32, order="awq")
    x = torch.from_numpy(calib[:4])
    from qviz.algorithms.awq import unscaled_weight

    want = F.linear(x, torch.from_numpy(unscaled_weight(r)))
    bound = (2 + 384) * U32 * ((x / s).abs() @ _deq(r).abs().T) * 2
    assert ((layer(x) - want).abs() <= bound).all()


def test_buffers_match_numba_packing(w):
    """qweight (in·bits/32, out) and qzeros (G, out·bits/32) as checkpoints hold them, packed by the
    independent numba kernel."""
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    g = QuantLinear.from_result(r)
    np.testing.assert_array_equal(g.qweight.numpy(), nb_pack.pack(r.codes, 4, "gptq").T)
    np.testing.assert_array_equal(g.qzeros.numpy(), nb_pack.pack(r.zeros.T.astype(np.uint8).copy(), 4, "gptq"))
    a = QuantLinear.from_result(r, order="awq")
    np.testing.assert_array_equal(a.qweight.numpy(), nb_pack.pack(np.ascontiguousarray(r.codes.T), 4, "awq"))
    assert g.qweight.shape == (48, 64) and a.qweight.shape == (384, 8) and g.scales.shape == (3, 64)


TORCH_TYPES = [n for n, t in registry.types().items() if "torch" in t.twins]


def test_records_say_what_a_quantlinear_holds():
    held = {n for n, m in registry.methods().items() if m.quantlinear}
    assert {"rtn", "gptq", "awq"} <= held and held & set(registry.types()) == set(TORCH_TYPES)
    assert {"Q4_0", "Q4_K", "Q6_K"} <= set(TORCH_TYPES)


@pytest.mark.parametrize("type_name", TORCH_TYPES)
def test_gguf_layers_decode_like_the_result(rng, type_name):
    w = rng.standard_normal((16, 512)).astype(np.float32)
    r = qviz.quantize(w, type_name)
    layer = QuantLinear.from_result(r, np.ones(16))
    np.testing.assert_array_equal(layer.packed.numpy(), r.packed)
    assert torch.equal(layer.dequantized_weight(), _deq(r))
    x = torch.randn(3, 512)
    assert torch.equal(layer(x), F.linear(x, _deq(r), torch.ones(16)))


def test_state_dict_round_trip(w, x):
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    a = QuantLinear.from_result(r, np.zeros(64))
    b = QuantLinear(384, 64, 4, 128, bias=True)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_half_precision_input(w, x):
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    y = QuantLinear.from_result(r)(x.half())
    assert y.dtype == torch.float16


def test_does_not_modify_the_result(w):
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    codes, scales = r.codes.copy(), r.scales.copy()
    QuantLinear.from_result(r)(torch.ones(1, 384))
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.scales, scales)


@pytest.mark.parametrize("make,exc,match", [
    (lambda w: QuantLinear.from_result(w), TypeError, "takes a QuantResult"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w[:, :256], "IQ4_NL")), ValueError,
     "QuantLinear holds rtn, gptq, awq results and the quant types Q4_0"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "nf4")), ValueError, "got method 'nf4'"),
    (lambda w: QuantLinear(256, 16, gguf_type="IQ4_NL"), ValueError, "no torch dequantizer.*supported: Q4_0"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "rtn"), np.ones(3)), ValueError, "64 outputs"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "rtn", bits=3), order="awq"), ValueError, "3-bit"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w[:48], "rtn", bits=3)), ValueError,
     "48×384 layer has no 3-bit gptq layout"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "rtn", bits=5)), ValueError, "2, 3, 4 or 8"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "rtn"), order="marlin"), ValueError, "valid orders"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "rtn"), kernel="cuda"), ValueError, "valid kernels"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "rtn"))(torch.ones(2, 100)), ValueError, "takes 384"),
    (lambda w: QuantLinear.from_result(qviz.quantize(w, "rtn"), kernel="triton")(torch.ones(2, 384)),
     RuntimeError, "kernel='auto'"),
])
def test_bad_input(w, make, exc, match):
    with pytest.raises(exc, match=match):
        make(w)


def test_fractional_zero_points_are_refused(w):
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    bad = QuantResult(**{**r.__dict__, "zeros": r.zeros + 0.5})
    with pytest.raises(ValueError, match="whole codes"):
        QuantLinear.from_result(bad)


# ---------------------------------------------------------------- whole models

def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 32, bias=False)))


def _results(model, **opts):
    return {n: qviz.quantize(m.weight, "rtn", **opts) for n, m in model.named_modules()
            if isinstance(m, nn.Linear)}


def test_to_quantized_modules_swaps_on_a_copy():
    model = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = _results(model, bits=4, group_size=32)
    q = to_quantized_modules(model, {("0.weight" if k == "0" else k): v for k, v in results.items()},
                             scale_dtype=torch.float32)
    assert isinstance(q[0], QuantLinear) and isinstance(q[2][0], QuantLinear)
    assert isinstance(model[0], nn.Linear) and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    x = torch.randn(4, 256)
    want = F.linear(F.relu(F.linear(x, _deq(results["0"]), model[0].bias)), _deq(results["2.0"]))
    assert torch.equal(q(x), want)


def test_to_quantized_modules_checks_names_and_shapes():
    model = _toy()
    results = _results(model, bits=4, group_size=32)
    with pytest.raises(ValueError, match=r"1 nn.Linear layer\(s\) have no result: 2.0"):
        to_quantized_modules(model, {"0": results["0"]})
    q = to_quantized_modules(model, {"0": results["0"]}, strict=False)
    assert isinstance(q[2][0], nn.Linear) and isinstance(q[0], QuantLinear)
    with pytest.raises(ValueError, match="not nn.Linear modules.*: 1"):
        to_quantized_modules(model, {**results, "1": results["0"]})
    with pytest.raises(ValueError, match=r"shape \(64, 256\).*\(32, 64\)"):
        to_quantized_modules(model, {"0": results["0"], "2.0": results["0"]})


def test_memory_report_counts_parameters_and_buffers():
    model = _toy()
    q = to_quantized_modules(model, _results(model, bits=4, group_size=32))
    rep = memory_report(model, q)
    assert rep["before_bytes"] == (256 * 64 + 64 + 64 * 32) * 4
    # int4 codes + fp16 scales + packed 4-bit zeros + float32 bias
    layer0 = 256 * 64 // 2 + 8 * 64 * 2 + 8 * 64 // 2 + 64 * 4
    layer1 = 64 * 32 // 2 + 2 * 32 * 2 + 2 * 32 // 2
    assert rep["after_bytes"] == memory_bytes(q) == layer0 + layer1
    assert rep["saved_bytes"] == rep["before_bytes"] - rep["after_bytes"] and rep["ratio"] < 0.2


@pytest.fixture(scope="module")
def minilm():
    transformers = pytest.importorskip("transformers")
    try:
        path = qviz.demo.minilm_dir()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))
    model = transformers.AutoModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return model, tok


def _embed(model, batch) -> torch.Tensor:
    with torch.no_grad():
        h = model(**batch).last_hidden_state  # (n, seq, 384)
    m = batch["attention_mask"][..., None].float()
    return (h * m).sum(1) / m.sum(1)  # mean pooling, as sentence-transformers does


def test_minilm_with_every_linear_quantized(minilm):
    """All 37 Linear layers of MiniLM as int4 g128 (RTN): memory drops, embeddings stay close."""
    from pydoc_data.topics import topics

    model, tok = minilm
    text = [p.strip()[:300] for key in ("if", "while", "for", "try") for p in topics[key].split("\n\n")
            if len(p.strip()) > 40][:8]
    batch = tok(text, padding=True, truncation=True, max_length=64, return_tensors="pt")
    results = {n: qviz.quantize(m.weight, "rtn", bits=4, group_size=128)
               for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(results) == 37
    q = to_quantized_modules(model, results)
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    rep = memory_report(model, q)
    linear_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    # every Linear weight went from 4 bytes to 0.5 + (2 + 0.5)/128 bytes per weight
    assert rep["saved_bytes"] >= linear_params * (4 - 0.5 - 2.5 / 128) * 0.999
    cos = F.cosine_similarity(_embed(model, batch), _embed(q, batch), dim=1)
    assert cos.min() > 0.9, cos
