"""The package's seams: no private name crosses a module boundary.

A name with a leading underscore is private to the module that defines it. This
walks every module of ``qviz/`` with :mod:`ast` and fails on ``from qviz.X import
_name``, on ``import qviz.X._mod`` / ``from qviz.X import _mod`` and on attribute
access ``module._name`` where ``module`` is another qviz module imported by name.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qviz

ROOT = Path(qviz.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def crossings(source: str, here: str) -> list[str]:
    """Every private name of another qviz module that module ``here`` (its ``source``) uses."""
    tree = ast.parse(source)
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "qviz":
            if any(_private(p) for p in node.module.split(".")):
                found.append(f"{here}:{node.lineno}: from {node.module} import …")
            for a in node.names:
                if _private(a.name) and node.module != here:
                    found.append(f"{here}:{node.lineno}: from {node.module} import {a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "qviz":
                    if any(_private(p) for p in a.name.split(".")):
                        found.append(f"{here}:{node.lineno}: import {a.name}")
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "qviz"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None and target != here:
                found.append(f"{here}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("source,n", [
    ("from qviz.algorithms.gptq import _tensor\n", 1),
    ("from qviz.widgets import _controls\n", 1),
    ("from qviz.widgets._layer import Layer\n", 1),
    ("import qviz.widgets._layer\n", 1),
    ("from qviz.algorithms import gptq\ngptq._tensor(1)\n", 1),
    ("from qviz import metrics as m\nm._x\n", 1),
    ("from qviz.api import quantize\nimport numpy as np\nnp._x\nself._y\n", 0),
    ("from qviz.api import _here\n", 0),  # a module's own names are its own
])
def test_the_walker_sees_crossings(source, n):
    assert len(crossings(source, "qviz.api")) == n


def test_no_private_name_crosses_a_module():
    found = [c for path in sorted(ROOT.rglob("*.py")) for c in crossings(path.read_text(), _module_name(path))]
    assert not found, "private names used across modules:\n" + "\n".join(found)
