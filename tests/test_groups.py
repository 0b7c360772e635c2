"""Lie groups: the identities of exp and log, lifting, and the invariance of LieConv's pair embedding."""

from __future__ import annotations

import math

import pytest
import torch

from lieprop.model.groups import SE3, SO3, T3, Trivial, get_group, random_rotations, so3_exp, so3_log

torch.set_default_dtype(torch.float32)
F64 = torch.float64


def axis_angle(n: int, angles: torch.Tensor | float, gen: torch.Generator) -> torch.Tensor:
    axis = torch.randn(n, 3, generator=gen, dtype=F64)
    return axis / axis.norm(dim=-1, keepdim=True) * torch.as_tensor(angles, dtype=F64).reshape(-1, 1)


SINGULAR_ANGLES = [0.0, 1e-12, 1e-8, 1e-5, 1e-3, 1e-2, 0.03, 0.1, 1.0, 2.0, math.pi - 0.1, math.pi - 1e-3,
                   math.pi - 1e-6, math.pi - 1e-9]


@pytest.mark.parametrize("angle", SINGULAR_ANGLES)
def test_so3_log_inverts_exp_at_every_angle_including_0_and_pi(angle):
    gen = torch.Generator().manual_seed(1)
    w = axis_angle(64, angle, gen)
    assert torch.allclose(so3_log(so3_exp(w)), w, atol=1e-9, rtol=0)


def test_so3_exp_inverts_log_for_haar_random_rotations():
    r = random_rotations(2000, torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(so3_exp(so3_log(r)), r, atol=1e-9)


def test_so3_exp_is_a_rotation():
    w = axis_angle(100, torch.rand(100, dtype=F64) * 3, torch.Generator().manual_seed(2))
    r = so3_exp(w)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=F64).expand(100, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100, dtype=F64), atol=1e-12)


@pytest.mark.parametrize("angle", SINGULAR_ANGLES)
def test_se3_log_inverts_exp_at_every_angle(angle):
    gen = torch.Generator().manual_seed(3)
    a = torch.cat([axis_angle(64, angle, gen), torch.randn(64, 3, generator=gen, dtype=F64) * 3], dim=-1)
    g = SE3()
    assert torch.allclose(g.log(g.exp(a)), a, atol=1e-9, rtol=0)


def test_se3_exp_inverts_log_and_inverse_is_the_inverse():
    gen = torch.Generator().manual_seed(4)
    g = SE3()
    r = random_rotations(500, gen, dtype=F64)
    t = torch.randn(500, 3, generator=gen, dtype=F64) * 5
    elem = g._compose(r, t)
    assert torch.allclose(g.exp(g.log(elem)), elem, atol=1e-9)
    assert torch.allclose(g.mul(g.inv(elem), elem), torch.eye(4, dtype=F64).expand(500, 4, 4), atol=1e-12)


def test_maps_are_differentiable_without_nans_at_the_identity():
    a = torch.zeros(4, 6, dtype=F64, requires_grad=True)
    g = SE3()
    g.log(g.exp(a)).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_float32_maps_stay_accurate():
    gen = torch.Generator().manual_seed(5)
    w = axis_angle(256, torch.rand(256, dtype=F64) * 3.1, gen).float()
    assert torch.allclose(so3_log(so3_exp(w)), w, atol=2e-4)


@pytest.mark.parametrize("fn", ["_sinc", "_cosc", "_sinc3", "_vinv_coef"])
def test_every_series_coefficient_is_accurate_in_float32_at_every_angle(fn):
    """Each coefficient in float32 agrees with float64 to 1e-5 relative, also just above the Taylor switch (0.03,
    where the V^-1 coefficient used to lose 72% to cancellation) and around 1.0."""
    from lieprop.model import groups

    theta = torch.tensor([0.0, 1e-4, 0.01, 0.0299, 0.0301, 0.04, 0.05, 0.1, 0.5, 0.99, 1.01, 2.0, 3.0], dtype=F64)
    f = getattr(groups, fn)
    exact = f(theta)
    single = f(theta.float()).double()
    rel = ((single - exact).abs() / exact.abs()).max()
    assert rel < 1e-5, f"{fn}: float32 relative error {rel:.1e}"


