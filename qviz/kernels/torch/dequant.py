"""Torch twins of the GGUF dequantizers: Q4_0, Q4_1, Q8_0, Q4_K, Q6_K.

Same names and shapes as the numba kernels (:mod:`qviz.kernels.numba.gguf_legacy`,
:mod:`~qviz.kernels.numba.gguf_k_min`, :mod:`~qviz.kernels.numba.gguf_k_sym`):
packed rows (n_rows, row_bytes) uint8 in, float32 (n_rows, n_cols) out, on the
input's device. The block fields come from :data:`qviz.formats.spec.FORMATS`;
the bit maps are drawn in the numpy references (``formats/gguf_*.py``).

Bit-exact with ggml's ``dequantize_row_*`` on the CPU: every product is one
torch op in ggml's order (``d * sc`` first, then ``* q``, then ``- min``), so
nothing is fused into an FMA. fp16 fields are read by reinterpreting their two
bytes (little-endian, as on x86 and every CUDA GPU) and widened exactly.
"""
from __future__ import annotations

import torch

from qviz.formats.spec import FORMATS, QK_K

__all__ = ["DEQUANTIZERS", "dequantize", "dequantize_q4_0", "dequantize_q4_1", "dequantize_q4_k",
           "dequantize_q6_k", "dequantize_q8_0"]


def _fields(packed, type_name: str) -> tuple[dict[str, torch.Tensor], int]:
    """Validate packed rows and split them into block fields.

    Returns
    -------
    fields : dict of str to torch.Tensor
        Field name -> (n_rows * n_blocks, nbytes) uint8 views, in storage order.
    n_cols : int
        Weights per row.
    """
    lay = FORMATS[type_name]
    want = f"uint8 rows of shape (n_rows, n_blocks * {lay.type_size})"
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{type_name} packed rows must be a torch.Tensor of {want}, got "
                        f"{type(packed).__name__}; convert numpy arrays with torch.from_numpy(a)")
    if packed.dtype != torch.uint8:
        raise TypeError(f"{type_name} packed rows have dtype {packed.dtype}; expected {want} "
                        f"(reinterpret other dtypes with .view(torch.uint8))")
    if packed.ndim != 2 or packed.shape[1] % lay.type_size:
        raise ValueError(f"{type_name} packed rows have shape {tuple(packed.shape)}; expected {want}: "
                         f"every row is whole {lay.type_size}-byte blocks of {lay.block_size} weights")
    n_rows, row_bytes = packed.shape
    blocks = packed.contiguous().view(-1, lay.type_size)  # (n_rows * n_blocks, type_size)
    out, off = {}, 0
    for f in lay.fields:
        out[f.name] = blocks[:, off:off + f.nbytes]
        off += f.nbytes
    return out, row_bytes // lay.type_size * lay.block_size


def _fp16(field: torch.Tensor) -> torch.Tensor:
    """A 2-byte fp16 field (n, 2) uint8 -> float32 (n, 1), exact."""
    return field.contiguous().view(torch.float16).float()


