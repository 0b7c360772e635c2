"""Training: a tiny real run on QM9 molecules learns, checkpoints, and resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lieprop.model.bundle import BundleError, load_bundle
from lieprop.training.config import TrainConfig, load_config
from lieprop.training.data import split_data
from lieprop.training.loop import Trainer, lr_at, train


def tiny(tmp_path, **kw) -> TrainConfig:
    return load_config("tiny", overrides={"out_dir": str(tmp_path / "run"), "targets": ["homo", "u0", "mu"],
                                          "limit_valid": None, **kw})


def test_a_tiny_run_lowers_the_loss_and_writes_a_usable_bundle(tmp_path, qm9_head):
    cfg = tiny(tmp_path, epochs=6, lr=3e-3)
    tr = train(cfg, data=qm9_head, log=lambda *_: None)
    hist = tr.state.history
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    bundle = load_bundle(tmp_path / "run" / "best.pt")
    assert bundle.model.targets == ["homo", "u0", "mu"]
    z, x = qm9_head.molecule(0)
    pred = bundle.model.predict([z], [x])
    assert pred.shape == (1, 3) and np.isfinite(pred).all()
    # u0 is a total energy in eV: methane is about -1101 eV; the atom offsets alone get close.
    assert -1200 < pred[0, 1] < -1000
    assert (tmp_path / "run" / "log.csv").read_text().startswith("epoch,")
    # the same numbers as TensorBoard scalars (tensorboard is in the dev extra)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    scores = events.Scalars("valid_score")
    assert [e.step for e in scores] == [h["step"] for h in hist]
    assert scores[-1].value == pytest.approx(hist[-1]["valid_score"], rel=1e-6)
    assert "valid_mae/homo" in events.Tags()["scalars"]


def test_resume_continues_with_the_identical_next_step(tmp_path, qm9_head):
    cfg = tiny(tmp_path, epochs=3)
    a = Trainer(cfg, data=qm9_head, log=lambda *_: None)
    batches = a._epoch_batches(0)
    for i in range(3):
        a.train_step(batches[i])
        a.state.batch_in_epoch += 1
    a.save_checkpoint()
    loss_a = a.train_step(batches[3])
    params_a = [p.detach().clone() for p in a.model.parameters()]

    b = Trainer(cfg, data=qm9_head, log=lambda *_: None)
    assert b.resume()
    assert b.state.step == 3 and b.state.batch_in_epoch == 3
    loss_b = b.train_step(b._epoch_batches(0)[3])
    assert loss_a == loss_b
    for pa, pb in zip(params_a, b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_wall_time_budget_stops_cleanly_with_a_checkpoint(tmp_path, qm9_head):
    cfg = tiny(tmp_path, epochs=1000, max_minutes=0.05)
    tr = train(cfg, data=qm9_head, log=lambda *_: None)
    assert tr.state.elapsed >= 3.0 and tr.state.epoch < 1000
    assert (tmp_path / "run" / "checkpoint.pt").exists() and (tmp_path / "run" / "best.pt").exists()


def test_oversampling_repeats_the_small_molecules_in_every_epoch(tmp_path, qm9_head):
    from collections import Counter

    plain = Trainer(tiny(tmp_path), data=qm9_head, log=lambda *_: None)
    over = Trainer(tiny(tmp_path, oversample_small=3), data=qm9_head, log=lambda *_: None)
    seen = Counter(int(i) for b in over._epoch_batches(0) for i in b)
    small = {i for i in range(len(over.train)) if over.train.sizes[i] <= 10}
    assert small and all(seen[i] == 3 for i in small)
    assert all(seen[i] == 1 for i in range(len(over.train)) if i not in small)
    assert sorted(int(i) for b in plain._epoch_batches(0) for i in b) == list(range(len(plain.train)))


def test_train_small_valid_moves_only_the_small_validation_molecules_into_training(tmp_path, qm9_head):
    plain = Trainer(tiny(tmp_path, limit_train=None, limit_valid=None), data=qm9_head, log=lambda *_: None)
    moved = Trainer(tiny(tmp_path, limit_train=None, limit_valid=None, train_small_valid=True), data=qm9_head,
                    log=lambda *_: None)
    small_valid = {int(r) for r in plain.valid.qm9_rows if qm9_head.n_atoms[r] <= 10}
    assert small_valid and set(map(int, moved.train.qm9_rows)) == set(map(int, plain.train.qm9_rows)) | small_valid
    assert set(map(int, moved.valid.qm9_rows)) == set(map(int, plain.valid.qm9_rows)) - small_valid


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(lr=1e-3, warmup_fraction=0.1)
    assert lr_at(cfg, 0.0) < lr_at(cfg, 0.05) < lr_at(cfg, 0.1)
    assert lr_at(cfg, 0.1) == pytest.approx(1e-3, rel=1e-2)
    assert lr_at(cfg, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_every_network_setting_of_the_config_reaches_the_network():
    from lieprop.training.loop import network_config

    cfg = load_config("default", overrides={"network.width": 64, "network.depth": 3, "network.radial_basis": 32,
                                            "network.kernel_hidden": 48, "network.kernel_out": 8,
                                            "network.aggregation": "sum", "targets": ["homo", "u0"]})
    net = network_config(cfg)
    assert (net.width, net.depth, net.radial_basis, net.kernel_hidden, net.kernel_out, net.aggregation) == (
        64, 3, 32, 48, 8, "sum")
    assert net.targets == ["homo", "u0"]


def test_the_network_defaults_are_declared_once_by_the_architecture():
    from lieprop.model.network import NetworkConfig

    assert TrainConfig().network_config() == NetworkConfig(targets=list(TrainConfig().targets))
    assert not set(TrainConfig.model_fields) & {"width", "depth", "radial_basis", "group", "norm"}


def test_presets_and_overrides_merge_the_network_table_key_by_key():
    cfg = load_config("budget", overrides={"network.depth": 3})
    assert cfg.network == {"width": 128, "radial_basis": 32, "aggregation": "sum", "depth": 3}


def test_a_top_level_network_key_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="network.width"):
        cfg = load_config("tiny", overrides={"width": 16})
    assert cfg.network_config().width == 16


def test_bad_network_settings_are_refused_with_their_name():
    with pytest.raises(ValueError, match="unknown network keys"):
        load_config("tiny", overrides={"network.widht": 3})
    with pytest.raises(ValueError, match="network.width"):
        load_config("tiny", overrides={"network.width": "wide"})
    with pytest.raises(ValueError, match="unknown architecture"):
        load_config("tiny", overrides={"architecture": "transformer"})


def test_config_rejects_unknown_keys_and_targets():
    with pytest.raises(ValueError):
        TrainConfig(learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown targets"):
        TrainConfig(targets=["homo", "spin"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("huge")


def test_bundles_refuse_tampering_truncation_and_garbage(tmp_path, qm9_head):
    cfg = tiny(tmp_path, epochs=1)
    train(cfg, data=qm9_head, log=lambda *_: None)
    path = tmp_path / "run" / "best.pt"
    good = load_bundle(path)
    assert len(good.sha256) == 64

    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["net.head.bias"] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(tmp_path / "tampered.pt")

    raw = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match="corrupted or truncated"):
        load_bundle(tmp_path / "truncated.pt")

    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(tmp_path / "future.pt")

    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "missing.pt")


def test_bundle_round_trip_gives_identical_predictions(tmp_path, qm9_head):
    cfg = tiny(tmp_path, epochs=1)
    tr = train(cfg, data=qm9_head, log=lambda *_: None)
    mols = [qm9_head.molecule(i) for i in range(20)]
    before = tr.eval_model().predict([z for z, _ in mols], [x for _, x in mols])
    after = load_bundle(tmp_path / "run" / "best.pt").model.predict([z for z, _ in mols], [x for _, x in mols])
    np.testing.assert_array_equal(before, after)


def test_evaluate_writes_a_report_and_plots_and_can_record_the_test_mae(tmp_path, qm9_head):
    import json

    from lieprop.training.evaluate import evaluate

    train(tiny(tmp_path, epochs=1), data=qm9_head, log=lambda *_: None)
    bundle = tmp_path / "run" / "best.pt"
    lines = []
    report = evaluate(bundle, "test", tmp_path / "report", data=qm9_head, record=True, log=lines.append)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["mae"]["homo"]["unit"] == "meV" and saved["mae"]["homo"]["mae"] > 0
    assert saved["mae"]["homo"]["LieConv T(3)"] == 30
    assert (tmp_path / "report" / "parity.png").stat().st_size > 1000
    assert (tmp_path / "report" / "errors.png").stat().st_size > 1000
    assert "| homo | meV |" in lines[0]
    recorded = load_bundle(bundle).meta["test_mae"]
    assert recorded["homo"] == pytest.approx(report["mae"]["homo"]["mae"] / 1000)  # stored in eV
    with pytest.raises(ValueError, match="whole test split"):
        evaluate(bundle, "valid", data=qm9_head, record=True, log=lambda *_: None)
    # the by-size table: every molecule counted once, in the bin of its atom count
    by_size = saved["by_size"]
    assert sum(row["n"] for row in by_size.values()) == saved["n_molecules"]
    assert "| atoms | molecules |" in "\n".join(lines)
    assert load_bundle(bundle).meta["test_mae_by_size"] == by_size


def test_the_small_molecule_set_is_every_molecule_up_to_10_atoms_and_can_be_recorded(tmp_path, qm9_head):
    from lieprop.data.qm9 import small_molecules
    from lieprop.training.evaluate import evaluate

    rows = small_molecules(qm9_head)
    assert set(rows) == {i for i in range(len(qm9_head)) if qm9_head.n_atoms[i] <= 10}
    assert {0, 1, 2} <= set(rows)  # methane, ammonia, water
    train(tiny(tmp_path, epochs=1), data=qm9_head, log=lambda *_: None)
    bundle = tmp_path / "run" / "best.pt"
    report = evaluate(bundle, "small", data=qm9_head, plots=False, record=True, log=lambda *_: None)
    assert report["n_molecules"] == len(rows) and set(report["by_size"]) <= {"3-8", "9-10"}
    assert load_bundle(bundle).meta["small_evaluation"]["by_size"] == report["by_size"]


def test_a_batch_norm_bundle_warm_starts_a_run_without_batch_statistics(tmp_path, qm9_head):
    """norm='affine' takes a batch-norm bundle's eval-mode function exactly, then trains without batch statistics."""
    train(tiny(tmp_path, epochs=1, network={"norm": "batch"}), data=qm9_head, log=lambda *_: None)
    bundle = tmp_path / "run" / "best.pt"
    cont = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "cont"), init_from=str(bundle),
                        network={"norm": "affine"}),
                   data=qm9_head, log=lambda *_: None)
    assert cont.model.cfg.norm == "affine"
    mols = [qm9_head.molecule(i) for i in range(20)]
    args = ([z for z, _ in mols], [x for _, x in mols])
    np.testing.assert_allclose(cont.model.predict(*args), load_bundle(bundle).model.predict(*args), rtol=1e-6)
    with pytest.raises(ValueError, match="same network"):  # a layer-norm run cannot take batch-norm weights
        Trainer(tiny(tmp_path, out_dir=str(tmp_path / "ln"), init_from=str(bundle), network={"norm": "layer"}),
                data=qm9_head,
                log=lambda *_: None)


