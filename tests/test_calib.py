"""Calibration: default text, token batches, and capture() against a direct computation."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qviz.algorithms.gptq import hessian  # noqa: E402
from qviz.io import calib  # noqa: E402


class TinyLM(torch.nn.Module):
    """Embedding -> Linear -> ReLU -> Linear, called like a transformers model."""

    def __init__(self, vocab=50, d=8, h=6, out=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, d)
        self.fc1 = torch.nn.Linear(d, h)
        self.fc2 = torch.nn.Linear(h, out)

    def forward(self, input_ids, attention_mask=None):
        return self.fc2(torch.relu(self.fc1(self.emb(input_ids))))


def direct_inputs(model, batches):
    """Every row each Linear sees, collected with plain hooks (the oracle)."""
    xs = {"fc1": [], "fc2": []}
    hooks = [getattr(model, n).register_forward_hook(lambda m, a, o, n=n: xs[n].append(a[0].reshape(-1, a[0].shape[-1])))
             for n in xs]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).numpy() for n, v in xs.items()}


@pytest.fixture
def tiny():
    return TinyLM()


@pytest.fixture
def ids():
    # 35 distinct tokens: every input row differs, so sampled rows can be located
    return torch.randperm(50, generator=torch.Generator().manual_seed(1))[:35].reshape(5, 7)


def test_capture_equals_direct_statistics(tiny, ids):
    stats = calib.capture(tiny, ids, batch_size=2, progress=False)
    want = direct_inputs(tiny, torch.split(ids, 2))
    assert set(stats) == {"fc1", "fc2"}
    for name, x in want.items():
        st = stats[name]
        assert st.n_samples == x.shape[0] == 35
        # per-batch float32 sums added in float64: equal to float32 rounding
        np.testing.assert_allclose(st.hessian, hessian(x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.mean_abs, np.abs(x.astype(np.float64)).mean(0), rtol=1e-6)
        np.testing.assert_allclose(st.imatrix, calib.imatrix(x), rtol=1e-6)
        np.testing.assert_array_equal(st.sample, x)  # under the cap: every row, in order
        assert st.hessian.dtype == st.mean_abs.dtype == st.imatrix.dtype == st.sample.dtype == np.float32


def test_sample_cap_holds_and_rows_are_real(tiny, ids):
    x = direct_inputs(tiny, [ids])["fc1"]
    st = calib.capture(tiny, ids, max_samples=9, batch_size=2, progress=False)["fc1"]
    assert st.sample.shape == (9, 8) and st.n_samples == 35
    idx = [int(np.flatnonzero((x == row).all(1))[0]) for row in st.sample]
    assert idx == sorted(set(idx))  # distinct rows, in the order they were seen
    again = calib.capture(tiny, ids, max_samples=9, batch_size=2, progress=False)["fc1"]
    np.testing.assert_array_equal(again.sample, st.sample)  # seeded
    other = calib.capture(tiny, ids, max_samples=9, batch_size=2, seed=5, progress=False)["fc1"]
    assert not np.array_equal(other.sample, st.sample)
    none = calib.capture(tiny, ids, max_samples=0, hessian=False, progress=False)["fc1"]
    assert none.sample.shape == (0, 8) and none.hessian is None


def test_padding_is_left_out(tiny, ids):
    mask = torch.ones_like(ids)
    mask[:, 5:] = 0
    st = calib.capture(tiny, [{"input_ids": ids, "attention_mask": mask}], progress=False)["fc1"]
    x = direct_inputs(tiny, [ids[:, :5]])["fc1"]
    assert st.n_samples == 25
    np.testing.assert_allclose(st.imatrix, calib.imatrix(x), rtol=1e-6)


def test_any_module_taking_ids_positionally(ids):
    model = torch.nn.Sequential(torch.nn.Embedding(50, 4), torch.nn.Linear(4, 3))
    st = calib.capture(model, ids[0], progress=False)["1"]
    assert st.n_samples == 7 and st.hessian.shape == (4, 4)


def test_layer_selection_and_unknown_names(tiny, ids):
    assert list(calib.capture(tiny, ids, layers=["fc2"], progress=False)) == ["fc2"]
    with pytest.raises(ValueError, match="closest: .*'fc1'"):
        calib.capture(tiny, ids, layers=["fc"], progress=False)


def test_model_without_linear_layers(ids):
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        calib.capture(torch.nn.Embedding(50, 4), ids, progress=False)


@pytest.mark.parametrize("bad,error,match", [
    (torch.zeros(2, 3), TypeError, "integer token ids"),
    (torch.zeros(0, 3, dtype=torch.long), ValueError, "empty"),
    ([], ValueError, "empty"),
    ("some text", TypeError, "tokenizer"),
    ({"ids": torch.ones(1, 3, dtype=torch.long)}, ValueError, "input_ids"),
    (torch.ones(1, 2, 3, dtype=torch.long), ValueError, "batch, seq"),
])
def test_bad_batches(tiny, bad, error, match):
    with pytest.raises(error, match=match):
        calib.capture(tiny, bad, progress=False)


def test_bad_max_samples(tiny, ids):
    with pytest.raises(ValueError, match="max_samples"):
        calib.capture(tiny, ids, max_samples=-1, progress=False)


def test_default_texts_split_is_disjoint_and_fixed():
    a, b = calib.default_texts("calib"), calib.default_texts("eval")
    assert a and b and not set(a) & set(b)
    assert calib.default_texts() == a and calib.default_texts("eval") == b
    assert sum(map(len, a)) > 150_000 and sum(map(len, b)) > 150_000
    with pytest.raises(ValueError, match="'calib'"):
        calib.default_texts("test")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    import qviz

    return AutoTokenizer.from_pretrained(str(qviz.demo.minilm_dir()), local_files_only=True)


def test_calibration_batches_wrap_special_tokens(minilm_tokenizer):
    tok = minilm_tokenizer
    batches = calib.calibration_batches(tok, seq_len=32, n_sequences=5, batch_size=2)
    assert [tuple(b.shape) for b in batches] == [(2, 32), (2, 32), (1, 32)]
    rows = torch.cat(batches)
    assert (rows[:, 0] == tok.cls_token_id).all() and (rows[:, -1] == tok.sep_token_id).all()
    body = calib.tokenize(tok)[:30 * 5]
    assert rows[:, 1:-1].reshape(-1).tolist() == body  # consecutive windows of the calibration text


@pytest.mark.parametrize("text", ["", "one two"])
def test_too_little_text_says_how_many_tokens(minilm_tokenizer, text):
    with pytest.raises(ValueError, match=r"needs at least 510"):
        calib.calibration_batches(minilm_tokenizer, text)


def test_capture_from_a_tokenizer_on_minilm(minilm_tokenizer):
    from qviz.io.models import load_minilm

    model, tok = load_minilm()
    name = "encoder.layer.0.intermediate.dense"
    st = calib.capture(model, tok, layers=[name], texts=calib.default_texts()[:4], seq_len=64,
                       n_sequences=3, max_samples=100,
                       progress=False)[name]
    assert st.n_samples == 192 and st.sample.shape == (100, 384) and st.hessian.shape == (384, 384)
    assert np.all(np.linalg.eigvalsh(st.hessian.astype(np.float64)) > -1e-3)  # XᵀX is PSD
    with pytest.raises(ValueError, match="texts= needs a tokenizer"):
        calib.capture(model, torch.ones(1, 4, dtype=torch.long), texts="hello", progress=False)


def test_imatrix_still_works():
    x = np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(calib.imatrix(x), [5.0, 2.0])
    with pytest.raises(ValueError, match="columns"):
        calib.imatrix(x, n_cols=3)


def test_layer_stats_repr_without_hessian():
    import numpy as np

    from qviz.io.calib import LayerStats

    fields = LayerStats.__dataclass_fields__ if hasattr(LayerStats, "__dataclass_fields__") else None
    assert fields is not None
    values = {name: None for name in fields}
    values.update(name="fc", n_samples=3, mean_abs=np.ones(4, np.float32),
                  imatrix=np.ones(4, np.float32), sample=np.ones((3, 4), np.float32))
    assert "in=4" in repr(LayerStats(**values))
