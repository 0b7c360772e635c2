"""Readers turn every supported input into validated molecules, one Item per record, never failing a batch."""

from __future__ import annotations

import gzip
import itertools
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import random_rotation
from hypothesis import given, settings
from hypothesis import strategies as st

from lieprop.data.elements import symbol
from lieprop.data.molecule import Molecule
from lieprop.data.readers import (
    DEFAULT_SEED,
    FORMATS,
    Item,
    SmilesRecord,
    embed_many,
    from_arrays,
    from_atoms,
    from_smiles,
    read_file,
    read_sdf,
    read_smi,
    read_smiles_csv,
    read_xyz,
)
from lieprop.data.validation import MoleculeError, ValidationLimits

DATA = Path(__file__).parent / "data"


def formula(mol: Molecule) -> dict[str, int]:
    return dict(Counter(symbol(int(z)) for z in mol.numbers))


def outcome(item: Item) -> str:
    return "ok" if item.ok else item.error.code


def smiles_error(smiles: str, **kwargs) -> MoleculeError:
    with pytest.raises(MoleculeError) as info:
        from_smiles(smiles, **kwargs)
    return info.value


def bonded_distances(mol: Molecule, z_a: int, z_b: int) -> np.ndarray:
    """For each atom of element z_a, the distance to its nearest atom of element z_b."""
    a = mol.positions[mol.numbers == z_a]
    b = mol.positions[mol.numbers == z_b]
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    if z_a == z_b:
        d[d == 0] = np.inf
    return d.min(axis=1)


def to_xyz(mol: Molecule, comment: str = "") -> str:
    lines = [str(mol.n_atoms), comment]
    for z, (x, y, w) in zip(mol.numbers, mol.positions, strict=True):
        lines.append(f"{symbol(int(z))} {x:.10f} {y:.10f} {w:.10f}")
    return "\n".join(lines) + "\n"


# --- SMILES -------------------------------------------------------------------------------------


def test_ethanol_from_smiles_is_a_sensible_3d_molecule():
    mol = from_smiles("CCO", id="ethanol")
    assert mol.id == "ethanol"
    assert formula(mol) == {"C": 2, "O": 1, "H": 6}
    assert mol.positions[:, 2].std() > 0.1  # not flat
    assert 1.38 < bonded_distances(mol, 8, 6).min() < 1.46  # C-O
    assert np.all((bonded_distances(mol, 1, 6) > 0.9) | (bonded_distances(mol, 1, 8) < 1.0))


def test_smiles_provenance_records_how_the_geometry_was_made():
    prov = from_smiles("CCO").provenance
    assert prov["source"] == "smiles" and prov["smiles"] == "CCO"
    conformer = prov["conformer"]
    assert conformer["method"] == "ETKDGv3" and conformer["seed"] == DEFAULT_SEED
    assert conformer["force_field"] == "MMFF94" and conformer["converged"] is True
    assert np.isfinite(conformer["energy_kcal_mol"])


def test_benzene_is_a_flat_hexagon():
    mol = from_smiles("c1ccccc1")
    assert formula(mol) == {"C": 6, "H": 6}
    carbons = mol.positions[mol.numbers == 6]
    centred = carbons - carbons.mean(axis=0)
    assert np.linalg.svd(centred, compute_uv=False)[2] < 1e-3  # planar
    assert np.allclose(bonded_distances(mol, 6, 6), 1.39, atol=0.02)


def test_same_smiles_gives_identical_coordinates():
    first, second = from_smiles("OCC(=O)N"), from_smiles("OCC(=O)N")
    assert np.array_equal(first.positions, second.positions)
    assert not np.array_equal(first.positions, from_smiles("OCC(=O)N", seed=1).positions)


def test_several_conformers_keep_the_lowest_energy_one():
    mol = from_smiles("CCCCO", n_conformers=4)
    assert mol.provenance["conformer"]["n_conformers"] == 4
    assert formula(mol) == {"C": 4, "O": 1, "H": 10}


