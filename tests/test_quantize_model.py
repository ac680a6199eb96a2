"""quantize_model: the caller's model stays, block-by-block GPTQ equals per-layer GPTQ on the right inputs, AWQ folds."""
import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import qviz  # noqa: E402
from qviz import eval as qeval  # noqa: E402
from qviz.io import calib  # noqa: E402
from qviz.models import quantize_model  # noqa: E402
from qviz.models.runner import Block, catch_block_inputs, find_blocks, stages  # noqa: E402


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"the caller's {k} changed"


def tiny_llama(hidden=72, heads=4, kv_heads=2, layers=2, tied=True):
    """A random LLaMA whose rows (72) are not a multiple of the 32-column groups used below."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, max_position_embeddings=64,
                                   tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so folding a scale into them shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def tokens():
    return torch.randint(0, 96, (6, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def minilm():
    from qviz.io.models import load_minilm

    return load_minilm()


def minilm_blocks(model, n):
    """A copy of MiniLM with its first ``n`` blocks."""
    small = copy.deepcopy(model)
    small.encoder.layer = small.encoder.layer[:n]
    small.config.num_hidden_layers = n
    return small


def test_rtn_on_minilm_keeps_the_caller_and_lowers_cosine_a_little(minilm):
    model, tok = minilm
    before = state(model)
    results, q = quantize_model(model, "rtn", bits=4, group_size=128, progress=False)
    assert_unchanged(model, before)
    assert len(results) == 37  # 6 blocks × 6 Linears + the pooler
    for name, r in results.items():
        np.testing.assert_array_equal(q.get_submodule(name).weight.detach().numpy(), r.dequantize())
        np.testing.assert_array_equal(r.codes, qviz.quantize(model.get_submodule(name), "rtn", bits=4,
                                                              group_size=128).codes)
    cos = qeval.embedding_similarity(q, model, tok, qeval.default_sentences(16))
    assert 0.85 < cos < 0.9999


def test_gptq_block_by_block_equals_gptq_on_the_quantized_inputs(minilm):
    model, _ = minilm
    small = minilm_blocks(model, 2)
    before = state(small)
    ids = torch.randint(1000, 20000, (4, 32), generator=torch.Generator().manual_seed(0))
    results, q = quantize_model(small, "gptq", calib=ids, bits=4, group_size=128, progress=False)
    assert_unchanged(small, before)
    assert len(results) == 13 and all(r.method == "gptq" for r in results.values())

    # oracle: block 0's first stage sees the original model's inputs ...
    name = "encoder.layer.0.attention.self.query"
    H = calib.capture(small, ids, layers=[name], max_samples=0, progress=False)[name].hessian
    want = qviz.quantize(small.get_submodule(name), "gptq", bits=4, group_size=128, hessian=H)
    np.testing.assert_array_equal(results[name].codes, want.codes)
    # ... and block 1's value projection the inputs of quantized block 0 (true sequential)
    part = copy.deepcopy(small)
    for n, r in results.items():
        if n.startswith("encoder.layer.0."):
            part.get_submodule(n).weight.data = torch.from_numpy(r.dequantize())
    name = "encoder.layer.1.attention.self.value"
    H = calib.capture(part, ids, layers=[name], max_samples=0, progress=False)[name].hessian
    want = qviz.quantize(small.get_submodule(name), "gptq", bits=4, group_size=128, hessian=H)
    assert np.mean(results[name].codes == want.codes) > 0.999  # equal up to float sums of H


def test_gptq_stages_follow_shared_inputs(llama, tokens):
    name, blocks = find_blocks(llama)
    assert name == "model.layers" and len(blocks) == 2
    calls = catch_block_inputs(llama, blocks[0], calib.as_batches(tokens))
    lin = {n: m for n, m in blocks[0].named_modules() if isinstance(m, torch.nn.Linear)}
    found = stages(Block(blocks[0], calls, [None]), lin, True)
    assert [sorted(s) for s in found] == [
        ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    assert stages(Block(blocks[0], calls, [None]), lin, False) == [list(lin)]


@pytest.mark.parametrize("method,options", [
    ("rtn", dict(bits=4, group_size=32)),
    ("gptq", dict(bits=4, group_size=32)),
    ("gptq", dict(bits=3, group_size=32, act_order=True, true_sequential=False)),
    ("awq", dict(bits=4, group_size=32)),
])
def test_tiny_llama_rows_not_a_multiple_of_the_group(llama, tokens, method, options):
    before = state(llama)
    results, q = quantize_model(llama, method, calib=tokens, progress=False, **options)
    assert_unchanged(llama, before)
    assert len(results) == 14 and "lm_head" not in results
    r = results["model.layers.0.self_attn.q_proj"]
    assert r.shape == (72, 72) and r.scales.shape == (72, 3)  # groups of 32, 32 and 8
    with torch.no_grad():
        base, out = llama(tokens).logits, q(tokens).logits
    rel = float((out - base).norm() / base.norm())
    assert 0 < rel < 0.3


def test_awq_folds_scales_into_the_preceding_ops(tokens):
    model = tiny_llama(kv_heads=4)  # no grouped-query attention: v -> o folds too
    results, q = quantize_model(model, "awq", calib=tokens, bits=8, group_size=32, progress=False)
    blk, qblk = model.model.layers[0], q.model.layers[0]
    info = {n.split("layers.0.")[1]: r.info for n, r in results.items() if ".layers.0." in n}
    assert info["self_attn.q_proj"]["folded_into"] == "input_layernorm"
    assert info["self_attn.o_proj"]["folded_into"] == "self_attn.v_proj"
    assert info["mlp.down_proj"]["folded_into"] == "mlp.up_proj"
    s_qkv = torch.from_numpy(info["self_attn.q_proj"]["input_scale"])
    np.testing.assert_allclose((qblk.input_layernorm.weight * s_qkv).detach().numpy(),
                               blk.input_layernorm.weight.detach().numpy(), rtol=1e-6)
    s_mlp = torch.from_numpy(info["mlp.gate_proj"]["input_scale"])
    np.testing.assert_allclose((qblk.post_attention_layernorm.weight * s_mlp).detach().numpy(),
                               blk.post_attention_layernorm.weight.detach().numpy(), rtol=1e-6)
    assert not info["self_attn.q_proj"]["clip"] and not info["self_attn.k_proj"]["clip"]
    assert info["self_attn.v_proj"]["clip"]
    with torch.no_grad():  # 8 bits: the folded model computes what the original does
        base, out = model(tokens).logits, q(tokens).logits
    assert float((out - base).norm() / base.norm()) < 0.02


def test_awq_with_grouped_query_attention_leaves_o_unfolded(llama, tokens):
    results, q = quantize_model(llama, "awq", calib=tokens, bits=4, group_size=32, progress=False)
    r = results["model.layers.1.self_attn.o_proj"]
    assert r.info["folded_into"] is None  # v (36 rows) and o (72 × 72) differ in shape
    np.testing.assert_array_equal(r.input_scale, r.info["input_scale"])  # kept: decode divides by s
    scaled = dataclasses.replace(r, input_scale=None).dequantize()  # Q(W·diag(s))
    np.testing.assert_array_equal(r.dequantize(), scaled / r.input_scale)
    np.testing.assert_array_equal(q.model.layers[1].self_attn.o_proj.weight.detach().numpy(), r.dequantize())
    assert results["model.layers.1.self_attn.v_proj"].input_scale is None  # folded into the norm


def test_embeddings_and_a_tied_lm_head(llama, tokens):
    results, q = quantize_model(llama, "gptq", calib=tokens, include_lm_head=True, bits=4,
                                group_size=32, progress=False)
    assert "lm_head" in results and results["lm_head"].method == "gptq"
    assert q.lm_head.weight is not q.model.embed_tokens.weight  # untied in the copy only
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    np.testing.assert_array_equal(q.model.embed_tokens.weight.detach().numpy(),
                                  llama.model.embed_tokens.weight.detach().numpy())
    results, q = quantize_model(llama, "gptq", calib=tokens, include_embeddings=True, bits=4,
                                group_size=32, progress=False)
    assert results["model.embed_tokens"].method == "rtn" and "lm_head" not in results


def test_gguf_types_get_the_captured_imatrix(tokens):
    model = tiny_llama(hidden=64)
    results, q = quantize_model(model, "Q4_0", calib=tokens, progress=False)
    assert all(r.method == "Q4_0" and r.info["imatrix"] for r in results.values())
    plain, _ = quantize_model(model, "Q4_0", progress=False)
    assert not any(r.info["imatrix"] for r in plain.values())


def test_a_module_without_blocks(tokens):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(96, 64), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 8))
    assert find_blocks(net) == (None, None)
    for method in ("gptq", "awq"):
        results, q = quantize_model(net, method, calib=tokens, bits=4, group_size=32, progress=False)
        assert sorted(results) == ["1", "3"]


@pytest.mark.parametrize("method,kwargs,error,match", [
    ("nope", {}, ValueError, "unknown method"),
    ("gtpq", {}, ValueError, "unknown method 'gtpq'; did you mean 'gptq'"),
    (3, {}, TypeError, "method must be a string"),
    ("gptq", {}, ValueError, "needs calibration data"),
    ("awq", {}, ValueError, "needs calibration data"),
    ("awq", dict(calib="TOKENS", damp=0.1), TypeError, "takes no option"),
    ("awq", dict(calib="TOKENS", device="cpu"), TypeError, "takes no option.*sets them per layer"),
    ("gptq", dict(calib="TOKENS", hessian=np.eye(72)), TypeError, "takes no option.*sets them per layer"),
    ("gptq", dict(calib="TOKENS", true_sequential=False, sequential=1), TypeError,
     "takes no option.*sequential.*true_sequential"),
    ("rtn", dict(groupsize=128), TypeError, "takes no option"),
])
def test_bad_arguments(llama, tokens, method, kwargs, error, match):
    kwargs = {k: tokens if isinstance(v, str) and v == "TOKENS" else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        quantize_model(llama, method, progress=False, **kwargs)


def test_a_model_without_linear_layers():
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        quantize_model(torch.nn.Embedding(4, 4), "rtn", progress=False)


def test_method_names_resolve_through_the_registry(tokens):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(96, 64), torch.nn.Linear(64, 32))
    results, _ = quantize_model(net, "GPTQ", calib=tokens, bits=4, group_size=32, progress=False)
    assert results["1"].method == "gptq"
    results, _ = quantize_model(net, "q4_0", progress=False)
    assert results["1"].method == "Q4_0"


def test_a_registered_method_goes_layer_by_layer(llama, tokens):
    """A method known only to the registry (no driver) gets each layer's importance and input sample."""
    from qviz import registry
    from qviz.registry import Method, Option

    seen = {}

    def quantize_seen(w, *, bits=4, weights=None, inputs=None):
        seen[w.shape] = (weights, inputs)
        return qviz.quantize(w, "rtn", bits=bits, group_size=-1)

    registry.register_method(Method(
        "seen", "Seen", quantize_seen,
        (Option("bits", "int", 4, low=2, high=8),
         Option("weights", "array", None, role="importance", optional=True),
         Option("inputs", "array", None, role="calibration", optional=True))))
    try:
        results, q = quantize_model(llama, "seen", bits=3, progress=False)
        assert len(results) == 14 and all(r.bits == 3 for r in results.values())
        assert seen[(72, 72)] == (None, None)
        results, q = quantize_model(llama, "seen", calib=tokens, bits=3, include_embeddings=True,
                                    progress=False)
        name = "model.layers.1.mlp.down_proj"
        st = calib.capture(llama, tokens, layers=[name], hessian=False, progress=False, max_samples=4096)[name]
        weights, inputs = seen[(72, 144)]
        np.testing.assert_array_equal(weights, st.imatrix)
        np.testing.assert_array_equal(inputs, st.sample)
        assert results["model.embed_tokens"].method == "rtn"  # a method reading activations: RTN there
        with pytest.raises(TypeError, match="takes no option"):
            quantize_model(llama, "seen", group_size=32, progress=False)
    finally:
        registry.unregister("seen")
