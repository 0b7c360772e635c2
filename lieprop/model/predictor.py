"""A network plus everything needed to turn its outputs into properties with units, invariantly.

:class:`PropertyModel` wraps a :class:`LieResNet` with per-target de-standardisation (scale, bias and
per-element offsets, which carry the QM9 atom references for energies) and implements the invariant
:meth:`PropertyModel.predict`: every molecule is evaluated in its frames (:mod:`lieprop.model.frames`)
and the outputs are averaged, so a prediction does not depend on how the molecule was rotated,
reflected, translated or ordered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lieprop.data.batch import collate, featurize
from lieprop.data.elements import ELEMENT_INDEX, QM9_ELEMENTS
from lieprop.data.properties import NON_NEGATIVE
from lieprop.model.frames import molecule_frames
from lieprop.model.network import LieResNet, NetworkConfig


class PropertyModel(nn.Module):
    """network output o (standardised) -> property = o * scale + bias + sum over atoms of offset[element]."""

    def __init__(self, cfg: NetworkConfig, fix_signs: bool = True):
        super().__init__()
        t = len(cfg.targets)
        self.cfg = cfg
        self.fix_signs = fix_signs
        self.net = LieResNet(cfg)
        self.register_buffer("scale", torch.ones(t, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("offsets", torch.zeros(len(QM9_ELEMENTS), t, dtype=torch.float64))

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

    @torch.no_grad()
    def predict(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], batch_size: int = 128,
                autocast_bf16: bool = False) -> np.ndarray:
        """Invariant, continuous predictions (n_molecules, T) in physical units (float64), by weighted frame averaging.

        Molecules are expanded into their distinct frames (:mod:`lieprop.model.frames`), sorted by size so batches
        carry little padding, evaluated in eval mode, and the frame outputs averaged per molecule with the frames'
        weights. No normalisation layer takes statistics across a batch in eval mode, so the result does not
        depend on the batch a molecule shares. Properties that cannot be negative (``NON_NEGATIVE``) are clipped at 0.
        """
        was_training = self.training
        self.eval()
        try:
            owners, coords, zs, weights = [], [], [], []
            for m, (z, x) in enumerate(zip(numbers, positions, strict=True)):
                fz, fx, fw = molecule_frames(z, x, fix_signs=self.fix_signs).distinct(z, x)
                owners += [m] * len(fw)
                zs += fz
                coords += fx
                weights.append(fw)
            n_mol = len(numbers)
            if n_mol == 0:
                return np.zeros((0, len(self.targets)))
            owners_np = np.asarray(owners)
            sizes = np.array([len(z) for z in zs])
            order = np.lexsort((owners_np, sizes))
            outs = torch.zeros(len(owners), len(self.targets), dtype=torch.float64)
            dev = self.device
            for s in range(0, len(order), batch_size):
                sel = order[s:s + batch_size]
                b = collate([zs[i] for i in sel], [coords[i] for i in sel]).to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                    o = self.net(featurize(b.numbers).to(dev), b.positions, b.mask, deterministic_lifts=True)
                outs[torch.as_tensor(sel)] = o.to(torch.float64).cpu()
            own = torch.as_tensor(owners_np)
            w = torch.from_numpy(np.concatenate(weights))[:, None]  # each molecule's frame weights sum to 1
            mean = torch.zeros(n_mol, outs.shape[1], dtype=torch.float64).index_add_(0, own, outs * w)
            z_pad = collate(list(numbers), list(positions)).numbers
            values = self.to_physical(mean.to(dev), z_pad.to(dev)).cpu().numpy()
            return np.maximum(values, self._floor)
        finally:
            self.train(was_training)