@pytest.mark.parametrize("smiles", ["[NH4+]", "CC(=O)[O-]", "C[N+](C)(C)C"])
def test_charged_species_are_refused(smiles):
    err = smiles_error(smiles)
    assert err.code == "charged_molecule"


def test_charged_species_pass_with_a_warning_when_allowed():
    mol = from_smiles("[NH4+]", limits=ValidationLimits(allow_charged=True))
    assert mol.charge == 1 and any("charge +1" in w for w in mol.warnings)


@pytest.mark.parametrize("smiles", ["C1CC", "not a smiles", "C(C)(C)(C)(C)C", "c1cccc1", "CCO.O"])
def test_invalid_smiles_strings(smiles):
    assert smiles_error(smiles).code == "invalid_smiles"


def test_invalid_smiles_message_quotes_rdkit():
    assert "unclosed ring" in smiles_error("C1CC").message


@pytest.mark.parametrize("smiles", ["", "   "])
def test_empty_smiles(smiles):
    assert smiles_error(smiles).code == "empty_input"


def test_chlorine_is_named():
    err = smiles_error("CCCl")
    assert err.code == "unsupported_element"
    assert "Cl (Z=17)" in err.message


def test_too_big_is_refused_before_embedding():
    assert smiles_error("C" * 12).code == "too_many_atoms"  # C12H26, 38 atoms


def test_ten_heavy_atoms_are_accepted_with_an_out_of_domain_warning():
    mol = from_smiles("c1ccc2ccccc2c1")  # naphthalene: 18 atoms, 10 heavy
    assert any("10 heavy atoms" in w for w in mol.warnings)


# --- ASE Atoms and arrays -----------------------------------------------------------------------


def test_ase_atoms_ethanol():
    from ase.build import molecule

    mol = from_atoms(molecule("CH3CH2OH"), id="etoh")
    assert mol.id == "etoh" and formula(mol) == {"C": 2, "O": 1, "H": 6}
    assert mol.provenance["source"] == "atoms"


def test_ase_atoms_id_and_charge_come_from_info():
    from ase.build import molecule

    atoms = molecule("H2O")
    atoms.info.update(name="water", charge=-1)
    with pytest.raises(MoleculeError) as info:
        from_atoms(atoms)
    assert info.value.code == "charged_molecule"
    atoms.info["charge"] = 0
    assert from_atoms(atoms).id == "water"


def test_ase_atoms_charge_from_initial_charges():
    from ase.build import molecule

    atoms = molecule("NH3")
    atoms.set_initial_charges([1.0, 0.0, 0.0, 0.0])
    assert pytest.raises(MoleculeError, from_atoms, atoms).value.code == "charged_molecule"


def test_ase_atoms_with_chlorine():
    from ase.build import molecule

    assert pytest.raises(MoleculeError, from_atoms, molecule("CH3Cl")).value.code == "unsupported_element"


def test_arrays_of_mismatched_length_are_invalid_geometry():
    assert from_arrays([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]).n_atoms == 3
    err = pytest.raises(MoleculeError, from_arrays, [8, 1, 1], [[0, 0, 0], [0.96, 0, 0]]).value
    assert err.code == "invalid_geometry"


# --- XYZ ----------------------------------------------------------------------------------------


def test_xyz_ethanol_from_a_path_and_from_text():
    (item,) = read_xyz(DATA / "ethanol.xyz")
    assert item.ok and item.id == "ethanol" and formula(item.molecule) == {"C": 2, "O": 1, "H": 6}
    assert item.molecule.provenance["source"] == "xyz"
    (same,) = read_xyz((DATA / "ethanol.xyz").read_text())
    (as_str,) = read_xyz(str(DATA / "ethanol.xyz"))
    assert np.array_equal(same.molecule.positions, item.molecule.positions)
    assert np.array_equal(as_str.molecule.positions, item.molecule.positions)


