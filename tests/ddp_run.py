"""A data-parallel training run for tests/test_distributed.py, on the first QM9 molecules of the qm9pack CSV:

    torchrun --standalone --nproc_per_node=2 tests/ddp_run.py OUT CONFIG_JSON [--resume] [--stop-at STEP]

trains the config (JSON of TrainConfig keys) with its out_dir set to OUT, optionally from OUT's checkpoint or
stopping after STEP steps (a checkpoint is written there, as at an interruption), and writes rank 0's loss of every
step to OUT/losses.json. :class:`RecordingTrainer` is also the one-process reference of the tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lieprop.training import distributed
from lieprop.training.config import load_config
from lieprop.training.loop import Trainer


class RecordingTrainer(Trainer):
    """A :class:`Trainer` that keeps every step's loss and may stop after ``stop_at`` steps."""

    def __init__(self, *args, stop_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at
        self.losses: list[float] = []

    def train_step(self, idx):
        loss = super().train_step(idx)
        self.losses.append(loss)
        return loss

    def done(self) -> bool:
        return super().done() or (self.stop_at is not None and self.state.step >= self.stop_at)


def head_of_qm9(limit: int = 400):
    """The first ``limit`` QM9 molecules, as tests/conftest.py's ``qm9_head``."""
    from lieprop.data.qm9 import parse_qm9pack, qm9pack_csvs

    return parse_qm9pack(qm9pack_csvs()[:1], limit=limit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-at", type=int)
    args = parser.parse_args()
    cfg = load_config("tiny", overrides={**json.loads(args.config), "out_dir": args.out})
    tr = RecordingTrainer(cfg, data=head_of_qm9(), log=lambda *_: None, stop_at=args.stop_at)
    if args.resume:
        assert tr.resume()
    tr.fit()
    if tr.cluster.main:
        (Path(args.out) / "losses.json").write_text(json.dumps({"world": tr.cluster.world, "losses": tr.losses}))
    distributed.shutdown(tr.cluster)


if __name__ == "__main__":
    main()