def test_a_run_can_start_from_a_bundle_and_refuses_a_different_network(tmp_path, qm9_head, capsys):
    train(tiny(tmp_path, epochs=1), data=qm9_head, log=lambda *_: None)
    bundle = tmp_path / "run" / "best.pt"
    cont = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "cont"), init_from=str(bundle)), data=qm9_head,
                   log=lambda *_: None)
    mols = [qm9_head.molecule(i) for i in range(10)]
    args = ([z for z, _ in mols], [x for _, x in mols])
    np.testing.assert_array_equal(cont.model.predict(*args), load_bundle(bundle).model.predict(*args))
    cont.fit()  # the continued run's bundle names the bundle it started from, with that bundle's own training facts
    lineage = load_bundle(tmp_path / "cont" / "best.pt").meta["training"]["warm_start_from"]
    assert lineage["sha256"] == load_bundle(bundle).sha256
    assert lineage["training"]["epoch"] == 1 and lineage["training"]["config"]["init_from"] is None
    from lieprop.cli import main  # `lieprop info` shows the chain

    assert main(["info", str(tmp_path / "cont" / "best.pt")]) == 0
    assert f"warm_start_from        lieprop-qm9 {lineage['sha256'][:12]} (" in capsys.readouterr().out
    with pytest.raises(ValueError, match="same network"):
        Trainer(tiny(tmp_path, out_dir=str(tmp_path / "other"), init_from=str(bundle), network={"width": 16}),
                data=qm9_head,
                log=lambda *_: None)


