"""Featurisation and collation: the LieConv atom features, padding that never changes a molecule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lieprop.data.batch import N_FEATURES, collate, collate_ragged, featurize, size_bucketed_batches


def test_features_are_one_hot_times_charge_powers():
    f = featurize(np.array([1, 6, 7, 8, 9]))
    assert f.shape == (5, N_FEATURES) == (5, 15)
    carbon = f[1].reshape(5, 3)
    assert torch.allclose(carbon[1], torch.tensor([1.0, 6 / 9, (6 / 9) ** 2]))
    assert carbon[[0, 2, 3, 4]].abs().sum() == 0


def test_padding_atoms_have_zero_features_and_other_elements_are_refused():
    assert featurize(np.array([0, 0])).abs().sum() == 0
    with pytest.raises(ValueError, match="17"):
        featurize(np.array([6, 17]))


molecule = st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(st.sampled_from([1, 6, 7, 8, 9]), min_size=n, max_size=n),
    st.lists(st.tuples(*[st.floats(-20, 20, allow_nan=False)] * 3), min_size=n, max_size=n)))


@settings(max_examples=60, deadline=None)
@given(st.lists(molecule, min_size=1, max_size=8))
def test_collation_keeps_every_molecule_exactly_and_in_order(mols):
    zs = [np.array(z) for z, _ in mols]
    xs = [np.array(x, dtype=np.float64) for _, x in mols]
    b = collate(zs, xs, dtype=torch.float64)
    assert b.numbers.shape[0] == len(mols)
    for i, (z, x) in enumerate(zip(zs, xs, strict=True)):
        n = len(z)
        assert b.mask[i].sum() == n and b.mask[i, :n].all()
        assert np.array_equal(b.numbers[i, :n].numpy(), z)
        assert np.array_equal(b.positions[i, :n].numpy(), x)
        assert (b.numbers[i, n:] == 0).all() and (b.positions[i, n:] == 0).all()
    # Packing the same molecules as ragged arrays gives the same batch.
    offsets = np.concatenate([[0], np.cumsum([len(z) for z in zs])])
    rb = collate_ragged(np.concatenate(zs), np.concatenate(xs), offsets, np.arange(len(zs)), dtype=torch.float64)
    assert torch.equal(rb.numbers, b.numbers) and torch.equal(rb.positions, b.positions)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 29), min_size=1, max_size=300), st.integers(1, 64), st.integers(0, 10))
def test_size_buckets_cover_every_molecule_once(sizes, batch_size, seed):
    sizes = np.array(sizes)
    for rng in (None, np.random.default_rng(seed)):
        batches = size_bucketed_batches(sizes, batch_size, rng)
        got = np.sort(np.concatenate(batches))
        assert np.array_equal(got, np.arange(len(sizes)))
        assert all(1 <= len(b) <= batch_size for b in batches)


def test_buckets_reduce_padding_on_qm9_sizes(qm9_head):
    sizes = qm9_head.n_atoms
    rng = np.random.default_rng(0)
    bucketed = size_bucketed_batches(sizes, 32, rng)
    random = np.array_split(rng.permutation(len(sizes)), len(sizes) // 32)
    pad = lambda bs: sum(len(b) * sizes[b].max() for b in bs)  # noqa: E731
    assert pad(bucketed) < pad(random)
