"""bitsandbytes' NF4 and FP4 with double quantization against bitsandbytes' CPU backend, and its state both ways."""
import doctest
import importlib

import numpy as np
import pytest

import qviz
from edge_rows import CASES, edge_rows
from qviz.formats import bnb4
from qviz.io.bnb_state import from_bnb, to_bnb
from qviz.kernels.numba import bnb4 as twin

QUANT_TYPES = ("nf4", "fp4")
#: a few MiniLM weights for the default run (every weight under -m slow)
LAYERS = ("encoder.layer.0.attention.self.query", "encoder.layer.3.intermediate.dense",
          "encoder.layer.5.output.dense")


@pytest.fixture(scope="module")
def bnb():
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    return torch, functional


def one_thread(torch):
    """torch sums on one thread (numba's OpenMP start-up resets torch's thread count to the cores)."""
    torch.set_num_threads(1)


def bnb_quantize(bnb, w, quant_type, blocksize, double_quant):
    torch, F = bnb
    one_thread(torch)
    return F.quantize_4bit(torch.from_numpy(np.array(w, np.float32)), blocksize=blocksize,
                           quant_type=quant_type, compress_statistics=double_quant)


def assert_equals_bnb(bnb, w, quant_type, blocksize, double_quant, backend="numba"):
    """Codes, absmax (or its 8-bit codes, absmax2 and offset) and the decode, bit for bit."""
    torch, F = bnb
    packed, state = bnb_quantize(bnb, w, quant_type, blocksize, double_quant)
    r = qviz.quantize(w, quant_type, group_size=blocksize, double_quant=double_quant, backend=backend)
    codes = bnb4.unpack_4bit(packed.numpy(), w.size).reshape(w.shape)
    np.testing.assert_array_equal(r.codes, codes)
    if double_quant:
        np.testing.assert_array_equal(r.stored["absmax"].reshape(-1), state.absmax.numpy())
        np.testing.assert_array_equal(r.stored["absmax2"], state.state2.absmax.numpy())
        assert r.stored["offset"][0] == np.float32(state.offset.item())
    else:
        np.testing.assert_array_equal(r.scales.reshape(-1), state.absmax.numpy())
    one_thread(torch)
    theirs = F.dequantize_4bit(packed, state).numpy()
    np.testing.assert_array_equal(r.dequantize(), theirs)
    return r


# ----------------------------------------------------------------- tables and sums


def test_tables_are_bitsandbytes(bnb):
    torch, F = bnb
    from bitsandbytes.backends.default.ops import _get_4bit_quantize_bounds

    for name in QUANT_TYPES:
        np.testing.assert_array_equal(bnb4.TABLES[name], F.get_4bit_type(name, device="cpu").numpy())
        bounds, order = _get_4bit_quantize_bounds(name, torch.device("cpu"))
        np.testing.assert_array_equal(bnb4.BOUNDS[name][0], bounds.numpy())
        np.testing.assert_array_equal(bnb4.BOUNDS[name][1], order.numpy())
    np.testing.assert_array_equal(bnb4.DYNAMIC_MAP, F.create_dynamic_map().numpy())
    np.testing.assert_array_equal(bnb4.NF4_MIDPOINTS, bnb4.BOUNDS["nf4"][0])


@pytest.mark.parametrize("seed", range(4))
def test_torch_sum_is_torch_order(bnb, rng, seed):
    torch, _ = bnb
    one_thread(torch)
    r = np.random.default_rng(seed)
    sizes = [1, 3, 7, 8, 9, 31, 32, 33, 100, 255, 256, 4097] + [int(n) for n in r.integers(10, 40000, 6)]
    for n in sizes:
        x = (r.random(n) * r.uniform(0.01, 10)).astype(np.float32)
        expect = np.float32(torch.from_numpy(x).sum().item())
        assert bnb4.torch_sum(x) == expect, n
        assert twin.torch_sum(x) == expect, n
        assert bnb4.absmax_mean(x) == np.float32(torch.from_numpy(x).mean().item()), n


