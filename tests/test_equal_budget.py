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


def _subnormal_fraction(x: torch.Tensor) -> float:
    tiny = torch.finfo(x.dtype).tiny  # the smallest normal float
    return float(((x != 0) & (x.abs() < tiny)).float().mean())


def test_schnets_distance_expansion_makes_subnormals_and_lieconvs_radial_basis_does_not(qm9_head) -> None:
    """Why the speed and equal-budget benchmarks flush subnormal floats to zero for every contender: a CPU computes on
    subnormals on a slow path, and PyG SchNet's Gaussian expansion of its 10 Å radius graph makes them (exp of -87 to
    -103 in float32) for 3-4% of its entries, which made its training step 3.6x slower (docs/BENCHMARKS.md,
    "Subnormal floats"). LieConv's radial basis is cut before them (``GAUSSIAN_CUT``), so the flush changes little for
    lieprop's own networks and much for SchNet."""
    from baselines import radius_graph, schnet

    from lieprop.model.network import GAUSSIAN_CUT, gaussians

    z, x = qm9_head.molecule(100)
    pos = torch.from_numpy(x).float()
    _, lengths = radius_graph(pos, torch.zeros(len(z), dtype=torch.long))
    expanded = schnet().distance_expansion(lengths)
    assert _subnormal_fraction(expanded) > 0.01
    assert GAUSSIAN_CUT <= 60  # exp(-60) = 9e-27: far above float32's smallest normal, 1.2e-38
    # LieConv's basis as its layers use it (centres over the neighbourhood, narrow Gaussians), on the same pairs
    assert _subnormal_fraction(gaussians(lengths, torch.linspace(0.0, 10.0, 50), 0.1)) == 0.0
