"""scan: every cell against a direct measurement, calibration from a real model, a 2-worker dask cluster."""
import numpy as np
import pytest

import qviz
from qviz.widgets.scan import MEASURES, scan

LAYERS = ["encoder.layer.0.attention.self.query",   # 384 × 384
          "encoder.layer.0.output.dense",           # 384 × 1536: K-quants fit
          "encoder.layer.1.attention.output.dense"]  # 384 × 384
SETTINGS = ["Q4_K", "Q8_0", ("rtn", {"bits": 4, "group_size": 128}), ("rtn", {"bits": 3, "sym": True})]


@pytest.fixture(scope="module")
def weights():
    return {n: qviz.demo.layer(n) for n in LAYERS}


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 in torch and 48 tokens of pydoc prose (the default calibration text)."""
    from pydoc_data.topics import topics
    from transformers import AutoModel, AutoTokenizer

    path = qviz.demo.minilm_dir()
    model = AutoModel.from_pretrained(path).eval()
    tokens = AutoTokenizer.from_pretrained(path)(topics["assert"], return_tensors="pt",
                                                 truncation=True, max_length=48)
    return model, tokens


def _direct(w, method, options, x=None):
    """The oracle of one cell: qviz.quantize and qviz.metrics, called by hand."""
    r = qviz.quantize(w, method, **options)
    w_hat = r.dequantize()
    out = {"type": r.method, "bits_per_weight": r.bits_per_weight, "mse": qviz.metrics.mse(w, w_hat),
           "sqnr_db": qviz.metrics.sqnr_db(w, w_hat), "max_abs_error": qviz.metrics.max_abs_error(w, w_hat)}
    if x is not None:
        out["relative_output_error"] = qviz.metrics.relative_output_error(w, w_hat, x)
    return out


def test_every_cell_is_the_direct_measurement(weights):
    s = scan(weights, SETTINGS, progress=False)
    assert s.layers == LAYERS and s.settings == ["Q4_K", "Q8_0", "RTN 4-bit g128", "RTN 3-bit g128 sym"]
    assert s.metric == "sqnr_db" and s.relative_output_error is None and s.values is s.sqnr_db
    for i, name in enumerate(LAYERS):
        w = weights[name]
        for j, (method, options) in enumerate([("Q4_K", {"fallback": True}), ("Q8_0", {}),
                                               ("rtn", SETTINGS[2][1]), ("rtn", SETTINGS[3][1])]):
            want = _direct(w, method, options)
            assert s.types[i][j] == want["type"]
            for m in MEASURES[:4]:
                assert getattr(s, m)[i, j] == want[m], (name, method, m)
    # 384-wide rows fall back from Q4_K to Q5_0 (llama-quantize), 1536-wide ones keep it
    assert [row[0] for row in s.types] == ["Q5_0", "Q4_K", "Q5_0"]
    assert s.bits_per_weight[1, 0] == 4.5 and s.bits_per_weight[0, 0] == 5.5
    table = s.table()
    assert len(table) == 12 and table[4]["layer"] == LAYERS[1] and table[4]["setting"] == "Q4_K"


def test_calibration_from_a_real_model(minilm):
    import torch

    model, tokens = minilm
    settings = ["Q4_0", ("gptq", {"bits": 4, "group_size": 128})]
    s = scan(model, settings, calib=tokens, layers=["encoder.layer.0.attention.self.*"], progress=False)
    assert s.layers == [f"encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value")]
    assert s.metric == "relative_output_error"
    # the oracle's activations, recorded with a plain forward hook
    modules, seen = dict(model.named_modules()), {}
    hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0][0].numpy()))
             for n in s.layers]
    with torch.no_grad():
        model(**tokens)
    for h in hooks:
        h.remove()
    for i, name in enumerate(s.layers):
        w, x = modules[name].weight.detach().numpy(), seen[name]
        assert x.shape == (tokens["input_ids"].shape[1], 384)
        q4 = _direct(w, "Q4_0", {}, x)
        assert s.relative_output_error[i, 0] == q4["relative_output_error"]
        gptq = _direct(w, "gptq", {"bits": 4, "group_size": 128, "calib": x}, x)  # GPTQ gets the inputs
        assert s.relative_output_error[i, 1] == pytest.approx(gptq["relative_output_error"], rel=1e-6)
        assert s.relative_output_error[i, 1] < s.relative_output_error[i, 0]  # GPTQ's point


def test_dask_cluster_gives_the_local_result(weights):
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(0)
    calib = {n: rng.standard_normal((32, w.shape[1])).astype(np.float32) for n, w in weights.items()}
    local = scan(weights, SETTINGS, calib=calib, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = scan(weights, SETTINGS, client=client, calib=calib, progress=False)
        assert set(client.has_what()) and len(client.scheduler_info()["workers"]) == 2
        # an error in a task reaches the caller as itself (bad options are refused before any task)
        zeros = {n: np.zeros((4, w.shape[1]), np.float32) for n, w in weights.items()}
        with pytest.raises(ValueError, match="W·Xᵀ is all zero"):
            scan(weights, ["Q8_0"], client=client, calib=zeros, progress=False)
    assert remote.types == local.types and remote.layers == local.layers
    for m in MEASURES:
        np.testing.assert_array_equal(getattr(remote, m), getattr(local, m))


def test_cells_a_type_cannot_store_are_skipped_with_a_note():
    w = {"narrow": np.ones((2, 48), np.float32), "wide": np.ones((2, 256), np.float32)}
    s = scan(w, ["Q6_K", "Q4_0", "rtn"], progress=False)
    assert s.types == [["", "", "rtn"], ["Q6_K", "Q4_0", "rtn"]]
    assert np.isnan(s.sqnr_db[0, :2]).all() and not np.isnan(s.bits_per_weight[1]).any()
    assert len(s.notes) == 2 and "narrow × Q6_K" in s.notes[0] and "F16" in s.notes[0]


def test_imatrix_setting_uses_the_layer_inputs(weights):
    name = LAYERS[1]
    x = np.random.default_rng(1).standard_normal((16, 1536)).astype(np.float32)
    s = scan({name: weights[name]}, [("Q4_K", {"imatrix": True})], calib={name: x}, progress=False)
    want = _direct(weights[name], "Q4_K", {"imatrix": qviz.imatrix(x)}, x)
    assert s.settings == ["Q4_K imatrix"] and s.mse[0, 0] == want["mse"]
    assert s.relative_output_error[0, 0] == want["relative_output_error"]


def test_heatmap_widget(weights):
    from qviz.widgets.figure import FigureView

    s = scan(weights, SETTINGS[:2], progress=False)
    fig = s.widget()
    assert isinstance(fig, FigureView) and fig.data[0].type == "heatmap"
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=float), s.sqnr_db)
    assert list(fig.data[0].y) == LAYERS and list(fig.data[0].x) == s.settings
    rng = np.random.default_rng(0)
    calib = {n: rng.standard_normal((8, w.shape[1])).astype(np.float32) for n, w in weights.items()}
    err = scan(weights, SETTINGS[:2], calib=calib, progress=False).widget()
    np.testing.assert_allclose(np.asarray(err.data[0].z, dtype=float),
                               np.log10(scan(weights, SETTINGS[:2], calib=calib, progress=False).values))


def test_bad_input(weights):
    for bad in ([], "Q4_K", ("Q4_K",), None):
        with pytest.raises(TypeError, match="settings must be a non-empty list"):
            scan(weights, bad)
    # the registry's error: the unknown name, the closest names, then every valid one
    with pytest.raises(ValueError, match="unknown method 'Q7_K'; did you mean 'Q6_K'.* valid methods: rtn, gptq"):
        scan(weights, ["Q4_K", "Q7_K"])
    with pytest.raises(TypeError, match=r"pair \(method, options dict\)"):
        scan(weights, [("rtn", 4)])
    with pytest.raises(ValueError, match="settings repeat"):
        scan(weights, ["Q8_0", "Q8_0"])
    with pytest.raises(TypeError, match="dask.distributed.Client"):
        scan(weights, ["Q8_0"], client="tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="matches none"):
        scan(weights, ["Q8_0"], layers="decoder.*")
    with pytest.raises(ValueError, match="unknown names"):
        scan(weights, ["Q8_0"], calib={"nope": np.ones((4, 384), np.float32)})
    with pytest.raises(ValueError, match="has 10 columns but the weight has 384"):
        scan(weights, ["Q8_0"], calib={LAYERS[0]: np.ones((4, 10), np.float32)})
    with pytest.raises(TypeError, match="torch module or a mapping"):
        scan(np.ones((4, 32), np.float32), ["Q8_0"])
    with pytest.raises(TypeError, match="takes no option"):
        scan(weights, [("Q8_0", {"bits": 4})], progress=False)
    with pytest.raises(ValueError, match="GPTQ 4-bit g128 needs each layer's inputs"):
        scan(weights, ["Q8_0", "gptq"], progress=False)
