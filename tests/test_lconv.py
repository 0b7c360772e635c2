"""The L-conv layer on point clouds (lieprop.model.lconv): the least-squares gradient, shapes, the invariant variant's
exact O(3) invariance when the generators' span is closed under conjugation by rotations (and its failure when it is
not), and the two regularisers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_rotation

from lieprop.data.batch import collate, featurize
from lieprop.model.lconv import (
    Generators,
    InvariantLConv,
    LConv,
    closure_penalty,
    gradient,
    gradient_operator,
    named_generators,
    norm_penalty,
    so3_basis,
)


@pytest.fixture
def batch(qm9_head):
    """Five real QM9 molecules (3 to 18 atoms), padded, in float64."""
    molecules = [qm9_head.molecule(i) for i in (0, 5, 25, 60, 120)]
    b = collate([z for z, _ in molecules], [x for _, x in molecules], dtype=torch.float64)
    return featurize(b.numbers).double(), b.positions, b.mask


def _moved(positions: torch.Tensor, seed: int, reflect: bool = False) -> torch.Tensor:
    r = torch.from_numpy(random_rotation(seed)) * (-1.0 if reflect else 1.0)
    return positions @ r.T + torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)


def test_the_least_squares_gradient_is_exact_for_linear_fields_and_rotates_with_the_molecule(batch):
    # a dense cloud: every point has neighbours in all three directions, so a linear field's gradient is exact
    x = torch.from_numpy(np.random.default_rng(0).uniform(-2, 2, size=(1, 40, 3)))
    mask = torch.ones(1, 40, dtype=torch.bool)
    a = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    g = gradient(gradient_operator(x, mask, cutoff=3.0, ridge=1e-8), (x @ a)[..., None])[..., 0]
    assert (g - a).norm(dim=-1).max() < 1e-6
    # on real molecules (some flat, with padding) the gradient is rotation-equivariant: grad(f)(R x) = R grad(f)(x)
    _, x, mask = batch
    r = torch.from_numpy(random_rotation(3))
    f = torch.randn(*mask.shape, 4, dtype=torch.float64)
    rotated = gradient(gradient_operator(_moved(x, 3), mask), f)
    assert rotated.shape == (*mask.shape, 3, 4)
    expected = torch.einsum("ij,bnjc->bnic", r, gradient(gradient_operator(x, mask), f))
    assert torch.allclose(rotated, expected, atol=1e-10)


def test_layer_shapes_and_padding(batch):
    f, x, mask = batch
    gens = Generators(*named_generators("random", 4))
    for layer in (LConv(f.shape[-1], 7, gens), InvariantLConv(f.shape[-1], 7, gens, hidden=5)):
        y = layer.double()(f, x, mask)
        assert y.shape == (*mask.shape, 7)
        assert y[~mask].abs().max() == 0
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("algebra", ["so3", "se3", "so3_mixed"])
def test_the_invariant_variant_is_exactly_o3_invariant_when_the_span_is_closed(batch, algebra):
    f, x, mask = batch
    if algebra == "so3_mixed":  # so(3) in a skewed, non-orthogonal basis: q depends only on the span
        a = torch.einsum("kl,lij->kij", torch.tensor([[1.0, 0.3, 0.0], [0.2, 1.0, -0.5], [0.1, 0.0, 2.0]]),
                         so3_basis())
        gens = Generators(a.double())
    else:
        a, b = named_generators(algebra)
        gens = Generators(a.double(), None if b is None else b.double())
    layer = InvariantLConv(f.shape[-1], 8, gens).double()
    y = layer(f, x, mask)
    for seed, reflect in ((1, False), (2, True)):
        y_moved = layer(f, _moved(x, seed, reflect), mask)
        assert (y - y_moved).abs().max() < 1e-6 * y.abs().max(), (y - y_moved).abs().max()


def test_the_invariant_variant_is_not_invariant_for_a_random_span(batch):
    f, x, mask = batch
    a, b = named_generators("random", 3, seed=1)
    layer = InvariantLConv(f.shape[-1], 8, Generators(a.double(), b.double())).double()
    y = layer(f, x, mask)
    change = (y - layer(f, _moved(x, 1), mask)).abs().max() / y.abs().max()
    assert change > 1e-2, change
    # and the plain layer is not invariant even for so(3): its outputs are Lie derivatives, which rotate
    plain = LConv(f.shape[-1], 8, Generators(so3_basis().double())).double()
    assert (plain(f, x, mask) - plain(f, _moved(x, 1), mask)).abs().max() > 1e-3


def test_regularisers():
    so3 = so3_basis()
    assert closure_penalty(so3) < 1e-10  # [L_x, L_y] = L_z: a Lie algebra
    a, b = named_generators("se3")
    assert closure_penalty(a, b) < 1e-10
    assert closure_penalty(so3[:2]) > 0.5  # span{L_x, L_y} misses their bracket L_z
    assert closure_penalty(torch.eye(3)[None]) < 1e-12  # one generator always closes
    assert closure_penalty(so3 * 7.0) < 1e-10  # scale-free
    ra, rb = named_generators("random", 3)
    assert closure_penalty(ra, rb) > 0.1
    assert norm_penalty(so3 / np.sqrt(2)) < 1e-12  # unit Frobenius norm
    assert norm_penalty(so3) == pytest.approx(3.0)
    assert norm_penalty(torch.zeros(2, 3, 3)) == pytest.approx(2.0)  # the collapse L = 0 is penalised
    # gradients flow to learned generators
    gens = torch.nn.Parameter(ra.clone())
    (closure_penalty(gens) + norm_penalty(gens)).backward()
    assert gens.grad is not None and gens.grad.abs().sum() > 0


def test_bad_generators_are_refused():
    with pytest.raises(ValueError, match=r"generators must be \(K, 3, 3\)"):
        Generators(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="unknown generators 'sl2'"):
        named_generators("sl2")
    with pytest.raises(ValueError, match="cutoff and ridge must be positive"):
        gradient_operator(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), cutoff=0.0)
