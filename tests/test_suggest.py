"""suggest_types: options against direct measurements, the plan against a brute-force optimum, SmolLM2."""
import itertools
import math

import numpy as np
import pytest

import qviz
from qviz import registry
from qviz.plan import Option, choose, exact_pattern, suggest_types, type_options


def _weights(rng):
    """Four small tensors of different widths and spreads (64 columns: K-quants fall back)."""
    return {
        "a": rng.standard_normal((4, 256)).astype(np.float32),
        "b": (5 * rng.standard_normal((8, 256))).astype(np.float32),
        "c": rng.laplace(size=(2, 512)).astype(np.float32),
        "d": (0.1 * rng.standard_normal((4, 64))).astype(np.float32),
    }


def _brute_force(options, budget_bits):
    """Least total error over every combination that fits (the oracle)."""
    best = math.inf
    for combo in itertools.product(*options):
        if sum(o.n_bytes * 8 for o in combo) <= budget_bits:
            best = min(best, sum(o.error for o in combo))
    return best


def test_options_are_the_measured_squared_errors(rng):
    w = _weights(rng)["d"]
    opts = type_options(w)
    # 64 columns: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, deduplicated; so every
    # registered type whose block divides 64 (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL …), in the registry's order
    fits = [n for n, t in registry.types().items() if 64 % t.block_size == 0]
    assert [o.type_name for o in opts] == fits
    assert fits[:6] == ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"]
    for o in opts:
        r = qviz.quantize(w, o.type_name)
        assert o.n_bytes == r.packed.nbytes
        # rel 1e-9: the same float64 sum, accumulated in another order
        assert o.error == pytest.approx(qviz.metrics.mse(w, r.dequantize()) * w.size, rel=1e-9)


def test_imatrix_quantizes_with_it_and_weights_the_error(rng):
    w = rng.standard_normal((4, 256)).astype(np.float32)
    im = rng.uniform(0.01, 10, 256).astype(np.float32)
    (o,) = type_options(w, ["Q4_K"], imatrix=im)
    w_hat = qviz.quantize(w, "Q4_K", imatrix=im).dequantize().astype(np.float64)
    want = sum(im[j] * np.sum((w[:, j] - w_hat[:, j]) ** 2) for j in range(256))
    assert o.error == pytest.approx(want, rel=1e-9)  # summation order only
    plan = suggest_types({"w": w}, 8.0, imatrix={"w": im}, candidates=["Q4_K"])
    assert plan.error_measure == "imatrix-weighted squared error" and plan.error == o.error


@pytest.mark.parametrize("target", [3.0, 4.2, 4.6, 5.2, 6.0, 7.5, 9.0])
def test_plan_is_the_brute_force_optimum_and_fits(rng, target):
    weights = _weights(rng)
    plan = suggest_types(weights, target)
    n = sum(w.size for w in weights.values())
    options = [type_options(w) for w in weights.values()]
    assert plan.bits_per_weight <= target
    assert plan.n_bytes * 8 <= target * n
    assert plan.error == pytest.approx(_brute_force(options, math.floor(target * n)), rel=1e-12)
    assert list(plan.types) == list(weights)
    assert [r["type"] for r in plan.rows] == list(plan.types.values())


def test_choose_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(7)
    for _ in range(200):
        options = [[Option(f"T{k}", int(rng.integers(1, 40)), float(rng.uniform(0, 100)))
                    for k in range(rng.integers(1, 6))] for _ in range(rng.integers(1, 5))]
        least = sum(min(o.n_bytes for o in opts) for opts in options) * 8
        budget = int(least + rng.integers(0, 200))
        picks = choose(options, budget)
        chosen = [opts[k] for opts, k in zip(options, picks)]
        assert sum(o.n_bytes * 8 for o in chosen) <= budget
        assert sum(o.error for o in chosen) == pytest.approx(_brute_force(options, budget), rel=1e-12)
        thinned = choose(options, budget, max_states=2)  # approximate, but within budget
        assert sum(options[i][k].n_bytes * 8 for i, k in enumerate(thinned)) <= budget


