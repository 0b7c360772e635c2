"""Rings from a geometry (lieprop.data.rings): the cycle rank of the covalent-bond graph, which calibration groups
molecules by."""

from __future__ import annotations

import numpy as np
import pytest

from lieprop.data.readers import from_smiles
from lieprop.data.rings import bonds, ring_count
from lieprop.model.calibration import RING_GROUPS, ring_group


@pytest.mark.parametrize(("smiles", "rings"), [
    ("C", 0), ("O", 0), ("CCO", 0), ("C#N", 0),
    ("C1CC1", 1), ("c1ccccc1", 1), ("C1CCOC1", 1),
    ("c1ccc2ccccc2c1", 2),
    ("C12CC(C1)C2", 2),  # bicyclo[1.1.1]pentane: two independent rings (RDKit's symmetrised SSSR says three)
    ("C12C3C4C1C5C2C3C45", 5),  # cubane: 12 bonds, 8 atoms
])
def test_the_ring_count_is_the_cycle_rank_of_the_bonds_in_an_rdkit_conformer(smiles, rings):
    molecule = from_smiles(smiles)
    assert ring_count(molecule.numbers, molecule.positions) == rings
    assert ring_group(molecule.numbers, molecule.positions) == min(rings, len(RING_GROUPS) - 1)


def test_bonds_are_symmetric_and_water_has_two():
    water = from_smiles("O")
    adjacency = bonds(water.numbers, water.positions)
    assert (adjacency == adjacency.T).all() and not adjacency.diagonal().any()
    assert int(adjacency.sum()) // 2 == 2  # two O-H, no H...H


def test_two_fragments_count_their_own_rings():
    benzene, methane = from_smiles("c1ccccc1"), from_smiles("C")
    numbers = np.concatenate([benzene.numbers, methane.numbers])
    positions = np.concatenate([benzene.positions, methane.positions + [20.0, 0.0, 0.0]])
    assert ring_count(numbers, positions) == 1


def test_qm9_geometries_give_the_rings_of_their_smiles(qm9_head):
    from rdkit import Chem
    from rdkit.Chem import GetMolFrags

    agree = []
    for i in range(len(qm9_head)):
        graph = Chem.MolFromSmiles(str(qm9_head.smiles[i]))
        rank = graph.GetNumBonds() - graph.GetNumAtoms() + len(GetMolFrags(graph))
        agree.append(ring_count(*qm9_head.molecule(i)) == rank)
    assert np.mean(agree) >= 0.99
