"""Bit packing: the numba kernels equal the numpy reference bit for bit; hand-made vectors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qviz.formats import pack as ref
from qviz.kernels.numba import pack as nb

CASES = [(b, o) for b in (2, 3, 4, 8) for o in ref.ORDERS if not (o == "awq" and 32 % b)]


@pytest.mark.parametrize("bits,order", CASES)
def test_kernel_equals_reference(rng, bits, order):
    codes = rng.integers(0, 2**bits, (37, 256), dtype=np.uint8)
    words = ref.pack(codes, bits, order)
    assert words.dtype == np.int32 and words.shape == (37, 256 * bits // 32)
    np.testing.assert_array_equal(nb.pack(codes, bits, order), words)
    np.testing.assert_array_equal(nb.unpack(words, bits, order), codes)
    np.testing.assert_array_equal(ref.unpack(words, bits, order), codes)
    np.testing.assert_array_equal(nb.pack(codes, bits, order), nb.pack(codes, bits, order))


def test_hand_made_vectors():
    seq = np.arange(8, dtype=np.uint8)[None]
    assert ref.pack(seq, 4, "gptq").view(np.uint32)[0, 0] == 0x76543210
    assert ref.pack(seq, 4, "awq").view(np.uint32)[0, 0] == 0x75316420  # slots [0,2,4,6,1,3,5,7]
    assert ref.pack(np.array([[1, 2, 3, 0]], np.uint8), 8, "gptq").view(np.uint32)[0, 0] == 0x00030201
    assert ref.pack(np.array([[1, 2, 3, 0]], np.uint8), 8, "awq").view(np.uint32)[0, 0] == 0x00020301
    # 3-bit: code 10 straddles words 0 and 1 (low 2 bits in word 0, high bit in word 1)
    c = np.zeros((1, 32), np.uint8)
    c[0, 10] = 0b111
    w = ref.pack(c, 3).view(np.uint32)[0]
    assert w[0] == 0b11 << 30 and w[1] == 0b1 and w[2] == 0
    np.testing.assert_array_equal(nb.pack(c, 3).view(np.uint32)[0], w)
    # int8 wraps to int32 sign: 0xF in the top nibble is a negative int32
    assert ref.pack(np.full((1, 8), 15, np.uint8), 4)[0, 0] == -1


@given(st.sampled_from(CASES), st.integers(1, 5), st.integers(1, 4), st.data())
def test_roundtrip(case, rows, words, data):
    bits, order = case
    n = words * (32 // int(np.gcd(32, bits)))  # whole words: 8 codes for 4 bits, 32 for 3
    codes = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=rows * n, max_size=rows * n)),
                     dtype=np.uint8).reshape(rows, n)
    for impl in (ref, nb):
        np.testing.assert_array_equal(impl.unpack(impl.pack(codes, bits, order), bits, order), codes)


@pytest.mark.parametrize("bits,order,n,match", [
    (5, "gptq", 32, "2, 3, 4 or 8"),
    (3, "awq", 32, "no 3-bit layout"),
    (4, "gptq", 12, "multiple of 8"),
    (3, "gptq", 16, "multiple of 32"),
    (4, "marlin", 8, "valid orders"),
])
def test_bad_arguments(bits, order, n, match):
    for impl in (ref, nb):
        with pytest.raises(ValueError, match=match):
            impl.pack(np.zeros((1, n), np.uint8), bits, order)
