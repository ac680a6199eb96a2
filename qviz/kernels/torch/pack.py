"""Torch twins of :mod:`qviz.formats.pack` (same names, same words, bit for bit).

The bit layouts (GPTQ's little-endian stream, AutoAWQ's interleaved slots) are
drawn in the reference module; this one only moves bits with tensor ops
(shift, mask, gather, index_add), so it runs wherever the tensors live, CPU or
CUDA. Every code ``k`` of a row sits at stream bits ``[k*bits, (k+1)*bits)``:
word ``k*bits // 32``, shift ``k*bits % 32``, and a 3-bit code whose shift is
30 or 31 spills its high bits into the next word.
"""
from __future__ import annotations

import torch

from qviz.formats.pack import check_pack_args, slot_order

__all__ = ["pack", "unpack"]


def _positions(n: int, bits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Word index and bit shift of each of ``n`` codes, int64 (n,) each."""
    pos = torch.arange(n, device=device, dtype=torch.int64) * bits
    return pos // 32, pos % 32


def _slot_permutation(n: int, bits: int, order: str, device, inverse: bool) -> torch.Tensor | None:
    """Column permutation that puts codes in their AWQ slots (None for GPTQ order)."""
    if order == "gptq":
        return None
    per = 32 // bits
    slots = torch.as_tensor(slot_order(bits, order), device=device)  # (per,)
    if inverse:
        slots = torch.argsort(slots)
    base = torch.arange(0, n, per, device=device)[:, None]  # (n // per, 1)
    return (base + slots[None, :]).reshape(-1)  # (n,)


def _check_tensor(t, name: str, dtypes: tuple, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of {what}, got {type(t).__name__}; "
                        f"convert numpy arrays with torch.from_numpy(a)")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; expected {what}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}; expected {what}")


def pack(codes: torch.Tensor, bits: int, order: str = "gptq") -> torch.Tensor:
    """Pack codes along the last axis into int32 words (see :func:`qviz.formats.pack.pack`).

    Parameters
    ----------
    codes : torch.Tensor, shape (n_rows, n), uint8, each < 2**bits
        Any device; read only.
    bits : {2, 3, 4, 8}
    order : {"gptq", "awq"}

    Returns
    -------
    torch.Tensor, shape (n_rows, n * bits // 32), int32, on ``codes``' device

    Raises
    ------
    TypeError
        ``codes`` is not a uint8 tensor.
    ValueError
        Not 2-D, a bad width/order, or a row that does not fill whole words.

    Examples
    --------
    >>> hex(int(pack(torch.arange(8, dtype=torch.uint8)[None], 4)[0, 0]))
    '0x76543210'
    """
    _check_tensor(codes, "codes", (torch.uint8,), "uint8 codes of shape (n_rows, n)")
    n_rows, n = codes.shape
    n_words = check_pack_args(n, bits, order)
    perm = _slot_permutation(n, bits, order, codes.device, inverse=False)
    c = (codes if perm is None else codes[:, perm]).to(torch.int64) & ((1 << bits) - 1)
    word, shift = _positions(n, bits, codes.device)
    words = torch.zeros((n_rows, n_words), dtype=torch.int64, device=codes.device)
    # the bits of different codes never overlap, so adding them is OR-ing them
    words.index_add_(1, word, (c << shift) & 0xFFFFFFFF)
    spill = shift + bits > 32  # 3-bit codes that straddle two words
    if bool(spill.any()):
        words.index_add_(1, word[spill] + 1, c[:, spill] >> (32 - shift[spill]))
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # uint32 bits as int32
    return words.to(torch.int32)


def unpack(words: torch.Tensor, bits: int, order: str = "gptq") -> torch.Tensor:
    """Inverse of :func:`pack` (see :func:`qviz.formats.pack.unpack`).

    Parameters
    ----------
    words : torch.Tensor, shape (n_rows, n_words), int32
        Any device; read only.
    bits : {2, 3, 4, 8}
    order : {"gptq", "awq"}

    Returns
    -------
    torch.Tensor, shape (n_rows, n_words * 32 // bits), uint8, on ``words``' device

    Examples
    --------
    >>> unpack(torch.tensor([[0x76543210]], dtype=torch.int32), 4).tolist()
    [[0, 1, 2, 3, 4, 5, 6, 7]]
    """
    _check_tensor(words, "words", (torch.int32,), "int32 words of shape (n_rows, n_words)")
    n_rows, n_words = words.shape
    n = n_words * 32 // bits
    check_pack_args(n, bits, order)
    w = words.to(torch.int64) & 0xFFFFFFFF  # (n_rows, n_words), the uint32 bits
    word, shift = _positions(n, bits, words.device)
    v = w[:, word] >> shift  # (n_rows, n)
    spill = shift + bits > 32
    if bool(spill.any()):
        v[:, spill] |= w[:, word[spill] + 1] << (32 - shift[spill])
    codes = (v & ((1 << bits) - 1)).to(torch.uint8)
    perm = _slot_permutation(n, bits, order, words.device, inverse=True)
    return codes if perm is None else codes[:, perm]