def test_multiframe_extxyz_keeps_the_good_frames_around_a_broken_one():
    items = list(read_xyz(DATA / "multi_broken.extxyz"))
    assert [i.index for i in items] == [0, 1, 2, 3]
    assert [i.id for i in items] == ["water", "methane", "broken", "ammonia"]
    assert [outcome(i) for i in items] == ["ok", "ok", "invalid_xyz", "ok"]
    assert "declares 5 atoms but only 3" in items[2].error.message
    assert formula(items[3].molecule) == {"N": 1, "H": 3}


def test_xyz_frame_with_more_atom_lines_than_declared():
    water = "3\nw\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    text = "2\ntoo-many\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n" + water
    assert [(i.id, outcome(i)) for i in read_xyz(text)] == [("too-many", "invalid_xyz"), ("w", "ok")]


def test_xyz_garbled_header_and_bad_numbers():
    water = "3\nw\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    text = "three\nw\nO 0 0 0\n" + water + "3\nbad\nO 0 0 0\nH 0.96 zero 0\nH -0.24 0.93 0\n" + water
    assert [outcome(i) for i in read_xyz(text)] == ["invalid_xyz", "ok", "invalid_xyz", "ok"]


def test_xyz_unknown_symbol_and_unsupported_element():
    text = "2\nx\nXx 0 0 0\nH 1 0 0\n" "2\nhcl\nCl 0 0 0\nH 1.27 0 0\n" "2\nh2\n1 0 0 0\n1 0.74 0 0\n"
    items = list(read_xyz(text))
    assert [outcome(i) for i in items] == ["unsupported_element", "unsupported_element", "ok"]
    assert "'Xx'" in items[0].error.message and "Cl (Z=17)" in items[1].error.message
    assert formula(items[2].molecule) == {"H": 2}  # atomic numbers instead of symbols


def test_xyz_geometry_problems_are_reported_per_frame():
    text = "2\nclash\nH 0 0 0\nH 0.1 0 0\n" "2\nnan\nH 0 0 0\nH nan 0 0\n" "2\nh2\nH 0 0 0\nH 0.74 0 0\n"
    assert [outcome(i) for i in read_xyz(text)] == ["invalid_geometry", "invalid_geometry", "ok"]


def test_xyz_ids_from_qm9_comments_and_frame_index():
    text = "2\ngdb 17\t157.7\t157.7\nH 0 0 0\nH 0.74 0 0\n" "2\nsome words here\nH 0 0 0\nH 0.74 0 0\n"
    assert [i.id for i in read_xyz(text)] == ["gdb_17", "1"]


def test_empty_xyz_input_is_one_empty_input_item():
    (item,) = read_xyz("", text=True)
    assert outcome(item) == "empty_input"


def test_text_true_never_reads_a_file():
    (item,) = read_xyz(str(DATA / "ethanol.xyz"), text=True)
    assert outcome(item) == "invalid_xyz"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(-50, 50))
def test_xyz_round_trip_keeps_geometry(seed, shift):
    (ethanol,) = (i.molecule for i in read_xyz(DATA / "ethanol.xyz"))
    rotated = Molecule(ethanol.numbers, ethanol.positions @ random_rotation(seed).T + shift)
    (item,) = read_xyz(to_xyz(rotated, "rotated"))
    assert item.ok
    assert np.allclose(item.molecule.positions, rotated.positions, atol=1e-9)


# --- SDF ----------------------------------------------------------------------------------------


def test_sdf_with_explicit_hydrogens_keeps_its_coordinates():
    (item,) = read_sdf(DATA / "ethanol_explicit_h.sdf")
    assert item.ok and item.id == "ethanol"
    mol = item.molecule
    assert formula(mol) == {"C": 2, "O": 1, "H": 6}
    assert mol.provenance["hydrogens_added"] is False
    block = (DATA / "ethanol_explicit_h.sdf").read_text().splitlines()
    first_atom = [float(v) for v in block[4].split()[:3]]
    assert np.allclose(mol.positions[0], first_atom)


