"""The format an algorithm is handed: how to choose a group's parameters and round a column.

GPTQ (and later AWQ) never copies a quantizer. It is handed a format object
with two methods, in the spirit of gpt-fast's ``GenericGPTQRunner`` (which is
given ``get_qparams_func`` and ``quantize_func``):

* ``choose_params(w_block)``: the scale and zero of one group of columns;
* ``quantize_column(w_col, scale, zero)``: codes and their decoded values.

:class:`RTNFormat` is affine int-k with the GPTQ reference's conventions; it
calls :func:`qviz.formats.rtn.choose_params` and :func:`qviz.formats.rtn.quantize`,
so the codes GPTQ gets for a given scale and zero are exactly RTN's. A new grid
is a new format class with the same two methods, not a new GPTQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qviz.formats import rtn


@dataclass(frozen=True)
class RTNFormat:
    """Affine integer quantization, round to nearest (IST-DASLab/gptq ``Quantizer``).

    Attributes
    ----------
    bits : int
        2..8; codes are 0 .. 2**bits - 1.
    sym : bool
        Symmetric range ±max|w| with the fixed zero ``2**(bits-1)``.
    group_size : int
        Input columns that share one scale and zero (>= 1). A value >= the row
        length means per channel (one group per output row).

    Examples
    --------
    >>> fmt = RTNFormat(bits=2, sym=False, group_size=3)
    >>> scale, zero = fmt.choose_params(np.array([[-1.0, 0.5, 2.0]], dtype=np.float32))
    >>> codes, w_hat = fmt.quantize_column(np.array([0.4], dtype=np.float32), scale, zero)
    >>> int(codes[0]), float(w_hat[0])
    (1, 0.0)
    """

    bits: int
    sym: bool = False
    group_size: int = 128

    def __post_init__(self):
        if not 2 <= int(self.bits) <= 8:
            raise ValueError(f"bits={self.bits}: choose an integer from 2 to 8")
        if int(self.group_size) < 1:
            raise ValueError(f"group_size={self.group_size}: use a positive number of columns")

    def choose_params(self, w_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero of one group, from its current weights.

        Parameters
        ----------
        w_block : ndarray, shape (n_rows, k), float32
            The group's columns (any ``k >= 1``; the whole row for per channel).

        Returns
        -------
        scale, zero : ndarray, shape (n_rows,), float32
            ``zero`` holds whole numbers (``2**(bits-1)`` when symmetric).
        """
        w_block = np.asarray(w_block, dtype=np.float32)
        scales, zeros = rtn.choose_params(w_block, self.bits, sym=self.sym,
                                          group_size=w_block.shape[1])
        return scales[:, 0], zeros[:, 0]  # (n_rows, 1) -> (n_rows,)

    def quantize_column(self, w_col: np.ndarray, scale: np.ndarray,
                        zero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Round one column to the grid of its group.

        Parameters
        ----------
        w_col : ndarray, shape (n_rows,), float32
        scale, zero : ndarray, shape (n_rows,), float32
            From :meth:`choose_params`.

        Returns
        -------
        codes : ndarray, shape (n_rows,), uint8
            ``clamp(round(w / scale) + zero, 0, 2**bits - 1)``.
        w_hat : ndarray, shape (n_rows,), float32
            ``scale * (codes - zero)``, the reference's decoded column.
        """
        w_col = np.asarray(w_col, dtype=np.float32)[:, None]  # (n_rows, 1): one group of one column
        codes = rtn.quantize(w_col, scale[:, None], zero[:, None], self.bits, 1)[:, 0]
        w_hat = scale * (codes.astype(np.float32) - zero)
        return codes, w_hat.astype(np.float32)
