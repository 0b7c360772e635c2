"""A SMILES is answered for several of lieprop's conformers of it, averaged (lieprop.data.conformers,
lieprop.model.prediction.average_conformers): the specification."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lieprop.data.molecule import Molecule
from lieprop.data.readers import DEFAULT_CONFORMERS, from_smiles
from lieprop.data.stereo import read_stereo
from lieprop.model.calibration import ring_group
from lieprop.model.prediction import (
    Prediction,
    Predictions,
    average_conformers,
    conformer_inputs,
    predict_molecules,
)


def test_a_smiles_gets_several_conformers_of_one_stereoisomer_the_lowest_in_energy_first():
    mol = from_smiles("OCCCC(C)C")
    conformer = mol.provenance["conformer"]
    assert conformer["n_conformers"] == DEFAULT_CONFORMERS == len(mol.geometries) == conformer["averaged"]
    np.testing.assert_array_equal(mol.geometries[0], mol.positions)
    assert all(g.shape == mol.positions.shape and not g.flags.writeable for g in mol.geometries)
    # a flexible chain: the conformers differ (otherwise averaging would buy nothing)
    assert max(np.abs(g - mol.positions).max() for g in mol.other_conformers) > 0.5
    assert len(from_smiles("OCCCC(C)C", n_conformers=1).geometries) == 1


def test_the_averaged_conformers_are_all_the_stereoisomer_the_result_names():
    from rdkit import Chem
    from rdkit.Chem import AllChem

    # two ring centres left open: ETKDG may build cis and trans; only the one named is averaged
    mol = from_smiles("CC1CCC(C)CC1", n_conformers=10)
    named = mol.provenance["conformer"]["stereo_smiles"]
    rd = Chem.AddHs(Chem.MolFromSmiles("CC1CCC(C)CC1"))
    AllChem.EmbedMolecule(rd, randomSeed=1)
    for geometry in mol.geometries:
        conf = rd.GetConformer()
        for i, p in enumerate(geometry):
            conf.SetAtomPosition(i, p.tolist())
        assert read_stereo(rd, conf.GetId())[0] == named
    assert mol.provenance["conformer"]["averaged"] == len(mol.geometries) <= 10


def test_a_molecule_keeps_its_conformers_through_pickling_and_new_warnings():
    mol = from_smiles("CCCO")
    for copy in (pickle.loads(pickle.dumps(mol)), mol.with_warnings("extra")):
        assert len(copy.geometries) == len(mol.geometries)
        for a, b in zip(copy.geometries, mol.geometries, strict=True):
            np.testing.assert_array_equal(a, b)
            assert not a.flags.writeable
    with pytest.raises(ValueError, match="positions"):
        Molecule(mol.numbers, mol.positions, other_conformers=(mol.positions[:-1],))


def _row(value, std, members):
    return Prediction(np.array(value, float), np.array(std, float), members=np.array(members, float))


def test_averaging_takes_the_mean_and_adds_the_conformers_disagreement_to_the_spread():
    a = _row([1.0, 10.0], [0.3, 1.0], [[0.7, 9.0], [1.3, 11.0]])
    b = _row([3.0, 10.0], [0.4, 2.0], [[2.6, 8.0], [3.4, 12.0]])
    single = _row([5.0, 5.0], [0.1, 0.1], [[5.0, 5.0], [5.0, 5.0]])
    out = average_conformers([a, b, single], [2, 1])
    np.testing.assert_allclose(out[0].value, [2.0, 10.0])
    np.testing.assert_allclose(out[0].members, [[1.65, 8.5], [2.35, 11.5]])
    # law of total variance: the mean member variance plus the variance of the conformers' values
    np.testing.assert_allclose(out[0].std, np.sqrt([(0.09 + 0.16) / 2 + 1.0, (1 + 4) / 2 + 0.0]))
    assert out[1] is single  # one geometry: the prediction as it is


def test_a_conformer_that_fails_in_the_model_fails_its_molecule_only():
    ok = _row([1.0], [0.1], [[1.0], [1.0]])
    boom = RuntimeError("the model broke on this geometry")
    out = average_conformers([ok, boom, ok, ok], [2, 2])
    assert out[0] is boom and isinstance(out[1], Prediction)
    with pytest.raises(ValueError, match="rows for"):
        average_conformers([ok], [2])


def test_model_inputs_list_every_geometry_of_every_molecule_in_order():
    flexible, rigid = from_smiles("CCCO"), Molecule([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    inputs = conformer_inputs([flexible, rigid], distinct=False)
    assert inputs.counts == [len(flexible.geometries), 1]
    assert len(inputs.numbers) == len(inputs.positions) == sum(inputs.counts)
    assert inputs.positions[-1] is rigid.positions and inputs.positions[0] is flexible.positions
    assert inputs.kept == inputs.source == list(range(sum(inputs.counts)))


def test_a_conformer_that_copies_another_costs_no_model_pass_and_changes_nothing():
    """Benzene's five MMFF conformers are one geometry, turned or with like atoms swapped: one model pass stands for
    all five. A flexible chain keeps its distinct conformers, and the averaged prediction is the one every conformer
    gives."""
    from lieprop.model.loading import as_bundle

    benzene, chain = from_smiles("c1ccccc1"), from_smiles("OCCCC(C)C")
    inputs = conformer_inputs([benzene, chain])
    assert inputs.counts == [len(benzene.geometries), len(chain.geometries)] and inputs.counts[0] > 1
    assert inputs.source[: inputs.counts[0]] == [0] * inputs.counts[0]  # benzene: one pass for every conformer
    distinct = len(inputs.numbers) - 1
    assert 1 < distinct <= len(chain.geometries)
    model = as_bundle(None).model
    every = conformer_inputs([benzene, chain], distinct=False)
    full = every.average(list(model.predictions(every.numbers, every.positions)))
    fast = inputs.average(list(model.predictions(inputs.numbers, inputs.positions)))
    for a, b in zip(full, fast, strict=True):  # copies predict alike to well under a meV
        np.testing.assert_allclose(a.value, b.value, atol=1e-5)
        np.testing.assert_allclose(a.std, b.std, atol=1e-4)
    with pytest.raises(ValueError, match="model inputs"):
        inputs.average(list(fast))


def test_kept_names_each_input_among_all_geometries_so_per_conformer_costs_line_up():
    """The service prices each geometry (admission) and hands the batcher the prices of the inputs it keeps:
    ``kept`` must name, for each input, its place among all the molecules' geometries."""
    molecules = [from_smiles("c1ccccc1"), from_smiles("OCCCC(C)C"), from_smiles("CC(C)(C)C")]
    inputs = conformer_inputs(molecules)
    every = [g for m in molecules for g in m.geometries]
    assert all(every[k] is inputs.positions[i] for i, k in enumerate(inputs.kept))
    assert len(inputs.source) == len(every) and sorted(set(inputs.source)) == list(range(len(inputs.numbers)))