def test_sdf_without_hydrogens_gets_them_with_coordinates():
    (item,) = read_sdf(DATA / "ethanol_no_h.sdf")
    assert item.ok
    mol = item.molecule
    assert formula(mol) == {"C": 2, "O": 1, "H": 6}
    assert mol.provenance["hydrogens_added"] is True and mol.provenance["n_hydrogens_added"] == 6
    # every added H sits at a bond length from a heavy atom
    h = mol.positions[mol.numbers == 1]
    heavy = mol.positions[mol.numbers > 1]
    nearest = np.linalg.norm(h[:, None] - heavy[None], axis=-1).min(axis=1)
    assert np.all((nearest > 0.9) & (nearest < 1.15))
    heavy_in_file = read_sdf(DATA / "ethanol_explicit_h.sdf")
    assert next(heavy_in_file).molecule.n_heavy == mol.n_heavy


def test_2d_molblock_is_embedded_in_3d_with_a_warning():
    (item,) = read_sdf(DATA / "ethanol_2d.mol")
    assert item.ok and item.id == "ethanol-2d"
    mol = item.molecule
    assert formula(mol) == {"C": 2, "O": 1, "H": 6}
    assert mol.provenance["embedded_from_2d"] is True
    assert mol.provenance["conformer"]["method"] == "ETKDGv3"
    assert np.ptp(mol.positions[:, 2]) > 0.5
    assert any("2D coordinates" in w for w in mol.warnings)


def test_multi_record_sdf_keeps_the_good_records_around_a_bad_one():
    items = list(read_sdf(DATA / "multi_one_bad.sdf"))
    assert [i.id for i in items] == ["water", "broken", "acetate", "acetone-42"]
    assert [outcome(i) for i in items] == ["ok", "invalid_sdf", "charged_molecule", "ok"]
    assert "Atom line too short" in items[1].error.message


def test_sdf_valence_error_is_invalid_sdf():
    h = [(1.09, 0, 0), (-1.09, 0, 0), (0, 1.09, 0), (0, -1.09, 0), (0, 0, 1.09)]
    atoms = "".join(f"{x:10.4f}{y:10.4f}{z:10.4f} {e:<3} 0  0  0  0  0  0  0  0  0  0  0  0\n"
                    for (x, y, z), e in [((0, 0, 0), "C"), *((p, "H") for p in h)])
    bonds = "".join(f"  1{k:3d}  1  0\n" for k in range(2, 7))
    block = f"CH5\n     test          3D\n\n  6  5  0  0  0  0  0  0  0  0999 V2000\n{atoms}{bonds}M  END\n"
    (item,) = read_sdf(block)
    assert (item.id, outcome(item)) == ("CH5", "invalid_sdf")
    assert "valence" in item.error.message.lower()


def test_empty_sdf_input():
    assert [outcome(i) for i in read_sdf(b"")] == ["empty_input"]


# --- SMILES files and CSV -----------------------------------------------------------------------

CSV_ROWS = [
    ("ethanol", "CCO", "ok"),
    ("benzene", "c1ccccc1", "ok"),
    ("ring-not-closed", "C1CC", "invalid_smiles"),
    ("ammonium", "[NH4+]", "charged_molecule"),
    ("chloroethane", "CCCl", "unsupported_element"),
    ("water", "O", "ok"),
    ("acetic acid", "CC(=O)O", "ok"),
]


def test_csv_streams_rows_in_order_with_ids_from_the_name_column():
    records = list(read_smiles_csv(DATA / "smiles.csv"))
    assert records == [SmilesRecord(i, name, smi) for i, (name, smi, _) in enumerate(CSV_ROWS)]


def test_csv_rows_get_one_item_each_in_order():
    items = list(read_file(DATA / "smiles.csv"))
    assert [(i.index, i.id, outcome(i)) for i in items] == [
        (k, name, expected) for k, (name, _, expected) in enumerate(CSV_ROWS)
    ]


