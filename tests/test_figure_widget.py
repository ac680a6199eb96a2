"""FigureView, headless: what it syncs to the browser and how it answers the browser's messages.

The browser side (figure.js drawing, redrawing and sending clicks) runs in
tests/browser/test_explorer_browser.py.
"""
import base64
import json

import numpy as np
import plotly.graph_objects as go
import pytest

from qviz.widgets import figure
from qviz.widgets.figure import FigureView


def _decode(v):
    return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]) if isinstance(v, dict) else v


def test_draw_syncs_the_figure_without_a_template():
    counts = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    fig = go.Figure(go.Bar(name="counts", x=np.arange(5) * 0.5, y=counts), layout={"title": {"text": "t"}})
    view = FigureView(fig)
    sent = json.loads(view._spec)
    assert "template" not in sent["layout"] and sent["layout"]["title"]["text"] == "t"
    assert sent["data"][0]["name"] == "counts" and sent["data"][0]["type"] == "bar"
    np.testing.assert_array_equal(_decode(sent["data"][0]["y"]), counts)
    np.testing.assert_array_equal(_decode(sent["data"][0]["x"]), np.arange(5) * 0.5)
    assert view.figure is fig and view.data[0].name == "counts" and view.layout.title.text == "t"
    # the one template every view applies in the browser
    assert json.loads(view._template)["layout"]["plot_bgcolor"] == "white"
    assert fig.layout.template.layout.plot_bgcolor != "white"  # the caller's figure is untouched


def test_redraw_replaces_and_clear_keeps_a_title():
    view = FigureView(go.Figure(go.Scatter(x=[1], y=[2])))
    view.draw(go.Figure([go.Heatmap(z=[[1, 2]]), go.Scatter(x=[0], y=[0])]))
    assert [t["type"] for t in json.loads(view._spec)["data"]] == ["heatmap", "scatter"]
    view.clear("nothing to draw")
    sent = json.loads(view._spec)
    assert sent["data"] == [] and sent["layout"]["title"]["text"] == "nothing to draw"


def test_draw_refuses_what_is_not_a_figure():
    view = FigureView()
    with pytest.raises(TypeError, match="go.Figure, not dict"):
        view.draw({"data": []})
    assert view._spec == ""  # nothing was sent


def test_plotly_js_is_sent_once_asked(monkeypatch):
    view = FigureView()
    sent = []
    monkeypatch.setattr(view, "send", lambda content, buffers=None: sent.append((content, buffers)))
    view._on_message(view, {"kind": "something else"}, [])
    assert sent == []
    view._on_message(view, {"kind": "plotly.js?"}, [])
    (content, buffers), = sent
    assert content == {"kind": "plotly.js"}
    assert buffers[0] == figure.PLOTLY_JS.read_bytes() and b"plotly.js v" in buffers[0][:200]


def test_clicks_reach_every_callback():
    view = FigureView(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
    got = []
    view.on_click(lambda *args: got.append(("a", *args)))
    view.on_click(lambda *args: got.append(("b", *args)))
    view._on_message(view, {"kind": "click", "trace": 0, "index": 1, "x": 2, "y": 4}, [])
    view._on_message(view, "not a dict", [])
    assert got == [("a", 0, 1, 2, 4), ("b", 0, 1, 2, 4)]


def test_the_front_end_ships_with_the_package():
    js = FigureView._esm
    text = js if isinstance(js, str) else str(js)
    assert "Plotly.react" in text and "plotly.js?" in text and "export default" in text
