"""A network plus everything needed to turn its outputs into properties with units, invariantly; and ensembles.

:class:`PropertyModel` wraps the network of a registered architecture (:mod:`lieprop.model.architectures`) with
per-target de-standardisation (scale, bias and per-element offsets, which carry the QM9 atom references for
energies) and implements the invariant prediction: a network that is not invariant by construction is evaluated on
the molecule in its weighted frames (:mod:`lieprop.model.frames`) and the outputs are averaged, so a prediction does
not depend on how the molecule was rotated, reflected, translated or ordered.

Two calls, one vocabulary (docs/DESIGN.md): :meth:`PropertyModel.predict` gives the values, an (n, T) array, for
training and evaluation; :meth:`PropertyModel.predictions` gives the :class:`~lieprop.model.prediction.Predictions`
contract that serving passes on. :class:`EnsembleModel` holds several members of one architecture and answers both
calls with the members' mean, its ``predictions`` also with their spread.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lieprop.data.batch import collate, featurize
from lieprop.data.elements import ELEMENT_INDEX, QM9_ELEMENTS
from lieprop.data.properties import NON_NEGATIVE
from lieprop.model.architectures import DEFAULT_ARCHITECTURE, Architecture, get_architecture
from lieprop.model.frames import molecule_frames
from lieprop.model.groups import random_rotations
from lieprop.model.prediction import Predictions


@dataclass
class FrameBatch:
    """Molecules expanded into the inputs the network sees: one entry per (molecule, distinct frame), in the order
    the network evaluates them (by size, so batches carry little padding)."""

    numbers: list[np.ndarray]  # per molecule, as given
    positions: list[np.ndarray]
    owners: np.ndarray  # (F,) molecule of each frame
    frame_numbers: list[np.ndarray]  # (F,) atoms of each frame, canonical order
    frame_coords: list[np.ndarray]  # (F,) coordinates in the frame
    weights: np.ndarray  # (F,) frame weights; each molecule's sum to 1
    order: np.ndarray  # (F,) evaluation order

    def __len__(self) -> int:
        return len(self.numbers)

    def select(self, sel: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The atoms and canonical coordinates of the frames ``sel`` (one forward pass)."""
        return [self.frame_numbers[i] for i in sel], [self.frame_coords[i] for i in sel]

    @functools.cached_property
    def padded_numbers(self) -> torch.Tensor:
        """(n_molecules, N) atomic numbers of the molecules, padded with 0 (their per-element baselines)."""
        return collate(self.numbers, self.positions).numbers


#: Called between two forward passes of a long evaluation (``between_chunks``): a scheduler may run other work there
#: (the service's model thread serves waiting interactive requests) or raise to abandon the evaluation.
BetweenChunks = Callable[[], None]

