"""What the torch twins share: packed rows split into block fields, fp16 fields read, nibbles.

The torch spelling of :func:`qviz.formats.blocks.fields` and
:func:`qviz.formats.rounding.fp16_from_field`: same names, same argument
order, tensors on the input's device. fp16 fields are read by reinterpreting
their two bytes (little-endian, as on x86 and every CUDA GPU) and widened
exactly.
"""
from __future__ import annotations

import torch

from qviz.formats.spec import FORMATS

__all__ = ["fields", "fp16_from_field", "nibbles", "rows"]


def fields(type_name: str, packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Validate packed rows and split them into their block fields.

    Parameters
    ----------
    type_name : str
        A registered type, e.g. ``"Q4_K"``.
    packed : torch.Tensor, shape (n_rows, n_blocks * type_size), uint8

    Returns
    -------
    dict of str to torch.Tensor
        Field name -> uint8 view of shape (n_rows, n_blocks, nbytes), in
        storage order.

    Raises
    ------
    TypeError
        For an array that is not a uint8 tensor (saying how to convert it).
    ValueError
        When the rows are not whole blocks.

    Examples
    --------
    >>> {k: tuple(v.shape) for k, v in fields("Q8_0", torch.zeros((2, 68), dtype=torch.uint8)).items()}
    {'d': (2, 2, 2), 'qs': (2, 2, 32)}
    """
    t = FORMATS[type_name]
    want = f"uint8 rows of shape (n_rows, n_blocks * {t.type_size})"
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{type_name} packed rows must be a torch.Tensor of {want}, got "
                        f"{type(packed).__name__}; convert numpy arrays with torch.from_numpy(a)")
    if packed.dtype != torch.uint8:
        raise TypeError(f"{type_name} packed rows have dtype {packed.dtype}; expected {want} "
                        f"(reinterpret other dtypes with .view(torch.uint8))")
    if packed.ndim != 2 or packed.shape[1] % t.type_size:
        raise ValueError(f"{type_name} packed rows have shape {tuple(packed.shape)}; expected {want}: "
                         f"every row is whole {t.type_size}-byte blocks of {t.block_size} weights")
    n_rows, n_blocks = packed.shape[0], packed.shape[1] // t.type_size
    blocks = packed.contiguous().view(n_rows, n_blocks, t.type_size)
    out, off = {}, 0
    for f in t.fields:
        out[f.name] = blocks[..., off:off + f.nbytes]
        off += f.nbytes
    return out


def fp16_from_field(field: torch.Tensor) -> torch.Tensor:
    """fp16 fields (..., 2) uint8 -> their float32 values (..., 1), exact.

    The trailing 1 broadcasts over a block's weights.
    """
    return field.contiguous().view(torch.float16).float()


def nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Bytes (..., k) uint8 -> (..., 2k) int32: the k low nibbles, then the k high nibbles."""
    q = qs.to(torch.int32)
    return torch.cat([q & 0xF, q >> 4], dim=-1)


def rows(type_name: str, packed: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Decoded weights ``y`` in block order -> (n_rows, n_cols) float32, the shape of ``packed``'s rows."""
    t = FORMATS[type_name]
    return y.reshape(packed.shape[0], packed.shape[1] // t.type_size * t.block_size)
