"""Ensemble bundles: several members of one architecture answer as one model, with the members' spread as the
``std`` of every value, in the library, file scoring, REST and REST jobs (the Prediction contract end to end)."""

from __future__ import annotations

import csv
import json

import httpx
import numpy as np
import pytest
import torch

import lieprop
from lieprop.cli import main
from lieprop.data.molecule import Molecule
from lieprop.data.properties import PROPERTY_NAMES
from lieprop.model.bundle import BundleError, load_bundle, make_ensemble, save_bundle
from lieprop.model.network import NetworkConfig
from lieprop.model.prediction import predict_molecules
from lieprop.model.predictor import EnsembleModel, PropertyModel
from lieprop.scoring.pipeline import ScoreOptions, score_file
from lieprop.service.schemas import ETHANOL_XYZ, WATER

MOLECULES = ["CCO", {"id": "w", **WATER}, {"id": "e", "xyz": ETHANOL_XYZ}, {"id": "bad", "smiles": "C1CC"}]


def member(seed: int, **kw) -> PropertyModel:
    torch.manual_seed(seed)
    return PropertyModel(NetworkConfig(**{"width": 16, "depth": 1, "targets": list(PROPERTY_NAMES), **kw}))


@pytest.fixture(scope="module")
def ensemble_path(tmp_path_factory):
    """A tiny two-member ensemble, made as a user makes one: two bundles, then ``lieprop ensemble``."""
    root = tmp_path_factory.mktemp("ensemble")
    for seed in (1, 2):
        save_bundle(member(seed), root / f"m{seed}.pt", f"member-{seed}", {"split": "cormorant"})
    assert main(["ensemble", str(root / "m1.pt"), str(root / "m2.pt"), "--out", str(root / "ens.pt"),
                 "--name", "tiny-ensemble"]) == 0
    return root / "ens.pt"


def test_an_ensemble_predicts_the_members_mean_and_their_spread(ensemble_path):
    bundle = load_bundle(ensemble_path)
    m1, m2 = (load_bundle(ensemble_path.parent / f"m{s}.pt").model for s in (1, 2))
    assert isinstance(bundle.model, EnsembleModel) and bundle.n_members == 2
    z, x = np.array(WATER["numbers"]), np.array(WATER["positions"])
    a, b = m1.predict([z], [x])[0], m2.predict([z], [x])[0]
    p = bundle.model.predictions([z], [x])[0]
    np.testing.assert_allclose(p.value, (a + b) / 2, rtol=1e-12)
    np.testing.assert_allclose(p.std, np.abs(a - b) / np.sqrt(2), rtol=1e-9)  # sample std of two values
    np.testing.assert_allclose(p.members, [a, b], rtol=1e-12)
    np.testing.assert_allclose(bundle.model.predict([z], [x])[0], p.value)


def test_the_ensemble_bundle_verifies_and_records_its_members(ensemble_path):
    bundle = load_bundle(ensemble_path)
    shas = [load_bundle(ensemble_path.parent / f"m{s}.pt").sha256 for s in (1, 2)]
    assert [m["sha256"] for m in bundle.meta["members"]] == shas
    card = lieprop.inference.model_card(bundle)
    assert card["members"] == 2 and card["uncertainty"].startswith("the spread of 2 ensemble members, uncalibrated")


def test_an_ensemble_member_can_be_kept_alone_and_replaced(ensemble_path, tmp_path):
    """``ENSEMBLE.pt#K`` takes member K only: a new ensemble keeps one member and swaps the other."""
    ens = load_bundle(ensemble_path)
    save_bundle(member(3), tmp_path / "m3.pt", "m3", {"split": "cormorant"})
    assert main(["ensemble", f"{ensemble_path}#1", str(tmp_path / "m3.pt"), "--out", str(tmp_path / "e.pt")]) == 0
    swapped = load_bundle(tmp_path / "e.pt")
    kept, new = swapped.model.members
    for name, value in kept.state_dict().items():
        torch.testing.assert_close(value, ens.model.members[1].state_dict()[name], msg=name)
    first = swapped.meta["members"][0]
    assert first["sha256"] == ens.meta["members"][1]["sha256"]
    assert first["member_of"] == {"name": ens.name, "sha256": ens.sha256, "member": 1}
    assert swapped.meta["members"][1]["sha256"] == load_bundle(tmp_path / "m3.pt").sha256
    whole = make_ensemble([ensemble_path, tmp_path / "m3.pt"], tmp_path / "w.pt", "w")  # every member, one record each
    assert len(load_bundle(tmp_path / "w.pt").meta["members"]) == 3 and whole
    with pytest.raises(BundleError, match="has 2 members"):
        make_ensemble([f"{ensemble_path}#2", tmp_path / "m3.pt"], tmp_path / "x.pt", "x")
    with pytest.raises(BundleError, match="at least 2 networks"):
        make_ensemble([f"{ensemble_path}#0"], tmp_path / "x.pt", "x")
    with pytest.raises(BundleError, match="same network as"):  # a member given twice would shrink the spread
        make_ensemble([ensemble_path, f"{ensemble_path}#1"], tmp_path / "x.pt", "x")