def test_quantize_dynamic_is_quantize_blockwise(bnb, rng):
    torch, F = bnb
    for n in (1, 255, 256, 1000, 256 * 40 + 17):
        a = (rng.standard_normal(n) * rng.uniform(1e-3, 3)).astype(np.float32)
        a[: n // 7] = 0  # a zero block when n > 256·7
        one_thread(torch)
        q, state = F.quantize_blockwise(torch.from_numpy(a.copy()), blocksize=256)
        codes, absmax = bnb4.quantize_dynamic(a)
        np.testing.assert_array_equal(codes, q.numpy())
        np.testing.assert_array_equal(absmax, state.absmax.numpy())
        np.testing.assert_array_equal(bnb4.dequantize_dynamic(codes, absmax),
                                      F.dequantize_blockwise(q, state).numpy())


# ----------------------------------------------------------------- against bitsandbytes


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("name", LAYERS)
def test_equals_bitsandbytes_on_minilm(bnb, name, quant_type, double_quant):
    assert_equals_bnb(bnb, qviz.demo.layer(name), quant_type, 64, double_quant)


@pytest.mark.slow
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_equals_bitsandbytes_on_every_minilm_weight(bnb, quant_type, double_quant):
    for name in qviz.demo.layers():
        for backend in ("numba", "numpy"):
            assert_equals_bnb(bnb, qviz.demo.layer(name), quant_type, 64, double_quant, backend)


@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 4096])
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_equals_bitsandbytes_on_random_rows(bnb, rng, quant_type, blocksize):
    for shape in [(48, 4096), (1, 1000), (1, 5001), (3, 4096)]:
        w = (rng.standard_normal(shape) * rng.uniform(1e-3, 10)).astype(np.float32)
        for double_quant in (False, True):
            for backend in ("numba", "numpy"):
                assert_equals_bnb(bnb, w, quant_type, blocksize, double_quant, backend)


def special_rows(n_rows, n_cols, rng):
    """Rows bitsandbytes handles by its clamps: float32's extremes, subnormals, exact midpoints."""
    w = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    w[0] = np.finfo(np.float32).max * np.sign(w[0])  # ±max: the reciprocal is subnormal
    w[1] = 1e-40 * np.sign(w[1])  # subnormal absmax: divided by the 1e-38 floor
    w[2] = 0.0
    w[2, 5] = 3.0  # a single outlier
    w[3, ::2] = -0.0
    for k, name in enumerate(QUANT_TYPES):  # values on every midpoint of both tables
        mids = bnb4.BOUNDS[name][0]
        w[4 + k, :mids.size] = mids
        w[4 + k, mids.size] = 1.0
    return w


@pytest.mark.parametrize("case", CASES + ["special"])
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_equals_bitsandbytes_on_edge_rows(bnb, quant_type, case):
    rng = np.random.default_rng(hash(case) % 2 ** 32)
    w = special_rows(8, 256, rng) if case == "special" else edge_rows(case, 8, 256, rng)
    for double_quant in (False, True):
        if double_quant and case == "special":  # float32's max: the absmax would sum to inf
            w[0] = np.float32(1e30) * np.sign(w[0])
        for backend in ("numba", "numpy"):
            assert_equals_bnb(bnb, w, quant_type, 64, double_quant, backend)


def test_double_quant_of_subnormal_absmax(bnb, rng):
    """Absmax so close to their mean that 1 / absmax2 overflows: bitsandbytes' inf and NaN rules."""
    w = np.zeros((4, 256), np.float32)
    w[:, ::64] = np.float32(1e-40) * rng.integers(1, 4, (4, 4))  # subnormal absmax, 1e-40 … 3e-40
    for quant_type in QUANT_TYPES:
        for backend in ("numba", "numpy"):
            assert_equals_bnb(bnb, w, quant_type, 64, True, backend)


