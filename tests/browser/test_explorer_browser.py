"""qviz.explore in a real browser: JupyterLab 4, Notebook 7 and Voila, headless Chromium.

The notebook explores a real MiniLM layer (384 × 1536: Q4_K's 256-weight blocks
fit its rows). The test runs it, waits for the plots, switches the method from
RTN to Q4_K and checks that the histogram's traces changed and the metrics
panel reads 4.5 bits per weight. Screenshots go to the artifacts folder; Voila's
one of the whole explorer is also copied to docs/explorer.png for the README.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("anywidget", reason="plotly's FigureWidget needs anywidget")

REPO = Path(__file__).resolve().parents[2]
CELL = 'import qviz\nqviz.explore(qviz.demo.layer("encoder.layer.0.output.dense"))'
EXPLORER = ".qviz-explore"
PLOT = f"{EXPLORER} .qviz-view-weights .js-plotly-plot"
METHOD = f"{EXPLORER} .qviz-controls .widget-dropdown select"  # the first control: method
#: ms to wait for the kernel (imports numpy, numba, plotly; quantizes) and for redraws
KERNEL_MS, REDRAW_MS = 120_000, 60_000


#: the weights histogram's traces as the browser holds them (plotly keeps them on its graph div;
#: numeric arrays arrive base64-encoded, {dtype, bdata}, and stay so in ``data``)
TRACES_JS = f"""JSON.stringify(document.querySelector('{PLOT}').data.map(t => [t.name, t.x, t.y]))"""


#: views whose figure sticks out of its cell, or whose cell sticks out of the explorer's container
#: (a plot drawn at plotly's 700 px default before the page laid it out is clipped)
CLIPPED_JS = f"""() => {{
    const outer = document.querySelector('{EXPLORER}').parentElement.getBoundingClientRect();
    return Array.from(document.querySelectorAll('{EXPLORER} [class*="qviz-view-"]')).filter(cell => {{
        const box = cell.getBoundingClientRect();
        const svg = cell.querySelector('svg.main-svg').getBoundingClientRect();
        return box.right > outer.right + 1 || svg.right > box.right + 1;
    }}).map(cell => cell.className);
}}"""


def _traces(page) -> str:
    return page.evaluate(f"() => {TRACES_JS}")


def _metrics_show(page, text: str) -> None:
    page.wait_for_function(
        f"""() => {{ const m = document.querySelector('{EXPLORER} .qviz-metrics');
                     return !!m && m.innerText.includes({text!r}); }}""", timeout=REDRAW_MS)


def _switch_to_q4_k(page, artifacts, prefix: str) -> None:
    page.wait_for_selector(f"{PLOT} svg.main-svg", timeout=KERNEL_MS)
    _metrics_show(page, "bits per weight (rtn)")
    # the plot's div exists before the widget has sent its traces
    page.wait_for_function(f"() => {TRACES_JS}.includes('\"levels\"')", timeout=REDRAW_MS)
    before = _traces(page)
    assert '"weights"' in before and '"dequantized"' in before
    page.screenshot(path=str(artifacts / f"{prefix}_rtn.png"), full_page=True)
    method = page.locator(METHOD).first
    assert method.input_value() == "RTN"  # ipywidgets 8 options carry their labels
    method.select_option(label="Q4_K")
    _metrics_show(page, "4.5 bits per weight (Q4_K)")
    page.wait_for_function(f"(before) => {TRACES_JS} !== before", arg=before, timeout=REDRAW_MS)
    after = _traces(page)
    assert after != before and '"dequantized"' in after
    # the last view drawn follows too: Q4_K's groups are 32-weight sub-blocks (RTN's were 128)
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll(
        '{EXPLORER} .qviz-view-group .gtitle')).some(t => t.textContent.includes('32 weights'))""",
                           timeout=REDRAW_MS)
    assert page.evaluate(CLIPPED_JS) == []
    # a click on the error map selects the worst group of the clicked cell
    group_title = f"{EXPLORER} .qviz-view-group .gtitle"
    title = page.locator(group_title).first.text_content()
    page.locator(f"{EXPLORER} .qviz-view-errors .nsewdrag").first.click(position={"x": 200, "y": 60})
    page.wait_for_function(f"""(before) => {{ const t = document.querySelector('{group_title}');
                                             return !!t && t.textContent !== before; }}""",
                           arg=title, timeout=REDRAW_MS)
    page.mouse.move(0, 0)  # no hover label left in the screenshots


def _run_and_switch(page, srv, path: str, artifacts, prefix: str, run_notebook) -> None:
    """Open the notebook at ``path`` in JupyterLab or Notebook 7, run it, switch to Q4_K."""
    run_notebook(page, srv, path, PLOT)
    _switch_to_q4_k(page, artifacts, prefix)
    page.locator(".jp-OutputArea-output").last.screenshot(path=str(artifacts / f"{prefix}_explore_q4_k.png"))
    page.screenshot(path=str(artifacts / f"{prefix}_full.png"))
    widget_errors = [e for e in page.errors if "widget" in e.lower()]
    assert not widget_errors, widget_errors


def test_explore_in_jupyterlab(lab_server, page, artifacts_dir, write_notebook, run_notebook):
    write_notebook(lab_server.root / "explore.ipynb", [CELL])
    _run_and_switch(page, lab_server, "/lab/tree/explore.ipynb?reset", artifacts_dir, "lab", run_notebook)


def test_explore_in_notebook_7(notebook_server, page, artifacts_dir, write_notebook, run_notebook):
    write_notebook(notebook_server.root / "explore.ipynb", [CELL])
    _run_and_switch(page, notebook_server, "/notebooks/explore.ipynb", artifacts_dir, "notebook",
                    run_notebook)


def test_explore_in_voila(voila_server, tmp_path, page, artifacts_dir, write_notebook):
    srv = voila_server(write_notebook(tmp_path / "explore.ipynb", [CELL]))
    page.goto(srv.url("/"), wait_until="domcontentloaded")
    _switch_to_q4_k(page, artifacts_dir, "voila")
    shot = artifacts_dir / "voila_explore_q4_k.png"
    page.locator(EXPLORER).first.screenshot(path=str(shot))  # the page scrolls: all of it
    (REPO / "docs").mkdir(exist_ok=True)
    shutil.copyfile(shot, REPO / "docs" / "explorer.png")