def test_a_member_taken_twice_keeps_its_whole_lineage(ensemble_path, tmp_path):
    """A network taken from an ensemble that had itself taken it from another names both, innermost deepest."""
    ens = load_bundle(ensemble_path)
    save_bundle(member(3), tmp_path / "m3.pt", "m3", {"split": "cormorant"})
    save_bundle(member(4), tmp_path / "m4.pt", "m4", {"split": "cormorant"})
    make_ensemble([f"{ensemble_path}#1", tmp_path / "m3.pt"], tmp_path / "e.pt", "e")
    middle = load_bundle(tmp_path / "e.pt")
    make_ensemble([f"{tmp_path / 'e.pt'}#0", tmp_path / "m4.pt"], tmp_path / "f.pt", "f")
    lineage = load_bundle(tmp_path / "f.pt").meta["members"][0]["member_of"]
    assert lineage == {"name": "e", "sha256": middle.sha256, "member": 0,
                       "member_of": {"name": ens.name, "sha256": ens.sha256, "member": 1}}


def test_members_of_different_networks_are_refused(tmp_path):
    save_bundle(member(1), tmp_path / "a.pt", "a")
    save_bundle(member(2, depth=2), tmp_path / "b.pt", "b")
    with pytest.raises(BundleError, match="differs from member 0"):
        make_ensemble([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "e.pt", "e")
    assert main(["ensemble", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e.pt")]) == 2


def test_the_library_gives_every_property_a_value_and_a_std(ensemble_path):
    results = lieprop.predict(MOLECULES, model=ensemble_path)["results"]
    assert [r["ok"] for r in results] == [True, True, True, False]
    for r in results[:3]:
        for name, entry in r["properties"].items():
            assert set(entry) == {"value", "unit", "std"}, name
            assert entry["std"] >= 0 and np.isfinite(entry["value"])
    single = lieprop.predict(MOLECULES[:1], model=ensemble_path.parent / "m1.pt")["results"][0]
    assert all(set(e) == {"value", "unit"} for e in single["properties"].values())  # a single model: no std


def test_file_scoring_writes_a_std_column_after_each_property(tmp_path, ensemble_path):
    source = tmp_path / "in.csv"
    source.write_text("name,smiles\nethanol,CCO\nbad,C1CC\nwater,O\n")
    score_file(source, tmp_path / "out.csv", ScoreOptions(properties=("homo", "u0_atomization")),
               model=ensemble_path, workers=1)
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[4:8] == ["homo [eV]", "homo_std [eV]", "u0_atomization [eV]", "u0_atomization_std [eV]"]
    library = lieprop.predict(["CCO"], properties=["homo"], model=ensemble_path)["results"][0]["properties"]
    assert float(rows[0]["homo [eV]"]) == pytest.approx(library["homo"]["value"], rel=1e-6)
    assert float(rows[0]["homo_std [eV]"]) == pytest.approx(library["homo"]["std"], rel=1e-6)
    assert rows[1]["homo_std [eV]"] == "" and rows[1]["error"] == "invalid_smiles"
    score_file(source, tmp_path / "out.jsonl", ScoreOptions(properties=("homo",)), model=ensemble_path, workers=1)
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert set(first["properties"]["homo"]) == {"value", "unit", "std"}


@pytest.fixture(scope="module")
def ensemble_server(tmp_path_factory, ensemble_path):
    from test_service import start_server

    tmp = tmp_path_factory.mktemp("ensemble-server")
    server = start_server(tmp, ensemble_path, "--data-dir", str(tmp / "data"), "--job-workers", "1")
    yield server
    server.stop()


def test_rest_predict_and_models_show_the_spread(ensemble_server, ensemble_path):
    with httpx.Client(base_url=ensemble_server.base_url, timeout=60) as client:
        card = client.get("/v1/models").json()["models"][0]
        assert (card["architecture"], card["members"]) == ("lieconv", 2)
        body = client.post("/v1/predict", json={"molecules": [m if isinstance(m, dict) else {"smiles": m}
                                                              for m in MOLECULES]}).json()
    library = lieprop.predict(MOLECULES, model=ensemble_path)["results"]
    assert [r["ok"] for r in body["results"]] == [True, True, True, False]
    for served, local in zip(body["results"][:3], library[:3], strict=True):
        for name, entry in served["properties"].items():
            assert set(entry) == {"value", "unit", "std"}
            assert entry["value"] == pytest.approx(local["properties"][name]["value"], rel=1e-5, abs=1e-6)
            assert entry["std"] == pytest.approx(local["properties"][name]["std"], rel=1e-4, abs=1e-6)


def test_a_rest_job_on_an_ensemble_returns_values_and_spreads(tmp_path, ensemble_server):
    from test_jobs import upload, wait_for

    source = tmp_path / "in.csv"
    source.write_text("name,smiles\nethanol,CCO\nbad,C1CC\n")
    with httpx.Client(base_url=ensemble_server.base_url, timeout=60) as client:
        job = upload(client, source, properties=["homo", "gap"])
        wait_for(client, job["id"], lambda j: j["state"] == "succeeded")
        lines = client.get(f"/v1/jobs/{job['id']}/results").text.splitlines()
        table = client.get(f"/v1/jobs/{job['id']}/results", params={"format": "csv"}).text
    first = json.loads(lines[0])
    assert "properties" in first, first
    assert set(first["properties"]["gap"]) == {"value", "unit", "std"}
    header = table.splitlines()[0].split(",")
    assert header[4:8] == ["homo [eV]", "homo_std [eV]", "gap [eV]", "gap_std [eV]"]
    row = next(csv.reader(table.splitlines()[1:2]))
    assert float(row[5]) == pytest.approx(first["properties"]["homo"]["std"])


@pytest.fixture(scope="module")
def calibrated_path(ensemble_path, qm9_head, tmp_path_factory):
    """The tiny ensemble, calibrated as lieprop calibrate does it: per geometry path, on real QM9 molecules and their
    DFT targets, in their DFT geometries (``given``), in the conformers lieprop makes from their SMILES, averaged
    (``generated``), and in the lowest-energy one alone (``forcefield``, a force-field geometry a user gives)."""
    import shutil

    from lieprop.data.readers import from_smiles
    from lieprop.model.bundle import record_metadata
    from lieprop.model.calibration import calibrations_to_dict, fit_calibration

    path = tmp_path_factory.mktemp("calibrated") / "ens-cal.pt"
    shutil.copy(ensemble_path, path)
    model = load_bundle(path).model
    rows = range(100)
    truth = qm9_head.targets_in_units()[:100, [PROPERTY_NAMES.index(t) for t in model.targets]]
    given = [Molecule(*qm9_head.molecule(i)) for i in rows]
    generated = [from_smiles(str(qm9_head.smiles[i])) for i in rows]
    single = [Molecule(m.numbers, m.positions) for m in generated]
    calibrations = {}
    for name, molecules in (("given", given), ("generated", generated), ("forcefield", single)):
        raw = predict_molecules(model, molecules)
        calibrations[name] = fit_calibration(raw.value, raw.std, truth, model.targets)
    record_metadata(path, calibration=calibrations_to_dict(calibrations))
    return path


def test_a_calibrated_ensemble_gives_every_value_a_std_and_an_interval_around_it(calibrated_path, ensemble_path):
    bundle = load_bundle(calibrated_path)
    assert set(bundle.calibration) == {"given", "generated", "forcefield"}  # the constants live in the bundle
    results = lieprop.predict(MOLECULES[:3], model=calibrated_path)["results"]
    for r in results:
        for name, entry in r["properties"].items():
            assert set(entry) == {"value", "unit", "std", "interval"}, name
            lower, upper = entry["interval"]
            assert lower <= entry["value"] <= upper and entry["std"] > 0
    narrow = lieprop.predict(MOLECULES[:1], model=calibrated_path, coverage=0.5)["results"][0]["properties"]
    wide = lieprop.predict(MOLECULES[:1], model=calibrated_path, coverage=0.95)["results"][0]["properties"]
    for name in narrow:
        assert np.diff(narrow[name]["interval"]) < np.diff(results[0]["properties"][name]["interval"]) < np.diff(
            wide[name]["interval"])
        assert narrow[name]["value"] == wide[name]["value"]
    with pytest.raises(ValueError, match="coverage needs a model with calibrated intervals"):
        lieprop.predict(MOLECULES[:1], model=ensemble_path, coverage=0.5)  # uncalibrated


def test_the_calibration_follows_where_the_geometry_came_from(calibrated_path):
    """The same water, as atoms (a given geometry) and as a SMILES (a conformer lieprop made): each gets the std of
    its own path's calibration, computed from the members' spread."""
    bundle = load_bundle(calibrated_path)
    as_atoms, as_smiles = lieprop.predict([{"id": "w", **WATER}, "O"], properties=["gap"],
                                          model=calibrated_path)["results"]
    for result, path in ((as_atoms, "given"), (as_smiles, "generated")):
        molecule = lieprop.inference.parse_item({"id": "w", **WATER} if path == "given" else "O", 0)
        raw = bundle.model.predictions([molecule.numbers], [molecule.positions])
        j = bundle.model.targets.index("gap")
        expected = bundle.calibration[path].sigma(raw.std)[0, j]
        assert result["properties"]["gap"]["std"] == pytest.approx(expected, rel=1e-6)


def test_a_ring_grouped_calibration_gives_each_molecule_its_ring_groups_std_and_interval(calibrated_path, tmp_path):
    """A path's calibration grouped by rings: benzene (one ring) gets group 1's factor on its std and group 1's
    quantile, ethanol (no ring) group 0's, from the same path's calibration."""
    import dataclasses
    import shutil

    from lieprop.model.bundle import record_metadata
    from lieprop.model.calibration import RING_GROUPS, calibrations_to_dict

    path = tmp_path / "grouped.pt"
    shutil.copy(calibrated_path, path)
    bundle = load_bundle(path)
    plain = bundle.calibration["generated"]
    n_groups, n_targets = len(RING_GROUPS), len(plain.targets)
    scale = np.ones((n_groups, n_targets))
    scale[1] = 3.0
    quantiles = np.repeat(plain.quantiles[None], n_groups, 0)
    quantiles[1] *= 1.5
    grouped = dataclasses.replace(plain, group_scale=scale, group_quantiles=quantiles,
                                  group_n=np.full(n_groups, 500))
    record_metadata(path, calibration=calibrations_to_dict({**bundle.calibration, "generated": grouped}))
    ethanol, benzene = lieprop.predict(["CCO", "c1ccccc1"], properties=["gap"], model=path)["results"]
    j = bundle.model.targets.index("gap")
    for result, smiles, group in ((ethanol, "CCO", 0), (benzene, "c1ccccc1", 1)):
        molecule = lieprop.inference.parse_item(smiles, 0)
        raw = predict_molecules(bundle.model, [molecule])
        gap = result["properties"]["gap"]
        assert gap["std"] == pytest.approx(plain.sigma(raw.std)[0, j] * scale[group, j], rel=1e-6)
        half = gap["interval"][1] - gap["value"]  # the upper side: a gap's interval stops at 0 below
        assert half == pytest.approx(gap["std"] * plain.quantile(0.9)[j] * (1.5 if group else 1.0), rel=1e-6)


def test_file_scoring_of_a_calibrated_ensemble_writes_interval_columns(tmp_path, calibrated_path):
    source = tmp_path / "in.csv"
    source.write_text("name,smiles\nethanol,CCO\n")
    score_file(source, tmp_path / "out.csv", ScoreOptions(properties=("gap",), coverage=0.8), model=calibrated_path,
               workers=1)
    with open(tmp_path / "out.csv") as f:
        row = next(csv.DictReader(f))
    assert list(row)[4:8] == ["gap [eV]", "gap_std [eV]", "gap_lower [eV]", "gap_upper [eV]"]
    library = lieprop.predict(["CCO"], properties=["gap"], model=calibrated_path, coverage=0.8)["results"][0]
    assert [float(row["gap_lower [eV]"]), float(row["gap_upper [eV]"])] == pytest.approx(
        library["properties"]["gap"]["interval"])


@pytest.fixture(scope="module")
def weighted_path(calibrated_path, tmp_path_factory):
    """The calibrated ensemble with member weights as ``lieprop calibrate`` can fit them, set by hand to the
    extremes: geometries a user gives are answered by member 0 alone, conformers lieprop makes by member 1 alone."""
    import shutil

    from lieprop.model.bundle import record_metadata
    from lieprop.model.calibration import Calibration, calibrations_to_dict

    path = tmp_path_factory.mktemp("weighted") / "ens-weighted.pt"
    shutil.copy(calibrated_path, path)
    bundle = load_bundle(path)
    n_targets = len(bundle.model.targets)
    only = {"given": 0, "generated": 1, "forcefield": 1}
    calibrations = {name: Calibration(**{**cal.__dict__, "weights": np.eye(2)[:, [only[name]] * n_targets]})
                    for name, cal in bundle.calibration.items()}
    record_metadata(path, calibration=calibrations_to_dict(calibrations))
    return path


def test_member_weights_follow_where_the_geometry_came_from_in_the_library_files_and_rest(weighted_path, tmp_path):
    """Water as atoms (given) gets member 0's values, as a SMILES (generated) member 1's, with the interval around
    that value; file scoring and a real server answer the same numbers, and a REST job that says relaxed_with gets
    the generated path's values too."""
    from test_jobs import upload, wait_for
    from test_service import start_server

    bundle = load_bundle(weighted_path)
    molecules = [{"id": "w", **WATER}, "O"]
    parsed = [lieprop.inference.parse_item(m, i) for i, m in enumerate(molecules)]
    members = bundle.model.member_values([m.numbers for m in parsed], [m.positions for m in parsed])
    results = lieprop.predict(molecules, properties=["homo", "gap"], model=weighted_path)["results"]
    for i, (result, member_index) in enumerate(zip(results, (0, 1), strict=True)):
        for name in ("homo", "gap"):
            entry = result["properties"][name]
            expected = members[member_index, i, bundle.model.targets.index(name)]
            assert entry["value"] == pytest.approx(expected, rel=1e-6)
            assert entry["interval"][0] <= entry["value"] <= entry["interval"][1]
    assert results[0]["properties"]["gap"]["value"] != pytest.approx(members[1, 0, bundle.model.targets.index("gap")])
    source = tmp_path / "in.csv"
    source.write_text("name,smiles\nwater,O\n")
    score_file(source, tmp_path / "out.csv", ScoreOptions(properties=("gap",)), model=weighted_path, workers=1)
    with open(tmp_path / "out.csv") as f:
        assert float(next(csv.DictReader(f))["gap [eV]"]) == pytest.approx(
            results[1]["properties"]["gap"]["value"], rel=1e-6)
    server = start_server(tmp_path, weighted_path)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            served = client.post("/v1/predict", json={"molecules": [molecules[0], {"smiles": "O"}],
                                                      "properties": ["homo", "gap"]}).json()["results"]
            said_forcefield = client.post("/v1/predict", json={"molecules": [molecules[0]], "properties": ["gap"],
                                                               "relaxed_with": "forcefield"}).json()["results"][0]
            unknown = client.post("/v1/predict", json={"molecules": [molecules[0]], "relaxed_with": "xtb"})
            xyz = tmp_path / "ethanol.xyz"
            xyz.write_text(ETHANOL_XYZ)
            job = upload(client, xyz, properties=["gap"], relaxed_with="forcefield")  # a REST job says it too
            wait_for(client, job["id"], lambda j: j["state"] == "succeeded")
            job_row = json.loads(client.get(f"/v1/jobs/{job['id']}/results").text.splitlines()[0])
            assert client.get(f"/v1/jobs/{job['id']}").json()["options"]["relaxed_with"] == "forcefield"
    finally:
        server.stop()
    ethanol = lieprop.predict([{"xyz": ETHANOL_XYZ}], properties=["gap"], model=weighted_path,
                              relaxed_with="forcefield")["results"][0]
    assert job_row["properties"]["gap"]["value"] == pytest.approx(ethanol["properties"]["gap"]["value"], rel=1e-5)
    assert job_row["provenance"]["relaxed_with"] == "forcefield"
    for got, local in zip(served, results, strict=True):
        for name in ("homo", "gap"):
            assert got["properties"][name]["value"] == pytest.approx(local["properties"][name]["value"], rel=1e-5)
    # a geometry the user says a force field relaxed is answered like lieprop's own conformers: member 1
    gap = bundle.model.targets.index("gap")
    assert said_forcefield["properties"]["gap"]["value"] == pytest.approx(members[1, 0, gap], rel=1e-5)
    assert said_forcefield["provenance"]["relaxed_with"] == "forcefield"
    assert unknown.status_code == 422 and "relaxed_with" in unknown.text


def test_relaxed_with_forcefield_gives_a_given_geometry_the_forcefield_calibration(weighted_path, tmp_path):
    """Water's DFT-like geometry, declared as a force-field one, in the library and in file scoring: the value and
    std of the forcefield path (one force-field geometry); a SMILES is a generated geometry whatever the option says;
    a bundle calibrated before the forcefield path existed answers with the generated path's calibration."""
    bundle = load_bundle(weighted_path)
    water = {"id": "w", **WATER}
    raw = bundle.model.predictions([np.asarray(WATER["numbers"])], [np.asarray(WATER["positions"], dtype=float)])
    gap = bundle.model.targets.index("gap")
    said = lieprop.predict([water, "O"], properties=["gap"], model=weighted_path, relaxed_with="forcefield")
    given_as_ff, smiles = (r["properties"]["gap"] for r in said["results"])
    expected = bundle.calibration["forcefield"].apply(raw)
    assert given_as_ff["value"] == pytest.approx(expected.value[0, gap], rel=1e-6)
    assert given_as_ff["std"] == pytest.approx(expected.std[0, gap], rel=1e-6)
    assert bundle.calibration["forcefield"].scale[gap] != bundle.calibration["generated"].scale[gap]
    older = load_bundle(weighted_path)
    del older.calibration["forcefield"]
    as_before = lieprop.predict([water], properties=["gap"], model=older, relaxed_with="forcefield")
    assert as_before["results"][0]["properties"]["gap"]["std"] == pytest.approx(
        bundle.calibration["generated"].apply(raw).std[0, gap], rel=1e-6)
    default = lieprop.predict([water, "O"], properties=["gap"], model=weighted_path)["results"]
    assert "relaxed_with" not in default[0]["provenance"]  # the default (dft) leaves the provenance as it was
    assert smiles == default[1]["properties"]["gap"]
    with pytest.raises(ValueError, match="relaxed_with must be one of dft, forcefield"):
        lieprop.predict([water], model=weighted_path, relaxed_with="xtb")
    source = tmp_path / "ethanol.xyz"
    source.write_text(ETHANOL_XYZ)
    for word in ("dft", "forcefield"):
        score_file(source, tmp_path / f"{word}.csv", ScoreOptions(properties=("gap",), relaxed_with=word),
                   model=weighted_path, workers=1)
    with open(tmp_path / "dft.csv") as f, open(tmp_path / "forcefield.csv") as g:
        as_dft, as_ff = next(csv.DictReader(f)), next(csv.DictReader(g))
    ethanol = lieprop.predict([{"xyz": ETHANOL_XYZ}], properties=["gap"], model=weighted_path,
                              relaxed_with="forcefield")["results"][0]["properties"]["gap"]
    assert float(as_ff["gap [eV]"]) == pytest.approx(ethanol["value"], rel=1e-6)
    assert float(as_ff["gap [eV]"]) != pytest.approx(float(as_dft["gap [eV]"]), rel=1e-6)


def test_lieprop_evaluate_and_the_card_report_the_weighted_values_a_bundle_serves(weighted_path, qm9_head):
    """``lieprop evaluate`` scores a weighted ensemble as it serves (DFT geometries: the given path, member 0 here),
    and the card's uncertainty text says the values are weighted."""
    from lieprop.data.qm9 import small_molecules
    from lieprop.inference.card import uncertainty_description
    from lieprop.training.evaluate import evaluate

    bundle = load_bundle(weighted_path)
    report = evaluate(weighted_path, split="small", data=qm9_head, plots=False, log=lambda *_: None)
    rows = small_molecules(qm9_head)
    zs, xs = zip(*(qm9_head.molecule(int(r)) for r in rows), strict=True)
    member0 = bundle.model.member_values(list(zs), list(xs))[0]
    truth = qm9_head.targets_in_units()[rows][:, [PROPERTY_NAMES.index(t) for t in bundle.model.targets]]
    homo = bundle.model.targets.index("homo")
    assert report["value"] == "members weighted for the given path (calibration)"
    assert report["mae"]["homo"]["mae"] == pytest.approx(np.abs(member0[:, homo] - truth[:, homo]).mean() * 1000)
    assert "weighted per target for each path (given, generated, forcefield)" in uncertainty_description(bundle)


def test_a_bundle_with_member_weights_that_do_not_fit_its_ensemble_is_refused(weighted_path, tmp_path):
    import shutil

    from lieprop.model.bundle import record_metadata
    from lieprop.model.calibration import Calibration, calibrations_to_dict

    bundle = load_bundle(weighted_path)
    t = len(bundle.model.targets)
    for weights, message in ((np.full((3, t), 1 / 3), r"have shape \(3, 12\), the ensemble needs \(2, 12\)"),
                             (np.stack([np.full(t, 1.5), np.full(t, -0.5)]), "non-negative and sum to 1")):
        path = tmp_path / "bad.pt"
        shutil.copy(weighted_path, path)
        bad = {name: Calibration(**{**cal.__dict__, "weights": weights}) for name, cal in bundle.calibration.items()}
        record_metadata(path, calibration=calibrations_to_dict(bad))  # digests kept right: only the weights are off
        with pytest.raises(BundleError, match=message):
            load_bundle(path)


def test_a_file_run_resumes_only_under_the_same_member_weights_and_relaxed_with(weighted_path, calibrated_path,
                                                                                tmp_path):
    """The resume fingerprint: member weights make the values, so a bundle re-calibrated under the same sha256 is
    another run; relaxed_with too. Keys added for them appear only when they change something, so a run interrupted
    before they existed (default options, a bundle without weights) still resumes."""
    from lieprop.inference import ResultContext
    from lieprop.scoring.pipeline import fingerprint, make_plan
    from lieprop.scoring.records import open_source

    source_path = tmp_path / "in.csv"
    source_path.write_text("smiles\nCCO\n")
    source = open_source(source_path)

    def keys(model_path, **options):
        bundle = load_bundle(model_path)
        score = ScoreOptions(**options)
        plan = make_plan(source, bundle.model.targets, score, ResultContext.of(bundle, None, score.relaxed_with))
        return fingerprint(source, plan, score, bundle.sha256, "csv")

    plain, weighted = keys(calibrated_path), keys(weighted_path)
    assert "relaxed_with" not in plain and "calibration_sha256" not in plain  # as runs before these options
    assert plain["model_sha256"] == weighted["model_sha256"]  # the same networks ...
    assert len(weighted["calibration_sha256"]) == 64  # ... answering other values: not the same run
    assert keys(calibrated_path, relaxed_with="forcefield")["relaxed_with"] == "forcefield"


def test_rest_refuses_a_coverage_the_model_cannot_give(ensemble_server):
    with httpx.Client(base_url=ensemble_server.base_url, timeout=60) as client:
        response = client.post("/v1/predict", json={"molecules": [{"smiles": "C"}], "coverage": 0.8})
        assert response.status_code == 422 and "calibrated" in response.json()["error"]["message"]
        response = client.post("/v1/predict", json={"molecules": [{"smiles": "C"}], "coverage": 1.5})
        assert response.status_code == 422


def test_a_spread_over_fixed_poses_is_invariant_and_lets_a_single_model_carry_a_std(qm9_head):
    from helpers import random_pose

    model = member(3)
    model.spread_poses = 4
    molecules = [qm9_head.molecule(i) for i in range(5, 25)]
    rng = np.random.default_rng(0)
    moved = [random_pose(z, x, rng) for z, x in molecules]
    a = model.predictions([z for z, _ in molecules], [x for _, x in molecules])
    b = model.predictions([z for z, _ in moved], [x for _, x in moved])
    assert (a.std > 0).mean() > 0.5  # (an untrained model clips some non-negative targets to 0 in every pose)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-3, atol=1e-4 * model.scale.numpy().max())  # poses act on frames
    np.testing.assert_allclose(a.value, model.predict([z for z, _ in molecules], [x for _, x in molecules]))