def test_a_conformer_that_fails_in_the_model_fails_its_copies_and_its_molecule_only():
    benzene, chain = from_smiles("c1ccccc1"), from_smiles("OCCCC(C)C")
    inputs = conformer_inputs([benzene, chain])
    boom = RuntimeError("the model broke on this geometry")
    ok = _row([1.0], [0.1], [[1.0], [1.0]])
    out = inputs.average([boom] + [ok] * (len(inputs.numbers) - 1))  # benzene's one pass fails
    assert out[0] is boom and isinstance(out[1], Prediction)


def test_the_library_answers_a_smiles_with_the_mean_over_its_conformers():
    from lieprop.inference import predict
    from lieprop.model.loading import as_bundle

    bundle = as_bundle(None)
    mol = from_smiles("OCCCC(C)C")
    served = predict("OCCCC(C)C", properties=["homo"])["results"][0]["properties"]["homo"]
    j = bundle.model.targets.index("homo")
    each = bundle.model.predictions([mol.numbers] * len(mol.geometries), list(mol.geometries))
    members = each.members.mean(1)  # (M, T): each member averaged over the conformers
    expected = bundle.calibration["generated"].center(members)[j]
    assert served["value"] == pytest.approx(expected, abs=1e-5)
    single = predict(Molecule(mol.numbers, mol.positions, provenance=dict(mol.provenance)),
                     properties=["homo"])["results"][0]["properties"]["homo"]
    assert single["value"] != pytest.approx(served["value"], abs=1e-6)  # the one conformer alone differs
    averaged = predict_molecules(bundle.model, [mol])
    assert averaged.std[0, j] >= np.sqrt((each.std[:, j] ** 2).mean()) - 1e-9  # the conformers add spread


