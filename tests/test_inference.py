"""The library call ``lieprop.predict``, the dynamic batcher and the ``lieprop info`` command (no server)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lieprop
from lieprop.data.properties import BY_NAME, ENERGY_NAMES, PROPERTY_NAMES
from lieprop.data.readers import from_smiles
from lieprop.inference import ModelNotFoundError, UnknownPropertyError, atom_reference, select_properties
from lieprop.service.batcher import BatcherClosed, DynamicBatcher, Priority, QueueFull
from lieprop.service.schemas import ETHANOL_XYZ, METHANAL_SDF, WATER

ALL_OUTPUTS = [*PROPERTY_NAMES, *(f"{e}_atomization" for e in ENERGY_NAMES)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    import torch

    from lieprop.model.bundle import save_bundle
    from lieprop.model.network import NetworkConfig
    from lieprop.model.predictor import PropertyModel

    torch.manual_seed(1)
    cfg = NetworkConfig(width=32, depth=2, targets=list(PROPERTY_NAMES))
    path = tmp_path_factory.mktemp("bundle") / "tiny.pt"
    save_bundle(PropertyModel(cfg), path, "tiny-lib", {"test_mae": {"gap": 0.2}, "training": {"epochs": 3}})
    return path


# --------------------------------------------------------------------------------------------------
# lieprop.predict


def test_import_lieprop_stays_light():
    code = "import sys, lieprop; assert callable(lieprop.__getattr__); " \
           "assert not {'torch', 'rdkit', 'ase', 'fastapi'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_accepts_every_input_kind(bundle):
    from ase import Atoms

    water = Atoms("OH2", positions=WATER["positions"], info={"id": "ase-water"})
    inputs = ["CCO", from_smiles("CO", "methanol"), water, {"id": "x", "xyz": ETHANOL_XYZ},
              {"sdf": METHANAL_SDF}, {"id": "w", **WATER}]
    out = lieprop.predict(inputs, model=bundle)
    assert out["model"]["name"] == "tiny-lib" and len(out["model"]["sha256"]) == 64
    results = out["results"]
    assert [r["id"] for r in results] == ["0", "methanol", "ase-water", "x", "4", "w"]
    assert [r["provenance"]["source"] for r in results] == ["smiles", "smiles", "atoms", "xyz", "sdf", "atoms"]
    for r in results:
        assert r["ok"] and list(r["properties"]) == ALL_OUTPUTS
        assert all(v["unit"] == BY_NAME[k.removesuffix("_atomization")].unit for k, v in r["properties"].items())
    # the same geometry through different doors gives the same values
    assert results[2]["properties"] == results[5]["properties"]


def test_predict_single_input_and_per_item_errors(bundle):
    one = lieprop.predict("CC#N", properties=["lumo"], model=bundle)
    assert len(one["results"]) == 1 and one["results"][0]["properties"].keys() == {"lumo"}
    out = lieprop.predict(["C1CC", "CBr", "[O-]C=O", "CC"], properties=["homo"], model=bundle)["results"]
    assert [r["ok"] or r["error"]["code"] for r in out] == [
        "invalid_smiles", "unsupported_element", "charged_molecule", True]


def test_atomization_is_total_minus_atom_references(bundle):
    out = lieprop.predict({"xyz": ETHANOL_XYZ}, model=bundle)["results"][0]["properties"]
    numbers = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    for energy in ENERGY_NAMES:
        expected = out[energy]["value"] - atom_reference(numbers, energy)
        assert out[f"{energy}_atomization"]["value"] == pytest.approx(expected, abs=1e-9)
    assert atom_reference(numbers, "u0") == pytest.approx(-153.759761 * 27.211386, abs=1e-3)  # 2 C + 6 H + O


def test_predict_refuses_unknown_properties_and_non_molecules(bundle):
    with pytest.raises(UnknownPropertyError) as info:
        lieprop.predict("C", properties=["homo", "colour", "mu_atomization"], model=bundle)
    assert info.value.names == ["colour", "mu_atomization"]
    with pytest.raises(ValueError, match="molecule 1: .*exactly one"):
        lieprop.predict(["C", {"smiles": "C", "xyz": ETHANOL_XYZ}], model=bundle)
    with pytest.raises(TypeError, match="int"):
        lieprop.predict([42], model=bundle)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        lieprop.predict("C", model="/nonexistent/model.pt")


def test_select_properties_checks_the_model_targets():
    columns = select_properties(["homo", "u0"])
    assert [c.name for c in columns] == ["homo", "u0", "u0_atomization"]
    with pytest.raises(UnknownPropertyError, match="does not predict"):
        select_properties(["homo"], ["lumo"])


def test_predict_with_a_process_pool_matches_one_process(bundle):
    smiles = ["CCO", "CC(=O)O", "c1ccccc1", "C1CC1", "CCN"]
    alone = lieprop.predict(smiles, model=bundle)
    pooled = lieprop.predict(smiles, model=bundle, workers=2)
    assert pooled == alone


# --------------------------------------------------------------------------------------------------
# DynamicBatcher (with a fake model: row i = [n_atoms, sum of positions])


def fake_predict(calls: list[int], fail_on: int | None = None, delay: float = 0.0):
    def predict(numbers, positions):
        calls.append(len(numbers))
        time.sleep(delay)
        if fail_on is not None and any(len(z) == fail_on for z in numbers):
            raise RuntimeError("poisoned")
        return np.array([[len(z), float(np.sum(x))] for z, x in zip(numbers, positions, strict=True)])
    return predict


def mol(n: int, tag: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return np.ones(n, dtype=np.int64), np.full((n, 3), tag)


def test_batcher_answers_each_submission_in_order_across_threads():
    calls: list[int] = []
    batcher = DynamicBatcher(fake_predict(calls, delay=0.002), max_batch_size=16, max_wait_ms=5).start()
    answers: dict[int, list] = {}

    def client(k: int) -> None:
        molecules = [mol(1 + (k + j) % 7, tag=k * 100 + j) for j in range(5)]
        answers[k] = batcher.submit_nowait(molecules).result(10)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for k, rows in answers.items():
        for j, row in enumerate(rows):
            n = 1 + (k + j) % 7
            assert row.value[0] == n and row.value[1] == pytest.approx(3 * n * (k * 100 + j))
    assert sum(calls) == 100 and max(calls) <= 16 and len(calls) < 100  # batched, never above the maximum


def test_batcher_groups_by_atom_count_around_the_oldest():
    seen: list[list[int]] = []
    inner = fake_predict([])

    def predict(numbers, positions):
        seen.append(sorted(len(z) for z in numbers))
        return inner(numbers, positions)

    gate = threading.Event()
    batcher = DynamicBatcher(predict, max_batch_size=3, max_wait_ms=0)
    batcher.call(gate.wait)  # hold the worker while the queue fills
    batcher.start()
    futures = [batcher.submit_nowait([mol(n)]) for n in [10, 29, 3, 11, 28, 9, 4]]
    gate.set()
    assert [f.result(5)[0].value[0] for f in futures] == [10, 29, 3, 11, 28, 9, 4]
    batcher.close()
    # the oldest molecule with the nearest sizes; then the oldest left (29) with its nearest; then the rest
    assert seen == [[9, 10, 11], [4, 28, 29], [3]]


def test_batcher_serves_interactive_work_before_background_work():
    order: list[str] = []
    gate = threading.Event()

    def predict(numbers, positions):
        order.append("bg" if len(numbers[0]) == 2 else "fg")
        return np.zeros((len(numbers), 1))

    batcher = DynamicBatcher(predict, max_batch_size=1, max_wait_ms=0)
    batcher.call(gate.wait)
    batcher.start()
    background = [batcher.submit_nowait([mol(2)], Priority.BACKGROUND) for _ in range(3)]
    interactive = [batcher.submit_nowait([mol(5)]) for _ in range(3)]
    gate.set()
    for f in background + interactive:
        f.result(5)
    batcher.close()
    assert order == ["fg"] * 3 + ["bg"] * 3


def test_a_failing_molecule_fails_only_itself():
    calls: list[int] = []
    batcher = DynamicBatcher(fake_predict(calls, fail_on=13), max_batch_size=8, max_wait_ms=20).start()
    rows = batcher.submit_nowait([mol(5), mol(13), mol(7)]).result(5)
    batcher.close()
    assert rows[0].value[0] == 5 and rows[2].value[0] == 7
    assert isinstance(rows[1], RuntimeError)


def test_batching_off_runs_each_submission_alone():
    calls: list[int] = []
    gate = threading.Event()
    batcher = DynamicBatcher(fake_predict(calls), max_batch_size=8, batching=False)
    batcher.call(gate.wait)
    batcher.start()
    futures = [batcher.submit_nowait([mol(3), mol(4)]) for _ in range(4)]
    gate.set()
    for f in futures:
        f.result(5)
    batcher.close()
    assert calls == [2, 2, 2, 2]


def test_cancelled_work_is_dropped_and_limits_hold():
    calls: list[int] = []
    gate = threading.Event()
    batcher = DynamicBatcher(fake_predict(calls), max_batch_size=8, max_wait_ms=0, max_queue=4)
    batcher.call(gate.wait)
    batcher.start()
    dropped = batcher.submit_nowait([mol(3), mol(3)])
    kept = batcher.submit_nowait([mol(4)])
    with pytest.raises(QueueFull):
        batcher.submit_nowait([mol(5), mol(5)])
    assert dropped.cancel()
    gate.set()
    assert kept.result(5)[0].value[0] == 4
    batcher.close()
    assert calls == [1]
    with pytest.raises(BatcherClosed):
        batcher.submit_nowait([mol(3)])


def test_async_submit():
    import asyncio

    batcher = DynamicBatcher(fake_predict([]), max_wait_ms=1).start()

    async def main():
        return await asyncio.gather(*(batcher.submit([mol(k + 1)]) for k in range(10)))

    results = asyncio.run(main())
    batcher.close()
    assert [r[0].value[0] for r in results] == list(range(1, 11))


# --------------------------------------------------------------------------------------------------
# lieprop info


def test_info_prints_the_model_card(bundle, capsys):
    from lieprop.cli import main

    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "tiny-lib" in out and "homo (eV)" in out and "epochs" in out
    assert "gap" in out.split("test MAE")[1] and "200 meV" in out
    assert main(["info", str(Path(bundle).with_name("missing.pt"))]) == 2


# --------------------------------------------------------------------------------------------------
# Warnings for molecule sizes a model is known to fail on


def test_a_size_bin_far_worse_than_the_card_is_named_in_a_warning():
    from lieprop.inference import size_warnings

    meta = {"test_mae": {"homo": 0.1075},  # eV; the card's 107.5 meV
            "test_mae_by_size": {"9-10": {"n": 3, "mae": {"homo": 90.0}},  # too few test molecules to judge
                                 "17-18": {"n": 4000, "mae": {"homo": 76.0}},
                                 "26-29": {"n": 40, "mae": {"homo": 420.0}}},
            "small_evaluation": {"by_size": {"3-8": {"n": 251, "mae": {"homo": 1243.0}},
                                             "9-10": {"n": 512, "mae": {"homo": 586.0}}}}}
    warnings = size_warnings(meta)
    assert set(warnings) == {"3-8", "9-10", "26-29"}  # 9-10 judged on the small set's 512 molecules
    assert "homo error there is 1243 meV, 12x its 108 meV average" in warnings["3-8"]
    assert size_warnings({}) == {} and size_warnings({"test_mae": {"homo": 0.1}}) == {}


def test_results_of_molecules_in_a_weak_size_bin_carry_the_warning(tmp_path):
    import torch

    from lieprop.model.bundle import save_bundle
    from lieprop.model.network import NetworkConfig
    from lieprop.model.predictor import PropertyModel

    torch.manual_seed(1)
    path = tmp_path / "weak.pt"
    save_bundle(PropertyModel(NetworkConfig(width=32, depth=2, targets=list(PROPERTY_NAMES))), path, "weak",
                {"test_mae": {"homo": 0.1}, "test_mae_by_size": {"3-8": {"n": 100, "mae": {"homo": 900.0}}}})
    out = lieprop.predict(["O", "CCCCO"], model=path, properties=["homo"])["results"]
    assert any("unreliable for molecules of 3-8 atoms" in w for w in out[0]["warnings"])  # water: 3 atoms
    assert not any("unreliable" in w for w in out[1]["warnings"])  # butanol: 15 atoms


def test_a_molecule_far_more_uncertain_than_usual_gets_a_warning_naming_the_property():
    from lieprop.inference import UNCERTAIN_FACTOR, uncertainty_warning
    from lieprop.model.prediction import Prediction

    typical = [0.05, 0.1]
    usual = Prediction(np.zeros(2), std=np.array([0.06, 0.2]))
    unsure = Prediction(np.zeros(2), std=np.array([0.06, 0.1 * (UNCERTAIN_FACTOR + 1)]))
    assert uncertainty_warning(usual, ["homo", "gap"], typical) is None
    message = uncertainty_warning(unsure, ["homo", "gap"], typical)
    assert "gap std, 500 meV, is 5x the typical 100 meV" in message
    assert uncertainty_warning(Prediction(np.zeros(2)), ["homo", "gap"], typical) is None  # a single model: no std