def test_csv_is_streamed_lazily(tmp_path):
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("SMILES,ID\n")
        f.writelines(f"C{'C' * (k % 5)},m{k}\n" for k in range(20_000))
    head = list(itertools.islice(read_smiles_csv(path), 3))
    assert head == [SmilesRecord(0, "m0", "C"), SmilesRecord(1, "m1", "CC"), SmilesRecord(2, "m2", "CCC")]
    assert sum(1 for _ in read_smiles_csv(path)) == 20_000


def test_csv_columns_can_be_named_and_missing_ones_are_reported(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("key,structure\nk1,CO\nk2,\n")
    assert list(read_smiles_csv(path, "structure", "key")) == [
        SmilesRecord(0, "k1", "CO"), SmilesRecord(1, "k2", "")
    ]
    with pytest.raises(ValueError, match="no column 'smiles'.*'key', 'structure'"):
        read_smiles_csv(path)


def test_smi_file_with_optional_ids(tmp_path):
    path = tmp_path / "x.smi"
    path.write_text("SMILES Name\nCCO ethanol\n# a comment\n\nc1ccccc1\nC1CC broken ring\n")
    assert list(read_smi(path)) == [
        SmilesRecord(0, "ethanol", "CCO"),
        SmilesRecord(1, None, "c1ccccc1"),
        SmilesRecord(2, "broken ring", "C1CC"),
    ]
    assert [outcome(i) for i in read_file(path)] == ["ok", "ok", "invalid_smiles"]


def test_embed_many_with_two_workers_equals_one_worker():
    records = list(read_smiles_csv(DATA / "smiles.csv")) * 2
    records = [SmilesRecord(k, r.id, r.smiles) for k, r in enumerate(records)]
    serial = list(embed_many(records, workers=1))
    parallel = list(embed_many(records, workers=2, chunk_size=2))
    assert [i.index for i in parallel] == list(range(len(records)))
    for a, b in zip(serial, parallel, strict=True):
        assert (a.index, a.id, a.error) == (b.index, b.id, b.error)
        if a.ok:
            assert np.array_equal(a.molecule.positions, b.molecule.positions)
            assert a.molecule.provenance == b.molecule.provenance
            assert not b.molecule.positions.flags.writeable  # still immutable after the trip


def test_embed_many_accepts_plain_tuples():
    (item,) = embed_many([(5, None, "CO")])
    assert (item.index, item.id, outcome(item)) == (5, "5", "ok")


# --- read_file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ethanol.xyz", ["ok"]), ("multi_broken.extxyz", ["ok", "ok", "invalid_xyz", "ok"]),
     ("ethanol_no_h.sdf", ["ok"]), ("ethanol_2d.mol", ["ok"])],
)
def test_read_file_detects_the_format_from_the_extension(name, expected):
    assert [outcome(i) for i in read_file(DATA / name)] == expected


def test_read_file_format_override_and_gzip(tmp_path):
    plain = tmp_path / "ethanol.txt"
    shutil.copy(DATA / "ethanol.xyz", plain)
    assert [outcome(i) for i in read_file(plain, format="xyz")] == ["ok"]
    packed = tmp_path / "ethanol.sdf.gz"
    packed.write_bytes(gzip.compress((DATA / "ethanol_explicit_h.sdf").read_bytes()))
    assert [i.id for i in read_file(packed)] == ["ethanol"]


def test_read_file_unknown_extension_lists_the_supported_formats(tmp_path):
    path = tmp_path / "mol.pdb"
    path.write_text("")
    with pytest.raises(ValueError) as info:
        read_file(path)
    for fmt in FORMATS:
        assert fmt in str(info.value)
    with pytest.raises(ValueError, match="unknown format 'pdb'"):
        read_file(DATA / "ethanol.xyz", format="pdb")


def test_read_file_missing_file_fails_at_once(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "nope.xyz")


def test_read_file_applies_the_limits():
    limits = ValidationLimits(max_atoms=5)
    assert [outcome(i) for i in read_file(DATA / "ethanol.xyz", limits=limits)] == ["too_many_atoms"]
