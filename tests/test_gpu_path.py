"""The CUDA path, checked on the CPU: random draws happen on their generator's device, bfloat16 autocast is a CUDA-only
switch that leaves the geometry in float32, and the GPU check script refuses to run without a GPU. The tests marked
``cuda`` run only where torch sees a CUDA device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from lieprop.data.batch import collate, featurize
from lieprop.model.device import bf16_autocast, full_precision, uses_bf16_autocast
from lieprop.model.groups import SE3, SO3, random_rotations
from lieprop.model.network import LieResNet, NetworkConfig
from lieprop.training.config import load_config
from lieprop.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class DrawSpy(TorchFunctionMode):
    """Records (device the draw allocates on, generator's device) for every seeded random draw."""

    def __init__(self):
        super().__init__()
        self.draws: list[tuple[torch.device, torch.device]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        gen = kwargs.get("generator")
        if gen is not None and func in (torch.randn, torch.rand, torch.randint, torch.randperm):
            where = kwargs.get("device")
            self.draws.append((torch.device(where) if where is not None else torch.get_default_device(), gen.device))
        return func(*args, **kwargs)


@pytest.mark.parametrize("draw", [
    lambda x, gen: random_rotations(6, gen, x.dtype, x.device),
    lambda x, gen: SE3().lift(x, 4, gen)[0],
    lambda x, gen: SO3().lift(x, 4, gen)[0],
    lambda x, gen: SO3().lift(x, 4, gen, per_position=True)[0],
], ids=["random_rotations", "se3_lift", "so3_lift", "so3_lift_per_position"])
def test_random_draws_happen_on_the_generators_device_and_land_on_the_tensors_device(draw):
    # A generator on one device, the molecules on another ("meta" stands in for CUDA here): torch refuses to fill a
    # tensor on another device than its generator's (the SE(3) training bug on CUDA), so every draw must be made on
    # the generator's device and moved. The spy sees where each draw allocates.
    x = torch.zeros(2, 5, 3, device="meta")
    gen = torch.Generator().manual_seed(0)
    with DrawSpy() as spy:
        out = draw(x, gen)
    assert spy.draws, "no seeded draw seen"
    assert all(at.type == g.type for at, g in spy.draws), spy.draws
    assert out.device.type == "meta"


@cuda
def test_se3_training_step_and_lifts_on_cuda(tmp_path, qm9_head):
    x = torch.randn(2, 5, 3, device="cuda")
    for gen in (torch.Generator(device="cuda").manual_seed(0), torch.Generator().manual_seed(0)):
        assert SE3().lift(x, 4, gen)[0].device.type == "cuda"
        assert SO3().lift(x, 4, gen)[0].device.type == "cuda"
    cfg = load_config("tiny", overrides={"out_dir": str(tmp_path / "run"), "device": "cuda", "autocast_bf16": True,
                                         "network.group": "SE3", "network.lift_samples": 2, "targets": ["homo"]})
    tr = Trainer(cfg, data=qm9_head, log=lambda *_: None)
    assert tr.autocast
    loss = tr.train_step(tr._epoch_batches(0)[0])
    assert loss == loss and loss > 0


def test_bf16_autocast_is_a_cuda_only_switch():
    assert uses_bf16_autocast("cuda", True) and not uses_bf16_autocast("cuda", False)
    assert not uses_bf16_autocast("cpu", True)
    a = torch.randn(4, 4)
    with bf16_autocast("cpu", True):
        assert (a @ a).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16), full_precision("cpu"):
        assert (a @ a).dtype == torch.float32


def test_the_paper_preset_asks_for_autocast_and_the_others_do_not():
    assert load_config("paper").autocast_bf16
    assert not load_config("default").autocast_bf16 and not load_config("budget").autocast_bf16


@pytest.mark.parametrize(("group", "lifts"), [("T3", 1), ("SE3", 2)])
def test_under_autocast_the_pair_geometry_stays_in_float32_and_the_network_runs_in_bfloat16(group, lifts, qm9_head):
    # CPU autocast stands in for CUDA's: the same dispatch rules cast matmuls to bfloat16
    torch.manual_seed(0)
    net = LieResNet(NetworkConfig(targets=["homo", "u0"], width=32, depth=2, group=group, lift_samples=lifts)).eval()
    mols = [qm9_head.molecule(i) for i in (20, 40, 60)]
    b = collate([z for z, _ in mols], [x for _, x in mols])
    plain = net.pair_geometry(b.positions, deterministic=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast = net.pair_geometry(b.positions, deterministic=True)
        low = net(featurize(b.numbers), b.positions, b.mask, deterministic=True)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
    with torch.no_grad():
        full = net(featurize(b.numbers), b.positions, b.mask, deterministic=True)
    assert low.dtype == torch.bfloat16  # the autocast really ran the network in bfloat16
    assert torch.allclose(low.float(), full, atol=0.05 * float(full.abs().max()) + 0.02)


def test_autocast_flag_changes_nothing_on_the_cpu(tmp_path, qm9_head):
    logs: list[str] = []
    losses = []
    for flag in (False, True):
        cfg = load_config("tiny", overrides={"out_dir": str(tmp_path / f"run{flag}"), "targets": ["homo"],
                                             "autocast_bf16": flag, "device": "cpu"})
        tr = Trainer(cfg, data=qm9_head, log=logs.append)
        assert not tr.autocast
        batch = tr._epoch_batches(0)[0]
        losses.append(tr.train_step(batch))
    assert losses[0] == losses[1]
    assert any("autocast_bf16: off on cpu" in m for m in logs)


def test_the_gpu_check_fails_fast_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run the real check")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--minutes", "0.1"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert "no CUDA device" in out.stderr and "torch.cuda.is_available() is False" in out.stderr


def test_the_gpu_checks_steps_run_here_on_the_cpu(tmp_path, qm9_head):
    # the functions the script runs on CUDA, on the CPU with a tiny preset: the script arrives on a GPU working
    import importlib.util

    from lieprop.model.loading import load_model

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    cpu = torch.device("cpu")
    train = gpu_check.train_throughput(0.0, True, 1, str(tmp_path / "t"), cpu, preset="tiny", data=qm9_head,
                                       limit_train=64)
    assert train["steps"] == 1 and train["mol_s"] > 0 and train["mode"] == "train tiny (float32)"
    mols = [qm9_head.molecule(i) for i in range(100, 104)]
    rows = gpu_check.predict_throughput(load_model().model, mols, [1, 4], autocast=False)
    assert [(r["batch"], r["steps"]) for r in rows] == [(1, 4), (4, 1)] and all(r["mol_s"] > 0 for r in rows)
    text = gpu_check.table([train, *rows], "cpu")
    assert text.count("\n| ") == 4 and "| predict (float32) | 4 | 1 |" in text


def test_atom_features_are_computed_on_the_cpu_and_moved_to_the_model_device():
    """featurize reads atomic numbers with numpy: it must see them before they move to a GPU ("meta" stands in)."""
    from lieprop.model.predictor import padded_inputs

    z = [np.array([8, 1, 1]), np.array([6, 1, 1, 1, 1])]
    x = [np.zeros((3, 3)), np.zeros((5, 3))]
    features, positions, mask = padded_inputs(z, x, torch.device("meta"))
    assert {t.device.type for t in (features, positions, mask)} == {"meta"}
    assert features.shape == (2, 5, 15) and mask.shape == (2, 5)
