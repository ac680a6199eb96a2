"""qviz.explore and qviz.compare, headless: set widget values from Python, read fig.data and the panels."""
import base64
import json

import numpy as np
import pytest

import qviz
from qviz import session
from qviz.summary import weight_stats
from qviz.widgets.compare import compare
from qviz.widgets.explore import VIEWS, explore


@pytest.fixture(scope="module")
def w():
    """Real MiniLM weight, rows a multiple of 256: encoder.layer.0.output.dense (384, 1536)."""
    return qviz.demo.layer("encoder.layer.0.output.dense")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).standard_normal((64, 1536)).astype(np.float32)


@pytest.fixture(scope="module")
def ex(w, x):
    return explore(w, calib=x)


def _sent(view) -> list[dict]:
    """The traces a FigureView last sent to the browser (its synced JSON), arrays decoded."""
    def decode(v):
        if isinstance(v, dict) and "bdata" in v:
            return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        return v

    return [{k: decode(v) for k, v in t.items()} for t in json.loads(view._spec)["data"]]


def _visible(ex):
    return {k for k, c in ex.controls.items() if c.layout.display != "none"}


def test_method_widget_updates_every_view_in_place(ex):
    assert ex.setting.label == "RTN 4-bit g128" and "given activations (64 samples)" in ex.header.value
    figures = dict(ex.figures)
    before = {k: _sent(f) for k, f in figures.items()}
    ex.controls["method"].value = "Q4_K"
    assert ex.result.method == "Q4_K" and ex.message.value == ""
    assert "4.5 bits per weight" in ex.metrics.value and "relative output error" in ex.metrics.value
    for name in VIEWS:
        assert ex.figures[name] is figures[name]  # the same widget, redrawn
        sent = _sent(ex.figures[name])
        assert [t.get("name") for t in sent] == [t.name for t in ex.figures[name].data]
        assert [t.get("name") for t in sent] == [t.get("name") for t in before[name]]  # same traces
        assert ex.view_messages[name].value == ""
    np.testing.assert_array_equal(ex.figures["weights"].data[1].y, ex.summary.dequant_hist.counts)
    np.testing.assert_array_equal(_sent(ex.figures["weights"])[1]["y"], ex.summary.dequant_hist.counts)
    assert not np.array_equal(_sent(ex.figures["weights"])[1]["y"], before["weights"][1]["y"])
    assert not np.array_equal(_sent(ex.figures["errors"])[0]["z"], before["errors"][0]["z"])
    levels = ex.result.levels(ex.row, ex.group)
    np.testing.assert_array_equal(np.array(ex.figures["weights"].data[2].x[::3], float), levels)


def test_controls_shown_follow_the_method(ex):
    ex.controls["method"].value = "Q8_0"
    assert {"method", "imatrix", "rotate", "row", "group"} == _visible(ex)
    ex.controls["method"].value = "rtn"
    assert {"bits", "group_size", "sym", "per_tensor"} <= _visible(ex) and "damp" not in _visible(ex)
    ex.controls["bits"].value = 3
    assert ex.result.bits == 3 and "3.148 bits per weight" in ex.metrics.value
    labels = dict((v, k) for k, v in ex.controls["method"].options)
    assert {"RTN", "GPTQ", "Q4_K", "IQ4_NL"} <= set(labels.values())
    assert set(labels) == set(qviz.method_names())  # every registered method is offered


def test_rotate_switch_quantizes_the_rotated_weight_and_shows_it(ex):
    ex.controls["method"].value = "rtn"
    plain = ex.summary
    ex.controls["rotate"].value = True
    r = ex.result
    assert r.rotation is not None and r.rotation.n_cols == ex.layer.shape[1]
    assert ex.summary.metrics["weight_crest"] < plain.metrics["weight_crest"]  # the outliers spread out
    assert "after the Hadamard rotation" in ex.metrics.value
    assert ex.figures["weights"].layout.title.text.startswith("Rotated weights W·R")
    np.testing.assert_array_equal(ex.summary.weight_hist.counts,
                                  weight_stats(r.rotation.apply(ex.layer.weight)).hist.counts)
    assert abs(ex.summary.metrics["sqnr_db"] - plain.metrics["sqnr_db"]) < 3  # same bits, similar error
    ex.controls["rotate"].value = False
    assert ex.result.rotation is None


