"""Per-request overhead cuts keep behaviour: the model worker's default thread count, and :meth:`evaluate`, which
switches a model to eval mode only when some module is training, and leaves every module's mode as it found it."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import untrained_model

from lieprop.inference import parse_item
from lieprop.service import schemas
from lieprop.service.state import ServiceDep, default_model_threads


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (3, 2), (16, 15)])
def test_the_model_worker_leaves_a_core_to_the_event_loop(cpus: int, threads: int) -> None:
    assert default_model_threads(cpus) == threads


def test_the_service_dependency_runs_on_the_event_loop() -> None:
    # FastAPI runs a plain ``def`` dependency on its thread pool: one thread hop per request for an attribute lookup
    depends = typing.get_args(ServiceDep)[1]
    assert inspect.iscoroutinefunction(depends.dependency)


def _molecules() -> tuple[list[np.ndarray], list[np.ndarray]]:
    ms = [parse_item(schemas.WATER, 0), parse_item({"xyz": schemas.ETHANOL_XYZ}, 1)]
    return [m.numbers for m in ms], [m.positions for m in ms]


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_evaluate_gives_the_same_values_in_any_mode_and_restores_it() -> None:
    numbers, positions = _molecules()
    model = untrained_model()
    assert not any(_modes(model))
    in_eval = model.predict(numbers, positions)
    assert not any(_modes(model))  # an eval model stays in eval mode, untouched

    model.train()
    in_train = model.predict(numbers, positions)
    assert all(_modes(model))  # a training model is back in training mode
    np.testing.assert_array_equal(in_train, in_eval)

    model.eval()
    model.net.train()  # one submodule left training: evaluation must still run in eval mode
    mixed = model.predict(numbers, positions)
    np.testing.assert_array_equal(mixed, in_eval)
    assert not any(_modes(model))  # restored as train(False) always did: the root's mode, everywhere


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("hey") is None, reason="needs hey on the PATH (apt-get install -y hey)")
def test_the_throughput_benchmark_drives_a_real_server_with_hey() -> None:
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "service_throughput.py"), "--seconds", "1",
                          "--concurrency", "1", "4", "--no-warmup"], capture_output=True, text=True, timeout=600,
                         cwd=root)
    assert run.returncode == 0, run.stderr
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| this |")]
    assert len(rows) == 4  # concurrency 1 and 4, batching on and off
    for row in rows:
        requests, errors, rps, cpu = int(row[3]), int(row[4]), float(row[5]), float(row[8])
        assert requests > 0 and errors == 0 and rps > 0 and cpu > 0
