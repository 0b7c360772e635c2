"""Helpers shared by the tests: random poses of a molecule and small untrained models."""

from __future__ import annotations

import numpy as np
import torch

from lieprop.data.properties import PROPERTY_NAMES
from lieprop.model.groups import random_rotations
from lieprop.model.network import NetworkConfig
from lieprop.model.predictor import PropertyModel


def random_rotation(seed: int) -> np.ndarray:
    """A Haar-random proper rotation (3, 3), float64, from a seed (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_pose(z: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random proper or improper rotation, a translation and a permutation of the atoms."""
    r = random_rotations(1, torch.Generator().manual_seed(int(rng.integers(1 << 30))), dtype=torch.float64)[0].numpy()
    if rng.random() < 0.5:
        r = -r  # improper: includes a reflection
    perm = rng.permutation(len(z))
    return z[perm], (x @ r.T + rng.normal(size=3) * 10)[perm]


def untrained_model(group: str = "T3", seed: int = 0, **kw) -> PropertyModel:
    """A small untrained 12-target model in eval mode, with non-trivial normalisation parameters. Untrained, it is far
    from invariant on its own, which makes it a strict test of what frames must make invariant and continuous."""
    cfg = NetworkConfig(group=group, width=32, depth=2, targets=list(PROPERTY_NAMES), **kw)
    torch.manual_seed(seed)
    m = PropertyModel(cfg)
    for name, p in m.named_parameters():
        if ".bn" in name:
            p.data.uniform_(0.5, 1.5) if name.endswith("weight") else p.data.uniform_(-0.5, 0.5)
    return m.eval()


def assert_invariant(predict, molecules, scale, rtol: float = 1e-4, seed: int = 0) -> None:
    """The invariance every served prediction promises: ``predict(numbers_list, positions_list) -> (n, T)`` gives
    the same values (to ``rtol`` of each target's ``scale``) after a random rotation or reflection, translation and
    atom reordering of every molecule."""
    rng = np.random.default_rng(seed)
    moved = [random_pose(z, x, rng) for z, x in molecules]
    a = np.asarray(predict([z for z, _ in molecules], [x for _, x in molecules]))
    b = np.asarray(predict([z for z, _ in moved], [x for _, x in moved]))
    rel = np.abs(a - b) / np.asarray(scale)
    assert rel.max() < rtol, f"worst relative invariance error {rel.max():.2e}"
