"""Invariant prediction: frames make a served value independent of pose, atom order and batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lieprop.data.properties import PROPERTY_NAMES
from lieprop.model.frames import molecule_frames
from lieprop.model.groups import random_rotations
from lieprop.model.network import NetworkConfig
from lieprop.model.predictor import PropertyModel


def model(group: str = "T3", **kw) -> PropertyModel:
    targets = list(PROPERTY_NAMES)
    cfg = NetworkConfig(group=group, width=32, depth=2, targets=targets, **kw)
    torch.manual_seed(0)
    m = PropertyModel(cfg)
    # Non-trivial batch-norm statistics, as after training.
    for mod in m.modules():
        if hasattr(mod, "running_var"):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def random_pose(z, x, rng):
    """A random proper or improper rotation, a translation and a permutation of the atoms."""
    r = random_rotations(1, torch.Generator().manual_seed(int(rng.integers(1 << 30))), dtype=torch.float64)[0].numpy()
    if rng.random() < 0.5:
        r = -r  # improper: includes a reflection
    perm = rng.permutation(len(z))
    return z[perm], (x @ r.T + rng.normal(size=3) * 10)[perm]


def first_molecules(qm9_head, n):
    return [qm9_head.molecule(i) for i in range(n)]


def test_the_first_qm9_molecules_include_degenerate_frames(qm9_head):
    """CH4 is a spherical top, NH3 a symmetric top, C2H2 and HCN are linear: all must be handled."""
    counts = [len(molecule_frames(*qm9_head.molecule(i))) for i in range(6)]
    assert counts[0] > 1  # CH4: one frame per hydrogen pair choice
    assert all(c >= 1 for c in counts)


@pytest.mark.parametrize("group,extra", [("T3", {}), ("SE3", {"fill": 0.5, "nbhd": 12, "lift_samples": 2})])
def test_predict_is_invariant_to_rotation_reflection_translation_and_order(qm9_head, group, extra):
    m = model(group, **extra)
    mols = first_molecules(qm9_head, 100)
    rng = np.random.default_rng(0)
    moved = [random_pose(z, x, rng) for z, x in mols]
    a = m.predict([z for z, _ in mols], [x for _, x in mols])
    b = m.predict([z for z, _ in moved], [x for _, x in moved])
    rel = np.abs(a - b) / m.scale.numpy()
    assert rel.max() < 1e-4, f"worst relative invariance error {rel.max():.2e}"


def test_predict_is_deterministic_for_se3_lifts(qm9_head):
    m = model("SE3", fill=0.5, nbhd=12, lift_samples=2)
    mols = first_molecules(qm9_head, 10)
    args = ([z for z, _ in mols], [x for _, x in mols])
    assert np.array_equal(m.predict(*args), m.predict(*args))


def test_a_molecule_alone_or_in_a_batch_of_256_mixed_sizes_gives_the_same_value(qm9_head):
    m = model()
    mols = [qm9_head.molecule(i) for i in range(50, 306)]
    together = m.predict([z for z, _ in mols], [x for _, x in mols], batch_size=256)
    for i in (0, 17, 255):
        alone = m.predict([mols[i][0]], [mols[i][1]])
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-5, atol=1e-5 * m.scale.numpy().max())


def test_frames_of_a_moved_molecule_are_the_moved_frames(qm9_head):
    """The frame set is equivariant: coordinates in the frames do not depend on the pose."""
    rng = np.random.default_rng(1)
    for i in range(40):
        z, x = qm9_head.molecule(i)
        z2, x2 = random_pose(z, x, rng)
        c1 = molecule_frames(z, x).coordinates(x)
        c2 = molecule_frames(z2, x2).coordinates(x2)
        assert len(c1) == len(c2)
        # Compare the sets of canonical clouds, atom order ignored.
        key = lambda c, zz: sorted(map(tuple, np.c_[zz, np.round(c, 6)]))  # noqa: E731
        assert sorted(key(c, z) for c in c1) == sorted(key(c, z2) for c in c2)


def test_empty_input_gives_an_empty_result():
    assert model().predict([], []).shape == (0, 12)


def test_bfloat16_autocast_is_an_option_close_to_float32(qm9_head):
    m = model()
    mols = first_molecules(qm9_head, 30)
    args = ([z for z, _ in mols], [x for _, x in mols])
    full = m.predict(*args)
    half = m.predict(*args, autocast_bf16=True)
    assert np.isfinite(half).all()
    assert (np.abs(full - half) / m.scale.numpy()).max() < 0.1