def test_se3_log_inverts_exp_in_float32_near_small_angles():
    gen = torch.Generator().manual_seed(6)
    g = SE3()
    for angle in (0.02, 0.0301, 0.05, 0.2):
        a = torch.cat([axis_angle(64, angle, gen), torch.randn(64, 3, generator=gen, dtype=F64) * 3], dim=-1)
        back = g.log(g.exp(a.float())).double()
        assert torch.allclose(back, a, atol=5e-5, rtol=0), angle


def test_so3_neighbourhood_distance_counts_the_orbit_like_lieconv():
    """Two points on the same ray at radii 1 and 3 differ only in their orbit: their distance must not be 0."""
    g = SO3()
    x = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 3.0]]], dtype=F64)
    elems, orbits = g.lift(x, 1, torch.Generator().manual_seed(0))
    d = g.distance(g.pair_embedding(elems, orbits))
    assert d[0, 0, 1] >= 0.8 * 2.0 - 1e-9


def test_random_rotations_are_drawn_on_the_generators_device_and_returned_on_the_requested_one():
    r = random_rotations(3, torch.Generator(device="cpu").manual_seed(0), dtype=F64, device="cpu")
    assert r.device.type == "cpu" and r.shape == (3, 3, 3)
    if torch.cuda.is_available():
        gen = torch.Generator(device="cuda").manual_seed(0)
        assert random_rotations(3, gen, device="cuda").device.type == "cuda"


def test_groups_by_name():
    assert isinstance(get_group("t3"), T3) and isinstance(get_group("SE3"), SE3)
    with pytest.raises(ValueError, match="unknown group"):
        get_group("E8")


def _rigid(gen):
    r = random_rotations(1, gen, dtype=F64)[0]
    return r, torch.randn(3, generator=gen, dtype=F64) * 4


@pytest.mark.parametrize("group", [SE3(), SO3(), T3()])
def test_lift_is_equivariant_lifted_elements_sit_over_the_transformed_points(group):
    """Each lifted element of point x_i moves the orbit's origin to x_i, before and after a rigid motion."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 7, 3, generator=gen, dtype=F64) * 2
    r, t = _rigid(gen)
    if isinstance(group, SO3):
        t = torch.zeros(3, dtype=F64)  # SO(3) acts on R^3 by rotation about the origin only
    x2 = x @ r.T + t
    lifts = group.lift_samples
    for pts in (x, x2):
        g, orbits = group.lift(pts, lifts, torch.Generator().manual_seed(0))
        assert g.shape[1] == 7 * lifts
        expected = pts.repeat_interleave(lifts, dim=1)
        if isinstance(group, SE3):
            over = g[..., :3, 3]
        elif isinstance(group, SO3):
            over = (g @ torch.tensor([0.0, 0.0, 1.0], dtype=F64))[..., :] * orbits
        else:
            over = g
        assert torch.allclose(over, expected, atol=1e-10)
    # Orbit identifiers are invariant.
    _, o1 = group.lift(x, lifts)
    _, o2 = group.lift(x2, lifts)
    assert torch.allclose(o1, o2, atol=1e-10)


def test_se3_pair_embedding_is_invariant_when_stabiliser_samples_move_with_the_cloud():
    gen = torch.Generator().manual_seed(7)
    group = SE3()
    x = torch.randn(3, 6, 3, generator=gen, dtype=F64)
    u, orbits = group.lift(x, 4, gen)
    r, t = _rigid(gen)
    h = group._compose(r, t)
    a = group.pair_embedding(u, orbits)
    a_moved = group.pair_embedding(h @ u, orbits)
    assert a.shape == (3, 24, 24, 6)
    assert torch.allclose(a, a_moved, atol=1e-9)


def test_t3_pair_embedding_is_the_difference_and_translation_invariant():
    x = torch.randn(2, 5, 3, dtype=F64)
    g = T3()
    a = g.pair_embedding(*g.lift(x))
    assert torch.allclose(a[0, 1, 3], x[0, 1] - x[0, 3])
    assert torch.allclose(g.pair_embedding(*g.lift(x + 3.0)), a)
    # The generic rule (log(u_j^-1 u_i)) gives the same thing as T3's shortcut.
    assert torch.allclose(super(T3, g).pair_embedding(*g.lift(x)), a)


def test_trivial_group_embeds_both_positions():
    x = torch.randn(1, 4, 3, dtype=F64)
    g = Trivial()
    a = g.pair_embedding(*g.lift(x))
    assert a.shape == (1, 4, 4, 6)
    assert torch.allclose(a[0, 2, 1], torch.cat([x[0, 2], x[0, 1]]))