def test_double_quant_refuses_an_absmax_sum_beyond_float32():
    w = np.full((4, 256), np.finfo(np.float32).max, np.float32)
    with pytest.raises(ValueError, match="sum beyond float32.*double_quant=False"):
        qviz.quantize(w, "nf4", double_quant=True)
    np.testing.assert_array_equal(qviz.quantize(w, "nf4").dequantize(), w)


# ----------------------------------------------------------------- the result


def test_double_quant_bits_and_decode(rng):
    w = rng.standard_normal((64, 4096)).astype(np.float32)
    r = qviz.quantize(w, "fp4", double_quant=True)
    n_blocks = 64 * 4096 // 64
    assert r.stored["absmax"].dtype == np.uint8 and r.stored["absmax"].shape == (64, 64)
    assert r.stored["absmax2"].dtype == np.float32 and r.stored["absmax2"].shape == (n_blocks // 256,)
    assert r.stored["offset"].dtype == np.float32 and r.stored["offset"].shape == (1,)
    assert r.packed is None
    assert r.bits_per_weight == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / w.size)
    assert round(r.bits_per_weight, 3) == 4.127  # QLoRA's figure
    expect = bnb4.dequantize_absmax(r.stored["absmax"], r.stored["absmax2"], r.stored["offset"][0])
    np.testing.assert_array_equal(r.scales.reshape(-1), expect)
    plain = qviz.quantize(w, "fp4")
    np.testing.assert_array_equal(plain.codes, r.codes)  # the codes come from the float32 absmax
    assert plain.bits_per_weight == 4 + 32 / 64
    assert np.abs(r.scales - plain.scales).max() < 0.01 * plain.scales.max()
    np.testing.assert_array_equal(r.levels(3, 5), np.unique(r.scales[3, 5] * bnb4.FP4))


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("absmax", ["float32", "float16"])
@pytest.mark.parametrize("shape,g", [((5, 200), 64), ((7, 64), 64), ((1, 1001), 128), ((3, 10), 4),
                                     ((9, 300), -1)])