def test_exact_patterns_match_only_their_name():
    import fnmatch

    names = ["blk.0.attn_q.weight", "a[1]*?", "a1xy"]
    for name in names:
        assert [n for n in names if fnmatch.fnmatchcase(n, exact_pattern(name))] == [name]


def test_smollm2_plan_requantizes_to_those_types(tmp_path):
    src = qviz.demo.smollm2_gguf()
    picked = ["blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight"]
    plan = suggest_types(src, 4.0, tensors=picked)
    rows = {r["name"]: r for r in plan.rows}  # in file order
    assert sorted(rows) == sorted(picked) and all(r["from"] == "Q4_1" for r in plan.rows)
    assert plan.bits_per_weight <= 4.0
    # attn_k/attn_v rows are 576 wide: no K-quant fits them, only their fallbacks
    assert {rows[n]["type"] for n in picked[:2]} <= {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"}
    dst = tmp_path / "planned.gguf"
    written = qviz.gguf.requantize(src, dst, types=plan.types)
    for name in picked:
        assert written[name] == plan.types[exact_pattern(name)]
    with qviz.gguf.read(dst) as f:
        got = {t.name: t.type_name for t in f.tensors}
        assert all(got[r["name"]] == r["type"] for r in plan.rows)
        assert got["blk.1.attn_q.weight"] == "Q4_1"  # unplanned tensors keep their type
    # the header differs only by the two keys requantize updates (a few dozen bytes)
    assert abs(dst.stat().st_size - plan.file_bytes) < 256
    assert "planned tensors" in plan._repr_html_()


def test_bad_input(rng):
    weights = _weights(rng)
    for bad in (0, -1.0, float("nan"), True, "4"):
        with pytest.raises(ValueError, match="target_bpw"):
            suggest_types(weights, bad)
    # each tensor in its smallest type (with the 11 types of the first version: (4096 weights at Q2_K
    # 2.625 + 256 at Q4_0 4.5) / 4352 = 2.7353)
    fewest = sum(min(o.n_bytes for o in type_options(w)) * 8 for w in weights.values()) \
        / sum(w.size for w in weights.values())
    with pytest.raises(ValueError, match=rf"target_bpw=1 is below {fewest:.4f}, the fewest bits"):
        suggest_types(weights, 1)
    with pytest.raises(ValueError, match="candidates"):
        suggest_types(weights, 5, candidates=["Q4_K", "Q7_K"])
    with pytest.raises(ValueError, match=r"imatrix has entries for \['zz'\]"):
        suggest_types(weights, 5, imatrix={"zz": np.ones(4)})
    with pytest.raises(ValueError, match=r"imatrix has (3 values|shape \(3,\))"):
        suggest_types(weights, 5, imatrix={"a": np.ones(3)})
    with pytest.raises(ValueError, match="no candidate type fits the rows of \\['odd'\\]"):
        suggest_types({"odd": np.ones((2, 48), np.float32)}, 5)
    with pytest.raises(ValueError, match="matches none"):
        suggest_types(weights, 5, tensors=["blk.*"])
    with pytest.raises(ValueError, match="matches no quantizable weight"):
        suggest_types(qviz.demo.smollm2_gguf(), 5, tensors=["*_norm.weight"])
    with pytest.raises(TypeError, match="torch module or a mapping"):
        suggest_types(np.ones((4, 256), np.float32), 5)
    with pytest.raises(TypeError, match="integer dtype"):
        suggest_types({"i": np.ones((4, 256), np.int32)}, 5)
    with pytest.raises(ValueError, match="max_states=0"):
        suggest_types(weights, 5, max_states=0)
    w = weights["a"].copy()
    suggest_types({"a": w}, 5)
    np.testing.assert_array_equal(w, weights["a"])  # the caller's data is untouched
