"""The tutorial notebooks are committed clean and open the same way.

Executing them is ``pytest --nbmake notebooks`` (``make test`` runs it); these
checks are static and take well under a second:

* every notebook is valid nbformat 4 with a ``python3`` kernelspec;
* no code cell carries outputs or an execution count (commit them cleared);
* the first cell is markdown with a Binder badge that opens *this* notebook
  and a one-line ``**Goal:**``;
* every code cell is valid Python (IPython magics aside), so a typo fails
  here in milliseconds rather than minutes into the execution run;
* the numbered lessons the README promises are all there.
"""
from __future__ import annotations

import ast
from pathlib import Path
from urllib.parse import quote

import pytest

nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
BINDER = "https://mybinder.org/v2/gh/qviz/qviz/HEAD?labpath="
LESSONS = [
    "01_quickstart", "02_rtn_and_packing", "03_gguf_k_quants_byte_by_byte", "04_gptq", "05_awq",
    "06_whole_models", "07_your_own_model", "08_the_article", "09_what_q4_k_m_really_is",
    "10_beyond_gguf_fp4_fp8_hqq",
]


def badge(file_name: str) -> str:
    """The Binder link that opens ``notebooks/<file_name>`` in JupyterLab."""
    return f"{BINDER}{quote('notebooks/' + file_name, safe='')}"


def problems(nb, file_name: str) -> list[str]:
    """What is wrong with a notebook, as sentences naming the fix (empty when it is fine)."""
    out = []
    spec = nb.metadata.get("kernelspec", {})
    if spec.get("name") != "python3" or spec.get("language") != "python":
        out.append(f"kernelspec is {spec}; use the python3 kernel")
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    if dirty:
        out.append(f"code cells {dirty} have outputs or execution counts; clear them "
                   f"(jupyter nbconvert --clear-output --inplace {file_name})")
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown":
        out.append("the first cell must be markdown with the Binder badge and the goal")
    else:
        if badge(file_name) not in first.source:
            out.append(f"the first cell needs the Binder badge linking {badge(file_name)}")
        goals = [line for line in first.source.splitlines() if line.startswith("**Goal:**")]
        if len(goals) != 1 or len(goals[0].strip()) <= len("**Goal:**") + 10:
            out.append("the first cell needs exactly one line starting with **Goal:** and saying it")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        try:
            ast.parse(source)
        except SyntaxError as e:
            out.append(f"cell {i} is not valid Python: {e}")
    return out


def test_the_lessons_are_all_there():
    missing = sorted(set(LESSONS) - {p.stem for p in PATHS})
    assert not missing, f"notebooks/ lacks {missing}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert problems(nb, path.name) == []


def _good(file_name: str):
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                               "display_name": "Python 3"}})
    nb.cells = [new_markdown_cell(f"[![Binder](b.svg)]({badge(file_name)})\n\n# T\n\n"
                                  f"**Goal:** learn one precise thing."),
                new_code_cell("%matplotlib inline\nx = 1")]
    return nb


def test_problems_accepts_a_good_notebook():
    assert problems(_good("09_x.ipynb"), "09_x.ipynb") == []


@pytest.mark.parametrize("spoil, expect", [
    (lambda nb: nb.cells[1].outputs.append(new_output("stream", text="hi")), "outputs"),
    (lambda nb: nb.cells[1].update(execution_count=3), "execution counts"),
    (lambda nb: nb.metadata.update(kernelspec={"name": "ir", "language": "R"}), "kernelspec"),
    (lambda nb: nb.cells.pop(0), "first cell must be markdown"),
    (lambda nb: nb.cells[0].update(source=nb.cells[0].source.replace("09_x", "01_quickstart")),
     "Binder badge"),
    (lambda nb: nb.cells[0].update(source=nb.cells[0].source.replace("**Goal:**", "Goal:")), "**Goal:**"),
    (lambda nb: nb.cells[0].update(source=nb.cells[0].source + "\n**Goal:** and another"), "**Goal:**"),
    (lambda nb: nb.cells.append(new_code_cell("def f(:\n    pass")), "not valid Python"),
])
def test_problems_catches_each_defect(spoil, expect):
    nb = _good("09_x.ipynb")
    spoil(nb)
    found = problems(nb, "09_x.ipynb")
    assert len(found) == 1 and expect in found[0], found
