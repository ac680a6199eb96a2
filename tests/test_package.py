"""The package itself: light import, the demo models, docstring examples, no fastmath in kernels."""
import doctest
import importlib
import importlib.util
import pkgutil
import subprocess
import sys

import pytest

import qviz


def test_import_is_light():
    code = ("import sys, qviz; heavy = [m for m in ('torch', 'numba', 'plotly', 'ipywidgets', 'sklearn', "
            "'transformers') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import qviz pulled in {out.stdout.strip()}"


def test_demo_layers(minilm_layer):
    names = qviz.demo.layers()
    assert len(names) > 30 and "encoder.layer.5.output.dense" in names
    assert minilm_layer.shape == (1536, 384) and minilm_layer.dtype.name == "float32"
    assert qviz.demo.layer("encoder.layer.0.output.dense.weight").shape == (384, 1536)
    with pytest.raises(KeyError, match="did you mean"):
        qviz.demo.layer("encoder.layer.0.intermediate.dens")
    assert qviz.demo.smollm2_gguf().suffix == ".gguf"


def test_missing_demo_package_names_the_extra(monkeypatch):
    from qviz.io import demo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == demo.MINILM_PACKAGE else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'qviz\[demo\]'"):
        demo.minilm_dir()


def _modules():
    return [m.name for m in pkgutil.walk_packages(qviz.__path__, "qviz.")]


@pytest.mark.parametrize("name", ["qviz", "qviz.api", "qviz.metrics", "qviz.formats.rtn",
                                  "qviz.formats.pack", "qviz.io.demo", "qviz.io.calib",
                                  "qviz.io.gguf", "qviz.io.export", "qviz.compat", "qviz.plan",
                                  "qviz.widgets.scan", "qviz.widgets.gguf_file", "qviz.plots.gguf",
                                  "qviz.plots.layer", "qviz.plots.compare", "qviz.session", "qviz.summary",
                                  "qviz.registry", "qviz.io.gguf_reader", "qviz.io.gguf_writer",
                                  "qviz.widgets.explore", "qviz.widgets.compare", "qviz.html_report",
                                  "qviz.eval", "qviz.models.quantize_model"])
def test_docstring_examples_run(name):
    mod = importlib.import_module(name)
    failed, attempted = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_numba_kernels_never_use_fastmath():
    from numba.core.registry import CPUDispatcher

    found = 0
    for name in _modules():
        if not name.startswith("qviz.kernels.numba"):
            continue
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher):
                found += 1
                assert not obj.targetoptions.get("fastmath"), f"{name}.{attr} uses fastmath"
                assert obj._cache.__class__.__name__ != "NullCache", f"{name}.{attr} lacks cache=True"
    assert found >= 4


def test_readme_example_runs(tmp_path):
    """The README's first Python block runs as a newcomer would paste it."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4.1562" in out.stdout and "GB" in out.stdout


def test_imatrix_validates_width():
    import numpy as np

    x = np.ones((4, 8), np.float32)
    np.testing.assert_array_equal(qviz.imatrix(x), np.ones(8, np.float32))
    with pytest.raises(ValueError, match="8 columns but the weight has 16"):
        qviz.imatrix(x, 16)
