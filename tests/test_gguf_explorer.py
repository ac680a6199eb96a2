"""explore_gguf, headless: the table, the stored block parameters read from the raw bytes,
the requantize panel against qviz.quantize + metrics, fallbacks, and errors shown in the widget."""
import html

import gguf
import numpy as np
import pytest

import qviz
from qviz.io.gguf import GGUFError
from qviz.widgets.gguf_file import CACHE_SIZE, explore_gguf


@pytest.fixture(scope="module")
def smollm2():
    return explore_gguf()


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A little GGUF: a Q8_0 matrix, an F32 matrix, a 48-wide matrix, and a norm."""
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 256)).astype(np.float32)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("q8.weight", qviz.quantize(w, "Q8_0").packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("plain.weight", w)
    writer.add_tensor("narrow.weight", rng.standard_normal((4, 48)).astype(np.float32))
    writer.add_tensor("norm.weight", np.ones(256, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _z(trace):
    return np.asarray(trace.z, dtype=np.float64)


def test_table_lists_every_tensor_with_type_shape_bpw_and_size(smollm2):
    f = smollm2.views.f
    assert [name for _, name in smollm2.tensors.options] == [t.name for t in f.tensors]
    label = dict((n, lab) for lab, n in smollm2.tensors.options)["blk.0.ffn_down.weight"]
    assert label.split() == ["blk.0.ffn_down.weight", "Q4_1", "576", "×", "1536", "5.000", "bpw",
                             "540.0", "KiB"]
    assert smollm2.tensors.value == "blk.0.ffn_down.weight"  # first block matrix under 4M weights
    assert "272 tensors" in smollm2.children[1].value


def test_block_parameters_are_the_stored_bytes(smollm2):
    smollm2.tensors.value = "blk.0.ffn_down.weight"
    raw = smollm2.views.f.raw("blk.0.ffn_down.weight").reshape(576, 48, 20)  # block_q4_1: d, m, qs[16]
    d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
    m = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    scales, mins = smollm2.blocks.data  # 576 × 48 groups, drawn as means of 3 rows (≤ 256 cells)
    # rtol 1e-6: a float32 mean of three values, summed in another order
    np.testing.assert_allclose(_z(scales), d.reshape(192, 3, 48).mean(axis=1), rtol=1e-6)
    # QuantResult's min is subtracted: d·q − (−m)
    np.testing.assert_allclose(_z(mins), -m.reshape(192, 3, 48).mean(axis=1), rtol=1e-6)
    assert list(scales.y[:2]) == [0, 3] and list(scales.x[:2]) == [0, 1]


def test_requantize_panel_is_quantize_and_metrics(smollm2):
    name = "blk.0.ffn_down.weight"
    smollm2.tensors.value = name
    w = gguf.quants.dequantize(smollm2.views.f.raw(name), gguf.GGMLQuantizationType.Q4_1)
    for type_name, bpw in (("Q8_0", "8.5"), ("Q4_K", "4.5")):
        smollm2.type.value = type_name
        w_hat = qviz.quantize(w, type_name).dequantize()
        text = smollm2.metrics.value
        assert f"{bpw} bits per weight ({type_name})" in text
        assert f"{qviz.metrics.mse(w, w_hat):.4g}" in text
        assert f"{qviz.metrics.sqnr_db(w, w_hat):.4g} dB" in text
        assert "→" not in text.split("</p>", 1)[1]  # no fallback note
    weights, dequantized, levels = smollm2.histogram.data
    assert np.sum(weights.y) == np.sum(dequantized.y) == w.size
    assert len(levels.x) == 3 * 16  # 16 levels of a Q4_K group, 3 points per line


def test_fallback_is_named(smollm2):
    smollm2.tensors.value = "blk.0.attn_q.weight"  # 576 wide: no K-quant block fits
    smollm2.type.value = "Q4_K"
    assert "Q4_K → Q5_0 for 576-wide rows" in smollm2.metrics.value
    assert "5.5 bits per weight (Q5_0)" in smollm2.metrics.value
    assert smollm2.message.value == ""


def test_errors_show_inside_the_widget(small_file):
    ex = explore_gguf(small_file, tensor="narrow.weight", type="Q6_K")
    # 48 columns: neither Q6_K nor its fallback Q8_0 fits
    assert "keeps such tensors in F16" in ex.message.value and ex.metrics.value == ""
    assert len(ex.histogram.data) == 0
    ex.type.value = "Q4_0"  # 48 % 32 != 0 either
    assert "Q4_0 needs rows that are a multiple of its block size 32" in ex.message.value
    ex.tensors.value = "norm.weight"
    assert "1-D" in ex.message.value and len(ex.blocks.data) == 0
    ex.tensors.value = "plain.weight"
    assert "no block scales" in ex.blocks.layout.title.text and ex.message.value == ""
    assert "4.5 bits per weight (Q4_0)" in ex.metrics.value
    ex.tensors.value = "q8.weight"
    assert [t.type for t in ex.blocks.data] == ["heatmap", "heatmap"]
    ex.filter.value = "zzz"
    assert "no tensor name contains &#x27;zzz&#x27;" in ex.message.value  # HTML-escaped
    ex.filter.value = "weight"
    assert len(ex.tensors.options) == 4


def test_filter_and_cache(smollm2):
    smollm2.filter.value = "blk.3."
    assert {n.split(".")[1] for _, n in smollm2.tensors.options} == {"3"}
    for _, name in list(smollm2.tensors.options)[:6]:
        smollm2.tensors.value = name
    assert len(smollm2.views._stored) <= CACHE_SIZE
    smollm2.filter.value = ""


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        explore_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(GGUFError, match="not a GGUF file"):
        explore_gguf(bad)
    with pytest.raises(KeyError, match="closest: blk.0.attn_q.weight"):
        explore_gguf(tensor="blk.0.attn_qq.weight")
    with pytest.raises(ValueError, match="unknown GGUF type 'Q7_K'"):
        explore_gguf(type="Q7_K")


def test_the_file_recipe_is_drawn_by_layer_and_role(smollm2):
    heat = smollm2.recipe.data[0]
    f = smollm2.views.f
    roles = list(heat.y)
    assert "attn_v" in roles and "ffn_down" in roles and len(heat.x) == 30
    for t in f.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            _, layer, role, _ = t.name.split(".")
            assert heat.text[roles.index(role)][list(heat.x).index(int(layer))] == t.type_name
    assert "token_embd" in smollm2.recipe.layout.title.text


def test_an_imatrix_weights_requantizing_and_is_drawn(tmp_path):
    f = qviz.gguf.read(qviz.demo.smollm2_gguf())
    name = "blk.0.ffn_down.weight"
    n_cols = f.tensor(name).shape[-1]
    im = {name: np.random.default_rng(0).uniform(0.01, 5, n_cols).astype(np.float32)}
    path = tmp_path / "imatrix.gguf"
    qviz.gguf.write_imatrix(path, im)
    ex = explore_gguf(path=None, tensor=name, type="IQ2_XXS", imatrix=path)  # IQ2_XXS needs one
    assert ex.message.value == "" and "IQ2_XXS" in ex.metrics.value
    assert ex._importance_box.layout.display == "" and list(ex.importance.data[0].y) == im[name].tolist()
    w = ex.views.stored(name).weight
    want = qviz.quantize(w, "IQ2_XXS", imatrix=im[name])
    assert np.array_equal(ex.views.requantized(name, "IQ2_XXS").summary.result.packed, want.packed)
    ex.tensors.value = "blk.1.ffn_down.weight"  # no entry: no weighting drawn, and IQ2_XXS refuses
    assert ex._importance_box.layout.display == "none"
    assert "needs an importance matrix" in ex.message.value
    with pytest.raises(ValueError, match="blk.0.ffn_dow.weight"):
        explore_gguf(imatrix={"blk.0.ffn_dow.weight": im[name]})


def test_a_recipe_plan_is_drawn_and_picks_each_tensors_type():
    ex = explore_gguf(tensor="blk.0.attn_v.weight", recipe="Q4_K_M")
    plan = ex.plan
    assert plan.recipe.name == "Q4_K_M" and "Q4_K_M for" in ex.recipe.layout.title.text
    heat = ex.recipe.data[0]
    roles, layers = list(heat.y), list(heat.x)
    for r in plan.rows:
        if r.name.startswith("blk.") and len(r.shape) == 2:
            _, layer, role, _ = r.name.split(".")
            assert heat.text[roles.index(role)][layers.index(int(layer))] == r.type
    assert ex.type.value == plan["blk.0.attn_v.weight"].type
    assert "Q4_K_M gives it" in ex.tensor_info.value and html.escape(plan["blk.0.attn_v.weight"].why) in \
        ex.tensor_info.value
    ex.tensors.value = "blk.5.ffn_up.weight"
    assert ex.type.value == plan["blk.5.ffn_up.weight"].type and ex.message.value == ""
    assert f"({plan['blk.5.ffn_up.weight'].type})" in ex.metrics.value
    with pytest.raises(ValueError, match="Q4_K_MM"):
        explore_gguf(recipe="Q4_K_MM")
    with pytest.raises(TypeError, match="recipe must be a recipe name"):
        explore_gguf(recipe=3)
