"""QuantResult: the one result type of every qviz format and algorithm."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    from qviz.rotation import Rotation

#: bits of one stored scale, min or codebook entry (fp16 everywhere qviz writes).
PARAM_BITS = 16


@dataclass(frozen=True)
class QuantResult:
    """A quantized 2-D weight, decoded into plain arrays.

    A weight in column ``j`` of row ``i`` belongs to group ``g = j // group_size``
    (the last group of a row may be shorter), or ``g = g_idx[j]`` when ``g_idx``
    is given (GPTQ with act_order, whose groups follow the visiting order). It
    decodes as

    * ``scales[i, g] * (codes[i, j] - zero)`` with ``zero = zeros[i, g]``
      (asymmetric RTN/GPTQ/AWQ), or the implied ``2**(bits-1)`` when ``zeros``
      and ``mins`` are both None and there is no codebook (symmetric: RTN sym,
      Q4_0, Q5_0, Q8_0, Q3_K, Q6_K);
    * ``scales[i, g] * codes[i, j] - mins[i, g]`` when ``mins`` is given
      (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K);
    * ``scales[i, g] * codebook[codes[i, j]]`` when ``codebook`` is given
      (IQ4_NL, NF4; k-means with a per-row codebook and unit scales).

    Per-tensor parameters have shape (1, 1) and broadcast over rows.

    Attributes
    ----------
    method : str
        ``"rtn"``, ``"gptq"``, ``"awq"``, ``"kmeans"``, ``"nf4"`` or a GGUF type
        name such as ``"Q4_K"``.
    shape : tuple of int
        (n_rows, n_cols) of the original weight (out × in).
    bits : int
        Width of one code.
    group_size : int
        Columns per group (a GGUF (sub-)block; ``n_cols`` for per-channel).
    codes : ndarray, shape (n_rows, n_cols), uint8
        Integer levels, unpacked.
    scales : ndarray, shape (n_rows, n_groups) or (1, 1), float32
        The effective step of each group.
    zeros : ndarray, shape like ``scales``, float32, or None
        Zero points (in code units) of asymmetric formats.
    mins : ndarray, shape like ``scales``, float32, or None
        Subtracted offsets of min-formats.
    codebook : ndarray, shape (n_levels,) or (n_rows, n_levels), float32, or None
        Non-uniform levels indexed by the codes.
    packed : ndarray, shape (n_rows, row_bytes), uint8, or None
        Exact storage bytes where a format defines them (every GGUF type).
    g_idx : ndarray, shape (n_cols,), int32, or None
        Group id of every column when groups are not runs of consecutive
        columns (stored as int32 per column, as GPTQ checkpoints do).
    input_scale : ndarray, shape (n_cols,), float32, or None
        AWQ's per-input-column scale ``s`` when it is not folded into the
        preceding op: the codes are those of ``W·diag(s)`` and decoding
        divides column ``j`` by ``s[j]`` (stored as fp16). ``levels`` are the
        grid of the scaled weight.
    stored : Mapping of str to ndarray
        The owner's own parameter arrays, as its checkpoints hold them, where
        the format defines them: E8M0 block scales as uint8, NVFP4's E4M3
        block scales (uint8) and float32 per-tensor scale, FP8's float32
        scales, double quantization's 8-bit absmax codes and second-level
        scales, HQQ's float zeros. ``scales`` (and ``zeros``/``mins``) are then
        derived from them (the exact float32 factors the owner decodes with),
        and :attr:`storage_bits` counts these arrays at their dtypes' widths
        instead of ``scales``, ``zeros`` and ``mins``.
    rotation : qviz.rotation.Rotation or None
        The orthogonal ``R`` of ``quantize(..., rotate="hadamard")``: the
        codes, scales and levels are those of ``W·R``, and :meth:`dequantize`
        returns ``Ŵ·Rᵀ``, the weight in the layer's own basis (one sign bit
        per column counts in :attr:`storage_bits`).
    info : Mapping
        Diagnostics only (losses, search results); nothing needed to decode.
    """

    method: str
    shape: tuple[int, int]
    bits: int
    group_size: int
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None = None
    mins: np.ndarray | None = None
    codebook: np.ndarray | None = None
    packed: np.ndarray | None = None
    g_idx: np.ndarray | None = None
    input_scale: np.ndarray | None = None
    stored: Mapping[str, np.ndarray] = field(default_factory=dict)
    rotation: Rotation | None = None
    info: Mapping[str, object] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        """Groups per row."""
        if self.g_idx is not None:
            return self.scales.shape[1]
        return -(-self.shape[1] // self.group_size)

    @property
    def nbytes(self) -> int:
        """Storage bytes: the packed bytes where defined, else codes + parameters."""
        return -(-self.storage_bits // 8)

    @property
    def storage_bits(self) -> int:
        """Exact storage in bits: codes, scales, zeros, mins and codebook.

        Codes take ``bits`` each, zero points ``bits`` each, every float
        parameter 16 bits (fp16, as checkpoints store them); the ``stored``
        arrays, where given, count at their own widths instead of ``scales``,
        ``zeros`` and ``mins``.
        A per-row codebook (k-means) is stored; a fixed one (NF4, FP4, a float
        format's values) belongs to the format and is not. With ``packed``
        bytes the count is theirs. A rotation adds its sign bits.
        """
        rotation = 0 if self.rotation is None else self.rotation.storage_bits
        if self.packed is not None:
            return int(self.packed.nbytes) * 8 + rotation
        if self.stored:  # the owner's arrays: scales, zeros and mins as it keeps them
            total = self.codes.size * self.bits + sum(int(np.asarray(p).nbytes) * 8 for p in self.stored.values())
        else:
            total = self.codes.size * self.bits + self.scales.size * PARAM_BITS
            if self.zeros is not None:
                total += self.zeros.size * self.bits
            if self.mins is not None:
                total += self.mins.size * PARAM_BITS
        if self.codebook is not None and self.codebook.ndim == 2:
            total += self.codebook.size * PARAM_BITS
        if self.g_idx is not None:
            total += self.g_idx.size * 32
        if self.input_scale is not None:
            total += self.input_scale.size * PARAM_BITS
        return int(total) + rotation

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight, derived from :attr:`storage_bits`."""
        return self.storage_bits / (self.shape[0] * self.shape[1])

    def _expand(self, p: np.ndarray) -> np.ndarray:
        """Broadcast per-group parameters (rows|1, n_groups) to (n_rows, n_cols)."""
        if self.g_idx is not None:
            p = np.take(p, self.g_idx, axis=1)
        else:
            p = np.repeat(p, self.group_size, axis=1)[:, : self.shape[1]]
        return np.broadcast_to(p, self.shape)

    @property
    def implied_zero(self) -> float:
        """The constant zero point of symmetric formats, ``2**(bits-1)``."""
        return float(1 << (self.bits - 1))

    def dequantize(self, rotated: bool = False) -> np.ndarray:
        """Decode to float32, shape (n_rows, n_cols), in float32 arithmetic.

        The order of operations is ggml's, so GGUF types decode bit-exactly.

        Parameters
        ----------
        rotated : bool
            For a rotated result, stay in the rotated basis (``Q(W·R)``, what
            the codes and :meth:`levels` describe) instead of returning to the
            layer's own (``Q(W·R)·Rᵀ``, the default).
        """
        rows, cols = self.shape
        if self.g_idx is None and cols % self.group_size == 0:
            # whole groups: (rows, n_groups, group_size) against (rows|1, n_groups, 1) parameters
            codes = self.codes.reshape(rows, cols // self.group_size, self.group_size)

            def param(p):
                return p.astype(np.float32)[:, :, None]
        else:
            codes = self.codes

            def param(p):
                return self._expand(p.astype(np.float32))

        s = param(self.scales)
        if self.codebook is not None:
            cb = self.codebook.astype(np.float32)
            if cb.ndim == 1:
                vals = cb[codes]
            else:
                vals = np.take_along_axis(cb, self.codes.astype(np.intp), axis=1).reshape(codes.shape)
            out = s * vals
        elif self.mins is not None:
            out = s * codes.astype(np.float32) - param(self.mins)
        else:
            z = np.float32(self.implied_zero) if self.zeros is None else param(self.zeros)
            out = s * (codes.astype(np.float32) - z)
        out = out.astype(np.float32, copy=False).reshape(rows, cols)
        if self.input_scale is not None:
            out = out / self.input_scale.astype(np.float32)[None, :]
        if self.rotation is not None and not rotated:
            out = self.rotation.restore(out)
        return out

    def levels(self, row: int, group: int) -> np.ndarray:
        """The values group ``group`` of row ``row`` can represent, ascending.

        Returns
        -------
        ndarray, shape (n_levels,), float32
            The quantization grid (2**bits values) or the scaled codebook's
            distinct finite values (a float format's NaN codes are never
            produced; its +0 and −0 are one level).
        """
        n_rows = self.shape[0]
        if not (0 <= row < n_rows and 0 <= group < self.n_groups):
            raise IndexError(f"(row, group) = ({row}, {group}) is outside "
                             f"{n_rows} rows × {self.n_groups} groups")

        def at(p):
            return np.float32(p[min(row, p.shape[0] - 1), 0 if p.shape[1] == 1 else group])

        s = at(self.scales)
        if self.codebook is not None:
            cb = self.codebook if self.codebook.ndim == 1 else self.codebook[row]
            cb = cb[np.isfinite(cb)]
            return np.unique(s * cb.astype(np.float32))  # ascending, ±0 of a float format once
        q = np.arange(1 << self.bits, dtype=np.float32)
        if self.mins is not None:
            return np.sort(s * q - at(self.mins))
        z = self.implied_zero if self.zeros is None else at(self.zeros)
        return np.sort(s * (q - np.float32(z)))

    def _repr_html_(self) -> str:
        rows, cols = self.shape
        items = [
            ("method", self.method), ("shape", f"{rows} × {cols}"), ("bits", self.bits),
            ("group size", self.group_size),
            ("bits per weight", f"{self.bits_per_weight:.4f}"),
            ("storage", f"{self.nbytes:,} bytes (fp32: {rows * cols * 4:,})"),
        ]
        items += [(k, v) for k, v in self.info.items() if np.isscalar(v)]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in items)
        return f"<table><caption>QuantResult</caption>{body}</table>"

    def __repr__(self) -> str:
        return (f"QuantResult(method={self.method!r}, shape={self.shape}, bits={self.bits}, "
                f"group_size={self.group_size}, bits_per_weight={self.bits_per_weight:.4f})")
