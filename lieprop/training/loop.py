"""The training loop: L1 on standardised targets, Adam with warm-up + cosine, EMA, budgets, exact resume.

Every random choice of a step (batch order, sampled frames or rotations, SE(3) lifts) is drawn from a
generator seeded by (seed, epoch) or (seed, step), so a resumed run continues exactly where it stopped
from nothing more than the step counters, the weights and the optimiser state in the checkpoint.

Under torchrun the run is data-parallel (:mod:`lieprop.training.distributed`): each rank trains on its share of every
global batch, and rank 0 alone validates and writes files.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lieprop.data.batch import Batch, featurize, size_bucketed_batches
from lieprop.data.elements import ELEMENT_INDEX
from lieprop.data.qm9 import SMALL_MAX_ATOMS, load_qm9, small_molecules, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.model.architectures import get_architecture
from lieprop.model.bundle import load_bundle, member_record, save_bundle
from lieprop.model.device import bf16_autocast, pick_device, uses_bf16_autocast
from lieprop.model.norm import fold_batch_norm
from lieprop.model.predictor import EnsembleModel, PropertyModel
from lieprop.training import distributed
from lieprop.training.config import TrainConfig
from lieprop.training.data import SplitData, concat_splits, split_data
from lieprop.training.distributed import Cluster


def network_config(cfg: TrainConfig):
    """The network part of a run's config: its architecture's config (``cfg.network`` with the run's targets)."""
    return cfg.network_config()


def fit_normalisation(model: PropertyModel, train: SplitData) -> None:
    """Set the model's scale, bias and per-element offsets from the training split.

    Extensive targets (sum pooling) get per-element offsets by least squares on element counts (for
    energies this subsumes the QM9 atom references), intensive ones a mean; the scale is the standard
    deviation of what is left, so the network learns O(1) residuals.
    """
    counts = np.zeros((len(train), 5))
    mol = np.repeat(np.arange(len(train)), train.sizes)
    np.add.at(counts, (mol, ELEMENT_INDEX[train.numbers]), 1.0)
    y = train.targets
    bias = np.zeros(y.shape[1])
    offsets = np.zeros((5, y.shape[1]))
    for t, pool in enumerate(model.cfg.pooling):
        if pool == "sum":
            present = counts.any(0)
            coef, *_ = np.linalg.lstsq(counts[:, present], y[:, t], rcond=None)
            offsets[present, t] = coef
        else:
            bias[t] = y[:, t].mean()
    resid = y - bias - counts @ offsets
    scale = resid.std(0)
    scale[scale < 1e-12] = 1.0
    model.bias.copy_(torch.as_tensor(bias))
    model.offsets.copy_(torch.as_tensor(offsets))
    model.scale.copy_(torch.as_tensor(scale))


def parent_record(bundle, member: int | None = None) -> dict:
    """What a warm-started bundle records of the bundle it started from: its sha256 and its own training facts
    (which include that bundle's parent in turn), so the whole history of a model stays in the file. From an
    ensemble's ``member``, that member's record (its name, sha256 and training) with the ensemble's and the index."""
    if member is not None and bundle.n_members > 1:
        record = member_record(bundle, member)
        return {**record, "training": record.get("training") or {}}
    return {"name": bundle.name, "sha256": bundle.sha256, "training": bundle.meta.get("training", {})}


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the run, then cosine to zero. ``progress`` in [0, 1]."""
    w = cfg.warmup_fraction
    if progress < w:
        return cfg.lr * (progress + 1e-3) / w
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - w) / max(1e-9, 1 - w))))


@dataclass
class RunState:
    """What a checkpoint stores besides weights and optimiser state."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    elapsed: float = 0.0  # seconds of training so far, across resumes
    best_valid: float = math.inf
    history: list[dict] = field(default_factory=list)


class EMA:
    """Exponential moving average of the trained parameters; buffers (normalisation constants, batch-norm running
    statistics) follow the live model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.averaged = frozenset(k for k, p in model.named_parameters() if p.dtype.is_floating_point)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if k in self.averaged:
                self.shadow[k].lerp_(v, 1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)


class Trainer:
    """Owns a run directory: ``checkpoint.pt`` (resume state), ``best.pt`` (bundle), ``log.csv``.

    ``cluster``: this process's rank in a data-parallel run (default: from torchrun's environment; one process
    without it). Rank 0 writes the run directory; the other ranks only train."""

    def __init__(self, cfg: TrainConfig, data=None, log=print, cluster: Cluster | None = None):
        self.cfg = cfg
        self.cluster = cluster if cluster is not None else distributed.cluster_from_env()
        self.log = log if self.cluster.main else _quiet
        distributed.check_network(network_config(cfg), self.cluster)
        self.out = Path(cfg.out_dir)
        if self.cluster.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = distributed.init(self.cluster, pick_device(cfg.device))
        qm9 = data if data is not None else load_qm9()
        parts = split_indices(len(qm9), cfg.split, seed=0)
        train_rows = parts["train"][: cfg.limit_train] if cfg.limit_train else parts["train"]
        valid_rows = parts["valid"]
        if cfg.train_small_valid:
            small = qm9.n_atoms[valid_rows] <= SMALL_MAX_ATOMS
            train_rows, valid_rows = np.concatenate([train_rows, valid_rows[small]]), valid_rows[~small]
        valid_rows = valid_rows[: cfg.limit_valid] if cfg.limit_valid else valid_rows
        t0 = time.time()
        self.train = split_data(qm9, train_rows, cfg.targets)
        self.valid = split_data(qm9, valid_rows, cfg.targets)
        self.valid_ff: SplitData | None = None  # the validation molecules in force-field geometries
        if cfg.forcefield_geometries:
            conformers = load_conformers()
            inside = train_rows < len(conformers)  # rows past a trial cache's end have none either
            missing = int((~conformers.built[train_rows[inside]]).sum()) + int((~inside).sum())
            if missing and cfg.forcefield_embedded_only:
                self.log(f"force-field conformers of {int(conformers.available(train_rows).sum())} of "
                         f"{len(train_rows)} training molecules (forcefield_embedded_only: the others train in their "
                         "DFT geometry alone)")
            elif missing:
                raise ValueError(f"the conformer cache has not embedded {missing} training molecules (a --splits "
                                 "or --fraction build); embed them with python -m lieprop.data.qm9_conformers "
                                 "--workers N, or train on those it has with forcefield_embedded_only=true")
            for k in range(cfg.forcefield_conformers):  # the k-th conformer of the molecules that have one
                rows = train_rows[conformers.available(train_rows)]
                rows = rows[conformers.n_geometries[rows] > k]
                self.train = concat_splits(self.train, split_data(qm9, rows, cfg.targets, conformers, conformer=k))
            scored = valid_rows[conformers.available(valid_rows)]
            if not len(scored):
                raise ValueError("the conformer cache has no validation molecules to score force-field geometries "
                                 "on; embed them with python -m lieprop.data.qm9_conformers --splits valid,test")
            self.valid_ff = split_data(qm9, scored, cfg.targets, conformers)
        self.small = split_data(qm9, small_molecules(qm9), cfg.targets)  # sanity set, logged, not selected on
        # an intrinsically invariant network sees each molecule as it is: frames (or rotations) would only cost time
        intrinsic = get_architecture(cfg.architecture).invariance == "intrinsic"
        self.orientation = "none" if intrinsic and cfg.orientation == "frames" else cfg.orientation
        if self.orientation == "frames":
            self.train.compute_frames(cfg.fix_signs)
        self.log(f"data: {len(self.train)} train / {len(self.valid)} valid molecules ({time.time() - t0:.1f} s)")
        self.model = PropertyModel(network_config(cfg), fix_signs=cfg.fix_signs, architecture=cfg.architecture)
        fit_normalisation(self.model, self.train)
        self.parent: dict | None = None  # the bundle this run started from, for the lineage in best.pt
        if cfg.init_from:
            self.warm_start(cfg.init_from, cfg.init_member)
        elif cfg.init_member is not None:
            raise ValueError("init_member names a member of the init_from ensemble; set init_from too")
        self.model.to(self.device)
        self.net = self._parallel(self.model.net)  # what the steps call: the network, or its DDP wrapper
        self.opt = torch.optim.Adam(self.model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.state = RunState()
        self.weights = torch.tensor([cfg.target_weights.get(t, 1.0) for t in cfg.targets], device=self.device)
        self.steps_per_epoch = len(self._epoch_batches(0))
        self.autocast = uses_bf16_autocast(self.device, cfg.autocast_bf16)  # the training steps' forward pass
        if cfg.autocast_bf16 and not self.autocast:
            self.log(f"autocast_bf16: off on {self.device.type} (bfloat16 autocast is for CUDA); training in float32")
        self._tb = None  # TensorBoard writer, opened at the first epoch's end (False: not installed)

    def _parallel(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` wrapped in DistributedDataParallel when the run has several ranks."""
        if not self.cluster.distributed:
            return net
        ids = [self.device] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def warm_start(self, path: str, member: int | None = None) -> None:
        """Continue from a bundle (from its ``member``-th network when it is an ensemble): same architecture and
        network config required; its weights and normalisation are taken."""
        bundle = load_bundle(path)
        model = bundle.model
        if isinstance(model, EnsembleModel):
            if member is None:
                raise ValueError(f"{path} is an ensemble of {bundle.n_members} models; warm-start from one member "
                                 f"(init_member=0..{bundle.n_members - 1})")
            if member >= bundle.n_members:
                raise ValueError(f"init_member={member}, but {path} has {bundle.n_members} members "
                                 f"(0..{bundle.n_members - 1})")
            model = model.members[member]
        elif member not in (None, 0):
            raise ValueError(f"init_member={member}, but {path} is a single network")
        if bundle.architecture != self.model.architecture:
            raise ValueError(f"{path} is a {bundle.architecture} model, this run trains {self.model.architecture}")
        theirs, ours = model.cfg.to_dict(), self.model.cfg.to_dict()
        state = model.state_dict()
        if theirs["norm"] == "batch" and ours["norm"] == "affine":
            # the same function as the batch-norm bundle in eval mode, now without batch statistics
            state, theirs = fold_batch_norm(state), {**theirs, "norm": "affine"}
        if theirs != ours:
            raise ValueError(f"{path} has network config {theirs}, this run {ours}: warm starts need the same "
                             "network (a batch-norm bundle may also warm-start a run with norm='affine')")
        self.model.load_state_dict(state)
        self.parent = parent_record(bundle, member)
        which = f"member {member} of " if member is not None and bundle.n_members > 1 else ""
        self.log(f"weights and normalisation from {which}{path} ({bundle.sha256[:12]})")

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Write OUT/checkpoint.pt (rank 0 only; every rank holds the same weights and state)."""
        if not self.cluster.main:
            return
        ck = {
            "config": self.cfg.model_dump(), "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "ema": self.ema.shadow if self.ema else None, "state": self.state.__dict__,
        }
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(ck, tmp)
        tmp.replace(self.out / "checkpoint.pt")

    def resume(self) -> bool:
        """Continue from OUT/checkpoint.pt, which rank 0 reads and hands to every rank; False when there is none."""
        path = self.out / "checkpoint.pt"
        ck = None
        if self.cluster.main and path.exists():
            ck = torch.load(path, map_location="cpu" if self.cluster.distributed else self.device, weights_only=True)
        ck = self.cluster.broadcast(ck)
        if ck is None:
            return False
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        if self.ema and ck["ema"] is not None:
            self.ema.shadow = {k: v.to(self.device) for k, v in ck["ema"].items()}
        self.state = RunState(**ck["state"])
        self.log(f"resumed at epoch {self.state.epoch}, step {self.state.step}, {self.state.elapsed / 60:.1f} min")
        return True

    # ------------------------------------------------------------------------------------ schedule
    def progress(self) -> float:
        if self.cfg.max_minutes:
            return min(1.0, self.state.elapsed / (60 * self.cfg.max_minutes))
        return min(1.0, self.state.step / max(1, self.cfg.epochs * self.steps_per_epoch))

    def done(self) -> bool:
        if self.cfg.max_minutes and self.state.elapsed >= 60 * self.cfg.max_minutes:
            return True
        return self.state.epoch >= self.cfg.epochs

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches of training-molecule indices: size-bucketed, small molecules repeated
        ``oversample_small`` times."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        pool = np.arange(len(self.train))
        if self.cfg.oversample_small > 1:
            small = np.flatnonzero(self.train.sizes <= SMALL_MAX_ATOMS)
            pool = np.concatenate([pool, np.tile(small, self.cfg.oversample_small - 1)])
        return [pool[b] for b in size_bucketed_batches(self.train.sizes[pool], self.cfg.batch_size, rng)]

    # ------------------------------------------------------------------------------------ steps
    def train_step(self, idx: np.ndarray) -> float:
        """One optimiser step on the global batch ``idx`` (this rank's share of it when distributed); returns the
        batch's mean loss (over every rank's molecules)."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 1_000_003, self.state.step])
        b = self.train.batch(idx, self.orientation, rng)  # the whole batch: every rank draws what one process would
        rows, weight = self.cluster.share(len(idx)), 1.0
        if len(rows) == 0:  # fewer molecules than ranks: one at weight 0 keeps this rank in the gradient exchange
            rows, weight = np.arange(1), 0.0
        if self.cluster.distributed:
            b = Batch(b.numbers[rows], b.positions[rows], b.mask[rows])
        b = b.to(self.device)
        y = torch.from_numpy(self.train.targets[idx[rows]]).to(self.device)
        target = self.model.standardise(y, b.numbers).to(torch.float32)
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)) + self.cluster.rank)
        self.model.train()
        with bf16_autocast(self.device, self.autocast):
            out = self.net(featurize(b.numbers).to(self.device), b.positions, b.mask, generator=gen)
        out = out.float()  # the loss in float32 whatever the forward pass ran in
        per_molecule = ((out - target).abs() * self.weights).sum(1)
        if self.cluster.distributed:  # DDP averages over ranks: scaled so, the average is the global batch's mean
            loss = per_molecule.sum() * (weight * self.cluster.world / len(idx)) / self.weights.sum()
        else:
            loss = per_molecule.mean() / self.weights.sum()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(cfg, self.progress())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.net.parameters(), cfg.grad_clip)
        self.opt.step()
        if self.ema:
            self.ema.update(self.model, self.state.step)
        self.state.step += 1
        if self.cluster.distributed:
            total = self.cluster.sum(float(per_molecule.detach().sum()) * weight, self.device)
            return total / len(idx) / float(self.weights.sum())
        return float(loss.detach())

    def eval_model(self) -> PropertyModel:
        """The model to evaluate and ship: the EMA weights when EMA is on."""
        if not self.ema:
            return self.model
        m = PropertyModel(self.model.cfg, self.model.fix_signs, self.model.architecture).to(self.device)
        self.ema.copy_to(m)
        return m

    def validate(self, split: SplitData | None = None, model: PropertyModel | None = None) -> dict[str, float]:
        """MAE per target on ``split`` (the validation molecules by default) with ``model`` (by default the model that
        would ship)."""
        split = self.valid if split is None else split
        m = self.eval_model() if model is None else model
        zs, xs = zip(*(split.molecule(i) for i in range(len(split))), strict=True)
        pred = m.predict(zs, xs, batch_size=256)
        mae = np.abs(pred - split.targets).mean(0)
        return {t: float(v) for t, v in zip(self.cfg.targets, mae, strict=True)}

    def normalised(self, mae: dict[str, float]) -> float:
        """Mean over targets of MAE / target scale: one number to pick the best checkpoint by."""
        scale = self.model.scale.cpu().numpy()
        return float(np.mean([mae[t] / scale[i] for i, t in enumerate(self.cfg.targets)]))

    # ------------------------------------------------------------------------------------ the loop
    def fit(self) -> RunState:
        cfg = self.cfg
        last_ck = time.time()
        show = sys.stderr.isatty() and self.cluster.main
        clock = time.process_time if cfg.budget_clock == "cpu" else time.time
        bar = tqdm(total=self.steps_per_epoch, disable=not show, dynamic_ncols=True)
        while not self.done():
            batches = self._epoch_batches(self.state.epoch)
            bar.reset(total=len(batches))
            bar.set_description(f"epoch {self.state.epoch + 1}")
            bar.update(self.state.batch_in_epoch)
            losses, n_mol, t_epoch = [], 0, time.time()
            while self.state.batch_in_epoch < len(batches) and not self.done():
                idx = batches[self.state.batch_in_epoch]
                t = clock()
                losses.append(self.train_step(idx))
                self.state.elapsed += self.cluster.from_main(clock() - t, self.device)  # one budget
                self.state.batch_in_epoch += 1
                n_mol += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", mol_s=f"{n_mol / (time.time() - t_epoch):.0f}")
                if self.cluster.main and time.time() - last_ck > 60 * cfg.checkpoint_minutes:
                    self.save_checkpoint()
                    last_ck = time.time()
            finished_epoch = self.state.batch_in_epoch >= len(batches)
            if finished_epoch:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
            if self.cluster.main:  # the other ranks go on; they wait for rank 0 at the next gradient exchange
                self.end_of_epoch(float(np.mean(losses)) if losses else float("nan"),
                                  float(n_mol / max(1e-9, time.time() - t_epoch)))
        bar.close()
        return self.state

    def end_of_epoch(self, train_loss: float, mol_s: float) -> None:
        shipped = self.eval_model()  # one EMA copy for every evaluation
        mae = self.validate(self.valid, shipped)
        score = self.normalised(mae)
        small = self.validate(self.small, shipped)
        row = {"epoch": self.state.epoch, "step": self.state.step, "minutes": round(self.state.elapsed / 60, 2),
               "lr": lr_at(self.cfg, self.progress()), "train_loss": train_loss, "train_mol_s": round(mol_s, 1),
               "valid_score": score, **{f"valid_mae_{k}": v for k, v in mae.items()},
               "small_score": self.normalised(small), **{f"small_mae_{k}": v for k, v in small.items()}}
        if self.valid_ff is not None:  # the SMILES path: selection weighs both geometries equally
            ff = self.validate(self.valid_ff, shipped)
            row.update({"valid_ff_score": self.normalised(ff), **{f"valid_ff_mae_{k}": v for k, v in ff.items()}})
            score = (score + row["valid_ff_score"]) / 2
            row["selection_score"] = score
        self.state.history.append(row)
        if score < self.state.best_valid:
            self.state.best_valid = score
            self.save_best(mae)
        self.save_checkpoint()
        self.write_log()
        self.write_tensorboard(row)
        self.log(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}))

    def save_best(self, valid_mae: dict[str, float]) -> None:
        meta = {"training": {"config": self.cfg.model_dump(), "epoch": self.state.epoch, "step": self.state.step,
                             "minutes": round(self.state.elapsed / 60, 2), "device": str(self.device),
                             "threads": torch.get_num_threads(), "valid_mae": valid_mae,
                             "n_valid": len(self.valid), "processes": self.cluster.world,
                             "autocast_bf16": self.autocast},
                "split": self.cfg.split}
        if self.parent:
            meta["training"]["warm_start_from"] = self.parent
        save_bundle(self.eval_model().cpu(), self.out / "best.pt", self.cfg.name, meta)
        self.model.to(self.device)

    def write_tensorboard(self, row: dict) -> None:
        """The epoch's numbers as TensorBoard scalars in OUT/tensorboard, when the tensorboard package is there."""
        if not self.cfg.tensorboard or self._tb is False:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: log.csv has everything
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.state.step)
        for key, value in row.items():
            if key not in ("epoch", "step"):
                self._tb.add_scalar(key.replace("valid_mae_", "valid_mae/"), value, self.state.step)
        self._tb.flush()

    def write_log(self) -> None:
        rows = self.state.history
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.out / "log.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows(rows)


def train(cfg: TrainConfig, resume: bool = False, data=None, log=print) -> Trainer:
    """Run (or resume) a training run; returns the trainer (its ``out_dir`` holds best.pt and log.csv). Under
    torchrun, every rank calls this; they leave the process group together at the end."""
    threads = torch.get_num_threads()  # cfg.threads is this run's: the caller's setting comes back after it
    try:
        tr = Trainer(cfg, data=data, log=log)
        if resume:
            tr.resume()
        tr.fit()
    finally:
        torch.set_num_threads(threads)
    distributed.shutdown(tr.cluster)  # (a rank that fails exits instead, and torchrun stops the others)
    return tr


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0."""
