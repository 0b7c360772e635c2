"""The served networks in their own process (lieprop/service/model_process.py): the same values as in-process, and a
child that dies costs at most the batch it was computing."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from helpers import untrained_model
from test_service import make_tiny_bundle, start_server

from lieprop.data.properties import PROPERTY_NAMES
from lieprop.inference import parse_item
from lieprop.model.network import NetworkConfig
from lieprop.model.predictor import EnsembleModel, PropertyModel
from lieprop.service import schemas
from lieprop.service.admission import networks_per_pass
from lieprop.service.model_process import ModelProcessError, NetworkProcess, detach


def _molecules(qm9_head, n: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Water and ethanol as a user sends them, and the first QM9 molecules (symmetric ones among them: several
    frames each)."""
    ms = [parse_item(schemas.WATER, 0), parse_item({"xyz": schemas.ETHANOL_XYZ}, 1)]
    return ([m.numbers for m in ms] + [qm9_head.molecule(i)[0] for i in range(n)],
            [m.positions for m in ms] + [qm9_head.molecule(i)[1] for i in range(n)])


@pytest.fixture
def ensemble() -> EnsembleModel:
    return EnsembleModel([untrained_model(seed=1), untrained_model(seed=2)]).eval()


def test_the_model_process_gives_the_in_process_values_bit_for_bit(qm9_head, ensemble) -> None:
    numbers, positions = _molecules(qm9_head)
    here = ensemble.predictions(numbers, positions, batch_size=5)  # several forward passes per member
    process = NetworkProcess(ensemble, threads=torch.get_num_threads())
    try:
        process.attach(ensemble)
        there = ensemble.predictions(numbers, positions, batch_size=5)
    finally:
        detach(ensemble)
        process.close()
    np.testing.assert_array_equal(there.value, here.value)
    np.testing.assert_array_equal(there.std, here.std)
    assert not process.alive()


def test_a_model_process_killed_between_batches_is_started_again(qm9_head) -> None:
    model = untrained_model()
    numbers, positions = _molecules(qm9_head, 4)
    expected = model.predict(numbers, positions)
    process = NetworkProcess(model)
    try:
        process.attach(model)
        os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        np.testing.assert_array_equal(model.predict(numbers, positions), expected)
        assert process.starts == 2
    finally:
        detach(model)
        process.close()


def test_a_model_process_killed_during_a_batch_fails_that_batch_only_with_an_error_naming_it(qm9_head) -> None:
    torch.manual_seed(0)
    model = PropertyModel(NetworkConfig(width=256, depth=6, targets=list(PROPERTY_NAMES))).eval()
    z, x = qm9_head.molecule(len(qm9_head) - 1)
    many = ([z] * 600, [x + 0.01 * i for i in range(600)])  # one forward pass of 600 frames: over a second
    process = NetworkProcess(model)
    try:
        process.attach(model)
        first_pid = process.pid
        killer = threading.Timer(0.3, os.kill, (first_pid, signal.SIGKILL))
        killer.start()
        with pytest.raises(ModelProcessError, match="died while computing this batch"):
            model.predict(*many, batch_size=600)
        killer.join()
        assert process.pid != first_pid and process.alive()  # already started again
        np.testing.assert_allclose(model.predict([z], [x]), PropertyModel.predict(_local(model), [z], [x]))
    finally:
        detach(model)
        process.close()


def _local(model: PropertyModel) -> PropertyModel:
    copy = PropertyModel(model.cfg, model.fix_signs, model.architecture)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.pt")
    s = start_server(tmp_path_factory.mktemp("server"), bundle)
    yield s
    s.stop()


def _model_process_pid(server) -> int:
    """The pid of the server's model process, from its "model process started" log line (the latest)."""
    started = [r for r in server.logs() if r.get("msg") == "model process started"]
    assert started, "the server logged no model process"
    return int(started[-1]["pid"])


def test_the_server_answers_again_after_its_model_process_is_killed(server) -> None:
    water = {"molecules": [schemas.WATER]}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        before = client.post("/v1/predict", json=water)
        assert before.status_code == 200
        os.kill(_model_process_pid(server), signal.SIGKILL)
        time.sleep(0.2)
        after = client.post("/v1/predict", json=water)
        assert after.status_code == 200, after.text
        assert after.json()["results"][0]["properties"] == before.json()["results"][0]["properties"]
        assert client.get("/healthz").status_code == 200
        assert "lieprop_model_process_starts 2.0" in client.get("/metrics").text
    assert any(r.get("msg") == "model process restarting" for r in server.logs())


@pytest.mark.slow
def test_a_compiled_model_process_gives_the_uncompiled_values_to_float32_rounding(qm9_head, ensemble) -> None:
    numbers, positions = _molecules(qm9_head, 6)
    here = ensemble.predictions(numbers, positions)
    process = NetworkProcess(ensemble, compile_=True)  # torch.compile: minutes on a CPU
    try:
        process.attach(ensemble)
        there = ensemble.predictions(numbers, positions)
        again = ensemble.predictions(numbers[:1], positions[:1])  # a new batch shape: recompiled, still right
    finally:
        detach(ensemble)
        process.close()
    np.testing.assert_allclose(there.value, here.value, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(again.value, here.value[:1], rtol=1e-4, atol=1e-5)


def test_an_ensemble_in_one_process_sends_each_forward_pass_once_for_all_members(qm9_head, ensemble) -> None:
    numbers, positions = _molecules(qm9_head)
    frames = ensemble.first.expand(numbers, positions)
    process = NetworkProcess(ensemble)
    passes: list[list[int]] = []
    send = process.forward_frames
    process.forward_frames = lambda members, *rest: (passes.append(list(members)), send(members, *rest))[1]
    try:
        process.attach(ensemble)
        assert ensemble.joint and networks_per_pass(ensemble) == 2  # passes are sized for both networks
        ensemble.predictions(numbers, positions, batch_size=5)
    finally:
        detach(ensemble)
        process.close()
    assert not ensemble.joint and networks_per_pass(ensemble) == 1
    assert passes == [[0, 1]] * -(-len(frames.owners) // 5)  # one round trip per pass of 5 frames, both members