def padded_inputs(numbers: Sequence[np.ndarray], coords: Sequence[np.ndarray],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's inputs for frames (atoms, coordinates), padded into one batch on ``device``: atom features
    (computed on the CPU, then moved), positions and mask."""
    b = collate(numbers, coords)
    return featurize(b.numbers).to(device), b.positions.to(device), b.mask.to(device)


def chunks(frames: FrameBatch, batch_size: int, between_chunks: BetweenChunks | None = None):
    """The frames' indices in evaluation order, ``batch_size`` at a time (one forward pass each), calling
    ``between_chunks`` between two of them."""
    for s in range(0, len(frames.order), batch_size):
        yield frames.order[s:s + batch_size]
        if between_chunks is not None and s + batch_size < len(frames.order):
            between_chunks()


#: Seed of the fixed rotations of :func:`fixed_rotations`: the same poses in every process, for every molecule.
POSE_SEED = 0x905E


def fixed_rotations(k: int) -> np.ndarray:
    """(k, 3, 3) proper rotations, the same for every call: the poses a spread over poses evaluates."""
    return random_rotations(k, torch.Generator().manual_seed(POSE_SEED), dtype=torch.float64).numpy()


def rotated(frames: FrameBatch, rotation: np.ndarray) -> FrameBatch:
    """The same frames with every canonical coordinate set rotated by ``rotation`` (3, 3)."""
    return dataclasses.replace(frames, frame_coords=[c @ rotation.T for c in frames.frame_coords])


def expand(numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], invariance: str,
           fix_signs: bool = True) -> FrameBatch:
    """The frames of every molecule (``invariance == "frames"``) or the molecule as given (``"intrinsic"``)."""
    owners: list[int] = []
    zs: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for m, (z, x) in enumerate(zip(numbers, positions, strict=True)):
        if invariance == "frames":
            fz, fx, fw = molecule_frames(z, x, fix_signs=fix_signs).distinct(z, x)
        else:
            fz, fx, fw = [np.asarray(z)], [np.asarray(x, dtype=np.float64)], np.ones(1)
        owners += [m] * len(fw)
        zs += fz
        xs += fx
        weights.append(fw)
    owners_np = np.asarray(owners, dtype=np.int64)
    sizes = np.array([len(z) for z in zs], dtype=np.int64)
    return FrameBatch(list(numbers), list(positions), owners_np, zs, xs,
                      np.concatenate(weights) if weights else np.zeros(0), np.lexsort((owners_np, sizes)))


class PropertyModel(nn.Module):
    """network output o (standardised) -> property = o * scale + bias + sum over atoms of offset[element].

    ``cfg`` is the config of ``architecture`` (a registered family; default LieConv); ``fix_signs`` is passed to
    the frames of a frame-averaged family."""

    def __init__(self, cfg: Any, fix_signs: bool = True, architecture: str = DEFAULT_ARCHITECTURE):
        super().__init__()
        t = len(cfg.targets)
        self.arch: Architecture = get_architecture(architecture)
        self.cfg = cfg
        self.fix_signs = fix_signs
        self.net = self.arch.build(cfg)
        self.register_buffer("scale", torch.ones(t, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("offsets", torch.zeros(len(QM9_ELEMENTS), t, dtype=torch.float64))
        #: Poses whose spread is the ``std`` of :meth:`predictions` (0: none); set from the bundle's metadata.
        self.spread_poses = 0
        #: Where :meth:`evaluate` runs the network, when not in this process: a callable (atoms per frame, coordinates
        #: per frame, autocast_bf16) -> (B, T) output, e.g. the server's model process
        #: (lieprop/service/model_process.py), which pads the frames into a batch itself.
        self.remote: Any = None

    @property
    def architecture(self) -> str:
        return self.arch.name

    @property
    def _floor(self) -> np.ndarray:
        """(T,) lowest value per target: 0 for properties that cannot be negative, else -inf."""
        return np.array([0.0 if t in NON_NEGATIVE else -np.inf for t in self.targets])

    @property
    def targets(self) -> list[str]:
        return list(self.cfg.targets)

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def baseline(self, numbers: torch.Tensor) -> torch.Tensor:
        """(B, N) atomic numbers (0 = padding) -> (B, T) float64: bias + per-element offsets."""
        idx = torch.as_tensor(ELEMENT_INDEX, device=numbers.device)[numbers]
        counts = torch.zeros(numbers.shape[0], len(QM9_ELEMENTS), dtype=torch.float64, device=numbers.device)
        counts.scatter_add_(1, idx.clamp_min(0), (numbers > 0).to(torch.float64))
        return self.bias + counts @ self.offsets

    def standardise(self, values: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """Physical targets (B, T) -> what the network is trained to output."""
        return (values.to(torch.float64) - self.baseline(numbers)) / self.scale

    def to_physical(self, out: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        return out.to(torch.float64) * self.scale + self.baseline(numbers)

    def expand(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray]) -> FrameBatch:
        """What the network must see for these molecules (their frames, or the molecules themselves)."""
        return expand(numbers, positions, self.arch.invariance, self.fix_signs)

    @torch.inference_mode()
    def evaluate(self, frames: FrameBatch, batch_size: int = 128, autocast_bf16: bool = False,
                 between_chunks: BetweenChunks | None = None) -> np.ndarray:
        """(n_molecules, T) physical values of expanded molecules: the network in eval mode on every frame, the
        outputs averaged per molecule with the frames' weights, de-standardised, and properties that cannot be
        negative (``NON_NEGATIVE``) clipped at 0. ``between_chunks`` is called after every forward pass of
        ``batch_size`` frames but the last (it may run other model work on this thread, or raise to stop)."""
        if len(frames) == 0:
            return np.zeros((0, len(self.targets)))
        was_training = self.training
        # eval() and train() walk every submodule (a millisecond or more per call): switch only when needed
        switch = was_training or any(m.training for m in self._submodules())
        if switch:
            self.eval()
        try:
            outs = torch.zeros(len(frames.owners), len(self.targets), dtype=torch.float64)
            for sel in chunks(frames, batch_size, between_chunks):
                outs[torch.as_tensor(sel)] = self.forward_frames(*frames.select(sel), autocast_bf16).to(
                    torch.float64).cpu()
            return self.to_molecules(frames, outs)
        finally:
            if switch:
                self.train(was_training)

    def forward_frames(self, numbers: list[np.ndarray], coords: list[np.ndarray],
                       autocast_bf16: bool = False) -> torch.Tensor:
        """(B, T) network outputs of B frames (atoms, canonical coordinates), padded into one batch: here, or where
        ``remote`` runs the network."""
        if self.remote is not None:
            return self.remote(numbers, coords, autocast_bf16)
        dev = self.device
        features, positions, mask = padded_inputs(numbers, coords, dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            return self.net(features, positions, mask, deterministic=True)

    def to_molecules(self, frames: FrameBatch, outs: torch.Tensor) -> np.ndarray:
        """(F, T) float64 network outputs per frame -> (n_molecules, T) physical values: each molecule's frames
        averaged with their weights, de-standardised, ``NON_NEGATIVE`` properties clipped at 0."""
        own = torch.as_tensor(frames.owners)
        w = torch.from_numpy(frames.weights)[:, None]
        mean = torch.zeros(len(frames), outs.shape[1], dtype=torch.float64).index_add_(0, own, outs * w)
        dev = self.device
        values = self.to_physical(mean.to(dev), frames.padded_numbers.to(dev)).cpu().numpy()
        return np.maximum(values, self._floor)

    def _submodules(self) -> tuple[nn.Module, ...]:
        """Every module of this model, listed once (``modules()`` walks the tree anew at each call: 0.3 ms here)."""
        listed = self.__dict__.get("_listed_modules")
        if listed is None:
            listed = tuple(self.modules())
            self.__dict__["_listed_modules"] = listed
        return listed

    def predict(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], batch_size: int = 128,
                autocast_bf16: bool = False, between_chunks: BetweenChunks | None = None) -> np.ndarray:
        """Invariant, continuous predictions (n_molecules, T) in physical units (float64).

        Molecules are expanded into their distinct frames (or taken as they are by an intrinsically invariant
        family), sorted by size so batches carry little padding, and evaluated in eval mode
        (:meth:`evaluate`). No normalisation layer takes statistics across a batch in eval mode, so the result does
        not depend on the batch a molecule shares.
        """
        return self.evaluate(self.expand(numbers, positions), batch_size, autocast_bf16, between_chunks)

    def pose_values(self, frames: FrameBatch, poses: int, batch_size: int = 128,
                    autocast_bf16: bool = False, between_chunks: BetweenChunks | None = None) -> np.ndarray:
        """(poses, n_molecules, T): the model with every frame turned by each of :func:`fixed_rotations`. The
        rotations act on canonical coordinates, so the values are as invariant as the frames; a network that is not
        rotation-invariant by itself (T(3) LieConv) answers differently per pose, the more so the less it knows."""
        return np.stack([self.evaluate(rotated(frames, r), batch_size, autocast_bf16, between_chunks)
                         for r in fixed_rotations(poses)])

    def predictions(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], batch_size: int = 128,
                    autocast_bf16: bool = False, between_chunks: BetweenChunks | None = None) -> Predictions:
        """:meth:`predict` as the prediction contract. With ``spread_poses`` > 1 (set from the bundle), ``std`` is
        the spread over that many poses (:meth:`pose_values`); otherwise a single model gives values only.
        ``between_chunks``: see :meth:`evaluate`."""
        frames = self.expand(numbers, positions)
        value = self.evaluate(frames, batch_size, autocast_bf16, between_chunks)
        if self.spread_poses < 2 or not len(frames):
            return Predictions(value)
        posed = self.pose_values(frames, self.spread_poses, batch_size, autocast_bf16, between_chunks)
        return Predictions(value, posed.std(0, ddof=1))


class EnsembleModel(nn.Module):
    """Members of one architecture and config (each with its own weights and normalisation), answering as one.

    Frames are computed once and shared by the members. :meth:`predict` gives the members' mean, and
    :meth:`predictions` the mean with the members' sample standard deviation and their own values."""

    def __init__(self, members: Sequence[PropertyModel]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if (m.architecture, m.cfg.to_dict(), m.fix_signs) != (first.architecture, first.cfg.to_dict(),
                                                                  first.fix_signs):
                raise ValueError(f"ensemble member {i} differs from member 0 in architecture, network config or "
                                 "fix_signs; members must share them")
        self.members = nn.ModuleList(members)

    @property
    def first(self) -> PropertyModel:
        return self.members[0]  # type: ignore[return-value]

    @property
    def cfg(self) -> Any:
        return self.first.cfg

    @property
    def arch(self) -> Architecture:
        return self.first.arch

    @property
    def architecture(self) -> str:
        return self.first.architecture

    @property
    def fix_signs(self) -> bool:
        return self.first.fix_signs

    @property
    def targets(self) -> list[str]:
        return self.first.targets

    @property
    def device(self) -> torch.device:
        return self.first.device

    @property
    def spread_poses(self) -> int:
        return self.first.spread_poses

    @spread_poses.setter
    def spread_poses(self, poses: int) -> None:
        for m in self.members:
            m.spread_poses = poses

    def member_values(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], batch_size: int = 128,
                      autocast_bf16: bool = False, between_chunks: BetweenChunks | None = None) -> np.ndarray:
        """(M, n_molecules, T): every member's predictions."""
        return self._member_values(self.first.expand(numbers, positions), batch_size, autocast_bf16, between_chunks)

    @property
    def joint(self) -> bool:
        """True when every member's network runs in one shared model process (``remote`` with a ``process`` and a
        ``member`` index, lieprop/service/model_process.py): a forward pass then sends the frames once, and the
        process evaluates every member on them."""
        remotes = [m.remote for m in self.members]
        return all(hasattr(r, "process") for r in remotes) and len({id(r.process) for r in remotes}) == 1

    def _member_values(self, frames: FrameBatch, batch_size: int, autocast_bf16: bool,
                       between_chunks: BetweenChunks | None = None) -> np.ndarray:
        if self.joint and len(frames):
            return self._joint_values(frames, batch_size, autocast_bf16, between_chunks)
        values = []
        for k, m in enumerate(self.members):
            if k and between_chunks is not None:
                between_chunks()
            values.append(m.evaluate(frames, batch_size, autocast_bf16, between_chunks))
        return np.stack(values)

    def _joint_values(self, frames: FrameBatch, batch_size: int, autocast_bf16: bool,
                      between_chunks: BetweenChunks | None) -> np.ndarray:
        """(M, n_molecules, T) with every forward pass sent once for all members (see :attr:`joint`): the same
        values as member by member, bit for bit."""
        process = self.first.remote.process
        index = [m.remote.member for m in self.members]
        outs = torch.zeros(len(self.members), len(frames.owners), len(self.targets), dtype=torch.float64)
        for sel in chunks(frames, batch_size, between_chunks):
            outs[:, torch.as_tensor(sel)] = process.forward_frames(index, *frames.select(sel),
                                                                   autocast_bf16).to(torch.float64)
        return np.stack([m.to_molecules(frames, outs[k]) for k, m in enumerate(self.members)])

    def predict(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], batch_size: int = 128,
                autocast_bf16: bool = False, between_chunks: BetweenChunks | None = None) -> np.ndarray:
        """The members' mean (n_molecules, T)."""
        return self.member_values(numbers, positions, batch_size, autocast_bf16, between_chunks).mean(0)

    def predictions(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], batch_size: int = 128,
                    autocast_bf16: bool = False, between_chunks: BetweenChunks | None = None) -> Predictions:
        """The members' mean, their spread (sample standard deviation) and values; with ``spread_poses`` > 1 the
        spread is taken over every member in every pose (:meth:`PropertyModel.pose_values`) instead. The spread is
        raw: a bundle's calibration (per geometry path, lieprop.model.calibration) turns it into a std and intervals
        when results are built, where the molecule's provenance is known. ``between_chunks``: see
        :meth:`PropertyModel.evaluate` (also called between members)."""
        frames = self.first.expand(numbers, positions)
        result = Predictions.from_members(self._member_values(frames, batch_size, autocast_bf16, between_chunks))
        if self.spread_poses < 2 or not len(frames):
            return result
        posed = np.concatenate([m.pose_values(frames, self.spread_poses, batch_size, autocast_bf16, between_chunks)
                                for m in self.members])
        return Predictions(result.value, posed.std(0, ddof=1), members=result.members)
