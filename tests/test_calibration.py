"""Calibrated uncertainty (lieprop.model.calibration): a spread becomes a std and intervals that hold their level."""

from __future__ import annotations

import numpy as np
import pytest

from lieprop.model.calibration import (
    LEVELS,
    MIN_GROUP,
    RING_GROUPS,
    Calibration,
    coverage_report,
    fit_calibration,
    fit_member_weights,
    simplex_grid,
    spearman,
)
from lieprop.model.prediction import Predictions


def synthetic(n: int, seed: int, scale: float = 0.3, floor: float = 0.0):
    """Errors drawn with a per-molecule sigma that the spread sees only up to a factor and noise (as an ensemble's
    spread sees a model's error)."""
    rng = np.random.default_rng(seed)
    sigma = rng.gamma(2.0, 0.5, size=(n, 2)) + floor
    spread = scale * sigma * np.exp(rng.normal(0, 0.2, size=(n, 2)))
    truth = rng.normal(size=(n, 2))
    return truth + rng.normal(size=(n, 2)) * sigma, spread, truth


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_conformal_intervals_cover_their_level_on_fresh_data(level):
    values, spread, truth = synthetic(4000, seed=1)
    cal = fit_calibration(values, spread, truth, ["a", "b"])
    values, spread, truth = synthetic(20000, seed=2)
    covered = coverage_report(values, cal.apply(Predictions(values, spread), level), truth, ["a", "b"])
    for row in covered.values():
        assert row["coverage"] == pytest.approx(level, abs=0.02)


def test_the_scale_undoes_an_overconfident_spread():
    values, spread, truth = synthetic(20000, seed=3, scale=0.25)
    cal = fit_calibration(values, spread, truth, ["a", "b"])
    assert cal.scale == pytest.approx([4.0, 4.0], rel=0.1)  # the spread saw a quarter of sigma


def test_a_floor_keeps_molecules_the_members_agree_on_honest():
    values, spread, truth = synthetic(20000, seed=4, floor=1.0)  # every molecule has at least sigma 1
    spread[:100] = 0.0  # members that happen to agree exactly
    cal = fit_calibration(values, spread, truth, ["a", "b"])
    assert np.all(cal.floor > 0) and np.all(cal.sigma(np.zeros((1, 2))) > 0.5)


def test_intervals_hold_the_value_and_widen_with_the_level():
    values, spread, truth = synthetic(2000, seed=5)
    cal = fit_calibration(values, spread, truth, ["a", "b"])
    narrow, wide = cal.apply(Predictions(values, spread), 0.5), cal.apply(Predictions(values, spread), 0.95)
    assert np.all(narrow.lower <= values) and np.all(values <= narrow.upper)
    assert np.all(wide.upper - wide.lower > narrow.upper - narrow.lower)
    assert np.all(np.diff(cal.quantiles, axis=0) >= 0)  # quantiles grow with the level
    with pytest.raises(ValueError, match="coverage must be between"):
        cal.quantile(0.999)


def test_a_calibration_survives_json():
    values, spread, truth = synthetic(500, seed=6)
    cal = fit_calibration(values, spread, truth, ["a", "b"], source="test")
    back = Calibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back.quantiles, cal.quantiles)
    assert back.targets == ("a", "b") and back.source == "test" and tuple(back.levels) == LEVELS


def test_spearman_is_rank_correlation():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.array([1, 1, 2, 2.0]), np.array([1, 2, 3, 4.0])) == pytest.approx(0.894427, rel=1e-5)


def test_an_interval_of_a_property_that_cannot_be_negative_stops_at_zero():
    """Methane's dipole is about 0: its interval must not reach below 0 D (it would claim the impossible); HOMO's
    interval is symmetric however low it goes."""
    values, spread, truth = synthetic(2000, seed=6)
    cal = fit_calibration(values, spread, truth, ["mu", "homo"])
    near_zero = Predictions(np.array([[0.02, -10.5], [3.0, -7.0]]), np.array([[0.5, 0.5], [0.5, 0.5]]))
    got = cal.apply(near_zero, 0.9)
    assert got.lower[0, 0] == 0.0 and got.lower[1, 0] > 0.0  # mu: stops at 0 only where it would cross it
    half = got.upper - got.value
    assert np.allclose(got.value[:, 1] - got.lower[:, 1], half[:, 1])  # homo: symmetric
    assert np.all(got.lower <= got.value) and np.all(got.value <= got.upper)


