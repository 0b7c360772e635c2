"""Weighted frames: an equivariant set of frames whose weights are continuous, so predictions are invariant and
continuous at once (lieprop.model.frames)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_pose, untrained_model

from lieprop.model import frames as F
from lieprop.model.frames import molecule_frames, ramp

# Rows of the first QM9 molecules (the qm9_head fixture): symmetric ones, the hardest cases for frames.
METHANE, AMMONIA, WATER, ACETYLENE, HCN, FORMALDEHYDE = 0, 1, 2, 3, 4, 5
NEOPENTANE, CF4, BENZENE = 53, 180, 208
SYMMETRIC = [METHANE, AMMONIA, WATER, ACETYLENE, HCN, FORMALDEHYDE, NEOPENTANE, CF4, BENZENE]


def weighted_clouds(z, x):
    """The molecule in each distinct frame as (weight, atomic numbers, coordinates)."""
    zs, xs, ws = molecule_frames(z, x).distinct(z, x)
    return list(zip(ws, zs, xs, strict=True))


def cloud_distance(za, a, zb, b) -> float:
    """Hausdorff distance between two labelled point clouds (atom order ignored)."""
    same = za[:, None] == zb[None, :]
    d = np.where(same, np.linalg.norm(a[:, None] - b[None, :], axis=-1), np.inf)
    return float(max(d.min(1).max(), d.min(0).max()))


def test_ramp_is_a_c1_switch_from_0_to_1():
    t = np.linspace(-1, 2, 3001)
    r = ramp(t)
    assert r[t <= 0].max() == 0 and r[t >= 1].min() == 1
    assert np.all(np.diff(r) >= 0) and np.abs(np.diff(r)).max() < 2e-3  # monotone, no jumps


def test_weights_are_positive_and_sum_to_one(qm9_head):
    for i in range(200):
        fr = molecule_frames(*qm9_head.molecule(i))
        assert (fr.weights > 0).all() and abs(fr.weights.sum() - 1) < 1e-12
        # every frame is orthonormal (a rotation or a reflection)
        np.testing.assert_allclose(fr.axes @ fr.axes.transpose(0, 2, 1), np.broadcast_to(np.eye(3), fr.axes.shape),
                                   atol=1e-9)


def test_most_molecules_need_one_frame_and_symmetric_ones_need_more(qm9_head):
    counts = np.array([len(molecule_frames(*qm9_head.molecule(i)).distinct(*qm9_head.molecule(i))[2])
                       for i in range(400)])
    # The first 400 QM9 molecules are small and often symmetric: 40% take one frame here, 82% of QM9 at large
    # (benchmarks/continuity.py prints the QM9 average).
    assert (counts == 1).mean() > 0.35 and np.median(counts) <= 2
    # methane: 4 x 3 x 2 choices of hydrogens and sign, weighed nearly equally (QM9's methane is symmetric to 1e-4 Å)
    fr = molecule_frames(*qm9_head.molecule(METHANE))
    assert len(fr) == 24 and np.all((fr.weights > 0.8 / 24) & (fr.weights < 1.2 / 24))


def test_the_weighted_frames_of_a_moved_molecule_are_the_moved_frames(qm9_head):
    """Equivariance: the molecule seen in its frames, with the frames' weights, does not depend on its pose."""
    rng = np.random.default_rng(1)
    for i in list(range(40)) + [NEOPENTANE, CF4, BENZENE]:
        z, x = qm9_head.molecule(i)
        a, b = weighted_clouds(z, x), weighted_clouds(*random_pose(z, x, rng))
        assert len(a) == len(b), i
        for w, za, cloud in a:
            gap, wb = min((cloud_distance(za, cloud, zb, cb), wb) for wb, zb, cb in b)
            assert gap < 1e-6 and abs(wb - w) < 1e-6, f"molecule {i}: a weighted frame has no counterpart"


@pytest.mark.parametrize("row", SYMMETRIC)
def test_a_1e_5_angstrom_move_of_a_symmetric_molecule_barely_changes_a_prediction(qm9_head, row):
    """Continuity where thresholds used to be: an untrained network differs between frames by O(1) standard
    deviations, yet moving every atom by 1e-5 Å changes the prediction by a tiny fraction of that."""
    m = untrained_model()
    z, x = qm9_head.molecule(row)
    rng = np.random.default_rng(row)
    moved = [x + 1e-5 * rng.normal(size=x.shape) / np.sqrt(3) for _ in range(8)]
    out = m.predict([z] * 9, [x] + moved)
    change = np.abs(out[1:] - out[0]).max(0) / m.scale.numpy()
    assert change.max() < 2e-3, f"largest change {change.max():.2e} std per 1e-5 Å"


def test_frames_blend_smoothly_through_an_eigenvalue_degeneracy():
    """A planar rhombus stretched through the square (two equal moments) moves continuously between frame families."""
    z = np.array([6, 6, 6, 6, 1])
    out = []
    m = untrained_model()
    stretches = np.linspace(-0.02, 0.02, 81)
    for s in stretches:
        x = np.array([[1.4 + s, 0, 0], [-1.4 - s, 0, 0], [0, 1.4, 0], [0, -1.4, 0], [0.3, 0.2, 1.1]])
        out.append(m.predict([z], [x])[0])
    steps = np.abs(np.diff(np.array(out), axis=0)).max(0) / m.scale.numpy()
    # 81 steps of 5e-4 Å: no single step jumps (a threshold would jump by O(1) std somewhere)
    assert steps.max() < 0.05, steps.max()


def test_mirror_symmetric_molecules_weigh_both_signs_equally():
    """Water lies in a plane: its out-of-plane axis has no preferred sign, so both signs get weight 1/2."""
    z = np.array([8, 1, 1])
    x = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    fr = molecule_frames(z, x)
    assert np.allclose(np.sort(fr.weights), np.full(len(fr), 1 / len(fr)))
    # and the mirror frames put the atoms at the same coordinates, so one network evaluation is enough
    assert len(fr.distinct(z, x)[2]) == 1


def test_without_sign_fixing_every_generic_molecule_gets_all_eight_sign_choices(qm9_head):
    z, x = qm9_head.molecule(300)
    fr = molecule_frames(z, x, fix_signs=False)
    assert len(fr) == 8 and np.allclose(fr.weights, 1 / 8)


def test_tolerances_are_the_documented_ones():
    """The module docstring and docs/MODEL_CARD.md quote these values."""
    assert (F.GAP_TOL, F.SKEW_TOL, F.ATOM_TOL) == (5e-3, 2e-3, 0.05)
