"""The seed article's API (qviz.compat) on real MiniLM weights, against qviz's own methods."""

import dataclasses
import warnings
import numpy as np
import pytest

import qviz
from qviz.compat import AWQQuantizer, GGUFQuantizer, GPTQQuantizer, QuantizedModel

ARTICLE_AFFINE_KEYS = {"quantized", "scales", "bits", "group_size"}  # GPTQ/AWQQuantizer.quantize
ARTICLE_KQUANT_KEYS = {"quantized", "centroids", "quant_type", "bits"}  # GGUF _kmeans_quantize
ARTICLE_INT_KEYS = {"quantized", "scale", "quant_type", "bits"}  # GGUF _int_quantize


def exact(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def query():
    return qviz.demo.layer("encoder.layer.0.attention.self.query")  # (384, 384)


@pytest.fixture(scope="module")
def calib():
    rng = np.random.default_rng(0)
    return rng.standard_normal((256, 384)).astype(np.float32) * rng.lognormal(0, 1, 384).astype(np.float32)


@pytest.fixture(scope="module")
def small(query, calib):
    """A real corner of the layer, 64 × 128, and its activations: GPTQ/AWQ run per column."""
    return query[:64, :128], calib[:128, :128]


# --- GPTQQuantizer ----------------------------------------------------------------------------

def test_gptq_is_real_gptq_with_calibration(small):
    import torch

    w, x = small
    q = GPTQQuantizer(bits=4, group_size=64)
    d = q.quantize(torch.from_numpy(w.copy()), calib=x)
    assert ARTICLE_AFFINE_KEYS <= set(d) and d["bits"] == 4 and d["group_size"] == 64
    want = qviz.quantize(w, "gptq", bits=4, group_size=64, sym=True, calib=x)
    assert d["quantized"].dtype == torch.int32 and tuple(d["quantized"].shape) == (64, 128)
    np.testing.assert_array_equal(d["quantized"].numpy(), want.codes)
    exact(d["scales"], want.scales)
    assert (d["zeros"].numpy() == 8).all()  # symmetric: the implied 2**(bits-1)
    exact(q.dequantize(d), want.dequantize())
    exact(q.dequantize(d["quantized"], d["scales"]), want.dequantize())  # the article's call
    assert d["result"].info["loss"] == want.info["loss"]


def test_gptq_without_calibration_is_gptq_with_identity_hessian(query):
    w = query[:48]
    with pytest.warns(UserWarning, match="no calibration.*round-to-nearest"):
        d = GPTQQuantizer(bits=3, group_size=64, sym=False).quantize(w)
    oracle = qviz.quantize(w, "gptq", bits=3, group_size=64, hessian=np.eye(384, dtype=np.float32))
    np.testing.assert_array_equal(d["quantized"].numpy(), oracle.codes)
    exact(d["scales"], oracle.scales)
    exact(d["zeros"], oracle.zeros)


def test_gptq_act_order_dequantizes_with_g_idx(small):
    w, x = small
    q = GPTQQuantizer(bits=4, group_size=32, act_order=True)
    d = q.quantize(w, calib=x)
    assert d["g_idx"] is not None and tuple(d["g_idx"].shape) == (128,)
    exact(q.dequantize(d), d["result"].dequantize())


# --- AWQQuantizer -----------------------------------------------------------------------------

def test_awq_is_real_awq_with_calibration(small):
    if "awq" not in qviz.method_names():
        pytest.skip("method 'awq' is not registered in qviz.api yet")
    w, x = small
    q = AWQQuantizer(bits=4, group_size=64)
    d = q.quantize(w, calib=x)
    assert ARTICLE_AFFINE_KEYS <= set(d)
    want = qviz.quantize(w, "awq", bits=4, group_size=64, calib=x)
    np.testing.assert_array_equal(d["quantized"].numpy(), want.codes)
    exact(d["zeros"], want.zeros)
    exact(d["input_scale"], want.info["input_scale"])
    from qviz.algorithms.awq import unscaled_weight

    exact(q.dequantize(d), unscaled_weight(want))  # the layer's own weight, columns ÷ s
    scaled = dataclasses.replace(want, input_scale=None).dequantize()  # Q(W·diag(s))
    exact(q.dequantize(d["quantized"], d["scales"], d["zeros"]), scaled)


def test_awq_without_calibration_falls_back_to_rtn(query):
    q = AWQQuantizer(bits=4, group_size=128)
    with pytest.warns(UserWarning, match="no calibration"):
        d = q.quantize(query)
    want = qviz.quantize(query, "rtn", bits=4, group_size=128)
    np.testing.assert_array_equal(d["quantized"].numpy(), want.codes)
    exact(q.dequantize(d), want.dequantize())
    with pytest.raises(ValueError, match="asymmetric: pass zeros"):
        q.dequantize(d["quantized"], d["scales"])


# --- GGUFQuantizer ----------------------------------------------------------------------------

def test_gguf_constants_map_to_ggml_types():
    assert {c: GGUFQuantizer(c).type_name for c in (2, 3, 4, 5, 6, 8, 16, 32)} == {
        2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0", 16: "F16", 32: "F32"}
    assert GGUFQuantizer(GGUFQuantizer.Q6_K).type_name == "Q6_K"
    assert GGUFQuantizer("iq4_nl").type_name == "IQ4_NL"


@pytest.mark.parametrize("quant_type,layer,real", [
    (GGUFQuantizer.Q4_K, "encoder.layer.0.output.dense", "Q4_K"),        # (384, 1536): whole super-blocks
    (GGUFQuantizer.Q2_K, "encoder.layer.0.output.dense", "Q2_K"),
    (GGUFQuantizer.Q4_K, "encoder.layer.0.intermediate.dense", "Q5_0"),  # 384-wide rows: fallback
    ("Q4_1", "encoder.layer.0.intermediate.dense", "Q4_1"),
])
def test_gguf_bytes_equal_qviz_quantize(quant_type, layer, real):
    w = qviz.demo.layer(layer)[:64]
    q = GGUFQuantizer(quant_type)
    d = q.quantize(w)
    assert ARTICLE_KQUANT_KEYS <= set(d) and d["quant_type"] == quant_type and d["type_name"] == real
    want = qviz.quantize(w, q.type_name, fallback=True)
    np.testing.assert_array_equal(d["packed"].numpy(), want.packed)
    assert d["bits"] == want.bits and d["result"].method == real
    np.testing.assert_array_equal(d["quantized"].numpy(), want.codes)
    assert tuple(d["centroids"].shape) == (64, want.n_groups, 2**want.bits)
    exact(q.dequantize(d), want.dequantize())  # ggml's to_float, bit for bit
    exact(q.dequantize(d["quantized"], d["centroids"]), want.dequantize())


def test_gguf_q8_0_has_the_article_int_path(query):
    q = GGUFQuantizer(GGUFQuantizer.Q8_0)
    d = q.quantize(query)
    assert ARTICLE_INT_KEYS <= set(d)
    want = qviz.quantize(query, "Q8_0")
    np.testing.assert_array_equal(d["packed"].numpy(), want.packed)
    exact(q.dequantize(d["quantized"], scale=d["scale"]), want.dequantize())
    exact(q.dequantize(d), want.dequantize())


@pytest.mark.parametrize("quant_type,dtype", [(GGUFQuantizer.F16, np.float16),
                                              (GGUFQuantizer.F32, np.float32)])
def test_gguf_f16_f32_pass_through(query, quant_type, dtype):
    q = GGUFQuantizer(quant_type)
    d = q.quantize(query)
    assert d["quantized"].numpy().dtype == dtype and d["bits"] == np.dtype(dtype).itemsize * 8
    exact(q.dequantize(d), query.astype(dtype))


def test_gguf_imatrix_is_passed_to_ggml(rng):
    w = rng.standard_normal((4, 256)).astype(np.float32)
    im = rng.random(256).astype(np.float32)
    d = GGUFQuantizer(GGUFQuantizer.Q4_K).quantize(w, imatrix=im)
    np.testing.assert_array_equal(d["packed"].numpy(), qviz.quantize(w, "Q4_K", imatrix=im).packed)


# --- QuantizedModel ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel

    return AutoModel.from_pretrained(qviz.demo.minilm_dir()).eval()


def linear_shapes(model):
    import torch

    return {f"{n}.weight": tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}


def other_param_bytes(model, linear):
    return sum(p.numel() * 4 for n, p in model.named_parameters() if n not in linear)  # fp32


def test_memory_counts_true_bytes(minilm):
    linear = linear_shapes(minilm)
    assert len(linear) == 6 * 6 + 1  # q, k, v, attention out, intermediate, output × 6 layers + pooler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no calibration: RTN (tested above)
        gptq = QuantizedModel(minilm, "gptq", bits=4, group_size=128)  # symmetric: no zeros stored
        awq = QuantizedModel(minilm, "awq", bits=4, group_size=128)    # asymmetric: 4-bit zeros
    q8 = QuantizedModel(minilm, "gguf", bits=8)                        # Q8_0: 34 bytes per 32 weights
    rest = other_param_bytes(minilm, linear)
    codes = sum(o * i // 2 for o, i in linear.values())
    scales = sum(o * (i // 128) * 2 for o, i in linear.values())
    zeros = sum(o * (i // 128) // 2 for o, i in linear.values())
    assert gptq.get_memory_usage() * 1024**3 == codes + scales + rest
    assert awq.get_memory_usage() * 1024**3 == codes + scales + zeros + rest
    assert q8.get_memory_usage() * 1024**3 == sum(o * i // 32 * 34 for o, i in linear.values()) + rest
    cmp = gptq.compare_with_original(minilm)
    original = sum(p.numel() * 4 for p in minilm.parameters())
    assert cmp["original_bytes"] == original and cmp["quantized_bytes"] == codes + scales + rest
    assert cmp["original_memory_gb"] == original / 1024**3
    assert cmp["quantized_memory_gb"] == gptq.get_memory_usage()
    assert cmp["compression_ratio"] == original / (codes + scales + rest)
    assert 15 < cmp["weight_sqnr_db"] < 25  # 4-bit g128 RTN: about 6 dB per bit
    assert q8.compare_with_original()["weight_sqnr_db"] > 40


@pytest.mark.filterwarnings("ignore:GPTQQuantizer")  # the layers without calib are RTN, on purpose
def test_model_is_never_modified(minilm, calib):
    import torch

    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    params = {n: (id(p), p.requires_grad) for n, p in minilm.named_parameters()}
    x = {"encoder.layer.0.attention.self.query": calib}
    qm = QuantizedModel(minilm, "gptq", bits=4, group_size=128, calib=x)
    assert qm.results["encoder.layer.0.attention.self.query.weight"].method == "gptq"
    assert qm.results["encoder.layer.0.attention.self.key.weight"].method == "rtn"
    deq = qm.dequantized_model()
    qm.compare_with_original()
    after = minilm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert params == {n: (id(p), p.requires_grad) for n, p in minilm.named_parameters()}
    key = "encoder.layer.1.output.dense.weight"
    exact(deq.state_dict()[key].numpy(), qm.results[key].dequantize())
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        a = minilm(input_ids=ids).last_hidden_state
        b = deq(input_ids=ids).last_hidden_state
    # a smoke test: 4-bit RTN moves the sentence embedding (mean over tokens) only a little
    cos = torch.nn.functional.cosine_similarity(a.mean(1), b.mean(1)).item()
    assert not torch.equal(a, b) and cos > 0.9


def test_f16_gguf_model_counts_two_bytes_per_weight(minilm):
    linear = linear_shapes(minilm)
    qm = QuantizedModel(minilm, GGUFQuantizer(GGUFQuantizer.F16))
    want = sum(o * i * 2 for o, i in linear.values()) + other_param_bytes(minilm, linear)
    assert qm.get_memory_usage() * 1024**3 == want and not qm.results


# --- bad inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("quant_type", [7, "Q4_X", True, 4.0, None])
def test_unknown_quant_type_lists_the_valid_ones(quant_type):
    with pytest.raises(ValueError, match=r"unknown quant_type.*Q4_K=4.*IQ4_NL"):
        GGUFQuantizer(quant_type)


@pytest.mark.parametrize("cls", [GPTQQuantizer, AWQQuantizer])
def test_bad_bits_and_group_size(cls):
    with pytest.raises(ValueError, match=r"bits=9.*2 to 8"):
        cls(bits=9)
    with pytest.raises(ValueError, match=r"group_size=0.*-1"):
        cls(group_size=0)


def test_dequantize_checks_what_it_is_given(query):
    q = GPTQQuantizer(bits=4, group_size=128)
    with pytest.warns(UserWarning):
        d = q.quantize(query)
    with pytest.raises(ValueError, match=r"scales has shape \(384, 2\).*need \(384, 3\)"):
        q.dequantize(d["quantized"], d["scales"][:, :2])
    with pytest.raises(ValueError, match="outside 0 … 15"):
        q.dequantize(d["quantized"] + 16, d["scales"])
    with pytest.raises(ValueError, match="needs scales"):
        q.dequantize(d["quantized"])
    g = GGUFQuantizer(GGUFQuantizer.Q4_K)
    with pytest.raises(ValueError, match="needs centroids"):
        g.dequantize(d["quantized"])


def test_quantized_model_bad_inputs(minilm):
    import torch

    with pytest.raises(ValueError, match="unknown quantizer 'hqq'"):
        QuantizedModel(minilm, "hqq")
    with pytest.raises(ValueError, match="no nn.Linear"):
        QuantizedModel(torch.nn.LayerNorm(8), "gptq")
    with pytest.raises(KeyError, match="not Linear layers"):
        QuantizedModel(minilm, "gptq", calib={"encoder.layer.0.nope": np.zeros((4, 384), np.float32)})
    with pytest.raises(ValueError, match="unknown quant_type 7"):
        QuantizedModel(minilm, "gguf", bits=7)
