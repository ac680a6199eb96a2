"""qviz.report and ``python -m qviz report``: one self-contained HTML page."""
from html.parser import HTMLParser

import numpy as np
import pytest

import qviz
from qviz.__main__ import main, parse_setting
from qviz.html_report import report

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "embed", "source", "track", "wbr"}


class _Balance(HTMLParser):
    """Checks that every opened element is closed, in order (a well-formed page)."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)
        self.scripts += tag == "script"

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _check_page(text: str) -> _Balance:
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    p = _Balance()
    p.feed(text)
    assert p.errors == [] and p.stack == []
    return p


def test_report_is_one_valid_self_contained_page(tmp_path, rng):
    w = rng.standard_normal((64, 512)).astype(np.float32)
    path = report(w, tmp_path / "r.html", ["Q8_0", ("rtn", {"bits": 3}), ("rtn", {"bits": 11})],
                  title="test <page>")
    text = path.read_text(encoding="utf-8")
    _check_page(text)
    assert text.count("plotly.js v") == 1  # the library is embedded once ...
    assert text.count("Plotly.newPlot(") == 1 + 2 * 5  # ... for the Pareto plot and 5 figures per setting
    assert "test &lt;page&gt;" in text and "8.5 bits per weight" in text and "bits=11" in text
    assert "<script src=" not in text  # nothing to fetch when opened offline
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temporary file left


def test_report_of_a_result_includes_it(tmp_path, rng):
    w = rng.standard_normal((16, 256)).astype(np.float32)
    r = qviz.quantize(w, "Q4_K")
    text = report(r, tmp_path / "r.html", ["Q8_0"], weight=w).read_text()
    assert text.index("<h2>Q4_K</h2>") < text.index("<h2>Q8_0</h2>")


def test_report_refuses_bad_input(tmp_path, rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report(w, tmp_path / "missing" / "r.html", ["Q8_0"])
    with pytest.raises(TypeError, match="list of method names"):
        report(w, tmp_path / "r.html", "Q8_0")
    with pytest.raises(TypeError, match="cannot explore a int"):
        report(3, tmp_path / "r.html", ["Q8_0"])
    assert list(tmp_path.iterdir()) == []


def test_command_line_writes_the_minilm_report(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--out", str(out), "--methods", "Q8_0,rtn:bits=3:group_size=64"]) == 0
    text = out.read_text()
    _check_page(text)
    assert "encoder.layer.0.output.dense" in text and "RTN 3-bit g64" in text
    assert f"wrote {out}" in capsys.readouterr().out


def test_parse_setting():
    assert parse_setting("Q4_K") == "Q4_K"
    assert parse_setting("rtn:bits=3:sym=true:damp=0.1") == ("rtn", {"bits": 3, "sym": True, "damp": 0.1})
    with pytest.raises(Exception, match="key=value"):
        parse_setting("rtn:bits")
