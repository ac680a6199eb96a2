"""Evaluation (perplexity, KL, embeddings) against hand computations, and the real-model loaders."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qviz  # noqa: E402
from qviz import eval as qeval  # noqa: E402
from qviz.io import gguf  # noqa: E402


class PositionLM(torch.nn.Module):
    """Logits = table[token] + position-in-window × bias: depends on where the window starts."""

    def __init__(self, vocab=11, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(vocab, generator=g) * 0.3)

    def forward(self, input_ids):
        pos = torch.arange(input_ids.shape[1], dtype=torch.float32)[None, :, None]
        return self.table[input_ids] + pos * self.bias


def log_softmax(v):
    v = np.asarray(v, dtype=np.float64)
    return v - v.max() - np.log(np.exp(v - v.max()).sum())


def hand_scores(model, ids, ctx, stride, reference=None):
    """Token j >= 1 is predicted in the first window reaching past it: begin = k·stride,
    k = max(0, (j - ctx) // stride + 1), from position j - 1 - begin of that window."""
    nll, kl, n = 0.0, 0.0, 0
    for j in range(1, len(ids)):
        k = max(0, (j - ctx) // stride + 1)
        begin = k * stride
        if j == begin:  # stride == ctx: nothing before it in its window
            continue
        n += 1
        window = torch.tensor(ids[begin:min(begin + ctx, len(ids))])[None]
        logp = log_softmax(model(window)[0, j - 1 - begin].detach())
        nll -= logp[ids[j]]
        if reference is not None:
            ref = log_softmax(reference(window)[0, j - 1 - begin].detach())
            kl += float(np.sum(np.exp(ref) * (ref - logp)))
    return math.exp(nll / n), kl / n, n


IDS = [int(i) for i in np.random.default_rng(3).integers(0, 11, 23)]


@pytest.mark.parametrize("ctx,stride", [(4, 2), (5, 2), (6, 3), (8, 8), (30, 15)])
def test_perplexity_and_kl_equal_a_hand_computation(ctx, stride):
    model, ref = PositionLM(seed=0), PositionLM(seed=1)
    want_ppl, want_kl, n = hand_scores(model, IDS, ctx, stride, reference=ref)
    got = qeval.compare_lm({"m": model}, ref, IDS, ctx=ctx, stride=stride, progress=False)["m"]
    assert got.n_tokens == n == len(IDS) - 1 - (len(IDS) - 1) // ctx * (stride == ctx)
    assert got.perplexity == pytest.approx(want_ppl, rel=1e-6)  # float32 log-softmax
    assert got.kl == pytest.approx(want_kl, rel=1e-5)
    assert qeval.perplexity(model, IDS, ctx=ctx, stride=stride, progress=False) == pytest.approx(want_ppl, rel=1e-6)


def test_windows_score_every_token_once():
    for n, ctx, stride in [(1000, 512, 256), (513, 512, 256), (7, 512, 256), (100, 10, 3)]:
        plan = qeval.windows(n, ctx, stride)
        assert sum(s for _, _, s in plan) == n - 1
        assert all(end - begin <= ctx and s <= end - begin for begin, end, s in plan)
    assert qeval.windows(1000, 512) == qeval.windows(1000, 512, 256)  # default stride ctx // 2


def test_kl_of_a_model_against_itself_is_zero():
    model = PositionLM()
    s = qeval.compare_lm({"a": model, "b": PositionLM(seed=2)}, model, IDS, ctx=6, progress=False)
    assert s["a"].kl == 0.0 and s["a"].top1 == 1.0
    assert s["b"].kl > 0.05 and s["b"].top1 < 1.0
    assert qeval.kl_divergence(model, model, IDS, ctx=6, progress=False) == 0.0


def test_uniform_model_has_perplexity_of_the_vocabulary():
    assert qeval.perplexity(lambda ids: torch.zeros(1, ids.shape[1], 8), [1, 2, 3], progress=False) \
        == pytest.approx(8.0)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(data=[5]), ValueError, "at least 2"),
    (dict(data=[]), ValueError, "at least 2"),
    (dict(data="some text"), ValueError, "needs a tokenizer"),
    (dict(data=None), ValueError, "needs a tokenizer"),
    (dict(data=[0.5, 1.5]), TypeError, "integers"),
    (dict(data=IDS, ctx=1), ValueError, "ctx >= 2"),
    (dict(data=IDS, ctx=4, stride=5), ValueError, "stride <= ctx"),
    (dict(data=IDS, ctx=0), ValueError, "ctx=0"),
    (dict(data=IDS, ctx=4, stride=0), ValueError, "stride=0"),
    (dict(data=IDS, max_tokens=1), ValueError, "max_tokens"),
])
def test_bad_evaluation_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        qeval.perplexity(PositionLM(), progress=False, **kwargs)