def _rows(y: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    return y.reshape(n_rows, n_cols)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Bytes (n, k) -> (n, 2k) int32: the k low nibbles, then the k high nibbles."""
    q = qs.to(torch.int32)
    return torch.cat([q & 0xF, q >> 4], dim=1)


def dequantize_q4_0(packed: torch.Tensor) -> torch.Tensor:
    """ggml's ``dequantize_row_q4_0``: ``(q - 8) * d``.

    Parameters
    ----------
    packed : torch.Tensor, shape (n_rows, n_blocks * 18), uint8

    Returns
    -------
    torch.Tensor, shape (n_rows, n_blocks * 32), float32

    Examples
    --------
    >>> dequantize_q4_0(torch.zeros((2, 18), dtype=torch.uint8)).shape
    torch.Size([2, 32])
    """
    f, n_cols = _fields(packed, "Q4_0")
    return _rows((_nibbles(f["qs"]) - 8).float() * _fp16(f["d"]), packed.shape[0], n_cols)


def dequantize_q4_1(packed: torch.Tensor) -> torch.Tensor:
    """ggml's ``dequantize_row_q4_1``: ``q * d + m``.

    Parameters
    ----------
    packed : torch.Tensor, shape (n_rows, n_blocks * 20), uint8

    Returns
    -------
    torch.Tensor, shape (n_rows, n_blocks * 32), float32
    """
    f, n_cols = _fields(packed, "Q4_1")
    y = _nibbles(f["qs"]).float() * _fp16(f["d"]) + _fp16(f["m"])
    return _rows(y, packed.shape[0], n_cols)


def dequantize_q8_0(packed: torch.Tensor) -> torch.Tensor:
    """ggml's ``dequantize_row_q8_0``: ``q * d`` with int8 ``q``.

    Parameters
    ----------
    packed : torch.Tensor, shape (n_rows, n_blocks * 34), uint8

    Returns
    -------
    torch.Tensor, shape (n_rows, n_blocks * 32), float32
    """
    f, n_cols = _fields(packed, "Q8_0")
    q = f["qs"].contiguous().view(torch.int8)  # the bytes read as int8, (n, 32)
    return _rows(q.float() * _fp16(f["d"]), packed.shape[0], n_cols)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's ``get_scale_min_k4`` for all eight sub-blocks at once.

    ``scales`` (n, 12) uint8 -> sc, m (n, 8) int32, each 0..63 (bit map in
    :func:`qviz.formats.gguf_k_min.unpack_scale_min_k4`): sub-blocks 0..3 keep
    their low 6 bits in bytes 0..3 (sc) and 4..7 (m); sub-blocks 4..7 take the
    nibbles of bytes 8..11 as low bits and the top 2 bits of bytes 0..7.
    """
    s = scales.to(torch.int32)
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    m = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return sc, m


def dequantize_q4_k(packed: torch.Tensor) -> torch.Tensor:
    """ggml's ``dequantize_row_q4_K``: ``(d * sc) * q - dmin * m`` per 32-weight sub-block.

    Parameters
    ----------
    packed : torch.Tensor, shape (n_rows, n_blocks * 144), uint8

    Returns
    -------
    torch.Tensor, shape (n_rows, n_blocks * 256), float32

    Examples
    --------
    >>> dequantize_q4_k(torch.zeros((1, 144), dtype=torch.uint8)).abs().max().item()
    0.0
    """
    f, n_cols = _fields(packed, "Q4_K")
    sc, m = _scale_min_k4(f["scales"])
    d_sub = _fp16(f["d"]) * sc.float()  # (n, 8)
    min_sub = _fp16(f["dmin"]) * m.float()  # (n, 8)
    q = f["qs"].to(torch.int32).reshape(-1, 4, 1, 32)  # (n, chunk c, 1, l): bytes 32c + l
    codes = torch.cat([q & 0xF, q >> 4], dim=2).reshape(-1, 8, 32)  # sub-block 2c: low, 2c+1: high
    y = d_sub[:, :, None] * codes.float() - min_sub[:, :, None]  # (n, 8, 32)
    return _rows(y, packed.shape[0], n_cols)


def dequantize_q6_k(packed: torch.Tensor) -> torch.Tensor:
    """ggml's ``dequantize_row_q6_K``: ``(d * sc) * (q - 32)`` per 16-weight sub-block.

    Weight ``128h + 32k + l`` (half h, quarter k, l < 32) takes the low nibble
    (k = 0, 1) or high nibble (k = 2, 3) of ``ql[64h + 32(k % 2) + l]`` and
    bits ``2k, 2k+1`` of ``qh[32h + l]`` (map in :mod:`qviz.formats.gguf_k_sym`).

    Parameters
    ----------
    packed : torch.Tensor, shape (n_rows, n_blocks * 210), uint8

    Returns
    -------
    torch.Tensor, shape (n_rows, n_blocks * 256), float32
    """
    f, n_cols = _fields(packed, "Q6_K")
    ql = f["ql"].to(torch.int32).reshape(-1, 2, 2, 32)  # (n, h, k % 2, l)
    qh = f["qh"].to(torch.int32).reshape(-1, 2, 1, 32)  # (n, h, 1, l)
    lo = torch.cat([ql & 0xF, ql >> 4], dim=2)  # (n, h, k, l)
    hi = (qh >> (2 * torch.arange(4, device=packed.device, dtype=torch.int32))[:, None]) & 3
    q = ((lo | (hi << 4)) - 32).float().reshape(-1, QK_K // 16, 16)  # (n, sub-block 8h+2k+l//16, 16)
    s = _fp16(f["d"]) * f["scales"].contiguous().view(torch.int8).float()  # (n, 16)
    return _rows(s[:, :, None] * q, packed.shape[0], n_cols)


#: GGUF type -> torch dequantizer
DEQUANTIZERS = {
    "Q4_0": dequantize_q4_0,
    "Q4_1": dequantize_q4_1,
    "Q8_0": dequantize_q8_0,
    "Q4_K": dequantize_q4_k,
    "Q6_K": dequantize_q6_k,
}


def dequantize(packed: torch.Tensor, type_name: str) -> torch.Tensor:
    """Dispatch to ``dequantize_<type>`` by GGUF type name.

    Raises
    ------
    ValueError
        For a type without a torch kernel, listing those that have one.
    """
    try:
        fn = DEQUANTIZERS[type_name]
    except KeyError:
        raise ValueError(f"no torch dequantizer for {type_name!r}; types with one: "
                         f"{', '.join(DEQUANTIZERS)} (decode others with QuantResult.dequantize())") from None
    return fn(packed)