# --------------------------------------------------------------------------------------------------
# Member weights: a member that is better on a geometry path counts more on it


def members_with_specialists(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three members' values (3, n, 2) of truth (n, 2): member 0 is good at target a and poor at b, member 1 the
    other way round, member 2 mediocre at both."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, 2))
    noise = np.array([[0.1, 1.0], [1.0, 0.1], [0.6, 0.6]])  # (member, target) error scale
    return truth + rng.normal(size=(3, n, 2)) * noise[:, None, :], truth


@pytest.mark.parametrize("m", [1, 2, 3, 5, 9])
def test_the_weight_grid_lies_on_the_simplex_and_holds_the_plain_mean_and_every_member_alone(m):
    grid = simplex_grid(m)
    assert np.all(grid >= 0) and np.allclose(grid.sum(1), 1.0) and len(grid) <= 2001
    np.testing.assert_allclose(grid[0], np.full(m, 1 / m))  # the plain mean first: it wins ties
    for k in range(m):
        assert any(np.allclose(row, np.eye(m)[k]) for row in grid), f"member {k} alone"


def test_member_weights_go_to_the_member_that_is_better_at_each_target():
    members, truth = members_with_specialists(4000, seed=7)
    weights = fit_member_weights(members, truth)
    assert weights.shape == (3, 2) and np.allclose(weights.sum(0), 1.0)
    assert weights[0, 0] > 0.8 and weights[1, 1] > 0.8  # each target trusts its specialist
    plain = np.abs(members.mean(0) - truth).mean(0)
    fresh, fresh_truth = members_with_specialists(4000, seed=8)  # and the weights hold on fresh molecules
    weighted = np.abs(np.einsum("mt,mnt->nt", weights, fresh) - fresh_truth).mean(0)
    assert np.all(weighted < 0.5 * plain)


def test_members_that_are_equally_good_keep_the_plain_mean():
    members, truth = members_with_specialists(100, seed=9)
    same = np.stack([members[2]] * 3)
    np.testing.assert_allclose(fit_member_weights(same, truth), np.full((3, 2), 1 / 3))


def test_a_weighted_calibration_centres_the_value_and_its_interval_on_the_weighted_mean():
    members, truth = members_with_specialists(2000, seed=10)
    weights = fit_member_weights(members, truth)
    raw = Predictions.from_members(members)
    cal = fit_calibration(np.einsum("mt,mnt->nt", weights, members), raw.std, truth, ["a", "b"], weights=weights)
    got = cal.apply(raw, 0.9)
    np.testing.assert_allclose(got.value, cal.center(members))
    assert not np.allclose(got.value, raw.value)  # not the plain mean
    assert np.all(got.lower <= got.value) and np.all(got.value <= got.upper)
    np.testing.assert_allclose(got.std, cal.sigma(raw.std))  # the spread stays the members' own
    one = cal.apply(raw[0], 0.9)  # one molecule: the same numbers
    np.testing.assert_allclose(one.value, got.value[0])
    back = Calibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back.weights, weights)
    with pytest.raises(ValueError, match="no member values"):
        cal.apply(Predictions(raw.value, raw.std), 0.9)
    with pytest.raises(ValueError, match="weights 3 members, the model has 2"):
        cal.center(members[:2])


def test_a_calibration_without_weights_reports_the_plain_mean():
    members, truth = members_with_specialists(500, seed=11)
    raw = Predictions.from_members(members)
    cal = fit_calibration(raw.value, raw.std, truth, ["a", "b"])
    assert cal.weights is None and "weights" not in cal.to_dict()
    np.testing.assert_allclose(cal.apply(raw).value, raw.value)


