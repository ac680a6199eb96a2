"""GGUF types through the public entry point: bytes, result fields, fallbacks, bad input."""
import numpy as np
import pytest

import ggml_oracle
import qviz
from qviz.formats.spec import FORMATS

TYPES = list(FORMATS)


@pytest.fixture(scope="module")
def real_rows():
    """Eight real rows of all-MiniLM-L6-v2 (1536 wide: every block size divides it)."""
    return np.array(qviz.demo.layer("encoder.layer.0.output.dense")[:8])


@pytest.mark.parametrize("name", TYPES)
def test_quantize_gives_ggml_bytes_and_a_full_result(name, real_rows):
    im = qviz.imatrix(np.random.default_rng(0).standard_normal((64, 1536)).astype(np.float32))
    if FORMATS[name].requires_imatrix:  # llama-quantize refuses these without one; so does qviz
        with pytest.raises(ValueError, match=f"{name} needs an importance matrix.*Missing importance matrix"):
            qviz.quantize(real_rows, name)
    for imatrix in (im,) if FORMATS[name].requires_imatrix else (None, im):
        r = qviz.quantize(real_rows, name, imatrix=imatrix)
        ggml_oracle.assert_blocks_equal(name, r.packed, ggml_oracle.quantize(name, real_rows, imatrix))
    lay = FORMATS[name]
    assert r.method == name and r.shape == real_rows.shape and r.bits == lay.bits
    assert r.bits_per_weight == lay.bits_per_weight  # derived from the bytes
    want = ggml_oracle.dequantize(name, r.packed, 1536)
    np.testing.assert_array_equal(qviz.dequantize(r).view(np.uint32), want.view(np.uint32))
    # every decoded weight of a group is one of that group's levels
    group = r.dequantize()[3, : r.group_size]
    assert np.isin(group, r.levels(3, 0)).all()
    ref = qviz.quantize(real_rows[:2], name, imatrix=im, backend="numpy")
    np.testing.assert_array_equal(ref.packed, r.packed[:2])


def test_q4_k_reads_4_5_bits_and_iq4_nl_has_its_codebook(real_rows):
    assert qviz.quantize(real_rows, "Q4_K").bits_per_weight == 4.5
    r = qviz.quantize(real_rows, "IQ4_NL")
    assert r.codebook is not None and r.levels(0, 0).shape == (16,)
    assert len(np.unique(np.diff(r.codebook))) > 1  # non-uniform


def test_row_length_not_a_multiple_of_the_block(minilm_layer):
    w = np.array(minilm_layer[:4])  # 384 wide: not a multiple of 256
    with pytest.raises(ValueError, match=r"Q4_K needs rows that are a multiple of its block size 256, "
                                         r"but the rows have 384 columns; llama-quantize falls back to Q5_0"):
        qviz.quantize(w, "Q4_K")
    r = qviz.quantize(w, "Q4_K", fallback=True)
    assert r.method == "Q5_0" and r.info["requested"] == "Q4_K"
    ggml_oracle.assert_blocks_equal("Q5_0", r.packed, ggml_oracle.quantize("Q5_0", w))
    with pytest.raises(ValueError, match="keeps such tensors in F16"):
        qviz.quantize(np.ones((2, 48), np.float32), "Q6_K", fallback=True)


def test_bad_imatrix_and_type(real_rows):
    with pytest.raises(ValueError, match="imatrix has 10 values but the rows have 1536 columns"):
        qviz.quantize(real_rows, "Q4_K", imatrix=np.ones(10))
    with pytest.raises(ValueError, match="negative"):
        qviz.quantize(real_rows, "Q4_K", imatrix=-np.ones(1536))
    bad = np.ones(1536)
    bad[7] = np.nan
    with pytest.raises(ValueError, match=r"imatrix has 1 NaN/Inf.*\(0, 7\)"):
        qviz.quantize(real_rows, "Q4_K", imatrix=bad)
    with pytest.raises(ValueError, match="valid methods:.*Q6_K"):
        qviz.quantize(real_rows, "Q4_X")
    with pytest.raises(ValueError, match="valid backends"):
        qviz.quantize(real_rows, "Q4_K", backend="c")


def test_nan_row_is_named_not_asserted(real_rows):
    w = real_rows.copy()
    w[5, 300] = np.inf
    with pytest.raises(ValueError, match=r"\(row, col\) = \(5, 300\)"):
        qviz.quantize(w, "Q8_0")


def test_caller_data_and_imatrix_untouched(real_rows):
    w = real_rows.copy()
    im = np.linspace(0, 2, 1536).astype(np.float32)
    w0, im0 = w.copy(), im.copy()
    for name in TYPES:
        qviz.quantize(w, name, imatrix=im)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(im, im0)
