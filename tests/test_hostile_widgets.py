"""Issue 12, the explorers as a hostile user drives them.

Item 10: an exception in any observer or click callback (explore, compare,
explore_gguf) is a message in the widget, which keeps working. Item 11: a dask
worker that dies mid-scan loses no finished cell; a cluster that cannot finish
says a worker died and keeps what was done. Item 13 (explorer part): option
values are checked by the registry at each explorer's public boundary, with
the message qviz.quantize gives.
"""
import os

import gguf
import numpy as np
import pytest

import qviz
from qviz import registry, session
from qviz.session import Setting
from qviz.widgets import controls
from qviz.widgets import explore as explore_module
from qviz.widgets.compare import compare
from qviz.widgets.explore import VIEWS, Explorer, explore
from qviz.widgets.gguf_file import explore_gguf
from qviz.widgets.scan import MEASURES, ScanIncomplete, scan

BITS_9 = "bits=9: choose an integer from 2 to 8"  # qviz.quantize's own message


@pytest.fixture(scope="module")
def w():
    return np.random.default_rng(0).standard_normal((32, 512)).astype(np.float32)


# ------------------------------------------------------------------ item 10: errors stay in the widget

@pytest.fixture(scope="module")
def undecodable(tmp_path_factory):
    """A GGUF file with a Q8_K and a Q8_1 tensor (random bytes: types qviz neither quantizes nor
    gguf-py decodes) beside a plain F32 matrix."""
    path = tmp_path_factory.mktemp("gguf") / "q8k.gguf"
    rng = np.random.default_rng(1)
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, kind in (("q8k.weight", gguf.GGMLQuantizationType.Q8_K),
                       ("q81.weight", gguf.GGMLQuantizationType.Q8_1)):
        block, size = gguf.GGML_QUANT_SIZES[kind]
        writer.add_tensor(name, rng.integers(0, 256, (4, 256 // block * size), dtype=np.uint8),
                          raw_dtype=kind)
    writer.add_tensor("plain.weight", rng.standard_normal((8, 256)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_explorer_shows_an_undecodable_type_and_keeps_working(undecodable):
    ex = explore_gguf(undecodable, tensor="plain.weight", type="Q4_0")
    assert ex.message.value == "" and "4.5 bits per weight (Q4_0)" in ex.metrics.value
    ex.tensors.value = "q8k.weight"
    assert "Q8_K, which gguf-py cannot decode" in ex.message.value
    assert len(ex.blocks.data) == 0 and len(ex.histogram.data) == 0 and ex.metrics.value == ""
    ex.type.value = "Q8_0"  # raised NotImplementedError out of the observer before
    assert "NotImplementedError" in ex.message.value and "Q8_K" in ex.message.value
    assert len(ex.histogram.data) == 0 and ex.metrics.value == ""  # nothing stale left on show
    ex.tensors.value = "q81.weight"
    ex.type.value = "Q4_K"
    assert "Q8_1, which gguf-py cannot decode" in ex.message.value
    ex.tensors.value = "plain.weight"  # the next good pick renders
    assert ex.message.value == "" and "8.5 bits per weight (Q8_0)" not in ex.metrics.value
    assert "4.5 bits per weight (Q4_K)" in ex.metrics.value and len(ex.histogram.data) == 3
    # starting on such a tensor is a message too, not an exception
    first = explore_gguf(undecodable, tensor="q8k.weight")
    assert "cannot decode" in first.message.value and len(first.histogram.data) == 0
    first.tensors.value = "plain.weight"
    assert first.message.value == "" and "bits per weight (Q4_K)" in first.metrics.value


def test_gguf_requantize_failure_keeps_the_stored_blocks(undecodable, monkeypatch):
    ex = explore_gguf(undecodable, tensor="plain.weight")
    blocks = ex.blocks.figure
    monkeypatch.setattr(ex.views, "requantized", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    ex.type.value = "Q6_K"
    assert "RuntimeError: boom" in ex.message.value
    assert ex.blocks.figure is blocks and len(ex.histogram.data) == 0 and ex.metrics.value == ""
    monkeypatch.undo()
    ex.type.value = "Q8_0"
    assert ex.message.value == "" and "8.5 bits per weight (Q8_0)" in ex.metrics.value


def test_explore_callbacks_show_errors_and_recover(w, monkeypatch):
    ex = explore(w, calib=np.ones((4, 512), np.float32))
    good = ex.summary

    def broken(*args, **kwargs):
        raise RuntimeError("summary exploded")

    monkeypatch.setattr(session.Layer, "summary", broken)
    ex.controls["method"].value = "Q8_0"  # a failure outside the setting's own checks
    assert "RuntimeError: summary exploded" in ex.message.value and "Q8_0" in ex.message.value
    assert ex.summary is good and "still show RTN 4-bit g128" in ex.message.value
    monkeypatch.undo()
    monkeypatch.setattr(explore_module, "worst_in_block", broken)
    heat = ex.figures["errors"].data[0]
    ex.figures["errors"]._on_message(None, {"kind": "click", "trace": 0, "index": [0, 0],
                                            "x": int(heat.x[0]), "y": int(heat.y[0])}, [])
    assert "summary exploded" in ex.message.value  # a click callback: shown, not raised
    monkeypatch.setattr(explore_module.Explorer, "select", broken)
    ex.controls["row"].value = 3  # the selection observer
    assert "summary exploded" in ex.message.value
    monkeypatch.undo()
    ex.controls["method"].value = "Q4_0"  # the next good change renders
    assert ex.message.value == "" and ex.result.method == "Q4_0" and "4.5 bits per weight" in ex.metrics.value
    assert all(ex.view_messages[v].value == "" for v in VIEWS)
    ex.controls["row"].value = 5
    assert ex.row == 5 and "Row 5" in ex.figures["group"].layout.title.text


def test_compare_click_shows_errors_and_recovers(w, monkeypatch):
    c = compare(w, ["Q8_0", "Q4_0"])
    points = c.figure.data[0]

    def broken(*args, **kwargs):
        raise RuntimeError("explorer exploded")

    click = {"kind": "click", "trace": 0, "index": 1, "x": points.x[1], "y": points.y[1]}
    monkeypatch.setattr("qviz.widgets.compare.Explorer", broken)
    c.figure._on_message(None, click, [])
    assert "RuntimeError: explorer exploded" in c.message.value and c.explorer is None
    monkeypatch.undo()
    c.figure._on_message(None, click, [])
    assert c.message.value == "" and c.explorer.result.method == "Q4_0"


def test_shows_errors_is_one_shared_guard():
    class Widget:
        shown = None

        def show_error(self, text):
            self.shown = text

        @controls.shows_errors
        def on_change(self, change):
            if change is None:
                raise KeyError("missing")
            return change

    widget = Widget()
    assert widget.on_change(3) == 3 and widget.shown is None
    assert widget.on_change(None) is None and widget.shown == "KeyError: 'missing'"
    assert Widget.on_change.__name__ == "on_change"
    # every observer and click callback of the explorers goes through it
    from qviz.widgets import compare as compare_module, gguf_file

    for cls, names in ((Explorer, ("_on_setting", "_on_select", "_on_heatmap_click", "_update")),
                       (compare_module.Comparison, ("_on_click",)),
                       (gguf_file.GGUFExplorer, ("_on_filter", "_on_tensor", "_on_type"))):
        for name in names:
            assert getattr(cls, name).__wrapped__, (cls, name)


# ------------------------------------------------------------------ item 13: options checked at the boundary

def test_explore_refuses_out_of_range_options_with_the_registry_message(w):
    with pytest.raises(ValueError) as e:
        explore(w, method="rtn", bits=9)  # was TraitError: Invalid selection
    assert str(e.value) == BITS_9
    with pytest.raises(ValueError, match="bits=1: choose an integer from 2 to 8"):
        explore(w, method="kmeans", bits=1)
    with pytest.raises(ValueError, match="n_init=0: choose an integer from 1"):
        explore(w, method="kmeans", n_init=0)
    with pytest.raises(TypeError, match="sym='yes' must be True or False"):
        explore(w, method="rtn", sym="yes")
    with pytest.raises(TypeError, match=r"imatrix is on or off here \(got ndarray\): pass imatrix=True"):
        explore(w, method="Q4_K", imatrix=np.ones(512))
    with pytest.raises(ValueError, match=BITS_9):  # the widget class itself, as compare.show builds it
        Explorer(session.resolve(w)[0], Setting.of(("rtn", {"bits": 9})))
    assert Setting.of(("rtn", {"bits": np.int64(3)})).check().kwargs["bits"] == 3


def test_explore_slider_holds_the_value_given(w):
    x = np.random.default_rng(2).standard_normal((64, 512)).astype(np.float32)
    ex = explore(w, calib=x, method="gptq", damp=5.0)  # the slider ended at 1 and clamped it
    assert ex.controls["damp"].value == 5.0 and ex.setting.kwargs["damp"] == 5.0
    with pytest.raises(ValueError, match="damp=0.0: the explorer's slider shows only values above 0"):
        explore(w, calib=x, method="gptq", damp=0.0)


def test_compare_names_the_bad_option_and_show_refuses_it(w):
    c = compare(w, ["Q8_0", ("rtn", {"bits": 9})])
    assert BITS_9 in c.table.value and c.points == [0]  # a row's message, as the report shows it
    with pytest.raises(ValueError, match=BITS_9):
        c.show(1)


def test_scan_checks_options_before_any_cell_runs(w, monkeypatch):
    from qviz.widgets import scan as scan_module

    monkeypatch.setattr(scan_module, "measure", lambda *a: pytest.fail("a cell ran"))
    for bad, err, match in ((("rtn", {"bits": 9}), ValueError, BITS_9),
                            (("kmeans", {"n_init": 0}), ValueError, "n_init=0"),
                            (("rtn", {"sym": 1}), TypeError, "sym=1 must be True or False")):
        with pytest.raises(err, match=match):
            scan({"w": w}, ["Q8_0", bad], progress=False)


# ------------------------------------------------------------------ item 11: a worker dies mid-scan

# Layer 0 (32 rows) is the one the "crash" methods kill their worker on: it is the first cell
# sent, so the cells still waiting on its scattered weight are lost with the worker.
LAYERS = {f"l{i}": np.random.default_rng(i).standard_normal((32 if i == 0 else 64, 256)).astype(np.float32)
          for i in range(4)}
SETTINGS = ["crash_once", "crash_always", ("rtn", {"bits": 4}), "Q8_0"]


def _crash_methods(marker: str):
    """Methods that kill their worker (``os._exit``) when they run layer 0, else are RTN 4-bit:
    "crash_once" the first time only (``marker``, a file, says it happened), "crash_always" each time."""
    def crash_once(w):
        import os

        if w.shape[0] == 32:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # only the first caller dies
                os._exit(1)
            except FileExistsError:
                pass
        return qviz.quantize(w, "rtn", bits=4)

    def crash_always(w):
        import os

        if w.shape[0] == 32:
            os._exit(1)
        return qviz.quantize(w, "rtn", bits=4)

    return [registry.Method("crash_once", "crash once", crash_once),
            registry.Method("crash_always", "crash always", crash_always)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """2 worker processes of 1 thread on 127.0.0.1, with the crash methods registered on every
    worker (also those the nannies restart) and here. A task may kill its worker once before the
    scheduler gives up on it (allowed-failures 1, not 3: fewer worker restarts to wait for)."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    methods = _crash_methods(str(tmp_path_factory.mktemp("crash") / "died"))

    class Register(distributed.WorkerPlugin):
        def setup(self, worker):
            from qviz import registry

            for m in methods:
                registry.register_method(m, replace=True)

    for m in methods:
        registry.register_method(m, replace=True)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.register_plugin(Register(), name="qviz-crash-methods")
        yield client
    for m in methods:
        registry.unregister(m.name)


def _assert_cells_equal(got, cells):
    """The cells (i, j) of ``got``, a scan of [a crash method, *SETTINGS[2:]], are the local scan's:
    a crash method that returns is RTN 4-bit."""
    want = scan(LAYERS, SETTINGS[2:], progress=False)
    for i, j in cells:
        k = max(j - 1, 0)
        assert got.types[i][j] == want.types[i][k], (i, j)
        for m in MEASURES[:4]:
            assert getattr(got, m)[i, j] == getattr(want, m)[i, k], (i, j, m)


def test_a_worker_killed_mid_scan_loses_no_cell(cluster):
    client = cluster
    client.wait_for_workers(2)
    pids = set(client.run(os.getpid).values())
    s = scan(LAYERS, [SETTINGS[0], *SETTINGS[2:]], client=client, progress=False)  # was FutureCancelledError
    client.wait_for_workers(2)
    assert not pids <= set(client.run(os.getpid).values())  # a worker did die (its nanny restarted it)
    assert not np.isnan(s.mse).any() and s.notes == ()
    _assert_cells_equal(s, [(i, j) for i in range(4) for j in range(3)])


def test_a_cluster_that_cannot_finish_says_a_worker_died_and_keeps_the_rest(cluster):
    client = cluster
    with pytest.raises(ScanIncomplete, match="a dask worker died") as e:
        scan(LAYERS, [SETTINGS[1], *SETTINGS[2:]], client=client, progress=False)
    partial = e.value.result
    assert ("l0", "crash always") in e.value.lost
    lost = {(LAYERS_INDEX[n], partial.settings.index(lab)) for n, lab in e.value.lost}
    done = {(i, j) for i in range(4) for j in range(3)} - lost
    assert len(done) >= 8  # only the crashing cell and any that shared its worker's last moments
    _assert_cells_equal(partial, done)
    for i, j in lost:
        assert np.isnan(partial.mse[i, j]) and partial.types[i][j] == ""
    assert any("l0 × crash always: lost, a dask worker died" in n for n in partial.notes)
    # the cluster is still usable afterwards
    again = scan(LAYERS, SETTINGS[2:], client=client, progress=False)
    assert not np.isnan(again.mse).any()


LAYERS_INDEX = {name: i for i, name in enumerate(LAYERS)}