def ringed(n: int, seed: int):
    """Synthetic molecules in ring groups 0, 1 and 4+ whose errors the spread sees as equally large, though those of
    group 4+ are twice, and those of group 0 half, what the spread says (as cages err more than the ensemble
    admits); plus a handful in group 2, fewer than a group needs to be fitted."""
    values, spread, truth = synthetic(n, seed)
    rng = np.random.default_rng(seed + 100)
    groups = rng.choice([0, 1, 4], size=n)
    groups[:MIN_GROUP // 4] = 2
    factor = np.array([0.5, 1.0, 1.0, 1.0, 2.0])[groups][:, None]
    return truth + (values - truth) * factor, spread, truth, groups


def test_a_ring_grouped_calibration_holds_its_level_in_every_group():
    values, spread, truth, groups = ringed(12000, seed=11)
    cal = fit_calibration(values, spread, truth, ["a", "b"], groups=groups)
    assert cal.grouped and cal.group_n.tolist() == np.bincount(groups, minlength=len(RING_GROUPS)).tolist()
    # relative to the path's sigma, which sees the mixture: group 4+ errs four times what group 0 does
    assert cal.group_scale[4] / cal.group_scale[0] == pytest.approx([4.0, 4.0], rel=0.15)
    assert (cal.group_scale[4] > 1).all() and (cal.group_scale[0] < 1).all()
    values, spread, truth, groups = ringed(30000, seed=12)
    raw = Predictions(values, spread)
    grouped, plain = cal.apply(raw, 0.9, groups=groups), cal.apply(raw, 0.9)
    for g in (0, 1, 4):
        inside = groups == g
        covered = coverage_report(values[inside], grouped.select(inside), truth[inside], ["a", "b"])
        assert all(row["coverage"] == pytest.approx(0.9, abs=0.02) for row in covered.values()), g
    cages = coverage_report(values[groups == 4], plain.select(groups == 4), truth[groups == 4], ["a", "b"])
    assert all(row["coverage"] < 0.8 for row in cages.values())  # one calibration for all under-covers them
    np.testing.assert_allclose(grouped.std[groups == 4], plain.std[groups == 4] * cal.group_scale[4])  # a larger std


def test_a_thin_group_keeps_the_paths_calibration_and_no_group_means_the_path():
    values, spread, truth, groups = ringed(6000, seed=13)
    cal = fit_calibration(values, spread, truth, ["a", "b"], groups=groups)
    assert cal.group_n[2] < MIN_GROUP and cal.group_n[3] == 0
    np.testing.assert_array_equal(cal.group_scale[[2, 3]], 1.0)
    np.testing.assert_array_equal(cal.quantile(0.9, 2), cal.quantile(0.9))
    one = Predictions(values[:1], spread[:1])
    np.testing.assert_allclose(cal.apply(one, 0.9, groups=np.array([3])).upper, cal.apply(one, 0.9).upper)
    assert cal.quantile_table(0.9).shape == (len(RING_GROUPS), 2)
    single = cal.apply(one[0], 0.9, quantile=cal.quantile(0.9, 4), groups=4)  # one molecule, as results do it
    np.testing.assert_allclose(single.std, cal.apply(one, 0.9, groups=np.array([4])).std[0])
    as_array = cal.apply(one[0], 0.9, groups=np.array([4]))  # one molecule's group as a one-element array
    assert as_array.std.shape == single.std.shape and np.allclose(as_array.upper, single.upper)
    with pytest.raises(ValueError, match="ring groups"):
        cal.apply(one, 0.9, groups=np.array([4, 4]))
    for bad in (-1, len(RING_GROUPS), 2.5):
        with pytest.raises(ValueError, match="ring groups must be integers"):
            cal.apply(one[0], 0.9, groups=bad)
    few = fit_calibration(values[:MIN_GROUP], spread[:MIN_GROUP], truth[:MIN_GROUP], ["a", "b"],
                          groups=groups[:MIN_GROUP])
    assert not few.grouped  # no group is large enough: one calibration for the path
    with pytest.raises(ValueError, match="indices into RING_GROUPS"):
        fit_calibration(values, spread, truth, ["a", "b"], groups=groups + 5)


def test_a_grouped_calibration_survives_the_bundle_json_and_older_ones_load_ungrouped():
    values, spread, truth, groups = ringed(3000, seed=14)
    cal = fit_calibration(values, spread, truth, ["a", "b"], groups=groups)
    back = Calibration.from_dict(cal.to_dict())
    assert back.grouped and back.to_dict() == cal.to_dict()
    old = {k: v for k, v in cal.to_dict().items() if not k.startswith("group")}
    assert not Calibration.from_dict(old).grouped
    np.testing.assert_allclose(Calibration.from_dict(old).sigma(spread, groups), cal.sigma(spread))
    other = {**cal.to_dict(), "group_by": {"rings": ["0", "1", "2+"]}}
    with pytest.raises(ValueError, match="grouped by"):
        Calibration.from_dict(other)
    with pytest.raises(ValueError, match="ring groups are malformed"):
        Calibration.from_dict({**cal.to_dict(), "group_scale": cal.group_scale[:3].tolist()})
    with pytest.raises(ValueError, match="ring groups are malformed"):
        Calibration.from_dict({k: v for k, v in cal.to_dict().items() if k != "group_n"})
