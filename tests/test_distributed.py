"""Data-parallel training (lieprop/training/distributed.py): two CPU processes under torchrun (gloo) take the steps of
one process on the same global batch, and a resumed two-process run continues exactly."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_run import RecordingTrainer

from lieprop.training.commands import train_argv
from lieprop.training.config import load_config
from lieprop.training.distributed import Cluster, cluster_from_env, torchrun_command

SCRIPT = Path(__file__).parent / "ddp_run.py"
# 33 training molecules in global batches of 16: 16, 16 and 1 per epoch, so one step gives rank 1 no molecule
CONFIG = {"targets": ["homo", "u0", "mu"], "limit_train": 33, "limit_valid": 8, "batch_size": 16, "epochs": 1,
          "ema_decay": 0.9, "tensorboard": False}


def torchrun(out: Path, *extra: str, config: dict | None = None, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT),
           str(out), json.dumps(config or CONFIG), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, out: Path) -> dict:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-5000:]
    return {**json.loads((out / "losses.json").read_text()),
            "checkpoint": torch.load(out / "checkpoint.pt", weights_only=True)}


def one_process(out: Path, qm9_head) -> RecordingTrainer:
    cfg = load_config("tiny", overrides={**CONFIG, "out_dir": str(out)})
    tr = RecordingTrainer(cfg, data=qm9_head, log=lambda *_: None, cluster=Cluster())
    tr.fit()
    return tr


def test_two_processes_take_the_steps_of_one_process_on_the_same_global_batch(tmp_path, qm9_head):
    process = torchrun(tmp_path / "two")  # the two ranks train while this process trains the reference
    single = one_process(tmp_path / "single", qm9_head)
    two_ranks = finish(process, tmp_path / "two")
    assert two_ranks["world"] == 2 and len(two_ranks["losses"]) == len(single.losses) == 3
    np.testing.assert_allclose(two_ranks["losses"], single.losses, rtol=1e-5)
    assert len(set(np.round(single.losses, 4))) == 3  # the steps differ: a curve, not one number
    reference = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    for part in ("model", "ema"):
        for key, value in reference[part].items():
            torch.testing.assert_close(two_ranks["checkpoint"][part][key], value, rtol=1e-4, atol=1e-6)
    assert two_ranks["checkpoint"]["state"]["step"] == 3
    assert two_ranks["checkpoint"]["state"]["history"][-1]["valid_score"] == pytest.approx(
        reference["state"]["history"][-1]["valid_score"], rel=1e-5)


@pytest.mark.slow
def test_a_resumed_two_process_run_continues_exactly(tmp_path, qm9_head):
    config = {**CONFIG, "epochs": 2}
    two_ranks = finish(torchrun(tmp_path / "whole", config=config), tmp_path / "whole")
    out = tmp_path / "run"
    first = finish(torchrun(out, "--stop-at", "4", config=config), out)  # stops after the 2nd epoch's first step
    assert first["checkpoint"]["state"]["step"] == 4 and first["checkpoint"]["state"]["batch_in_epoch"] == 1
    second = finish(torchrun(out, "--resume", config=config), out)
    assert first["losses"] + second["losses"] == two_ranks["losses"]
    for part in ("model", "ema"):
        for key, value in two_ranks["checkpoint"][part].items():
            assert torch.equal(second["checkpoint"][part][key], value), key


def test_the_cluster_comes_from_torchruns_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert cluster_from_env() == Cluster(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cluster = cluster_from_env()
    assert cluster == Cluster(3, 4, 1) and cluster.distributed and not cluster.main
    assert cluster.share(10).tolist() == [3, 7] and cluster.share(3).tolist() == []
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="rank 4 of world size 4"):
        cluster_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="must be integers"):
        cluster_from_env()


def test_nproc_reruns_the_same_train_command_under_torchrun():
    args = argparse.Namespace(preset="tiny", config=None, out="runs/x", max_minutes=None, epochs=3, device=None,
                              set=["lr=0.001", 'targets=["homo"]'], resume=True, nproc=2)
    argv = train_argv(args)
    assert argv == ["train", "--preset", "tiny", "--out", "runs/x", "--epochs", "3", "--set", "lr=0.001",
                    "--set", 'targets=["homo"]', "--resume"]
    assert torchrun_command(2, argv)[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                              "-m"]
    with pytest.raises(ValueError, match="at least 1"):
        torchrun_command(0, argv)


def test_batch_norm_is_refused_in_a_data_parallel_run(tmp_path, qm9_head):
    """norm='batch' would take statistics over each rank's share only: refused with the reason, before the process
    group is joined."""
    cfg = load_config("tiny", overrides={"out_dir": str(tmp_path / "bn"), "network": {"norm": "batch"}})
    with pytest.raises(ValueError, match="norm='batch'.*norm='layer'"):
        RecordingTrainer(cfg, data=qm9_head, log=lambda *_: None, cluster=Cluster(0, 2, 0))
    RecordingTrainer(cfg, data=qm9_head, log=lambda *_: None, cluster=Cluster())  # one process: fine