def test_twin_equals_reference(rng, quant_type, absmax, shape, g):
    for case in ("normal", "zero", "outliers", "tiny"):
        w = edge_rows(case, *shape, rng)
        for dq in ((False, True) if absmax == "float32" else (False,)):
            a = bnb4.bnb4(w, quant_type, g, absmax, dq, backend="numpy")
            b = bnb4.bnb4(w, quant_type, g, absmax, dq, backend="numba")
            for field in ("codes", "scales", "packed"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
            for key in a.stored:
                np.testing.assert_array_equal(a.stored[key], b.stored[key], err_msg=key)


def test_rows_no_block_divides_are_per_row(rng):
    w = rng.standard_normal((4, 200)).astype(np.float32)  # 200 = 3·64 + 8
    w[1, 192:] = 0  # an all-zero short block: absmax kept clamped at 1e-38, as bitsandbytes' tail
    r = qviz.quantize(w, "fp4", double_quant=True)
    assert r.info["layout"] == "per-row" and r.scales.shape == (4, 4)
    plain = qviz.quantize(w, "fp4")
    assert plain.scales[1, 3] == np.float32(1e-38)
    np.testing.assert_array_equal(plain.dequantize()[1, 192:], 0)
    assert qviz.quantize(w[:1], "fp4").info["layout"] == "bitsandbytes"


def test_caller_data_is_left_alone(rng):
    w = rng.standard_normal((8, 128)).astype(np.float32)
    before = w.copy()
    for name in QUANT_TYPES:
        for dq in (False, True):
            qviz.quantize(w, name, double_quant=dq)
            qviz.quantize(w, name, double_quant=dq, backend="numpy")
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("method,options,error,match", [
    ("fp4", {"absmax": "float16", "double_quant": True}, ValueError, "cannot be combined"),
    ("nf4", {"absmax": "float16", "double_quant": True}, ValueError, "leave absmax='float32'"),
    ("fp4", {"backend": "cuda"}, ValueError, "backend='cuda'"),
    ("fp4", {"group_size": 0}, ValueError, "group_size=0"),
    ("fp4", {"group_size": 2.5}, TypeError, "must be an integer"),
    ("fp4", {"double_quant": "yes"}, TypeError, "double_quant='yes' must be True or False"),
    ("fp4", {"bits": 3}, TypeError, "no option.*bits"),
])
def test_bad_options(method, options, error, match):
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(error, match=match):
        qviz.quantize(w, method, **options)


def test_bad_weights():
    with pytest.raises(ValueError, match="beyond fp16"):
        qviz.quantize(np.full((2, 64), 1e5, np.float32), "fp4", absmax="float16")
    with pytest.raises(ValueError, match="NaN/Inf"):
        qviz.quantize(np.full((2, 64), np.inf, np.float32), "fp4", double_quant=True)
    with pytest.raises(ValueError, match="quant_type='int4'"):
        bnb4.bnb4(np.ones((2, 64), np.float32), "int4")


# ----------------------------------------------------------------- the state, both ways


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_state_round_trip(bnb, quant_type, double_quant):
    torch, F = bnb
    w = qviz.demo.layer("encoder.layer.1.intermediate.dense")
    r = qviz.quantize(w, quant_type, double_quant=double_quant)
    packed, state = to_bnb(r)
    assert isinstance(state, F.QuantState) and state.nested == double_quant
    one_thread(torch)
    np.testing.assert_array_equal(F.dequantize_4bit(packed, state).numpy(), r.dequantize())
    # bitsandbytes' own quantization reads back as qviz's, and writes back as itself
    theirs, their_state = bnb_quantize(bnb, w, quant_type, 64, double_quant)
    np.testing.assert_array_equal(packed.numpy(), theirs.numpy())
    for form in (their_state, their_state.as_dict(), their_state.as_dict(packed=True)):
        back = from_bnb(theirs, form)
        for field in ("codes", "scales", "packed"):
            np.testing.assert_array_equal(getattr(back, field), getattr(r, field), err_msg=field)
        assert sorted(back.stored) == sorted(r.stored)
        for key in r.stored:
            np.testing.assert_array_equal(back.stored[key], r.stored[key], err_msg=key)
        assert back.bits_per_weight == r.bits_per_weight
    # the packed state dict as numpy arrays: no torch needed to read it
    as_numpy = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in state.as_dict(packed=True).items()}
    np.testing.assert_array_equal(from_bnb(packed.numpy(), as_numpy).dequantize(), r.dequantize())


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_linear4bit_loads_a_qviz_state(bnb, rng, quant_type, double_quant):
    torch, F = bnb
    import bitsandbytes as bnb_pkg

    w = qviz.demo.layer("encoder.layer.2.attention.output.dense")
    r = qviz.quantize(w, quant_type, double_quant=double_quant)
    packed, state = to_bnb(r)
    linear = bnb_pkg.nn.Linear4bit(w.shape[1], w.shape[0], bias=False, compute_dtype=torch.float32,
                                   quant_type=quant_type, compress_statistics=double_quant, device="cpu")
    stats = {f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}
    linear.weight = bnb_pkg.nn.Params4bit.from_prequantized(packed, stats, device="cpu", module=linear)
    x = rng.standard_normal((5, w.shape[1])).astype(np.float32)
    one_thread(torch)
    with torch.no_grad():
        out = linear(torch.from_numpy(x)).float().numpy()
    expect = x.astype(np.float64) @ r.dequantize().astype(np.float64).T
    assert np.abs(out - expect).max() <= 2e-2 * np.abs(expect).max()  # bitsandbytes may compute in bf16


