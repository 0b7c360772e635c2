"""The equal-budget comparison's parts (benchmarks/equal_budget.py): PyG SchNet as a lieprop architecture, trained by
lieprop's own trainer, and the CPU-time budget that makes runs side by side on a shared machine comparable."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_pose

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytest.importorskip("torch_geometric")

import schnet_architecture  # noqa: E402

from lieprop.data.batch import collate, featurize  # noqa: E402
from lieprop.model.predictor import PropertyModel  # noqa: E402
from lieprop.training.config import load_config  # noqa: E402
from lieprop.training.loop import Trainer  # noqa: E402


def test_atomic_numbers_are_read_back_from_the_atom_features() -> None:
    z = torch.tensor([[1, 6, 7, 8, 9, 0], [8, 1, 1, 0, 0, 0]])
    assert torch.equal(schnet_architecture.atomic_numbers(featurize(z)), z)


def test_schnet_registers_as_an_intrinsic_architecture_that_is_invariant_without_frames(qm9_head) -> None:
    schnet_architecture.register()
    torch.manual_seed(0)
    cfg = schnet_architecture.SchNetConfig(hidden=16, filters=16, interactions=2, gaussians=8,
                                           targets=["homo", "u0"])
    model = PropertyModel(cfg, architecture="schnet").eval()
    assert model.arch.invariance == "intrinsic" and cfg.pooling == ["mean", "sum"]
    molecules = [qm9_head.molecule(i) for i in (0, 5, 23, 100)]
    rng = np.random.default_rng(0)
    moved = [random_pose(z, x, rng) for z, x in molecules]
    a = model.predict([z for z, _ in molecules], [x for _, x in molecules])
    b = model.predict([z for z, _ in moved], [x for _, x in moved])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # padding changes nothing: a molecule alone and in a batch with a larger one
    z0, x0 = molecules[0]
    alone = model.net(*_padded([z0], [x0]))
    together = model.net(*_padded([z0, molecules[3][0]], [x0, molecules[3][1]]))[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def _padded(zs, xs):
    b = collate(zs, xs)
    return featurize(b.numbers), b.positions, b.mask


def test_a_cpu_budget_counts_the_processes_cpu_seconds_and_ends_the_run(tmp_path) -> None:
    schnet_architecture.register()
    cfg = load_config("tiny", overrides={
        "architecture": "schnet", "network": {"hidden": 16, "filters": 16, "interactions": 1, "gaussians": 8},
        "targets": ["homo"], "epochs": 10_000, "max_minutes": 0.01, "budget_clock": "cpu", "threads": 1,
        "tensorboard": False, "out_dir": str(tmp_path / "run")})
    cpu = time.process_time()
    tr = Trainer(cfg, log=lambda *_: None)
    tr.fit()
    used = time.process_time() - cpu
    assert 0.6 <= tr.state.elapsed <= used  # the budget (0.6 s) was spent in CPU seconds of this process
    assert tr.state.epoch < 10_000 and (tmp_path / "run" / "best.pt").exists()
