"""The i-quant lattices' search tables against a plain transcription of how ggml's init builds them."""
import numpy as np
import pytest

from qviz.formats.iq_lattice import MAP_SIZE, lattice, pack_levels

NAMES = ["iq2xxs", "iq2xs", "iq2s", "iq1s", "iq3xxs", "iq3s"]
SIZES = {"iq2xxs": 256, "iq2xs": 512, "iq2s": 1024, "iq1s": 2048, "iq3xxs": 256, "iq3s": 512}


def brute_neighbours(lat, index):
    """All grid points at the nwant smallest distinct squared distances, by (distance, number)."""
    pos = 2 * ((index >> (lat.bits * np.arange(lat.dims))) & ((1 << lat.bits) - 1)) + 1
    d2 = [int(((lat.search[j].astype(int) - pos) ** 2).sum()) for j in range(len(lat.search))]
    pairs = sorted(zip(d2, range(len(d2))))
    out, seen = [], []
    for dist, j in pairs:
        if dist not in seen:
            if len(seen) == lat.nwant:
                break
            seen.append(dist)
        out.append(j)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_grid_points_are_distinct_and_mapped(name):
    lat = lattice(name)
    assert lat.levels.shape == (SIZES[name], lat.dims)
    assert len(np.unique(lat.packed)) == SIZES[name]
    assert (pack_levels(lat.levels, lat.bits) == lat.packed).all()
    assert lat.kmap.shape == (MAP_SIZE[lat.dims],)
    assert (lat.kmap[lat.packed] == np.arange(SIZES[name])).all()
    assert (lat.search == 2 * lat.levels.astype(np.int8) + 1).all()


@pytest.mark.parametrize("name", NAMES)
def test_neighbour_lists_match_a_brute_force_search(name):
    lat = lattice(name)
    off = np.flatnonzero(lat.kmap < 0)
    rng = np.random.default_rng(SIZES[name])
    sample = np.concatenate([off[:5], off[-5:], rng.choice(off, 40, replace=False)])
    for index in sample:
        assert lat.neighbours_of(int(index)).tolist() == brute_neighbours(lat, int(index)), index
    # the lists tile the table in increasing index order, each a count then its entries
    starts = -lat.kmap[off] - 1
    counts = lat.neighbours[starts].astype(np.int64)
    assert starts[0] == 0 and (np.diff(starts) == 1 + counts[:-1]).all()
    assert starts[-1] + 1 + counts[-1] == len(lat.neighbours)


def test_decode_values_by_family():
    assert set(np.unique(lattice("iq2s").values)) == {8, 25, 43}
    assert set(np.unique(lattice("iq1s").values)) == {-1, 0, 1}
    assert set(np.unique(lattice("iq3xxs").values)) <= {4, 12, 20, 28, 36, 44, 52, 62}
    with pytest.raises(ValueError, match="unknown i-quant lattice 'iq9'"):
        lattice("iq9")
