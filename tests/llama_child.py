"""llama.cpp in a process of its own, for the end-to-end tests (``python tests/llama_child.py MODEL``).

llama.cpp (through llama-cpp-python) crashed with SIGSEGV inside ``llama_decode``
in long pytest processes on this project's machines (Xeons with AVX-512 and
AMX), after torch, numba, scikit-learn and a browser had run in the same
process; the same calls in a fresh process pass. The tests therefore run each
model here, in a child process, and read one JSON line: the perplexity of
CPython's pydoc topics (tokenized by the source model's own tokenizer) and a
short greedy completion. A crash is then a failed test, not a dead test run.
"""
from __future__ import annotations

import json
import sys

import numpy as np

CTX = 512
CHUNKS = 2


def text_tokens(llama_cpp, tokenizer_path: str) -> list[int]:
    """Fixed evaluation text: CPython's bundled pydoc topics, tokenized by the model at ``tokenizer_path``."""
    import pydoc_data.topics as topics

    llm = llama_cpp.Llama(model_path=tokenizer_path, n_ctx=CTX, vocab_only=True, verbose=False)
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return llm.tokenize(text.encode(), add_bos=False)[: CTX * CHUNKS]


def perplexity(llama_cpp, path: str, tokens: list[int]) -> tuple[float, str]:
    """Perplexity of the second half of each CTX-token window (the first half is context), and a completion."""
    llm = llama_cpp.Llama(model_path=path, n_ctx=CTX, logits_all=True, verbose=False, n_threads=2, seed=0)
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
    return float(np.exp(nll / n)), answer


def main(model: str, tokenizer: str) -> None:
    import llama_cpp

    ppl, answer = perplexity(llama_cpp, model, text_tokens(llama_cpp, tokenizer))
    print(json.dumps({"perplexity": ppl, "answer": answer}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
