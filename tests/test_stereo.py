"""Stereochemistry: a SMILES that leaves diastereomers open says which one was predicted; the QM9 conformer cache
embeds each molecule in the stereoisomer of its DFT geometry (lieprop.data.stereo)."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from lieprop.data.readers import from_smiles
from lieprop.data.stereo import isomeric_smiles


def canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


@pytest.mark.parametrize(("smiles", "unassigned", "warned"), [
    ("CCO", 0, False),
    ("CC(O)CC", 1, False),  # one centre: the two choices are enantiomers, the same prediction
    ("C/C=C/C(C)O", 1, False),  # one centre and a given double bond: a mirror image keeps E, so still enantiomers
    ("CC1CCC(C)CC1", 2, True),  # cis or trans
    ("C[C@H]1CC[C@@H](C)CC1", 0, False),
    ("C[C@H](O)C(O)C", 1, True),  # one centre given, the other open: two diastereomers
    ("CC=CC", 1, True),  # E or Z
    ("C/C=C/C", 0, False),
    ("C12C3C4C1C5C2C3C45", 0, False),  # cubane: potential centres that cannot vary
    ("CCN=[N+]=[N-]", 0, False),  # an azide's N=N is no stereo bond
])
def test_unassigned_stereo_counts_what_the_input_left_open_and_could_vary(smiles, unassigned, warned):
    mol = from_smiles(smiles)
    assert mol.provenance["conformer"]["unassigned_stereo"] == unassigned
    assert any("stereo" in w for w in mol.warnings) is warned


def test_a_smiles_open_to_diastereomers_is_warned_and_names_the_one_predicted():
    mol = from_smiles("CC1CCC(C)CC1", "dimethylcyclohexane")
    chosen = mol.provenance["conformer"]["stereo_smiles"]
    assert mol.provenance["conformer"]["unassigned_stereo"] == 2
    assert "@" in chosen and canonical(chosen.replace("@", "")) == canonical("CC1CCC(C)CC1")
    (warning,) = [w for w in mol.warnings if "stereo" in w]
    assert "2 stereocentres unassigned" in warning and chosen in warning
    # sending the stereo SMILES it names gives that stereoisomer again, now without a warning
    again = from_smiles(chosen)
    assert canonical(again.provenance["conformer"]["stereo_smiles"]) == canonical(chosen)
    assert again.provenance["conformer"]["unassigned_stereo"] == 0
    assert not [w for w in again.warnings if "stereo" in w]


@pytest.mark.parametrize("smiles", ["C[C@H]1CC[C@@H](C)CC1", "C[C@H]1CC[C@H](C)CC1", r"C/C=C\C", "C/C=C/C"])
def test_the_conformer_of_a_stereo_smiles_has_that_stereo(smiles):
    mol = from_smiles(smiles)
    assert canonical(mol.provenance["conformer"]["stereo_smiles"]) == canonical(smiles)
    assert not mol.warnings


def test_an_enantiomer_choice_is_recorded_without_a_warning():
    mol = from_smiles("CC(O)CC")
    assert mol.provenance["conformer"]["unassigned_stereo"] == 1
    assert "@" in mol.provenance["conformer"]["stereo_smiles"]
    assert not mol.warnings


@pytest.mark.parametrize("isomer", ["C[C@H]1CC[C@@H](C)CC1", "C[C@H]1CC[C@H](C)CC1", r"C/C=C\CO", "C/C=C/CO"])
def test_isomeric_smiles_reads_the_stereo_of_a_geometry_in_any_atom_order(isomer):
    flat = canonical(isomer.replace("@", "").replace("/", "").replace("\\", ""))
    geometry = from_smiles(isomer)
    order = np.random.default_rng(0).permutation(len(geometry.numbers))
    got = isomeric_smiles(flat, geometry.numbers[order], geometry.positions[order])
    assert got is not None and canonical(got) == canonical(isomer)


def test_isomeric_smiles_is_none_when_the_geometry_is_another_molecule():
    propanol = from_smiles("CCCO")
    assert isomeric_smiles("CC(C)O", propanol.numbers, propanol.positions) is None  # same atoms, other bonds
    assert isomeric_smiles("CCO", propanol.numbers, propanol.positions) is None  # other atoms
    assert isomeric_smiles("not a smiles", propanol.numbers, propanol.positions) is None


def test_a_strained_cage_embeds_in_the_stereo_its_smiles_gives():
    # ETKDG's chirality checks reject every start for this QM9 cage (a test-split molecule in its DFT stereo); the
    # embedder then embeds without them and keeps only a conformer with the stereo asked for
    cage = "N#C[C@]12OC[C@H]1[C@H]1O[C@H]12"
    mol = from_smiles(cage)
    assert canonical(mol.provenance["conformer"]["stereo_smiles"]) == canonical(cage)
    assert not mol.warnings


def test_the_conformer_mismatch_benchmark_measures_rmsd_up_to_order_rotation_and_mirror_image():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from conformer_mismatch import heavy_rmsd
    from scipy.spatial.transform import Rotation

    butanol = from_smiles("C[C@H](O)CC")
    z, x = butanol.numbers, np.array(butanol.positions)
    order = np.random.default_rng(1).permutation(len(z))
    moved = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).apply(x) + 5.0
    assert heavy_rmsd((z, x), (z[order], moved[order])) < 1e-4
    assert heavy_rmsd((z, x), (z, x * np.array([-1.0, 1.0, 1.0]))) < 1e-4  # the enantiomer: the same to QM9's labels
    bent = x.copy()
    bent[np.flatnonzero(z == 8)[0]] += [0.0, 0.0, 0.2]  # the oxygen 0.2 Å off: a small, nonzero heavy-atom RMSD
    assert 0.01 < heavy_rmsd((z, x), (z, bent)) < 0.2
    propanol = from_smiles("CCCO")
    assert np.isnan(heavy_rmsd((z, x), (propanol.numbers, propanol.positions)))  # other atoms: no mapping


@pytest.mark.parametrize(("drawn", "warned"), [(r"C/C=C\CO", False), ("C[C@H](O)[C@@H](C)O", False),
                                               ("CC(O)C(C)O", True)])
def test_a_2d_mol_block_is_embedded_in_the_stereo_it_draws(drawn, warned):
    from rdkit.Chem import AllChem

    from lieprop.data.readers import read_sdf

    drawing = Chem.MolFromSmiles(drawn)
    AllChem.Compute2DCoords(drawing)
    Chem.WedgeMolBonds(drawing, drawing.GetConformer())  # wedges and the double bond's 2D geometry carry the stereo
    (item,) = read_sdf(Chem.MolToMolBlock(drawing))
    conformer = item.molecule.provenance["conformer"]
    assert any("stereo" in w for w in item.molecule.warnings) is warned
    if not warned:
        assert canonical(conformer["stereo_smiles"]) == canonical(drawn) and conformer["unassigned_stereo"] == 0
