"""Invariant prediction: frames make a served value independent of pose, atom order and batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_invariant, untrained_model

from lieprop.model.predictor import PropertyModel


def model(group: str = "T3", **kw) -> PropertyModel:
    return untrained_model(group, **kw)


def first_molecules(qm9_head, n):
    return [qm9_head.molecule(i) for i in range(n)]


@pytest.mark.parametrize("group,extra", [("T3", {}), ("SE3", {"fill": 0.5, "nbhd": 12, "lift_samples": 2})])
def test_predict_is_invariant_to_rotation_reflection_translation_and_order(qm9_head, group, extra):
    m = model(group, **extra)
    assert_invariant(m.predict, first_molecules(qm9_head, 100), m.scale.numpy())


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


def test_properties_that_cannot_be_negative_never_are(qm9_head):
    from lieprop.data.properties import NON_NEGATIVE, PROPERTY_NAMES

    m = model()
    with torch.no_grad():
        m.bias.fill_(-50.0)  # push every output far below zero
    mols = first_molecules(qm9_head, 20)
    out = m.predict([z for z, _ in mols], [x for _, x in mols])
    for j, t in enumerate(PROPERTY_NAMES):
        assert (out[:, j] >= 0).all() if t in NON_NEGATIVE else (out[:, j] < 0).all(), t