def test_cached_setting_is_not_quantized_again(ex, monkeypatch):
    ex.controls["method"].value = "Q5_K"
    first = ex.summary
    ex.controls["method"].value = "Q8_0"
    monkeypatch.setattr(session, "quantize_setting", lambda *a: pytest.fail("quantized twice"))
    ex.controls["method"].value = "Q5_K"
    assert ex.summary is first


def test_imatrix_toggle_uses_the_activations(ex, w, x):
    ex.controls["method"].value = "Q4_K"
    ex.controls["imatrix"].value = True
    want = qviz.quantize(w, "Q4_K", imatrix=qviz.imatrix(x))
    np.testing.assert_array_equal(ex.result.packed, want.packed)
    assert ex.setting.label == "Q4_K imatrix"
    ex.controls["imatrix"].value = False


def test_k_quant_on_384_wide_rows_shows_the_fallback():
    ex = explore(qviz.demo.layer("encoder.layer.0.intermediate.dense"), calib=np.ones((4, 384), np.float32),
                 method="Q4_K")
    assert ex.result.method == "Q5_0"
    assert "Q4_K → Q5_0 for 384-wide rows" in ex.message.value
    assert all(m.value == "" for m in ex.view_messages.values())


def test_gptq_with_given_calib(w, x):
    ex = explore(w[:64], calib=x, method="gptq", bits=3, act_order=True)
    assert ex.result.method == "gptq" and ex.result.g_idx is not None
    assert {"act_order", "damp", "bits", "group_size"} <= _visible(ex)
    ref = qviz.quantize(w[:64], "gptq", bits=3, act_order=True, calib=x)
    np.testing.assert_array_equal(ex.result.codes, ref.codes)
    assert "relative output error" in ex.metrics.value


def test_a_failing_view_leaves_the_others_alive(w, x, monkeypatch):
    from qviz.plots import layer as layer_plots

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(layer_plots, "error_map", broken)
    ex = explore(w, calib=x)
    assert "RuntimeError: boom" in ex.view_messages["errors"].value
    assert len(ex.figures["errors"].data) == 0
    old = ex.figures["weights"].data[1].y
    ex.controls["method"].value = "Q8_0"
    assert "boom" in ex.view_messages["errors"].value
    assert all(ex.view_messages[v].value == "" for v in VIEWS if v != "errors")
    assert not np.array_equal(ex.figures["weights"].data[1].y, old) and "8.5 bits" in ex.metrics.value
    monkeypatch.undo()
    ex.controls["method"].value = "Q4_0"  # the view recovers at the next update
    assert ex.view_messages["errors"].value == "" and len(ex.figures["errors"].data) == 2


def test_bad_setting_is_a_message(w):
    c = compare(w[:32], ["Q8_0"])  # no setting needs activations: the layer has none
    assert c.layer.x is None
    ex = c.show(0)
    ex.controls["method"].value = "gptq"
    assert "needs calibration activations" in ex.message.value and "Q8_0" in ex.message.value
    assert ex.result.method == "Q8_0"  # the figures still show the last good setting
    ex.controls["method"].value = "rtn"
    ex.controls["group_size"].value = -1
    assert ex.message.value == "" and ex.result.group_size == 1536


def test_select_and_heatmap_click(ex):
    ex.controls["method"].value = "Q4_K"
    ex.select(5, 17)
    assert (ex.controls["row"].value, ex.controls["group"].value) == (5, 17)
    assert ex.figures["errors"].data[1].x == (17,) and "Row 5, group 17" in ex.figures["group"].layout.title.text
    with pytest.raises(IndexError):
        ex.select(384, 0)
    heat = ex.figures["errors"].data[0]
    y0, x0 = int(heat.y[100]), int(heat.x[30])  # a (pooled) cell: rows 200-201, group 30
    # what the browser sends for a click on that cell (figure.js)
    ex.figures["errors"]._on_message(None, {"kind": "click", "trace": 0, "index": [100, 30],
                                            "x": x0, "y": y0}, [])
    block = ex.summary.group_error[y0:y0 + 2, x0:x0 + 1]
    r, c = np.unravel_index(block.argmax(), block.shape)
    assert (ex.row, ex.group) == (y0 + r, x0 + c)
    ex.controls["row"].value = 3
    assert ex.row == 3 and "Row 3" in ex.figures["group"].layout.title.text


