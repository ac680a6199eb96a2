"""The lattices of ggml's i-quants: grid points, the point map and each off-grid point's nearest neighbours.

IQ2_XXS, IQ2_XS, IQ2_S and IQ1_S/IQ1_M quantize 8 weights at a time to one point of a fixed grid of 8-vectors;
IQ3_XXS and IQ3_S quantize 4 at a time. A grid point is a vector of *levels* ``l`` (2 bits each for the IQ2/IQ1
lattices, 3 bits for IQ3). The quantizers search in the odd coordinates ``2*l + 1``; the decoders multiply by
per-family *values* of the levels (ggml's ``iq2xxs_grid`` … ``iq1s_grid`` tables hold those values as bytes).

========= ====== ==== ========= ===================================== =====================
lattice   points dims level bits decode value of level l                nearest kept (nwant)
========= ====== ==== ========= ===================================== =====================
iq2xxs    256    8    2         8, 25, 43                             2
iq2xs     512    8    2         8, 25, 43                             2
iq2s      1024   8    2         8, 25, 43                             1
iq1s      2048   8    2         -1, 0, 1                              3
iq3xxs    256    4    3         4, 12, 20, 28, 36, 44, 52, 62          2
iq3s      512    4    3         1, 3, 5, 7, 9, 11, 13, 15              3
========= ====== ==== ========= ===================================== =====================

The point map and neighbour lists are built as ggml's ``iq2xs_init_impl`` / ``iq3xs_init_impl`` build them.
Every packed level vector ``index = sum(l[k] << bits*k)`` below ``map_size`` (43692 for 8 dims, 4096 for 4) maps
to its grid point's number when it is one; otherwise to ``-(offset + 1)``, where ``neighbours[offset]`` is a
count ``n`` followed by ``n`` grid point numbers: all points at the ``nwant`` smallest squared distances (in odd
coordinates), ordered by (distance, number).

The packed levels come from :mod:`qviz.formats.iq_grid_data` (generated from ggml's definitions by
``scripts/extract_iq_grids.py``); ``tests/test_iq_lattice.py`` checks the decoded grids against ggml's
``to_float``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from qviz.formats.iq_grid_data import PACKED

# name: (bits per level, dims, decode value of each level, nwant)
_SPECS: dict[str, tuple[int, int, tuple[int, ...], int]] = {
    "iq2xxs": (2, 8, (8, 25, 43), 2),
    "iq2xs": (2, 8, (8, 25, 43), 2),
    "iq2s": (2, 8, (8, 25, 43), 1),
    "iq1s": (2, 8, (-1, 0, 1), 3),
    "iq3xxs": (3, 4, (4, 12, 20, 28, 36, 44, 52, 62), 2),
    "iq3s": (3, 4, (1, 3, 5, 7, 9, 11, 13, 15), 3),
}
MAP_SIZE = {8: 43692, 4: 4096}  # ggml's kmap_size for 8-dim (2-bit) and 4-dim (3-bit) lattices
_CHUNK = 2048  # off-grid points whose distances are computed at once


@dataclass(frozen=True)
class Lattice:
    """One i-quant lattice with ggml's search tables.

    Attributes
    ----------
    name : str
        ``"iq2xxs"``, ``"iq2xs"``, ``"iq2s"``, ``"iq1s"``, ``"iq3xxs"`` or ``"iq3s"``.
    bits : int
        Bits per level in a packed index (2 or 3).
    nwant : int
        How many distinct nearest distances an off-grid point keeps.
    packed : ndarray of uint16, shape (n,)
        ggml's packed level indices, one per grid point.
    levels : ndarray of uint8, shape (n, dims)
        The levels of each grid point.
    search : ndarray of int8, shape (n, dims)
        ``2*levels + 1``: the coordinates the quantizers compare in.
    values : ndarray of int8, shape (n, dims)
        Decoded values (ggml's ``*_grid`` tables; IQ1_S's are -1/0/1).
    kmap : ndarray of int32, shape (map_size,)
        Grid number of each packed index on the grid, else ``-(offset + 1)`` into ``neighbours``.
    neighbours : ndarray of uint16, shape (m,)
        At each offset: a count ``n``, then ``n`` grid numbers by (distance, number).
    """

    name: str
    bits: int
    nwant: int
    packed: npt.NDArray[np.uint16]
    levels: npt.NDArray[np.uint8]
    search: npt.NDArray[np.int8]
    values: npt.NDArray[np.int8]
    kmap: npt.NDArray[np.int32]
    neighbours: npt.NDArray[np.uint16]

    @property
    def dims(self) -> int:
        """Coordinates per grid point (8 or 4)."""
        return int(self.levels.shape[1])

    def neighbours_of(self, index: int) -> npt.NDArray[np.uint16]:
        """Grid numbers nearest to the off-grid packed index ``index`` (empty if it is on the grid).

        Returns
        -------
        ndarray of uint16, shape (n,)
        """
        k = int(self.kmap[index])
        if k >= 0:
            return np.zeros(0, np.uint16)
        start = -k - 1
        return self.neighbours[start + 1:start + 1 + int(self.neighbours[start])]


class LatticePoints(NamedTuple):
    """The grid points an i-quant row chose: what its ``points_<type>(packed)`` returns.

    lattice : str                                  the :func:`lattice` name (``"iq2xxs"`` ...)
    index : uint16, (n_rows, n_cols // dims)       grid point number of each run of ``dims`` weights
    negative : bool, (n_rows, n_cols)              the sign bit of each weight (all False where the type
                                                   stores no signs: IQ1_S, IQ1_M)
    """

    lattice: str
    index: npt.NDArray[np.uint16]
    negative: npt.NDArray[np.bool_]


def pack_levels(levels: npt.ArrayLike, bits: int) -> npt.NDArray[np.int64]:
    """Packed indices ``sum(l[..., k] << bits*k)`` of level vectors.

    Parameters
    ----------
    levels : array_like of int, shape (..., dims)
    bits : int

    Returns
    -------
    ndarray of int64, shape (...)
    """
    lv = np.asarray(levels, dtype=np.int64)
    return (lv << (bits * np.arange(lv.shape[-1], dtype=np.int64))).sum(axis=-1)


def _unpack(index: npt.NDArray[np.int64], bits: int, dims: int) -> npt.NDArray[np.int64]:
    return (index[..., None] >> (bits * np.arange(dims, dtype=np.int64))) & ((1 << bits) - 1)


def _neighbour_table(search: npt.NDArray[np.int8], kmap: npt.NDArray[np.int32], bits: int,
                     nwant: int) -> npt.NDArray[np.uint16]:
    """Fill ``kmap``'s off-grid entries (in place) and return the neighbour lists, as ggml's init does.

    For each off-grid packed index (in increasing order) the list holds every grid point whose squared
    distance is among the ``nwant`` smallest distinct distances, ordered by (distance, grid number), which is
    the order of ggml's ``qsort`` on (d2, j) pairs.
    """
    dims = search.shape[1]
    grid = search.astype(np.float32)
    g2 = (grid * grid).sum(axis=1)
    off = np.flatnonzero(kmap < 0)
    parts: list[npt.NDArray[np.uint16]] = []
    counter = 0
    for lo in range(0, len(off), _CHUNK):
        idx = off[lo:lo + _CHUNK]
        pos = (2 * _unpack(idx.astype(np.int64), bits, dims) + 1).astype(np.float32)  # (c, dims)
        # small integers: exact in float32 (|d2| < 2**12)
        d2 = ((pos * pos).sum(axis=1)[:, None] + g2[None, :] - 2 * (pos @ grid.T)).astype(np.int32)  # (c, n)
        thr = d2.min(axis=1)
        for _ in range(nwant - 1):
            above = np.where(d2 > thr[:, None], d2, np.iinfo(np.int32).max)
            nxt = above.min(axis=1)
            thr = np.where(nxt < np.iinfo(np.int32).max, nxt, thr)
        rows, cols = np.nonzero(d2 <= thr[:, None])
        order = np.lexsort((cols, d2[rows, cols], rows))
        rows, cols = rows[order], cols[order]
        counts = np.bincount(rows, minlength=len(idx))
        starts = counter + np.concatenate([[0], np.cumsum(1 + counts)[:-1]])
        kmap[idx] = -(starts + 1)
        out = np.empty(int((1 + counts).sum()), dtype=np.uint16)
        out[starts - counter] = counts
        first = np.repeat(starts - counter + 1, counts)
        within = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        out[first + within] = cols
        parts.append(out)
        counter += len(out)
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


@functools.cache
def lattice(name: str) -> Lattice:
    """The lattice ``name`` with its map and neighbour tables (built once per process).

    Parameters
    ----------
    name : {"iq2xxs", "iq2xs", "iq2s", "iq1s", "iq3xxs", "iq3s"}

    Returns
    -------
    Lattice
    """
    if name not in _SPECS:
        raise ValueError(f"unknown i-quant lattice {name!r}; expected one of {sorted(_SPECS)}")
    bits, dims, decode, nwant = _SPECS[name]
    packed = np.frombuffer(bytes.fromhex("".join(PACKED[name])), dtype="<u2").astype(np.uint16)
    levels = _unpack(packed.astype(np.int64), bits, dims).astype(np.uint8)
    search = (2 * levels + 1).astype(np.int8)
    values = np.asarray(decode, dtype=np.int64)[levels.astype(np.int64)].astype(np.int8)
    kmap = np.full(MAP_SIZE[dims], -1, dtype=np.int32)
    kmap[packed.astype(np.int64)] = np.arange(len(packed), dtype=np.int32)
    neighbours = _neighbour_table(search, kmap, bits, nwant)
    for a in (packed, levels, search, values, kmap, neighbours):
        a.flags.writeable = False
    return Lattice(name, bits, nwant, packed, levels, search, values, kmap, neighbours)
