"""llama-quantize's recipes (qviz.gguf.plan / requantize(recipe=...)), without llama.cpp.

The expected types below are llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp of
llama-cpp-python 0.3.36) read by hand for the synthetic model of
:func:`qviz.io.demo.random_llama_gguf`: 8 layers, widths 256/768, 8 query heads and 2 key/value
heads (GQA 4), an untied output, no experts, no imatrix. ``use_more_bits`` picks layers 0, 3, 6
and 7 of 8; "the first 1/8" is layer 0; "the first 1/16" is none. The end-to-end test
(tests/test_gguf_recipes_e2e.py) compares the same against llama.cpp itself.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import qviz
from qviz import registry
from qviz.io import gguf
from qviz.io import gguf_recipes as recipes
from qviz.io.demo import random_llama_gguf

ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
MORE = {0, 3, 6, 7}  # use_more_bits(i, 8)
MID = {1, 2, 3, 4, 5, 6}  # n/8 <= i < 7n/8

# recipe -> (default, token_embd, output, {role: type or {type: layers}})
EXPECTED = {
    "Q1_0": ("Q1_0", "Q1_0", "Q6_K", {}),
    "Q4_0": ("Q4_0", "Q4_0", "Q6_K", {}),
    "Q4_1": ("Q4_1", "Q4_1", "Q6_K", {}),
    "MXFP4_MOE": ("Q8_0", "Q8_0", "Q8_0", {}),  # no 3-D expert tensors: everything Q8_0
    "Q5_0": ("Q5_0", "Q5_0", "Q6_K", {}),
    "Q5_1": ("Q5_1", "Q5_1", "Q6_K", {}),
    "IQ2_XXS": ("IQ2_XXS", "Q2_K", "Q5_K", {"attn_v": "Q4_K", "ffn_down": {"Q2_K": {0}}}),
    "IQ2_XS": ("IQ2_XS", "Q2_K", "Q5_K", {"attn_v": "Q4_K", "ffn_down": {"Q2_K": {0}}}),
    "IQ2_S": ("IQ2_XS", "IQ3_S", "Q5_K", {"attn_v": "Q4_K", "ffn_down": {"IQ3_S": {0}},
                                          "attn_output": "IQ3_S"}),
    "IQ2_M": ("IQ2_S", "IQ3_S", "Q5_K", {"attn_v": "Q4_K", "ffn_down": {"IQ3_S": {0}},
                                         "attn_output": "IQ3_S"}),
    "IQ1_S": ("IQ1_S", "Q2_K", "Q5_K", {"attn_v": "Q4_K", "ffn_down": {"Q2_K": {0}},
                                        "attn_output": "IQ2_XXS"}),
    "IQ1_M": ("IQ1_M", "Q2_K", "Q5_K", {"attn_v": "Q4_K", "ffn_down": {"Q2_K": {0}},
                                        "attn_output": "IQ2_XXS"}),
    "TQ1_0": ("TQ1_0", "Q4_K", "Q6_K", {}),
    "TQ2_0": ("TQ2_0", "Q4_K", "Q6_K", {}),
    "Q2_K": ("Q2_K", "Q2_K", "Q6_K", {"attn_v": "Q4_K", "ffn_down": "Q3_K", "attn_output": "Q3_K"}),
    "Q2_K_S": ("Q2_K", "Q2_K", "Q6_K", {"attn_v": "Q4_K", "ffn_down": {"Q4_K": {0}}}),
    "IQ3_XXS": ("IQ3_XXS", "IQ3_S", "Q5_K", {"attn_v": "Q4_K", "attn_k": "IQ2_S", "attn_q": "IQ2_S",
                                            "ffn_down": {"Q4_K": {0}, "Q3_K": set(range(1, 8))},
                                            "attn_output": "IQ3_S"}),
    "IQ3_S": ("IQ3_S", "IQ3_S", "Q6_K", {"attn_v": "Q4_K"}),
    "IQ3_M": ("IQ3_S", "IQ3_S", "Q6_K", {"attn_v": "Q4_K", "ffn_down": {"Q4_K": {0}}, "attn_output": "Q4_K"}),
    "IQ3_XS": ("IQ3_S", "IQ3_S", "Q6_K", {"attn_v": "Q4_K", "attn_k": "IQ3_XXS", "attn_q": "IQ3_XXS",
                                          "ffn_gate": {"IQ3_XXS": MID}, "ffn_up": {"IQ3_XXS": MID}}),
    "Q3_K_S": ("Q3_K", "Q3_K", "Q6_K", {}),
    "Q3_K_M": ("Q3_K", "Q3_K", "Q6_K", {"attn_v": {"Q5_K": {0, 1}, "Q4_K": set(range(2, 8))},
                                        "ffn_down": "Q4_K", "attn_output": "Q4_K"}),
    "Q3_K_L": ("Q3_K", "Q3_K", "Q6_K", {"attn_v": "Q5_K", "ffn_down": "Q5_K", "attn_output": "Q5_K"}),
    "IQ4_NL": ("IQ4_NL", "IQ4_NL", "Q6_K", {"attn_v": "Q5_K", "ffn_down": {"Q5_K": {0}}}),
    "IQ4_XS": ("IQ4_XS", "IQ4_XS", "Q6_K", {"attn_v": "Q5_K", "ffn_down": {"Q5_K": {0}}}),
    "Q4_K_S": ("Q4_K", "Q4_K", "Q6_K", {"attn_v": {"Q5_K": {0, 1, 2, 3}}, "ffn_down": {"Q5_K": {0}}}),
    "Q4_K_M": ("Q4_K", "Q4_K", "Q6_K", {"attn_v": {"Q6_K": MORE}, "ffn_down": {"Q6_K": MORE}}),
    "Q5_K_S": ("Q5_K", "Q5_K", "Q6_K", {}),
    "Q5_K_M": ("Q5_K", "Q5_K", "Q6_K", {"attn_v": {"Q6_K": MORE}, "ffn_down": {"Q6_K": MORE}}),
    "Q6_K": ("Q6_K", "Q6_K", "Q6_K", {}),
    "Q8_0": ("Q8_0", "Q8_0", "Q8_0", {}),
    "F16": ("F16", "F16", "F16", {}),
    "F32": ("F32", "F32", "F32", {}),
}


def expected_types(recipe: str, n_layer: int = 8) -> dict[str, str]:
    default, embd, output, rules = EXPECTED[recipe]
    out = {"token_embd.weight": embd, "output_norm.weight": "F32", "output.weight": output}
    for i in range(n_layer):
        out[f"blk.{i}.attn_norm.weight"] = out[f"blk.{i}.ffn_norm.weight"] = "F32"
        for role in ROLES:
            rule = rules.get(role, default)
            if isinstance(rule, dict):
                rule = next((t for t, layers in rule.items() if i in layers), default)
            out[f"blk.{i}.{role}.weight"] = rule
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_llama_gguf(tmp_path_factory.mktemp("recipes") / "random-llama.gguf", tokenizer=False)


def test_every_llama_quantize_file_type_is_a_recipe():
    assert set(gguf.RECIPES) == set(EXPECTED)
    import gguf as gguf_py
    names = {f"MOSTLY_{r.name}" if r.name != "F32" else "ALL_F32" for r in gguf.RECIPES.values()}
    assert names <= {m.name for m in gguf_py.LlamaFileType}
    assert {r.file_type for r in gguf.RECIPES.values()} == {int(gguf_py.LlamaFileType[n]) for n in names}


@pytest.mark.parametrize("recipe", list(EXPECTED))
def test_recipe_rules_on_the_synthetic_llama(model, recipe):
    p = gguf.plan(model, recipe)
    want = expected_types(recipe)
    assert set(p.types) == set(want)
    wrong = {n: (p.types[n], want[n], p[n].why) for n in want if p.types[n] != want[n]}
    assert not wrong, f"{recipe}: (qviz, llama.cpp as read, why) {wrong}"
    assert p.recipe.file_type == gguf.RECIPES[recipe].file_type


def test_why_is_said_in_words(model):
    p = gguf.plan(model, "Q4_K_M")
    assert p["blk.0.attn_v.weight"].why == "attn_v #0 in the first 1/8 of 8 → Q6_K"
    assert "last 1/8" in p["blk.7.ffn_down.weight"].why
    assert p["blk.1.attn_q.weight"].why == "default Q4_K"
    assert p["blk.0.attn_norm.weight"].why == "kept: 1-D" and not p["blk.0.attn_norm.weight"].converted
    assert p["output.weight"].why == "output → Q6_K"
    text, page = repr(p), p._repr_html_()
    assert text.startswith("Q4_K_M (file type 15): 75 tensors") and "first 1/8" in text
    assert "<table>" in page and "blk.7.ffn_down.weight" in page


def test_sizes_and_bits(model):
    p = gguf.plan(model, "Q4_K_M")
    assert p["blk.0.attn_q.weight"].nbytes == 256 * 256 // 256 * 144
    assert p["blk.0.attn_q.weight"].bits_per_weight == 4.5
    n = sum(r.n_elements for r in p)
    assert p.total_bytes == sum(r.nbytes for r in p) and p.bits_per_weight == p.total_bytes * 8 / n
    assert p.counts() == {"F32": 17, "Q4_K": 49, "Q6_K": 9}


def test_gqa_and_layer_count_change_the_rules(tmp_path):
    path = random_llama_gguf(tmp_path / "mha.gguf", n_layer=16, n_head=8, n_head_kv=8, tokenizer=False)
    p = gguf.plan(path, "Q2_K")
    assert p.types["blk.0.attn_v.weight"] == "Q3_K"  # GQA 1: Q3_K (GQA >= 4: Q4_K)
    q = gguf.plan(path, "Q3_K_M")  # 16 layers: the first 1/16 (layer 0) of ffn_down gets Q5_K
    assert q.types["blk.0.ffn_down.weight"] == "Q5_K" and q.types["blk.1.ffn_down.weight"] == "Q4_K"
    k = gguf.plan(path, "IQ4_XS")  # GQA 1: attn_v keeps the default; ffn_down of layers 0-1 (1/8 of 16) Q5_K
    assert k.types["blk.0.attn_v.weight"] == "IQ4_XS"
    assert [k.types[f"blk.{i}.ffn_down.weight"] for i in range(3)] == ["Q5_K", "Q5_K", "IQ4_XS"]


def test_tied_embeddings_follow_the_output_rule(tmp_path):
    path = random_llama_gguf(tmp_path / "tied.gguf", n_layer=2, tied=True, tokenizer=False)
    p = gguf.plan(path, "Q4_K_M")
    assert p.types["token_embd.weight"] == "Q6_K" and "tied" in p["token_embd.weight"].why
    assert gguf.plan(path, "Q4_K_M", output_tensor_type="Q8_0").types["token_embd.weight"] == "Q8_0"


def test_smollm2_fallbacks():
    src = qviz.demo.smollm2_gguf()
    p = gguf.plan(src, "Q4_K_M")
    q = p["blk.1.attn_q.weight"]
    assert (q.type, q.why) == ("Q5_0", "default Q4_K; rows of 576 not divisible by 256 → Q5_0 (fallback)")
    v = p["blk.0.attn_v.weight"]  # use_more_bits -> Q6_K, whose block does not divide 576 -> Q8_0
    assert v.type == "Q8_0" and "→ Q6_K" in v.why and "Q8_0 (fallback)" in v.why
    assert p.types["blk.0.ffn_down.weight"] == "Q6_K" and p.types["blk.3.ffn_down.weight"] == "Q4_K"
    e = p["token_embd.weight"]  # tied; Q8_0 already: copied unchanged, as llama.cpp does
    assert (e.type, e.converted) == ("Q8_0", False) and "copied" in e.why
    assert p.n_fallback == 30 * 6 and p.counts()["Q5_0"] == 166
    assert gguf.plan(src, "IQ4_XS").types["blk.0.attn_q.weight"] == "IQ4_NL"
    assert gguf.plan(src, "Q5_K_S").types["blk.0.attn_q.weight"] == "Q5_1"
    assert gguf.plan(src, "Q2_K").types["blk.0.attn_q.weight"] == "Q4_0"


#: llama.cpp's ``tensor_type_fallback`` (llama-quant.cpp, llama-cpp-python 0.3.36), which the plans follow
LLAMA_CPP_FALLBACKS = {"IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL",
                       "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
                       "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
                       "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def test_registry_fallbacks_agree_with_llama_cpp():
    for name, t in registry.types().items():
        assert t.fallback == LLAMA_CPP_FALLBACKS.get(name), name


def test_pure(model):
    p = gguf.plan(model, "Q4_K_M", pure=True)
    quantized = {t for n, t in p.types.items() if not n.endswith("norm.weight")}
    assert quantized == {"Q4_K"}
    assert p["blk.0.attn_v.weight"].why == "pure: Q4_K"


def test_output_and_token_embedding_types(model):
    p = gguf.plan(model, "Q4_K_M", output_tensor_type="q8_0", token_embedding_type="Q5_K")
    assert p.types["output.weight"] == "Q8_0" and p.types["token_embd.weight"] == "Q5_K"
    assert p.options["output_tensor_type"] == "Q8_0"


def test_leave_output_tensor(model):
    p = gguf.plan(model, "Q4_K_M", leave_output_tensor=True)
    assert p.types["output.weight"] == "F32" and not p["output.weight"].converted


def test_tensor_types_are_regexes_and_skip_the_counters(model):
    p = gguf.plan(model, "Q3_K_M", tensor_types={r"blk\.0\.attn_v": "Q8_0", "FFN_UP": "q6_k"})
    assert p.types["blk.0.attn_v.weight"] == "Q8_0"
    assert "tensor_types" in p["blk.0.attn_v.weight"].why
    # blk.0's attn_v was decided by the pattern, so blk.1 and blk.2 are the first two llama.cpp counts
    assert [p.types[f"blk.{i}.attn_v.weight"] for i in range(4)] == ["Q8_0", "Q5_K", "Q5_K", "Q4_K"]
    assert {p.types[f"blk.{i}.ffn_up.weight"] for i in range(8)} == {"Q6_K"}  # lowercased, searched
    same = gguf.plan(model, "Q3_K_M", tensor_types=[r"blk\.0\.attn_v=Q8_0", "ffn_up=Q6_K"])
    assert same.types == p.types


def test_imatrix_changes_the_rules(model):
    assert gguf.plan(model, "IQ4_XS").types["blk.0.ffn_down.weight"] == "Q5_K"
    assert gguf.plan(model, "IQ4_XS", imatrix={}).types["blk.0.ffn_down.weight"] == "IQ4_XS"
    assert gguf.plan(model, "Q4_0", imatrix={}).types["blk.0.ffn_down.weight"] == "Q4_1"
    assert gguf.plan(model, "Q4_0").types["blk.0.ffn_down.weight"] == "Q4_0"


def test_needs_imatrix(model):
    p = gguf.plan(model, "Q2_K_S")
    assert "blk.1.ffn_up.weight" in p.needs_imatrix and "output.weight" not in p.needs_imatrix
    assert not gguf.plan(model, "Q2_K").needs_imatrix


def test_requantize_writes_the_plan(model, tmp_path):
    dst = tmp_path / "q4km.gguf"
    got = gguf.requantize(model, dst, "Q4_K_M")
    p = gguf.plan(model, "Q4_K_M")
    assert dict(got) == p.types
    with gguf.read(dst) as f:
        assert f.metadata["general.file_type"] == 15
        assert {t.name: t.type_name for t in f.tensors} == p.types
        assert sum(t.n_bytes for t in f.tensors) == p.total_bytes
        w = f.decode("blk.1.attn_q.weight")
    with gguf.read(model) as f:  # the bytes are qviz.quantize's
        ref = qviz.quantize(f.decode("blk.1.attn_q.weight"), "Q4_K").packed
    with gguf.read(dst) as f:
        assert np.array_equal(f.tensor_bytes("blk.1.attn_q.weight").reshape(ref.shape), ref)
    assert w.shape == (256, 256)


def test_a_recipe_named_like_a_type(model, tmp_path):
    one = gguf.requantize(model, tmp_path / "a.gguf", "Q8_0")  # a type: every weight matrix Q8_0
    mix = gguf.requantize(model, tmp_path / "b.gguf", recipe="Q6_K")
    assert one["output.weight"] == "Q8_0" and mix["output.weight"] == "Q6_K"
    assert gguf.requantize(model, tmp_path / "c.gguf", recipe="q4_k")["blk.0.attn_v.weight"] == "Q6_K"
    with gguf.read(tmp_path / "b.gguf") as f:
        assert f.metadata["general.file_type"] == 18


def test_requantize_refuses_quantized_sources_unless_allowed(tmp_path):
    dst = tmp_path / "s.gguf"
    with pytest.raises(ValueError, match=r"already quantized \(Q4_1\).*allow_requantize=True"):
        gguf.requantize(qviz.demo.smollm2_gguf(), dst, "Q4_K_M")
    assert not dst.exists() and not list(tmp_path.iterdir())


def test_imatrix_path(model, tmp_path):
    dst = tmp_path / "x.gguf"
    with pytest.raises(FileNotFoundError, match="no-such.imatrix"):
        gguf.requantize(model, dst, "Q4_K_M", imatrix=tmp_path / "no-such.imatrix")
    assert not dst.exists()
    imatrix = pytest.importorskip("qviz.io.imatrix")
    rng = np.random.default_rng(0)
    with gguf.read(model) as f:
        vectors = {t.name: rng.uniform(0.1, 2, t.shape[-1]).astype(np.float32)
                   for t in f.tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    imatrix.write_imatrix(tmp_path / "m.gguf", vectors)
    a = gguf.requantize(model, tmp_path / "a.gguf", recipe="Q4_0", imatrix=tmp_path / "m.gguf")
    b = gguf.requantize(model, tmp_path / "b.gguf", recipe="Q4_0", imatrix=vectors)
    assert dict(a) == dict(b) and a["blk.0.ffn_down.weight"] == "Q4_1"
    with gguf.read(tmp_path / "a.gguf") as fa, gguf.read(tmp_path / "b.gguf") as fb:
        for t in fa.tensors:
            assert np.array_equal(fa.tensor_bytes(t.name), fb.tensor_bytes(t.name)), t.name


def test_bad_recipe_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown recipe 'Q4_K_X'; did you mean 'Q4_K_S' or 'Q4_K_M'.*"
                                         r"valid recipes: Q1_0, Q4_0"):
        gguf.plan(qviz.demo.smollm2_gguf(), "Q4_K_X")
    with pytest.raises(ValueError, match=r"unknown type 'Q4_K_MM'.*or the llama-quantize recipe 'Q4_K_M'"):
        gguf.requantize(qviz.demo.smollm2_gguf(), "/nonexistent/x.gguf", "Q4_K_MM")


def test_bad_options(model, tmp_path):
    with pytest.raises(ValueError, match=r"tensor_types\['attn_v'\]: unknown ggml type 'Q9_K'"):
        gguf.plan(model, "Q4_K_M", tensor_types={"attn_v": "Q9_K"})
    with pytest.raises(ValueError, match=r"'blk\.\(' is not a regular expression"):
        gguf.plan(model, "Q4_K_M", tensor_types={"blk.(": "Q8_0"})
    with pytest.raises(ValueError, match="not PATTERN=TYPE"):
        gguf.plan(model, "Q4_K_M", tensor_types=["attn_v"])
    with pytest.raises(ValueError, match=r"output_tensor_type: unknown ggml type 'Q4_X'"):
        gguf.plan(model, "Q4_K_M", output_tensor_type="Q4_X")
    with pytest.raises(ValueError, match=r"token_embedding_type='Q6_K'.*rows of 576"):
        gguf.plan(qviz.demo.smollm2_gguf(), "Q4_K_M", token_embedding_type="Q6_K")
    with pytest.raises(ValueError, match="not both"):
        gguf.requantize(model, tmp_path / "x.gguf", "Q4_K", recipe="Q4_K_M")
    with pytest.raises(ValueError, match="pure apply to a llama-quantize recipe"):
        gguf.requantize(model, tmp_path / "x.gguf", "Q4_K", pure=True)
    with pytest.raises(TypeError, match="needs types= .* or recipe="):
        gguf.requantize(model, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match=r"'blk\.0\.attn_q\.weight' becomes IQ2_XXS.*importance matrix"):
        gguf.requantize(model, tmp_path / "x.gguf", recipe="IQ2_XXS")
    with pytest.raises(ValueError, match=r"becomes Q2_K.*importance matrix"):
        gguf.requantize(model, tmp_path / "x.gguf", "Q2_K_S")
    assert not list(tmp_path.iterdir())


def test_q1_0_has_no_fallback():
    with pytest.raises(ValueError, match=r"rows of 576 .* Q1_0's block of 128.*no fallback"):
        gguf.plan(qviz.demo.smollm2_gguf(), "Q1_0")


def test_llama_order_and_categories():
    assert recipes.category("blk.0.attn_qkv.weight") == "attn_qkv"
    assert recipes.category("blk.0.ffn_gate_exps.weight") == "ffn_gate"
    assert recipes.category("per_layer_token_embd.weight") == "token_embd"
    assert [i for i in range(30) if recipes.use_more_bits(i, 30)][:6] == [0, 1, 2, 5, 8, 11]
    assert os.fspath(qviz.demo.smollm2_gguf()).endswith(".gguf")


def test_allow_requantize_is_moot_with_types_and_a_type_named_like_a_recipe_points_to_recipe(tmp_path):
    import gguf as gguf_py

    src = tmp_path / "w.gguf"
    w = gguf_py.GGUFWriter(str(src), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.ones((4, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    done = qviz.gguf.requantize(src, tmp_path / "a.gguf", "Q8_0", allow_requantize=True)
    assert done == {"blk.0.attn_q.weight": "Q8_0"}
    with pytest.raises(ValueError, match=r"pure apply to a llama-quantize recipe.*pass recipe='Q8_0'"):
        qviz.gguf.requantize(src, tmp_path / "b.gguf", "Q8_0", pure=True)
    assert not (tmp_path / "b.gguf").exists()
