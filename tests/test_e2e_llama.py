"""End to end: requantize the bundled SmolLM2 GGUF with qviz, load it in llama.cpp, measure perplexity.

Slow (and llama-cpp-python builds llama.cpp from source, about 20 CPU-minutes):
it runs when llama_cpp is installed, which ``make test E2E=1`` (and CI) does.
"""
import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (make test E2E=1)")

import qviz  # noqa: E402
from qviz.io import gguf  # noqa: E402

pytestmark = pytest.mark.slow

CTX = 512
CHUNKS = 2


@pytest.fixture(scope="module")
def text_tokens():
    """Fixed evaluation text: CPython's bundled pydoc topics, tokenized by SmolLM2's own tokenizer."""
    import pydoc_data.topics as topics

    llm = llama_cpp.Llama(model_path=str(qviz.demo.smollm2_gguf()), n_ctx=CTX, vocab_only=True, verbose=False)
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return llm.tokenize(text.encode(), add_bos=False)[: CTX * CHUNKS]


def perplexity(path, tokens) -> float:
    """Perplexity of the second half of each CTX-token window (the first half is context)."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=CTX, logits_all=True, verbose=False, n_threads=2, seed=0)
    nll, n = 0.0, 0
    for c in range(CHUNKS):
        chunk = tokens[c * CTX:(c + 1) * CTX]
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[: len(chunk)], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        targets = np.asarray(chunk[CTX // 2 + 1:])
        nll -= logp[np.arange(CTX // 2, len(chunk) - 1), targets].sum()
        n += targets.size
    answer = llm("The capital of France is", max_tokens=4, temperature=0)["choices"][0]["text"]
    assert answer.strip(), "the model generated nothing"
    return float(np.exp(nll / n))


@pytest.fixture(scope="module")
def base_ppl(text_tokens):
    return perplexity(qviz.demo.smollm2_gguf(), text_tokens)


@pytest.mark.parametrize("qtype,tolerance", [("Q8_0", 0.02), ("Q4_K", 0.15)])
def test_requantized_smollm2_runs_in_llama_cpp(tmp_path, text_tokens, base_ppl, qtype, tolerance):
    dst = tmp_path / f"smollm2-{qtype}.gguf"
    got = gguf.requantize(qviz.demo.smollm2_gguf(), dst, qtype)
    with gguf.read(dst) as f:
        types = {t.name: t.type_name for t in f.tensors}
    assert {types[name] for name in got} == set(got.values())
    if qtype == "Q4_K":  # only ffn_down's 1536-wide rows fit 256-blocks; 576-wide rows fall back to Q5_0
        assert types["blk.0.ffn_down.weight"] == "Q4_K" and types["blk.0.attn_q.weight"] == "Q5_0"
    ppl = perplexity(dst, text_tokens)
    print(f"SmolLM2 perplexity: source Q4_1 {base_ppl:.3f}, qviz {qtype} {ppl:.3f}")
    assert abs(ppl - base_ppl) / base_ppl < tolerance