def test_a_model_that_does_not_return_logits():
    with pytest.raises(ValueError, match="logits"):
        qeval.perplexity(lambda ids: torch.zeros(ids.shape[1], 8), IDS, progress=False)


# --- the real models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    from qviz.io.models import load_minilm

    return load_minilm()


def test_minilm_against_itself_has_cosine_one(minilm):
    model, tok = minilm
    texts = qeval.default_sentences(12)
    assert len(texts) == 12 and all(len(t) >= 40 for t in texts)
    emb = qeval.embed(model, tok, texts, batch_size=5)
    assert emb.shape == (12, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    assert qeval.embedding_similarity(model, model, tok, texts) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="non-empty list"):
        qeval.embed(model, tok, "one string")


def test_minilm_embeddings_equal_a_hand_mean_pool(minilm):
    model, tok = minilm
    texts = ["A short sentence.", "A somewhat longer sentence about the Python reference manual."]
    got = qeval.embed(model, tok, texts)
    for text, row in zip(texts, got):
        enc = tok(text, return_tensors="pt")  # one text: no padding
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0].mean(0)
        np.testing.assert_allclose(row, (h / h.norm()).numpy(), rtol=1e-5, atol=1e-6)


def permute_like_llama_cpp(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (the forward direction)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def smollm2():
    from qviz.io.models import load_smollm2

    return load_smollm2()


def test_smollm2_q_and_k_rows_match_the_gguf_tensors(smollm2):
    model, _ = smollm2
    cfg = model.config
    with gguf.read(qviz.demo.smollm2_gguf()) as f:
        for layer in (0, 29):
            attn = model.model.layers[layer].self_attn
            q = attn.q_proj.weight.detach().numpy()
            k = attn.k_proj.weight.detach().numpy()
            np.testing.assert_array_equal(permute_like_llama_cpp(q, cfg.num_attention_heads),
                                          f.decode(f"blk.{layer}.attn_q.weight"))
            np.testing.assert_array_equal(permute_like_llama_cpp(k, cfg.num_key_value_heads),
                                          f.decode(f"blk.{layer}.attn_k.weight"))
            np.testing.assert_array_equal(attn.v_proj.weight.detach().numpy(), f.decode(f"blk.{layer}.attn_v.weight"))
        # one decoded q_proj row is a Q4_1 row: 32-weight blocks of scale·code - min
        row = f.result("blk.0.attn_q.weight").dequantize()[5]
        np.testing.assert_array_equal(row, f.decode("blk.0.attn_q.weight")[5])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: no output.weight in the file
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (576, 30, 9, 3)


def test_smollm2_predicts_the_expected_next_token(smollm2):
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids.tolist() == [[504, 3575, 282, 4649, 314]]  # llama.cpp's tokenization of the prompt
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert tok.decode(int(logits.argmax())) == " Paris"


def test_smollm2_tokenizer_matches_llama_cpp(smollm2):
    llama_cpp = pytest.importorskip("llama_cpp")
    _, tok = smollm2
    llm = llama_cpp.Llama(model_path=str(qviz.demo.smollm2_gguf()), vocab_only=True, verbose=False)
    text = ("<|im_start|>user\nIn 2024, 1234567 naïve cafés don't  close;\ttabs\u00a0& 日本語.<|im_end|>\n"
            + qeval.default_sentences(3)[2])
    assert tok(text).input_ids == llm.tokenize(text.encode(), add_bos=False, special=True)


def test_unpermute_undoes_the_llama_cpp_permutation():
    from qviz.io.models import unpermute_qk

    w = np.random.default_rng(0).standard_normal((3 * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(permute_like_llama_cpp(w, 3), 3), w)
    with pytest.raises(ValueError, match="heads"):
        unpermute_qk(w[:10], 3)
