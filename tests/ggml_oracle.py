"""The byte oracle: ggml's own C code through ggml-python.

``ggml_quantize_chunk`` is the path llama-quantize takes (the ``_ref`` row
functions without an importance matrix, the ``_impl`` ones with one), and each
type's ``to_float`` is ggml's dequantizer.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

ggml = pytest.importorskip("ggml", reason="ggml-python is the byte oracle: pip install -e '.[test]'")


def quantize(type_name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml's bytes for rows ``x`` (n_rows, n_cols) float32 -> (n_rows, row_bytes) uint8."""
    from qviz.formats.spec import layout

    lay = layout(type_name)
    if imatrix is None and ggml.ggml_quantize_requires_imatrix(lay.ggml_type):
        raise ValueError(f"ggml aborts the process (GGML_ASSERT) quantizing {type_name} without an "
                         f"importance matrix: pass one")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows, n_cols = x.shape
    out = np.zeros((n_rows, lay.row_bytes(n_cols)), dtype=np.uint8)
    im_ptr = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        im_ptr = imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    ggml.ggml_quantize_init(lay.ggml_type)
    written = ggml.ggml_quantize_chunk(
        lay.ggml_type,
        x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        out.ctypes.data_as(ctypes.c_void_p),
        0, n_rows, n_cols, im_ptr)
    assert written == out.nbytes, (written, out.nbytes)
    return out


def dequantize(type_name: str, packed: np.ndarray, n_cols: int) -> np.ndarray:
    """ggml's ``to_float`` of packed rows -> (n_rows, n_cols) float32."""
    from qviz.formats.spec import layout

    lay = layout(type_name)
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    out = np.zeros((packed.shape[0], n_cols), dtype=np.float32)
    traits = ggml.ggml_get_type_traits(lay.ggml_type).contents
    traits.to_float(packed.ctypes.data_as(ctypes.c_void_p),
                    out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out


def assert_blocks_equal(type_name: str, got: np.ndarray, want: np.ndarray) -> None:
    """Byte equality; on failure print the first differing block in hex beside ggml's."""
    from qviz.formats.spec import layout

    assert got.shape == want.shape, f"shape {got.shape} != ggml's {want.shape}"
    if np.array_equal(got, want):
        return
    ts = layout(type_name).type_size
    g = got.reshape(-1, ts)
    w = want.reshape(-1, ts)
    bad = np.flatnonzero((g != w).any(axis=1))
    b = int(bad[0])
    fields, off, lines = layout(type_name).fields, 0, []
    for f in fields:
        gs, ws = g[b, off:off + f.nbytes], w[b, off:off + f.nbytes]
        mark = "  " if np.array_equal(gs, ws) else "!!"
        lines.append(f"{mark} {f.name:7s} qviz {gs.tobytes().hex()}\n{'':11s}ggml {ws.tobytes().hex()}")
        off += f.nbytes
    raise AssertionError(
        f"{type_name}: {bad.size} of {g.shape[0]} blocks differ; first is block {b} "
        f"(row {b // (got.shape[1] // ts)}):\n"
        + "\n".join(lines))


def assert_decodes_like_ggml(type_name: str, backend: str, packed: np.ndarray, n_cols: int,
                             codebook, max_code: int):
    """``dequantize_<type>`` and ``unpack_<type>`` of ``backend`` against ggml's ``to_float``, bit for bit.

    Also: the unpacked arrays' dtypes and shapes, the codes at most ``max_code``, the signed
    ``codebook``, a :class:`~qviz.result.QuantResult` of them decoding like ggml, and (for the numba
    twin) codes and scales equal to the numpy reference's. Returns that ``QuantResult``.
    """
    from qviz import registry
    from qviz.result import QuantResult

    t = registry.quant_type(type_name)
    n_rows = packed.shape[0]
    want = dequantize(type_name, packed, n_cols).view(np.uint32)
    got = t.function("dequantize", backend)(packed)
    assert got.dtype == np.float32 and got.shape == (n_rows, n_cols)
    np.testing.assert_array_equal(got.view(np.uint32), want)
    u = t.function("unpack", backend)(packed)
    assert u.codes.dtype == np.uint8 and u.codes.shape == (n_rows, n_cols) and int(u.codes.max()) <= max_code
    assert u.scales.dtype == np.float32 and u.scales.shape == (n_rows, n_cols // t.group_size)
    assert u.mins is None
    np.testing.assert_array_equal(u.codebook, np.asarray(codebook, dtype=np.float32))
    r = QuantResult(type_name, (n_rows, n_cols), t.bits, t.group_size, u.codes, u.scales,
                    codebook=u.codebook, packed=packed)
    np.testing.assert_array_equal(r.dequantize().view(np.uint32), want)
    if backend != "numpy":  # the twin's arrays are the reference's
        ref = t.function("unpack", "numpy")(packed)
        np.testing.assert_array_equal(u.codes, ref.codes)
        np.testing.assert_array_equal(u.scales.view(np.uint32), ref.scales.view(np.uint32))
    return r