def test_state_refusals(bnb, rng):
    torch, F = bnb
    w = rng.standard_normal((3, 96)).astype(np.float32)
    with pytest.raises(ValueError, match="would cross rows.*divides 96"):
        to_bnb(qviz.quantize(w, "nf4"))
    with pytest.raises(ValueError, match="group_size=48: bitsandbytes' blocksize"):
        to_bnb(qviz.quantize(w, "nf4", group_size=48))
    with pytest.raises(ValueError, match="'nf4' or 'fp4' QuantResult, got 'rtn'"):
        to_bnb(qviz.quantize(w, "rtn"))
    with pytest.raises(ValueError, match="dtype='float64'"):
        to_bnb(qviz.quantize(w, "nf4", group_size=32), dtype="float64")
    packed, state = bnb_quantize(bnb, w, "nf4", 64, True)  # bitsandbytes' blocks cross the rows
    with pytest.raises(ValueError, match=r"pass shape=\(1, 288\)"):
        from_bnb(packed, state)
    one_row = from_bnb(packed, state, shape=(1, 288))
    # bitsandbytes 0.50.2's CPU dequantize_4bit, on an AVX-512 machine, indexes the absmax by row
    # (n_cols // blocksize per row) and decodes such a weight wrongly; read flat, it decodes right
    state.shape = torch.Size([288])
    one_thread(torch)
    np.testing.assert_array_equal(one_row.dequantize().reshape(-1),
                                  F.dequantize_4bit(packed, state).numpy().reshape(-1))
    packed, state = bnb_quantize(bnb, rng.standard_normal((4, 128)).astype(np.float32), "fp4", 64, True)
    with pytest.raises(ValueError, match="packed has 100 bytes; 512 weights take 256"):
        from_bnb(packed[:100], state)
    d = state.as_dict()
    with pytest.raises(ValueError, match="absmax has 3 values"):
        from_bnb(packed, {**d, "absmax": d["absmax"][:3]})
    with pytest.raises(ValueError, match="with nested_absmax it holds uint8"):
        from_bnb(packed, {**d, "absmax": d["absmax"].float()})
    with pytest.raises(ValueError, match="nested_absmax is float32 \\(5,\\)"):
        from_bnb(packed, {**d, "nested_absmax": torch.zeros(5)})
    with pytest.raises(ValueError, match="quant_type='int4'"):
        from_bnb(packed, {**d, "quant_type": "int4"})
    with pytest.raises(ValueError, match="blocksize=48"):
        from_bnb(packed, {**d, "blocksize": 48})
    with pytest.raises(ValueError, match="no 'shape'"):
        from_bnb(packed, {k: v for k, v in d.items() if k != "shape"})
    with pytest.raises(ValueError, match="not bitsandbytes' JSON item"):
        from_bnb(packed, {"absmax": d["absmax"], "quant_state.bitsandbytes__fp4": torch.tensor([128, 1],
                                                                                             dtype=torch.uint8)})
    with pytest.raises(TypeError, match="absmax must be a tensor or numpy array"):
        from_bnb(packed, {**d, "absmax": [1, 2]})


def test_a_nonstandard_second_map_is_kept(bnb, rng):
    torch, F = bnb
    packed, state = bnb_quantize(bnb, rng.standard_normal((4, 512)).astype(np.float32), "nf4", 64, True)
    d = state.as_dict()
    code2 = d["nested_quant_map"].clone()
    code2[0] = -1.0  # a map bitsandbytes decodes with, not the default one
    r = from_bnb(packed, {**d, "nested_quant_map": code2})
    np.testing.assert_array_equal(r.stored["code2"], code2.numpy())
    state.state2.code = code2
    one_thread(torch)
    np.testing.assert_array_equal(r.dequantize(), F.dequantize_4bit(packed, state).numpy())
    _, again = to_bnb(r)
    np.testing.assert_array_equal(again.state2.code.numpy(), code2.numpy())


def test_docstring_examples_run():
    failed, attempted = doctest.testmod(importlib.import_module("qviz.formats.bnb4"))
    assert attempted > 0 and failed == 0
