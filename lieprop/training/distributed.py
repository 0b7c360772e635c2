"""Data-parallel training over several processes: ``torchrun --nproc_per_node=N -m lieprop.cli train ...`` (or
``lieprop train --nproc N``, which starts torchrun).

Every rank builds the same batches (the same seeded size-bucketed order) and trains on its share of each: rank r
takes molecules r, r + N, r + 2N, ... of the global batch (which is sorted by size within its window, so the shares
are alike in size). Gradients are averaged by DistributedDataParallel; the loss is scaled so that the average is the
gradient of the global batch's mean loss, so N processes take the steps one process would take on the same global
batch (to float rounding). Every rank then steps the same optimiser and EMA on the same gradients, so they stay
identical without any further exchange. Rank 0 alone validates, writes checkpoints, bundles and logs; ``--resume``
reads rank 0's checkpoint and hands it to every rank.

The backend is chosen at run time: NCCL when the run is on CUDA (each rank on GPU ``LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Cluster:
    """This process's place in the run: ``rank`` of ``world`` processes (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0

    def share(self, n: int) -> np.ndarray:
        """The positions in a global batch of ``n`` molecules this rank trains on (possibly none, when ``n`` is
        smaller than the world)."""
        return np.arange(self.rank, n, self.world)

    def sum(self, value: float, device: torch.device) -> float:
        """``value`` summed over the ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def from_main(self, value: float, device: torch.device) -> float:
        """Rank 0's ``value`` on every rank (step times: the ranks then agree on the time budget and the schedule it
        drives; rank 0's step time includes waiting for slower ranks, and not the others' wait for its validation)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a checkpoint: CPU tensors in plain containers)."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def cluster_from_env() -> Cluster:
    """The cluster torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (a single process without
    them)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world size {world} is not a valid place in a run")
    return Cluster(rank, world, local_rank)


def check_network(network_cfg: Any, cluster: Cluster) -> None:
    """Raise ValueError when the network cannot train data-parallel: ``norm='batch'`` takes statistics over each
    batch, which every rank would take over its own share only."""
    if cluster.distributed and getattr(network_cfg, "norm", None) == "batch":
        raise ValueError("norm='batch' takes statistics over each batch, which each of several processes would take "
                         "over its own share only; train data-parallel with norm='layer' (the default) or 'affine'")


def init(cluster: Cluster, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU) and return this rank's device (CUDA: GPU
    ``local_rank``). Needs ``MASTER_ADDR`` and ``MASTER_PORT`` (torchrun sets them)."""
    if not cluster.distributed:
        return device
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", cluster.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=cluster.rank,
                                world_size=cluster.world)
    return device


def shutdown(cluster: Cluster) -> None:
    """Leave the process group (after a last barrier, so no rank leaves while another still needs it)."""
    if cluster.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``lieprop <argv>`` in ``nproc`` processes on this machine (torchrun, standalone)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lieprop.cli", *argv]
