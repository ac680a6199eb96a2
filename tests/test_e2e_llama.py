"""End to end: requantize the bundled SmolLM2 GGUF with qviz, load it in llama.cpp, measure perplexity.

Slow (and llama-cpp-python builds llama.cpp from source, about 20 CPU-minutes):
it runs when llama_cpp is installed, which ``make test E2E=1`` (and CI) does.
llama.cpp runs in a child process (``tests/llama_child.py`` says why).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (make test E2E=1)")

import qviz  # noqa: E402
from qviz.io import gguf  # noqa: E402

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("llama_child.py")


def run_in_llama_cpp(path) -> tuple[float, str]:
    """Perplexity and a completion of the model at ``path``, from llama.cpp in a child process."""
    out = subprocess.run([sys.executable, str(CHILD), str(path), str(qviz.demo.smollm2_gguf())],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"llama.cpp exited with {out.returncode}:\n{out.stderr[-3000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["perplexity"], result["answer"]


@pytest.fixture(scope="module")
def base_ppl():
    return run_in_llama_cpp(qviz.demo.smollm2_gguf())[0]


@pytest.mark.parametrize("qtype,tolerance", [("Q8_0", 0.02), ("Q4_K", 0.15)])
def test_requantized_smollm2_runs_in_llama_cpp(tmp_path, base_ppl, qtype, tolerance):
    dst = tmp_path / f"smollm2-{qtype}.gguf"
    got = gguf.requantize(qviz.demo.smollm2_gguf(), dst, qtype)
    with gguf.read(dst) as f:
        types = {t.name: t.type_name for t in f.tensors}
    assert {types[name] for name in got} == set(got.values())
    if qtype == "Q4_K":  # only ffn_down's 1536-wide rows fit 256-blocks; 576-wide rows fall back to Q5_0
        assert types["blk.0.ffn_down.weight"] == "Q4_K" and types["blk.0.attn_q.weight"] == "Q5_0"
    ppl, answer = run_in_llama_cpp(dst)
    assert answer.strip(), "the model generated nothing"
    print(f"SmolLM2 perplexity: source Q4_1 {base_ppl:.3f}, qviz {qtype} {ppl:.3f}")
    assert abs(ppl - base_ppl) / base_ppl < tolerance
