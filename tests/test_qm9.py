"""QM9 from qm9pack: the numbers docs/QM9.md promises, and the published splits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lieprop.data.properties import HARTREE_EV, PROPERTY_NAMES
from lieprop.data.qm9 import N_MOLECULES, split_indices


def test_the_first_molecule_is_methane_with_the_documented_values(qm9_head):
    z, x = qm9_head.molecule(0)
    assert z.tolist() == [6, 1, 1, 1, 1]
    t = dict(zip(PROPERTY_NAMES, qm9_head.targets[0], strict=True))
    assert t["homo"] == pytest.approx(-0.3877) and t["u0"] == pytest.approx(-40.47893)
    atomization = qm9_head.targets_in_units()[0] - qm9_head.atom_reference()[0]
    u0 = PROPERTY_NAMES.index("u0")
    assert atomization[u0] == pytest.approx(-0.631066 * HARTREE_EV, abs=1e-4)  # about -17.17 eV


def test_units_convert_hartree_to_ev():
    assert pytest.approx(27.211386, abs=1e-6) == HARTREE_EV


def test_cormorant_split_is_100000_17748_13083_and_disjoint():
    parts = split_indices(N_MOLECULES, "cormorant")
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [100_000, 17_748, 13_083]
    allidx = np.concatenate(list(parts.values()))
    assert len(np.unique(allidx)) == N_MOLECULES
    # The split is the numpy.random.seed(0) permutation of the LieConv / Cormorant code.
    np.random.seed(0)
    assert np.array_equal(parts["train"][:10], np.random.permutation(N_MOLECULES)[:10])


def test_schnet_split_sizes():
    parts = split_indices(N_MOLECULES, "schnet")
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [110_000, 10_000, 10_831]
    with pytest.raises(ValueError, match="unknown split"):
        split_indices(10, "random")


@pytest.mark.slow
def test_full_cache_builds_and_loads_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("LIEPROP_CACHE_DIR", str(tmp_path))
    from lieprop.data.qm9 import load_qm9

    data = load_qm9()
    assert len(data) == N_MOLECULES
    assert data.numbers.shape[0] == data.offsets[-1]
    t = time.perf_counter()
    again = load_qm9()
    assert time.perf_counter() - t < 5.0
    assert np.array_equal(again.offsets, data.offsets)
    assert again.targets[0, PROPERTY_NAMES.index("homo")] == pytest.approx(-0.3877)
    assert set(np.unique(data.numbers)) == {1, 6, 7, 8, 9}
    assert data.n_atoms.max() == 29 and (data.numbers > 1).reshape(-1).sum() > 0