def test_one_conformer_is_calibrated_as_one_force_field_geometry_and_an_average_as_an_average():
    """The spread of an average carries the conformers' disagreement and one geometry's does not: each has its own
    calibration (`generated`, `forcefield`), and a SMILES asked for with `conformers=1` gets the second."""
    from lieprop.inference import predict
    from lieprop.model.calibration import geometry_path
    from lieprop.model.loading import as_bundle

    bundle = as_bundle(None)
    j = bundle.model.targets.index("mu")
    five, one = (from_smiles("OCCCC(C)C", n_conformers=k) for k in (5, 1))
    assert geometry_path(five.provenance) == "generated" and geometry_path(one.provenance) == "forcefield"
    raw = bundle.model.predictions([one.numbers], [one.positions])
    served = predict("OCCCC(C)C", properties=["mu"], conformers=1)["results"][0]["properties"]["mu"]
    acyclic = np.array([ring_group(one.numbers, one.positions)])  # ring group 0, calibrated as such
    assert acyclic[0] == 0
    assert served["std"] == pytest.approx(float(bundle.calibration["forcefield"].apply(raw, groups=acyclic).std[0, j]),
                                          rel=1e-6)
    averaged = predict_molecules(bundle.model, [five])
    served5 = predict("OCCCC(C)C", properties=["mu"])["results"][0]["properties"]["mu"]
    assert served5["std"] == pytest.approx(
        float(bundle.calibration["generated"].apply(averaged, groups=acyclic).std[0, j]), rel=1e-6)
    with pytest.raises(ValueError, match="conformers must be between 1 and 20"):
        predict("CCO", conformers=0)


def test_each_path_is_calibrated_on_the_molecules_the_service_serves_it_to(tmp_path, qm9_head, monkeypatch):
    """`lieprop calibrate` fits `generated` on the SMILES whose conformers are averaged, `lone_conformer` on those
    left with one, and `forcefield` on one force-field geometry: each molecule's lowest-energy conformer, and the
    conformer `conformers: 1` embeds (ETKDG's first)."""
    from lieprop.data.qm9_conformers import build_conformers, load_conformers
    from lieprop.model.calibration import FORCEFIELD, LONE_CONFORMER
    from lieprop.model.loading import as_bundle
    from lieprop.training.uncertainty import path_sets

    monkeypatch.setenv("LIEPROP_CACHE_DIR", str(tmp_path / "cache"))
    build_conformers(qm9_head, limit=30, log=lambda *_: None)  # a trial cache: the first 30 rows
    conformers = load_conformers()
    model = as_bundle(None).model
    rows = np.arange(30)[conformers.available(np.arange(30))]
    sets = path_sets(model, qm9_head, conformers, rows, workers=1)
    several = conformers.n_geometries[rows] > 1
    assert sets["given"][0].tolist() == rows.tolist()
    assert sets["generated"][0].tolist() == rows[several].tolist() and len(sets["generated"][1]) == several.sum()
    assert sets[LONE_CONFORMER][0].tolist() == rows[~several].tolist()
    ff_rows, ff, ff_rings = sets[FORCEFIELD]
    assert ff_rows.tolist() == rows.tolist() * 2 and len(ff) == 2 * len(rows)  # every one of these embeds
    # the second half is what `conformers: 1` serves: ETKDG's first conformer of the cached (stereo) SMILES
    k = int(np.flatnonzero(rows == 29)[0])
    one = from_smiles(str(conformers.smiles[29]), n_conformers=1)
    expected = model.predictions([one.numbers], [one.positions])
    np.testing.assert_allclose(ff.value[len(rows) + k], expected.value[0], rtol=1e-6)
    z, x = conformers.molecule(29)
    lowest = model.predictions([z], [x])
    np.testing.assert_allclose(ff.value[k], lowest.value[0], rtol=1e-6)
    # each result's ring group is its own geometry's, as the service counts it
    assert ff_rings[k] == ring_group(z, x) and ff_rings[len(rows) + k] == ring_group(one.numbers, one.positions)
    assert sets["given"][2].tolist() == [ring_group(*qm9_head.molecule(int(r))) for r in rows]


