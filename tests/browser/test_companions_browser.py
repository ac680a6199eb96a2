"""qviz.explore_gguf and qviz.compare in a real browser (JupyterLab 4, headless Chromium).

The GGUF explorer opens the bundled SmolLM2 file: both figures draw, and picking
another type to requantize to redraws the histogram and the panel. compare draws
its Pareto plot; clicking a point opens that setting's explorer below it.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("anywidget", reason="qviz's figures are anywidgets")

#: ms to wait for a redraw after a control change
REDRAW_MS = 60_000
GGUF_CELL = "import qviz\nqviz.explore_gguf()"
COMPARE_CELL = ('import qviz\nw = qviz.demo.layer("encoder.layer.0.output.dense")\n'
                'qviz.compare(w, ["Q4_K", "Q8_0", ("rtn", {"bits": 3})])')
#: the GGUF explorer's histogram says how many levels the requantized group has
LEVELS_JS = """(n) => Array.from(document.querySelectorAll('.qviz-gguf .js-plotly-plot .gtitle'))
                           .some(t => t.textContent.includes(n + ' levels'))"""
#: its first figure is the file's recipe: the type of every weight matrix by layer and role
RECIPE_JS = """() => Array.from(document.querySelectorAll('.qviz-gguf .js-plotly-plot .gtitle'))
                       .some(t => t.textContent.includes('The recipe of'))"""


def _panel_shows(page, root: str, text: str) -> None:
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll('{root} .widget-html-content'))
                                       .some(e => e.innerText.includes({text!r}))""", timeout=REDRAW_MS)


def test_gguf_explorer_requantizes(lab_server, page, artifacts_dir, write_notebook, run_notebook):
    write_notebook(lab_server.root / "gguf.ipynb", [GGUF_CELL])
    run_notebook(page, lab_server, "/lab/tree/gguf.ipynb?reset", ".qviz-gguf .js-plotly-plot")
    page.wait_for_function("() => document.querySelectorAll('.qviz-gguf svg.main-svg').length >= 2",
                           timeout=REDRAW_MS)
    page.wait_for_function(RECIPE_JS, timeout=REDRAW_MS)
    _panel_shows(page, ".qviz-gguf", "4.5 bits per weight")  # the default: requantize to Q4_K
    page.wait_for_function(LEVELS_JS, arg=16, timeout=REDRAW_MS)
    page.locator(".qviz-gguf select").last.select_option(label="Q8_0")
    _panel_shows(page, ".qviz-gguf", "8.5 bits per weight")
    page.wait_for_function(LEVELS_JS, arg=256, timeout=REDRAW_MS)
    page.screenshot(path=str(artifacts_dir / "lab_gguf.png"), full_page=True)
    assert not [e for e in page.errors if "widget" in e.lower()]


def test_compare_click_opens_an_explorer(lab_server, page, artifacts_dir, write_notebook, run_notebook):
    write_notebook(lab_server.root / "compare.ipynb", [COMPARE_CELL])
    run_notebook(page, lab_server, "/lab/tree/compare.ipynb?reset", ".qviz-compare .js-plotly-plot")
    point = page.locator(".qviz-compare .js-plotly-plot .scatterlayer .point").first
    point.wait_for(timeout=REDRAW_MS)
    assert page.locator(".qviz-compare .qviz-explore").count() == 0
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector(".qviz-compare .qviz-explore .qviz-view-weights svg.main-svg", timeout=REDRAW_MS)
    page.screenshot(path=str(artifacts_dir / "lab_compare.png"), full_page=True)
    assert not [e for e in page.errors if "widget" in e.lower()]