def test_kinds_of_objects(w, x):
    import torch

    lin = torch.nn.Linear(256, 8)
    assert explore(lin, calib=x[:, :256]).layer.shape == (8, 256)
    assert explore(lin.weight.detach(), calib=x[:, :256], method="Q8_0").result.method == "Q8_0"
    model = torch.nn.Sequential(torch.nn.Linear(256, 16), torch.nn.ReLU())
    ex = explore((model, "0"), calib=x[:, :256])
    assert ex.layer.name == "0" and ex.layer.shape == (16, 256)
    r = qviz.quantize(w[:16], "rtn", bits=3, group_size=64)
    bare = explore(r)
    assert bare.result is r and "without its original weight" in bare.message.value
    assert _visible(bare) == {"method", "row", "group"} and bare.children[1].layout.display == "none"
    full = explore(r, weight=w[:16], calib=x)
    assert full.result is r and full.controls["bits"].value == 3 and full.controls["group_size"].value == 64
    assert full.summary.metrics["mse"] > 0


def test_gguf_tensor():
    path = qviz.demo.smollm2_gguf()
    ex = explore((path, "blk.0.attn_k.weight"))
    stored = qviz.gguf.read(path).tensor("blk.0.attn_k.weight").type_name
    assert ex.result.method == stored and ex.summary.metrics["max_abs_error"] == 0.0
    assert stored in ex.layer.name and ex.controls["method"].value == stored


def test_default_activations_say_which(monkeypatch, rng):
    ex = explore(rng.standard_normal((8, 64)).astype(np.float32))
    assert "random-normal activations (128 × 64" in ex.header.value
    real = np.ones((5, 1536), np.float32)
    monkeypatch.setattr(session, "_minilm_inputs", lambda: {"encoder.layer.0.output.dense": real})
    ex = explore("encoder.layer.0.output.dense", method="Q8_0")
    assert ex.layer.x.shape == (5, 1536) and "real inputs of this MiniLM layer" in ex.header.value
    # the very array qviz.demo.layer returned is recognised too
    assert explore(qviz.demo.layer("encoder.layer.0.output.dense"), method="Q8_0").layer.x is not None
    assert session._demo_name(qviz.demo.layer("encoder.layer.0.output.dense")) == "encoder.layer.0.output.dense"


def test_bad_objects_and_options(w):
    w = w.copy()  # not the bundled array: no MiniLM activations are captured for it
    for bad in (42, [1.0, 2.0], {"w": 1}, ("model.gguf", 3)):
        with pytest.raises(TypeError, match=r"nn\.Linear.*QuantResult.*gguf_path"):
            explore(bad)
    with pytest.raises(ValueError, match="2-D"):
        explore(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="need a method="):
        explore(w, bits=3)
    with pytest.raises(TypeError, match="takes no option.*its options are: group_size"):
        explore(w, method="nf4", bits=3)
    with pytest.raises(ValueError, match="unknown method 'Q4_X'"):
        explore(w, method="Q4_X")
    with pytest.raises(ValueError, match="384 × 1536|1536"):
        explore(w, calib=np.ones((4, 10), np.float32))


def test_compare_one_point_per_setting_and_click_opens_explore(w, x):
    methods = ["Q4_K", "Q8_0", ("rtn", {"bits": 3, "group_size": 64}), ("rtn", {"bits": 9})]
    c = compare(w, methods, calib=x)
    assert [s.label for s in c.settings][:3] == ["Q4_K", "Q8_0", "RTN 3-bit g64"]
    points = c.figure.data[0]
    assert len(points.x) == 3 and c.points == [0, 1, 2]  # the failing 9-bit setting has no point
    assert "bits=9" in c.table.value and c.table.value.count("<tr>") == 5
    np.testing.assert_allclose(points.x, [4.5, 8.5, qviz.quantize(w, "rtn", bits=3, group_size=64).bits_per_weight])
    want = [c.outcomes[i].metrics["relative_output_error"] for i in range(3)]
    np.testing.assert_allclose(points.y, want)
    c.figure._on_message(None, {"kind": "click", "trace": 0, "index": 1, "x": points.x[1],
                                "y": points.y[1]}, [])
    assert c.explorer is not None and c.explorer.result is c.outcomes[1].result  # shared cache
    assert c.detail.children[1] is c.explorer


def test_compare_without_activations_ranks_by_mse(w):
    c = compare(w[:64], ["Q8_0", "Q4_0"])
    assert c.layer.x is None and "MSE" in c.figure.layout.yaxis.title.text
    with pytest.raises(TypeError, match="list of method names"):
        compare(w, "Q4_K")
    with pytest.raises(ValueError, match="empty"):
        compare(w, [])
    with pytest.raises(TypeError, match="a setting is a method name"):
        compare(w, [3])