def test_a_smiles_left_with_one_conformer_of_several_has_a_calibration_of_its_own():
    """A strained cage whose other conformers came out as another stereoisomer keeps one: it errs about twice as much
    as a typical molecule, so it is calibrated on such molecules (`lone_conformer`), not as any one force-field
    geometry; a bundle calibrated before that path existed answers it with `forcefield`'s, and one older still with
    `generated`'s."""
    from lieprop.inference import predict
    from lieprop.model.calibration import FORCEFIELD, LONE_CONFORMER, geometry_path, path_calibration
    from lieprop.model.loading import as_bundle

    cage = from_smiles("OC1C2CC(O2)C11CC1")
    conformer = cage.provenance["conformer"]
    assert conformer["requested"] == DEFAULT_CONFORMERS and conformer["averaged"] == 1
    assert geometry_path(cage.provenance) == LONE_CONFORMER
    assert geometry_path(from_smiles("OC1C2CC(O2)C11CC1", n_conformers=1).provenance) == FORCEFIELD  # asked for one
    older = {"conformer": {"n_conformers": 5, "averaged": 1}}  # provenance from before `requested`
    assert geometry_path(older) == LONE_CONFORMER
    assert path_calibration({FORCEFIELD: "ff", "generated": "gen"}, LONE_CONFORMER) == "ff"
    assert path_calibration({"generated": "gen"}, LONE_CONFORMER) == "gen"
    assert path_calibration({"given": "dft"}, LONE_CONFORMER) is None
    bundle = as_bundle(None)
    j = bundle.model.targets.index("gap")
    raw = bundle.model.predictions([cage.numbers], [cage.positions])
    served = predict("OC1C2CC(O2)C11CC1", properties=["gap"])["results"][0]["properties"]["gap"]
    rings = np.array([ring_group(cage.numbers, cage.positions)])  # a cage: three rings
    assert rings[0] == 3
    expected = bundle.path_calibration(LONE_CONFORMER).apply(raw, groups=rings)
    assert served["std"] == pytest.approx(float(expected.std[0, j]), rel=1e-6)
    assert served["interval"] == pytest.approx([float(expected.lower[0, j]), float(expected.upper[0, j])], rel=1e-6)


def test_a_batch_of_predictions_keeps_the_molecules_a_mask_or_indices_pick():
    members = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)  # 2 members, 4 molecules, 3 targets
    batch = Predictions.from_members(members)
    keep = np.array([True, False, True, False])
    picked = batch.select(keep)
    assert len(picked) == 2 and picked.members.shape == (2, 2, 3)
    np.testing.assert_array_equal(picked.value, batch.value[[0, 2]])
    np.testing.assert_array_equal(picked.std, batch.std[[0, 2]])
    np.testing.assert_array_equal(batch.select(np.array([3])).members[:, 0], members[:, 3])
