"""What the explorer draws for lattice types (IQ1/IQ2/IQ3): the grid points each group chose."""
import numpy as np
import pytest

import qviz
from qviz import registry
from qviz.formats.iq_lattice import lattice
from qviz.plots.layer import group_detail as group_figure
from qviz.summary import group_detail

LATTICE_TYPES = [n for n, t in registry.types().items() if t.provides("points")]


def quantized(name, seed=0):
    w = np.random.default_rng(seed).standard_normal((3, 512)).astype(np.float32)
    im = np.random.default_rng(seed + 1).uniform(0.1, 2.0, 512).astype(np.float32)
    return w, qviz.quantize(w, name, imatrix=im)


def test_the_lattice_types_are_registered():
    assert {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"} <= set(LATTICE_TYPES)
    assert not registry.quant_type("Q4_K").provides("points")


@pytest.mark.parametrize("name", LATTICE_TYPES)
def test_points_decode_to_the_dequantized_weights(name):
    """Every run's grid point values, signed, are proportional to its decoded weights."""
    w, r = quantized(name)
    pts = registry.quant_type(name).function("points", "numpy")(r.packed)
    lat = lattice(pts.lattice)
    assert pts.index.shape == (3, 512 // lat.dims) and pts.negative.shape == (3, 512)
    values = lat.values[pts.index.astype(np.int64)].reshape(3, 512).astype(np.float32)
    w_hat = r.dequantize()
    if name.startswith("IQ1"):
        assert not pts.negative.any()  # IQ1 stores no signs: the decode is scale * (value + delta)
        return
    signed = np.where(pts.negative, -values, values)
    groups = w_hat.reshape(3, -1, r.group_size) / signed.reshape(3, -1, r.group_size)
    ratio = np.nan_to_num(groups, nan=0.0)
    for row in ratio:  # one positive scale per group (0 where the group decodes to zeros)
        for g in row:
            assert np.allclose(g, g[0], rtol=1e-6) and g[0] >= 0


@pytest.mark.parametrize("name", LATTICE_TYPES)
def test_group_detail_draws_the_runs(name):
    w, r = quantized(name, seed=3)
    d = group_detail(r, w, 1, 2)
    lat = lattice(d.lattice.lattice)
    k = r.group_size // lat.dims
    assert d.lattice.numbers.shape == (k,) and d.lattice.values.shape == (k, lat.dims)
    pts = registry.quant_type(name).function("points", "numpy")(r.packed)
    first = 2 * r.group_size // lat.dims
    assert (d.lattice.numbers == pts.index[1, first:first + k]).all()
    fig = group_figure(d)
    labels = next(t for t in fig.data if t.name == "grid point")
    assert list(labels.text) == [f"#{n}" for n in d.lattice.numbers]
    assert f"{k} grid points of the {d.lattice.lattice} lattice" in fig.layout.title.text


def test_other_types_draw_no_runs():
    w = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    d = group_detail(qviz.quantize(w, "Q4_K"), w, 0, 0)
    assert d.lattice is None
    assert all(t.name != "grid point" for t in group_figure(d).data)


def test_the_explorer_turns_the_imatrix_on_for_types_that_need_one():
    from qviz.session import control_options

    assert next(o for o in control_options("IQ2_XXS") if o.name == "imatrix").default is True
    assert next(o for o in control_options("IQ4_XS") if o.name == "imatrix").default is False
    ex = qviz.explore(qviz.demo.layer("encoder.layer.0.output.dense"), method="IQ2_XXS")  # 1536 wide
    assert ex.message.value == "" and "2.062 bits per weight (IQ2_XXS)" in ex.metrics.value


def test_switching_to_a_type_that_needs_an_imatrix_turns_it_on():
    ex = qviz.explore(qviz.demo.layer("encoder.layer.1.output.dense"), method="Q4_K")
    assert ex.controls["imatrix"].value is False
    ex.controls["method"].value = "IQ1_S"
    assert ex.controls["imatrix"].value is True and ex.message.value == ""
    assert ex.setting.method == "IQ1_S" and "(IQ1_S)" in ex.metrics.value
    ex.controls["imatrix"].value = False  # turned off by hand: llama-quantize's refusal, in the widget
    assert "IQ1_S needs an importance matrix" in ex.message.value