def test_force_field_conformers_are_the_services_smiles_geometries(tmp_path, qm9_head, monkeypatch):
    from lieprop.data.qm9_conformers import build_conformers, load_conformers
    from lieprop.data.readers import from_smiles
    from lieprop.data.stereo import isomeric_smiles

    monkeypatch.setenv("LIEPROP_CACHE_DIR", str(tmp_path / "cache"))
    build_conformers(qm9_head, limit=80, log=lambda *_: None)  # a trial cache: the first 80 rows
    conformers = load_conformers()
    assert len(conformers) == 80 and conformers.ok.all() and conformers.stereo.all()
    for row in (7, 73):  # ethane; COC(C)=N, whose SMILES leaves the imine's E/Z open
        z, x = conformers.molecule(row)
        served = from_smiles(str(conformers.smiles[row]))
        np.testing.assert_array_equal(z, served.numbers)
        np.testing.assert_allclose(x, served.positions, atol=1e-5)  # float32 storage of the very same conformer
        assert sorted(z) == sorted(qm9_head.molecule(row)[0])
        # every conformer the service averages over, in its order; the molecule as the service holds it
        cached = conformers.geometries(row)
        assert len(cached) == len(served.geometries) == conformers.n_geometries[row] >= 2
        for mine, theirs in zip(cached, served.geometries, strict=True):
            np.testing.assert_allclose(mine, theirs, atol=1e-5)
        assert len(conformers.molecules([row])[0].geometries) == len(cached)
    # training packs each molecule's first (lowest-energy) conformer
    packed = split_data(qm9_head, np.arange(80), ["homo"], conformers)
    for row in (0, 7, 41, 73, 79):
        z, x = conformers.molecule(row)
        np.testing.assert_array_equal(packed.positions[packed.offsets[row]:packed.offsets[row + 1]], x)
    # and any other conformer k of the molecules that have one
    rows = np.flatnonzero(conformers.n_geometries[:80] > 2)
    third = split_data(qm9_head, rows, ["homo"], conformers, conformer=2)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(third.positions[third.offsets[i]:third.offsets[i + 1]],
                                      conformers.geometries(int(row))[2].astype(np.float32))
    # the cached conformer is the stereoisomer of the DFT geometry, which QM9's SMILES does not say
    assert str(qm9_head.smiles[73]) == "COC(C)=N" and conformers.smiles[73] != "COC(C)=N"
    dft_stereo = isomeric_smiles("COC(C)=N", *qm9_head.molecule(73))
    assert conformers.smiles[73] == dft_stereo and "/" in dft_stereo
    assert conformers.available(np.array([3, 79, 80, 300])).tolist() == [True, True, False, False]


