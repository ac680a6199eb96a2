"""The registry: a type or a method registered from outside qviz works everywhere.

``TOY8`` is Q8_0's block (an fp16 ``d`` and 32 int8 codes) written here from
scratch in a few numpy lines, registered from this file and nothing else: it
must quantize through ``qviz.quantize`` byte-identically to qviz's Q8_0 (hence
to ggml), show in the explorer, quantize a model and be written by
``requantize`` into a file that reads back as Q8_0. ``toy_sign`` is a 1-bit
method (sign times the row's mean |w|) with one option, registered the same way.
"""
from __future__ import annotations

import numpy as np
import pytest

import qviz
from qviz import registry
from qviz.formats.spec import Unpacked
from qviz.registry import Field, Method, Option, QuantType
from qviz.result import QuantResult

QK = 32


# --------------------------------------------------------------------------- a toy type

def quantize_toy8(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Q8_0 from its definition: d = max|x| / 127, q = round-half-away(x / d)."""
    blocks = x.reshape(x.shape[0], -1, QK)                                  # (rows, n_blocks, 32)
    d = np.abs(blocks).max(axis=-1) / np.float32(127)                        # (rows, n_blocks)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    v = blocks * inv[..., None]
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    d16 = d.astype(np.float16)[..., None].view(np.uint8)                     # (rows, n_blocks, 2)
    out = np.concatenate([d16, q.view(np.uint8)], axis=-1)                   # (rows, n_blocks, 34)
    return out.reshape(x.shape[0], -1)


def unpack_toy8(packed: np.ndarray) -> Unpacked:
    blocks = packed.reshape(packed.shape[0], -1, 2 + QK)
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:].view(np.int8).astype(np.int16) + 128
    return Unpacked(q.reshape(packed.shape[0], -1).astype(np.uint8), d)


def dequantize_toy8(packed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    u = unpack_toy8(packed)
    codes = u.codes.reshape(u.codes.shape[0], -1, QK).astype(np.float32) - np.float32(128)
    y = (u.scales[..., None] * codes).reshape(u.codes.shape)
    if out is None:
        return y
    out[...] = y
    return out


TOY8 = QuantType("TOY8", ggml_type=8, block_size=QK, fields=(Field("d", 2), Field("qs", QK)),
                 bits=8, group_size=QK, module=__name__, twins=(), file_type=7)


# --------------------------------------------------------------------------- a toy method

def quantize_toy_sign(w: np.ndarray, *, per_row: bool = True, scale: str = "mean") -> QuantResult:
    """Sign times the mean (or max) |w| of each row (or of the whole matrix)."""
    reduce = np.mean if scale == "mean" else np.max
    mean = reduce(np.abs(w), axis=1, keepdims=True).astype(np.float32)
    if not per_row:
        mean = np.full_like(mean, reduce(np.abs(w)))
    codes = (w >= 0).astype(np.uint8)
    return QuantResult("toy_sign", w.shape, 1, w.shape[1], codes, mean.astype(np.float32),
                       codebook=np.array([-1, 1], np.float32), info={"per_row": per_row})


TOY_SIGN = Method("toy_sign", "Toy sign", quantize_toy_sign,
                  (Option("per_row", "bool", True, "one scale per row", control=True),
                   Option("scale", "str", "mean", "the scale: mean or max |w|", choices=("mean", "max"),
                          control=True)))


@pytest.fixture
def toys():
    registry.register_type(TOY8)
    registry.register_method(TOY_SIGN)
    yield
    registry.unregister("TOY8")
    registry.unregister("toy_sign")


@pytest.fixture
def w(rng):
    return rng.standard_normal((16, 256)).astype(np.float32)


# --------------------------------------------------------------------------- tests

def test_toy_type_quantizes_like_q8_0(toys, w):
    r = qviz.quantize(w, "TOY8")
    ref = qviz.quantize(w, "Q8_0")
    np.testing.assert_array_equal(r.packed, ref.packed)
    np.testing.assert_array_equal(r.codes, ref.codes)
    np.testing.assert_array_equal(r.dequantize(), ref.dequantize())
    assert r.method == "TOY8" and r.bits_per_weight == 8.5
    assert "TOY8" in qviz.method_names() and "TOY8" in qviz.FORMATS
    assert qviz.quantize(w, "toy8").method == "TOY8"  # a unique case-insensitive spelling


def test_toy_method_quantizes_and_validates(toys, w):
    r = qviz.quantize(w, "toy_sign")
    want = np.where(w >= 0, 1, -1) * np.abs(w).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(r.dequantize(), want, rtol=1e-6)  # float32 mean vs float64: rounding only
    peak = qviz.quantize(w, "toy_sign", scale="max").dequantize()
    np.testing.assert_array_equal(np.abs(peak), np.abs(w).max(axis=1, keepdims=True) + 0 * w)
    assert qviz.quantize(w, "Toy_Sign", per_row=False).info["per_row"] is False
    with pytest.raises(TypeError, match=r"per_row='yes' must be True or False"):
        qviz.quantize(w, "toy_sign", per_row="yes")
    with pytest.raises(TypeError, match=r"no option\(s\) bits.*per_row"):
        qviz.quantize(w, "toy_sign", bits=4)


def test_unregistered_names_are_unknown(w):
    assert "TOY8" not in qviz.method_names()
    with pytest.raises(ValueError, match="unknown method 'TOY8'"):
        qviz.quantize(w, "TOY8")


def test_toy_type_and_method_in_the_explorer(toys, w):
    pytest.importorskip("ipywidgets")
    from qviz import session

    x = np.random.default_rng(1).standard_normal((32, w.shape[1])).astype(np.float32)
    e = qviz.explore(w, x, method="TOY8")
    assert e.setting.method == "TOY8"
    assert e.layer.summary(e.setting).result.method == "TOY8"
    assert session.method_options("toy_sign") == {"per_row": True, "scale": "mean", "rotate": False}
    e2 = qviz.explore(w, x, method="toy_sign", per_row=False)
    assert e2.setting.kwargs == {"per_row": False, "scale": "mean", "rotate": False}
    assert e2.layer.summary(e2.setting).result.info["per_row"] is False
    from qviz.widgets import controls

    scale = controls.option_control(registry.method("toy_sign").option("scale"))
    assert type(scale).__name__ == "Dropdown" and list(scale.options) == ["mean", "max"]
    with pytest.raises(ValueError, match=r"toy_sign: scale='median'; valid scales: 'mean', 'max'"):
        qviz.explore(w, x, method="toy_sign", scale="median")


def _toy_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))


@pytest.mark.parametrize("method", ["TOY8", "toy_sign"])
def test_toys_in_quantize_model(toys, method):
    from qviz.models.quantize_model import quantize_model

    model = _toy_model()
    results, qmodel = quantize_model(model, method, progress=False)
    assert set(results) == {"0", "2"}
    for name, r in results.items():
        assert r.method == method
        w = model.get_submodule(name).weight.detach().numpy()
        np.testing.assert_array_equal(r.dequantize(), qviz.quantize(w, method).dequantize())
        np.testing.assert_array_equal(qmodel.get_submodule(name).weight.detach().numpy(), r.dequantize())


def test_toy_type_in_requantize(toys, tmp_path):
    from qviz.io import gguf

    gguf_py = pytest.importorskip("gguf")
    rng = np.random.default_rng(3)
    src = tmp_path / "src.gguf"
    writer = gguf_py.GGUFWriter(str(src), "llama")
    tensors = {"blk.0.ffn_down.weight": rng.standard_normal((8, 64)).astype(np.float32),
               "blk.0.attn_norm.weight": rng.standard_normal(64).astype(np.float32)}
    for name, t in tensors.items():
        writer.add_tensor(name, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    dst = tmp_path / "dst.gguf"
    gguf.requantize(src, dst, "TOY8")
    f = gguf.read(dst)
    info = f.tensor("blk.0.ffn_down.weight")
    assert info.type_name == "Q8_0"  # TOY8 is Q8_0's bytes under another name
    want = qviz.quantize(tensors["blk.0.ffn_down.weight"], "Q8_0")
    np.testing.assert_array_equal(f.decode("blk.0.ffn_down.weight"), want.dequantize())


def test_names_resolve_exactly_then_case_insensitively_then_suggest():
    assert registry.method("GPTQ").name == "gptq"
    assert registry.quant_type("q4_k").name == "Q4_K"
    with pytest.raises(ValueError, match=r"unknown method 'gtpq'; did you mean 'gptq'"):
        registry.method("gtpq")
    with pytest.raises(ValueError, match=r"unknown quant type 'Q4K'; did you mean 'Q4_K'"):
        registry.quant_type("Q4K")
    with pytest.raises(TypeError, match="named by a string"):
        registry.method(4)


def test_a_method_sharing_a_types_name_in_lowercase_is_another_thing():
    # as "mxfp4" (the OCP tensor format) beside ggml's "MXFP4": exact names first, labels say which
    registry.register_method(registry.Method("q8_0", "q8_0 (a toy tensor format)", lambda w: None))
    try:
        assert registry.method("q8_0").label == "q8_0 (a toy tensor format)"
        assert registry.method("Q8_0").label == "Q8_0 (GGUF)" and registry.method("Q8_0").quant_type
        with pytest.raises(ValueError, match="unknown method 'Q8_o'"):
            registry.method("Q8_o")  # two case-insensitive matches: no guess
    finally:
        registry.unregister("q8_0")
    assert registry.method("Q8_0").label == "Q8_0"


def test_registering_twice_needs_replace(toys):
    with pytest.raises(ValueError, match="registered already"):
        registry.register_type(TOY8)
    with pytest.raises(ValueError, match="registered already"):
        registry.register_method(Method("Q4_K", "clash", quantize_toy_sign))
    with pytest.raises(TypeError, match="takes a QuantType"):
        registry.register_type(TOY_SIGN)


def test_every_type_record_is_consistent():
    """Derived sizes, fallbacks and implementations of every registered type."""
    for name, t in registry.types().items():
        assert t.type_size * 8 % t.block_size == 0 or t.bits_per_weight > 0
        assert t.fallback is None or registry.quant_type(t.fallback).block_size < t.block_size, name
        for verb in ("quantize", "dequantize", "unpack"):
            assert callable(t.function(verb, "numpy")), (name, verb)
            assert callable(t.function(verb, "numba")), (name, verb)
        if "torch" in t.twins:
            pytest.importorskip("torch")
            assert callable(t.function("dequantize", "torch")), name


def test_methods_list_their_options():
    ms = qviz.methods()
    assert list(ms)[:5] == ["rtn", "gptq", "awq", "kmeans", "nf4"]
    assert [o.name for o in ms["rtn"].controls] == ["bits", "group_size", "sym", "per_tensor"]
    assert ms["gptq"].needs_calibration and ms["gptq"].role("calibration") == "calib"
    assert ms["Q4_K"].role("importance") == "imatrix" and ms["kmeans"].role("importance") == "importance"
    assert ms["Q4_K"].quant_type is registry.quant_type("Q4_K")
    bits = ms["rtn"].option("bits")
    assert (bits.default, bits.low, bits.high) == (4, 2, 8)


@pytest.mark.parametrize("bad,err,match", [
    (dict(bits="4"), ValueError, r"bits='4': choose an integer from 2 to 8"),
    (dict(sym=1), TypeError, r"sym=1 must be True or False"),
    (dict(bits=np.int64(3)), None, None),
    (dict(bits=np.ones(100)), ValueError, r"bits=<ndarray of shape \(100,\), float64>: choose an integer"),
    (dict(sym="x" * 200), TypeError, r"sym='x{10,}… must be True or False"),
])
def test_option_schema_checks_values(w, bad, err, match):
    if err is None:
        assert qviz.quantize(w, "rtn", **bad).bits == 3
    else:
        with pytest.raises(err, match=match):
            qviz.quantize(w, "rtn", **bad)