def test_a_splits_build_embeds_only_those_rows_and_a_full_build_completes_it(tmp_path, qm9_head, monkeypatch):
    from lieprop.data.qm9 import split_indices
    from lieprop.data.qm9_conformers import NOT_BUILT, build_conformers, load_conformers

    monkeypatch.setenv("LIEPROP_CACHE_DIR", str(tmp_path / "cache"))
    test_rows = split_indices(len(qm9_head))["test"]
    build_conformers(qm9_head, limit=60, splits=["test"], log=lambda *_: None)
    partial = load_conformers()
    inside = np.zeros(60, dtype=bool)
    inside[test_rows[test_rows < 60]] = True
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(partial.built, inside)
    assert set(partial.errors[~inside]) == {NOT_BUILT} and partial.ok[inside].all()
    with pytest.raises(ValueError, match="has not embedded"):  # training on force-field geometries needs them all
        Trainer(tiny(tmp_path, forcefield_geometries=True, limit_train=None), data=qm9_head, log=lambda *_: None)
    with pytest.raises(ValueError, match="unknown splits"):
        build_conformers(qm9_head, limit=60, splits=["tset"], log=lambda *_: None)
    valid_rows = split_indices(len(qm9_head))["valid"]
    build_conformers(qm9_head, limit=60, splits=["valid"], log=lambda *_: None)  # adds to the test rows
    both = load_conformers()
    inside[valid_rows[valid_rows < 60]] = True
    np.testing.assert_array_equal(both.built, inside)
    logged = []
    build_conformers(qm9_head, limit=60, log=logged.append)
    assert f"embedding {int((~inside).sum())} molecules" in logged[0]  # only the rows not yet embedded
    full = load_conformers()
    assert full.built.all() and full.ok.all()
    row = int(np.flatnonzero(inside)[0])
    for a, b in zip(partial.geometries(row), full.geometries(row), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_run_with_force_field_geometries_trains_on_both_and_scores_both(tmp_path, qm9_head, monkeypatch):
    from lieprop.data.qm9_conformers import build_conformers

    monkeypatch.setenv("LIEPROP_CACHE_DIR", str(tmp_path / "cache"))
    build_conformers(qm9_head, limit=len(qm9_head), log=lambda *_: None)
    plain = Trainer(tiny(tmp_path), data=qm9_head, log=lambda *_: None)
    both = Trainer(tiny(tmp_path, forcefield_geometries=True), data=qm9_head, log=lambda *_: None)
    assert len(both.train) == 2 * len(plain.train)  # every training molecule twice: DFT and force-field geometry
    np.testing.assert_array_equal(both.train.targets[len(plain.train):], plain.train.targets)
    three = Trainer(tiny(tmp_path, forcefield_geometries=True, forcefield_conformers=3), data=qm9_head,
                    log=lambda *_: None)  # three conformers of each molecule (those that have them)
    from lieprop.data.qm9_conformers import load_conformers

    counts = load_conformers().n_geometries[plain.train.qm9_rows]
    assert len(three.train) == len(plain.train) + int(np.minimum(counts, 3).sum()) > 3 * len(plain.train)
    both.fit()
    row = both.state.history[-1]
    assert row["selection_score"] == pytest.approx((row["valid_score"] + row["valid_ff_score"]) / 2)


def test_a_warm_start_from_an_ensemble_takes_the_member_it_names(tmp_path, qm9_head):
    from lieprop.model.bundle import make_ensemble, save_bundle
    from lieprop.model.predictor import PropertyModel

    quiet = {"data": qm9_head, "log": lambda *_: None}
    cfg = Trainer(tiny(tmp_path), **quiet).model.cfg
    for k in (1, 2):
        torch.manual_seed(k)
        save_bundle(PropertyModel(cfg), tmp_path / f"m{k}.pt", f"m{k}")
    make_ensemble([tmp_path / "m1.pt", tmp_path / "m2.pt"], tmp_path / "ens.pt", "ens")
    with pytest.raises(ValueError, match=r"ensemble of 2 models; warm-start from one member \(init_member=0..1\)"):
        Trainer(tiny(tmp_path, init_from=str(tmp_path / "ens.pt")), **quiet)
    with pytest.raises(ValueError, match="init_member=2, but .* has 2 members"):
        Trainer(tiny(tmp_path, init_from=str(tmp_path / "ens.pt"), init_member=2), **quiet)
    with pytest.raises(ValueError, match="set init_from too"):
        Trainer(tiny(tmp_path, init_member=1), **quiet)
    second = Trainer(tiny(tmp_path, init_from=str(tmp_path / "ens.pt"), init_member=1), **quiet)
    theirs = load_bundle(tmp_path / "m2.pt").model.state_dict()
    for name, value in second.model.state_dict().items():
        torch.testing.assert_close(value, theirs[name], msg=name)
    assert second.parent["name"] == "m2" and second.parent["member_of"]["member"] == 1
    assert second.parent["sha256"] == load_bundle(tmp_path / "m2.pt").sha256


def test_a_fraction_build_embeds_a_nested_random_subset_that_training_can_use(tmp_path, qm9_head, monkeypatch):
    from lieprop.data.qm9 import split_indices
    from lieprop.data.qm9_conformers import build_conformers, load_conformers, subset

    monkeypatch.setenv("LIEPROP_CACHE_DIR", str(tmp_path / "cache"))
    n = 120
    assert (subset(n, 0.25) <= subset(n, 0.5)).all()  # nested: a larger fraction keeps every smaller one's rows
    assert 0.35 < subset(130_831, 0.5).mean() < 0.65 and subset(n, 1.0).all()
    with pytest.raises(ValueError, match="fraction must be in"):
        subset(n, 0.0)
    build_conformers(qm9_head, limit=n, splits=["train"], fraction=0.5, log=lambda *_: None)
    built = load_conformers().built
    train_rows = split_indices(len(qm9_head))["train"]
    expected = np.zeros(n, dtype=bool)
    expected[train_rows[train_rows < n]] = True
    np.testing.assert_array_equal(built, expected & subset(n, 0.5))
    assert 0 < built.sum() < expected.sum()
    run = {"forcefield_geometries": True, "limit_train": None}
    with pytest.raises(ValueError, match="forcefield_embedded_only=true"):
        Trainer(tiny(tmp_path, **run), data=qm9_head, log=lambda *_: None)
    with pytest.raises(ValueError, match="no validation molecules"):  # force-field validation needs them
        Trainer(tiny(tmp_path, forcefield_embedded_only=True, **run), data=qm9_head, log=lambda *_: None)
    build_conformers(qm9_head, limit=n, splits=["valid"], log=lambda *_: None)
    logged: list[str] = []
    partial = Trainer(tiny(tmp_path, forcefield_embedded_only=True, **run), data=qm9_head, log=logged.append)
    n_train = len(train_rows)
    assert len(partial.train) == n_train + int(built.sum())  # every DFT geometry, and the conformers embedded
    assert any(f"conformers of {int(built.sum())} of {n_train} training molecules" in m for m in logged)
    monkeypatch.setenv("LIEPROP_CACHE_DIR", str(tmp_path / "none"))
    build_conformers(qm9_head, limit=10, fraction=0.01, log=lambda *_: None)  # nothing selected: a cache all the same
    assert len(load_conformers()) == 10 and not load_conformers().built.any()
