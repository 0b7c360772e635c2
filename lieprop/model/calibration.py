"""Calibrated uncertainty: turn a model's raw spread into a standard deviation and prediction intervals that hold.

An ensemble's spread ``s`` (the members' sample standard deviation) ranks molecules by how much the members
disagree, but its size is not an error bar: members fine-tuned from one parent agree more than their errors
warrant, and they can agree by chance on a molecule they all get wrong. Per target ``t``, calibration fits

    sigma = a_t * sqrt(s^2 + b_t^2)

by maximum likelihood of the errors under N(0, sigma^2) on a calibration set (the validation split, in the
geometries users send and in DFT geometries): ``a_t`` scales the spread, the floor ``b_t`` keeps sigma honest when
the members happen to agree. ``sigma`` is the ``std`` a result reports. Intervals are split-conformal on the
normalised errors |error| / sigma: ``value ± q_t(level) * sigma``, where ``q_t(level)`` is the
ceil((n + 1) level) / n empirical quantile, so that on exchangeable data a level-0.9 interval covers at least 90% of
molecules. The quantiles of a grid of levels are stored; other levels interpolate.

A calibration is fitted per *geometry path* (:data:`PATHS`): geometries a user gave (XYZ, 3D SDF, arrays; QM9's
DFT geometries stand for them) and geometries lieprop generated (its conformer of a SMILES or a 2D MOL block; QM9's
force-field conformers, averaged as the service averages them, stand for them); bundles calibrated since conformer
averaging also have :data:`FORCEFIELD`, one force-field geometry (a user's, or the one ``conformers: 1`` makes;
fitted on each molecule's lowest-energy conformer and ETKDG's first, two correlated geometries per molecule, so its
conformal guarantee is approximate), and
since bundle 8 :data:`LONE_CONFORMER`, a SMILES left with one conformer of several (fitted on such molecules). An
ensemble whose members were fine-tuned from one parent disagrees about
as much on either path while its error on generated geometries is larger, so one calibration for both would
over-cover one path and under-cover the other; the result builder (:mod:`lieprop.inference.results`) picks the
calibration by the molecule's provenance. Everything here is numpy on arrays of shape (n, T); a bundle stores its
calibrations as plain JSON in its metadata (``calibration``: {path: ...}).

Within a path, a calibration may also be *grouped by rings* (Mondrian conformal prediction): the model's errors
grow with a molecule's number of rings faster than its spread does (bundle 8 on the test split, DFT geometries:
acyclic molecules' 90% intervals covered 93% for homo, those of molecules with four rings or more 80%), so one set of
quantiles for all of them over-covers the one and under-covers the other. A grouped calibration keeps, per ring
group (:data:`RING_GROUPS`, from the geometry: :func:`ring_group`) and target, a factor on sigma (the likelihood's
rescale of that group's errors) and the conformal quantiles of that group's own normalised errors, so the std
tells a cage's larger error and each group's intervals hold at their level; a group with fewer than
:data:`MIN_GROUP` calibration molecules keeps the path's. Without a group (``groups=None``) the path's own
ungrouped scale and quantiles apply.

A path's calibration may also weight the ensemble's members (``weights``, (M, T), each column on the simplex): the
value a result reports is then ``sum_m w_mt * member_m`` instead of the plain mean. The weights are fitted per path
and target on the same validation molecules, minimising the MAE over a grid of the simplex
(:func:`fit_member_weights`). They exist because members need not be equally good on both paths: a member trained
on DFT geometries only is the better predictor for DFT-like input, one fine-tuned on force-field conformers the
better one for SMILES, and their plain mean is worse than either on its own path (docs/MODEL_CARD.md). The spread
stays the members' unweighted sample standard deviation, and the scale, floor and quantiles are fitted around the
weighted value, so the intervals are centred where the result's value is. The weights are chosen on the same
molecules that give the quantiles: a few hundred candidates per target against thousands of molecules, so the
conformal guarantee holds approximately rather than exactly; the test split measures what it gives.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lieprop.data.properties import NON_NEGATIVE
from lieprop.data.rings import ring_count
from lieprop.model.prediction import Prediction, Predictions

#: Coverage levels whose conformal quantiles a calibration stores (others interpolate between them).
LEVELS = (0.5, 0.6, 0.68, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)
#: The level of the ``interval`` a result carries unless asked for another (REST and file scoring ``coverage``).
DEFAULT_LEVEL = 0.9
#: Geometry paths every calibrated bundle has, each with its own calibration: ``given`` (the user's 3D geometry,
#: DFT-relaxed like QM9's) and ``generated`` (lieprop's conformers of a SMILES or a 2D MOL block, averaged).
PATHS = ("given", "generated")
#: The optional third path: one force-field geometry (the user's, ``relaxed_with="forcefield"``, or a single conformer
#: lieprop made). It is answered like lieprop's conformers but, one geometry and not an average of five, errs more
#: and spreads less; a bundle calibrated before it existed answers it with ``generated``'s calibration.
FORCEFIELD = "forcefield"
#: The optional fourth path: a SMILES or 2D MOL block for which lieprop embedded several conformers and could keep
#: only one (the others were another stereoisomer, or broken). In QM9 these are strained polycyclic cages whose
#: stereo ETKDG cannot enforce, and they err about twice as much as other molecules on one force-field geometry, so
#: :data:`FORCEFIELD`'s intervals under-cover them (80-86% for the energies at the 90% level, bundle 7); a bundle
#: without this path answers it with :data:`FORCEFIELD`'s calibration.
LONE_CONFORMER = "lone_conformer"
#: The paths a bundle may be calibrated for beside :data:`PATHS`.
OPTIONAL_PATHS = (FORCEFIELD, LONE_CONFORMER)
#: Which path's calibration answers a path a bundle was not calibrated for (bundles calibrated before it existed).
FALLBACK = {LONE_CONFORMER: FORCEFIELD, FORCEFIELD: "generated"}
#: What a user may say about the 3D geometries they send (REST and file scoring ``relaxed_with``): ``dft`` (the
#: default; QM9's own geometries are B3LYP-relaxed) or ``forcefield`` (MMFF, UFF, RDKit or Open Babel conformers:
#: answered like lieprop's own conformers, and calibrated as one force-field geometry, :data:`FORCEFIELD`).
RELAXED_WITH = ("dft", "forcefield")
#: The ring groups of a grouped calibration: a molecule's number of independent rings
#: (:func:`lieprop.data.rings.ring_count`), four and more together.
RING_GROUPS = ("0", "1", "2", "3", "4+")
#: A ring group with fewer calibration molecules than this keeps the path's scale and quantiles.
MIN_GROUP = 400


def ring_group(numbers: np.ndarray, positions: np.ndarray) -> int:
    """The index in :data:`RING_GROUPS` of a geometry's ring count."""
    return min(ring_count(numbers, positions), len(RING_GROUPS) - 1)


#: Floors tried, as multiples of the target's median spread.
_FLOOR_GRID = np.concatenate([[0.0], np.geomspace(0.02, 20.0, 61)])


def geometry_path(provenance: Mapping[str, Any], relaxed_with: str = "dft") -> str:
    """``generated`` when the prediction averages several conformers lieprop made (the provenance's ``conformer``
    says how many: ``averaged``), :data:`LONE_CONFORMER` when several were asked for (``requested``; before that
    field, ``n_conformers`` embedded) and one was kept, :data:`FORCEFIELD` for one force-field geometry (one
    conformer lieprop made, e.g. with ``conformers: 1``, or the one geometry the user gave and says a force field
    relaxed: ``relaxed_with="forcefield"``, :data:`RELAXED_WITH`), else ``given``. The spread of an average carries
    the conformers' disagreement and that of one geometry does not, so each has its calibration;
    :func:`path_calibration` finds it."""
    if relaxed_with not in RELAXED_WITH:
        raise ValueError(f"relaxed_with must be one of {', '.join(RELAXED_WITH)}, got {relaxed_with!r}")
    conformer = provenance.get("conformer")
    if conformer:
        averaged, asked = ((conformer.get("averaged", 1), conformer.get("requested", conformer.get("n_conformers", 1)))
                           if isinstance(conformer, Mapping) else (1, 1))
        if averaged > 1:
            return "generated"
        return LONE_CONFORMER if asked > 1 else FORCEFIELD
    return FORCEFIELD if relaxed_with == "forcefield" else "given"


def path_calibration(calibrations: Mapping[str, Any], path: str) -> Any:
    """The calibration (or anything kept per path) of geometry ``path``: its own, else that of the path it falls
    back to in a bundle calibrated before it existed (:data:`FALLBACK`: :data:`LONE_CONFORMER` to
    :data:`FORCEFIELD`, that to ``generated``); None when there is none."""
    while path not in calibrations and path in FALLBACK:
        path = FALLBACK[path]
    return calibrations.get(path)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Per-target calibration of an ensemble's spread (see the module doc)."""

    targets: tuple[str, ...]
    scale: np.ndarray  # (T,) a_t
    floor: np.ndarray  # (T,) b_t, in the target's unit
    levels: np.ndarray  # (L,)
    quantiles: np.ndarray  # (L, T) conformal quantiles of |error| / sigma
    typical: np.ndarray  # (T,) median sigma on the calibration set
    n: int  # molecules it was fitted on
    source: str = ""  # what the calibration set was
    weights: np.ndarray | None = None  # (M, T) member weights of the value; None: the members' plain mean
    group_scale: np.ndarray | None = None  # (G, T) factor on sigma per ring group; None: not grouped
    group_quantiles: np.ndarray | None = None  # (G, L, T) conformal quantiles of each group's |error| / sigma
    group_n: np.ndarray | None = None  # (G,) calibration molecules per group

    @property
    def grouped(self) -> bool:
        """Whether the calibration has a scale and quantiles per ring group (:data:`RING_GROUPS`)."""
        return self.group_scale is not None

    def center(self, members: np.ndarray) -> np.ndarray:
        """This path's value from the members' values ((M, n, T) or (M, T)): their weighted mean with
        :attr:`weights`, else their plain mean."""
        return weighted_mean(members, self.weights)

    def sigma(self, spread: np.ndarray, groups: np.ndarray | int | None = None) -> np.ndarray:
        """Calibrated standard deviations (n, T) from raw spreads (n, T) (or (T,) of one molecule), of molecules in
        ring ``groups`` ((n,) or one int; :func:`ring_group`) when the calibration is grouped."""
        sigma = self.scale * np.sqrt(np.asarray(spread) ** 2 + self.floor**2)
        if groups is None or self.group_scale is None:
            return sigma
        return sigma * self.group_scale[np.asarray(groups)]

    def quantile(self, level: float, group: int | None = None) -> np.ndarray:
        """(T,) interval half-widths in units of sigma for coverage ``level`` (interpolated between stored
        levels; ``ValueError`` outside them), of ring ``group`` when the calibration is grouped."""
        if not self.levels[0] <= level <= self.levels[-1]:
            raise ValueError(f"coverage must be between {self.levels[0]} and {self.levels[-1]}, got {level}")
        table = self.quantiles if group is None or self.group_quantiles is None else self.group_quantiles[group]
        return np.array([np.interp(level, self.levels, table[:, t]) for t in range(len(self.targets))])

    def quantile_table(self, level: float) -> np.ndarray:
        """(G, T) :meth:`quantile` of every ring group at ``level``, or (1, T) the path's when not grouped."""
        if self.group_quantiles is None:
            return self.quantile(level)[None]
        return np.stack([self.quantile(level, g) for g in range(len(self.group_quantiles))])

    def apply(self, predictions: Predictions | Prediction, level: float = DEFAULT_LEVEL,
              quantile: np.ndarray | None = None, groups: np.ndarray | int | None = None) -> Any:
        """``predictions`` (a batch or one molecule) with its value taken by :meth:`center` when the calibration
        weights the members, ``std`` calibrated and an interval at ``level`` (value ±
        quantile * std; pass ``quantile``, :meth:`quantile` of ``level`` and the molecule's group, to skip the
        interpolation). ``groups``: the molecules' ring groups ((n,), or one int; :func:`ring_group`), used when
        the calibration is grouped. For a property that cannot be negative (``NON_NEGATIVE``: mu, alpha, gap, ...)
        the interval stops at 0: it holds every value it held before, so its coverage is the same, and it never
        claims the impossible."""
        if predictions.std is None:
            raise ValueError("calibration needs a spread: only ensembles give one")
        if groups is not None:
            groups = _groups_of(predictions, groups)
        value = predictions.value
        if self.weights is not None:
            if predictions.members is None:
                raise ValueError("this calibration weights the ensemble's members, and the prediction has no "
                                 "member values")
            value = self.center(predictions.members)
        sigma = self.sigma(predictions.std, groups)
        if quantile is None:
            use = groups is not None and self.grouped
            quantile = self.quantile_table(level)[np.asarray(groups)] if use else self.quantile(level)
        half = quantile * sigma
        floor = np.array([0.0 if t in NON_NEGATIVE else -np.inf for t in self.targets])
        kind = Predictions if isinstance(predictions, Predictions) else Prediction
        return kind(value, sigma, np.maximum(value - half, floor), value + half, level, predictions.members)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for a bundle's metadata."""
        out = {"targets": list(self.targets), "scale": self.scale.tolist(), "floor": self.floor.tolist(),
               "levels": self.levels.tolist(), "quantiles": self.quantiles.tolist(),
               "typical": self.typical.tolist(), "n": self.n, "source": self.source}
        if self.weights is not None:
            out["weights"] = self.weights.tolist()
        if self.grouped:
            out["group_by"] = {"rings": list(RING_GROUPS)}
            out.update(group_scale=self.group_scale.tolist(), group_quantiles=self.group_quantiles.tolist(),
                       group_n=self.group_n.tolist())
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        def optional(key: str, dtype: Any = float) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], dtype)

        if d.get("group_by") is not None and list(d["group_by"].get("rings", ())) != list(RING_GROUPS):
            raise ValueError(f"the calibration is grouped by {d['group_by']}; this lieprop groups by rings "
                             f"{list(RING_GROUPS)}")
        shapes = {"group_scale": (len(RING_GROUPS), len(d["targets"])),
                  "group_quantiles": (len(RING_GROUPS), len(d["levels"]), len(d["targets"])),
                  "group_n": (len(RING_GROUPS),)}
        present = [k for k in shapes if d.get(k) is not None]
        if present and (len(present) < len(shapes) or any(np.shape(d[k]) != shapes[k] for k in shapes)):
            raise ValueError(f"the calibration's ring groups are malformed: {', '.join(shapes)} must all be there, "
                             f"shaped {', '.join(str(v) for v in shapes.values())}")
        return cls(tuple(d["targets"]), np.asarray(d["scale"], float), np.asarray(d["floor"], float),
                   np.asarray(d["levels"], float), np.asarray(d["quantiles"], float),
                   np.asarray(d["typical"], float), int(d["n"]), str(d.get("source", "")), optional("weights"),
                   optional("group_scale"), optional("group_quantiles"), optional("group_n", np.int64))


def _groups_of(predictions: Predictions | Prediction, groups: np.ndarray | int) -> np.ndarray | int:
    """``groups`` as :meth:`Calibration.apply` uses them: one int for one molecule (given as an int or a one-element
    array), (n,) ints for a batch of n; ``ValueError`` when they do not match the predictions."""
    array = np.asarray(groups)
    if array.dtype.kind not in "iu" or array.min(initial=0) < 0 or array.max(initial=0) >= len(RING_GROUPS):
        raise ValueError(f"ring groups must be integers 0..{len(RING_GROUPS) - 1} (RING_GROUPS), got {groups!r}")
    if isinstance(predictions, Prediction):
        if array.size != 1:
            raise ValueError(f"one molecule takes one ring group, got {array.size}")
        return int(array.reshape(()))
    if array.ndim == 0:
        return np.full(len(predictions), int(array))
    if array.shape != (len(predictions),):
        raise ValueError(f"{len(predictions)} molecules need {len(predictions)} ring groups, got shape {array.shape}")
    return array


def calibrations_to_dict(calibrations: Mapping[str, Calibration]) -> dict[str, Any]:
    """{path: calibration} as the JSON a bundle's metadata keeps."""
    return {path: cal.to_dict() for path, cal in calibrations.items()}


def calibrations_from_dict(d: Mapping[str, Any]) -> dict[str, Calibration]:
    """The inverse of :func:`calibrations_to_dict`; ``ValueError`` unless every path of :data:`PATHS` is there
    (:data:`OPTIONAL_PATHS` may be)."""
    missing = [p for p in PATHS if p not in d]
    if missing:
        raise ValueError(f"the calibration has no {missing} path")
    return {path: Calibration.from_dict(d[path]) for path in (*PATHS, *OPTIONAL_PATHS) if path in d}


def _nll(err: np.ndarray, var: np.ndarray) -> float:
    return float(0.5 * np.mean(np.log(var) + err**2 / var))


def weighted_mean(members: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The members' values ((M, n, T) or (M, T)) averaged with per-target ``weights`` (M, T), or plainly when
    ``weights`` is None."""
    members = np.asarray(members, dtype=np.float64)
    if weights is None:
        return members.mean(0)
    if members.shape[0] != weights.shape[0]:
        raise ValueError(f"the calibration weights {weights.shape[0]} members, the model has {members.shape[0]}")
    return np.einsum("mt,m...t->...t", weights, members)


#: The most weight vectors :func:`simplex_grid` offers (its step is the finest that stays under this).
MAX_GRID_POINTS = 2000


def simplex_grid(m: int, max_points: int = MAX_GRID_POINTS) -> np.ndarray:
    """(G, m) weight vectors on the simplex in steps of 1/k, for the largest k <= 20 giving at most ``max_points``
    vectors (at least k = 1: each member alone), plus the uniform vector."""
    k = 1
    while k < 20 and math.comb(k + 1 + m - 1, m - 1) <= max_points:
        k += 1
    # stars and bars: k units among m members <-> the places of m - 1 bars among k + m - 1 slots
    rows = []
    for bars in itertools.combinations(range(k + m - 1), m - 1):
        edges = (-1, *bars, k + m - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(m)])
    return np.concatenate([np.full((1, m), 1.0 / m), np.array(rows, dtype=np.float64) / k])


def fit_member_weights(members: np.ndarray, truth: np.ndarray, max_points: int = MAX_GRID_POINTS) -> np.ndarray:
    """(M, T) member weights minimising each target's MAE of the weighted mean on a calibration set (``members``
    (M, n, T), ``truth`` (n, T)), searched over :func:`simplex_grid`; ties (within rounding) go to the uniform mean,
    then to the earlier grid vector."""
    members, truth = np.asarray(members, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    grid = simplex_grid(members.shape[0], max_points)
    weights = np.empty((members.shape[0], members.shape[2]))
    for j in range(members.shape[2]):
        mae = np.concatenate([np.abs(block @ members[:, :, j] - truth[:, j]).mean(1)  # blocks bound the memory
                              for block in np.array_split(grid, math.ceil(len(grid) / 128))])
        # the first vector within rounding of the minimum: the uniform one is first, so equal members keep it
        weights[:, j] = grid[int(np.flatnonzero(mae <= mae.min() * (1 + 1e-9))[0])]
    return weights


def fit_calibration(values: np.ndarray, spread: np.ndarray, truth: np.ndarray, targets: Sequence[str],
                    levels: Sequence[float] = LEVELS, source: str = "", weights: np.ndarray | None = None,
                    groups: np.ndarray | None = None) -> Calibration:
    """Fit scale, floor and conformal quantiles per target on a calibration set ((n, T) arrays). ``values`` are the
    values results will report: with member ``weights`` (kept in the calibration), the weighted mean. With the
    molecules' ring ``groups`` ((n,) indices into :data:`RING_GROUPS`) it is also grouped: per group of at least
    :data:`MIN_GROUP` molecules a factor on sigma and the conformal quantiles of that group's normalised errors
    (when no group has that many, it stays ungrouped)."""
    values, spread, truth = (np.asarray(a, dtype=np.float64) for a in (values, spread, truth))
    err = truth - values
    n, t = err.shape
    scale, floor = np.ones(t), np.zeros(t)
    for j in range(t):
        median = float(np.median(spread[:, j]))
        unit = median if median > 0 else float(np.mean(np.abs(err[:, j]))) or 1.0
        best = (math.inf, 1.0, 0.0)
        for f in _FLOOR_GRID * unit:
            base = spread[:, j] ** 2 + f**2
            if np.any(base <= 0):
                continue
            a2 = float(np.mean(err[:, j] ** 2 / base))  # the MLE of a^2 for this floor
            nll = _nll(err[:, j], a2 * base)
            if nll < best[0]:
                best = (nll, math.sqrt(a2), f)
        _, scale[j], floor[j] = best
    sigma = scale * np.sqrt(spread**2 + floor**2)  # Calibration.sigma of the fitted scale and floor
    scores = np.abs(err) / sigma
    quantiles = _conformal(scores, levels)
    grouped: dict[str, Any] = {}
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != (n,) or groups.min(initial=0) < 0 or groups.max(initial=0) >= len(RING_GROUPS):
            raise ValueError(f"groups must be {n} indices into RING_GROUPS (0..{len(RING_GROUPS) - 1})")
        count = np.bincount(groups, minlength=len(RING_GROUPS))
    if groups is not None and count.max() >= MIN_GROUP:  # else no group is fitted: the calibration stays plain
        group_scale, group_quantiles = np.ones((len(RING_GROUPS), t)), np.repeat(quantiles[None], len(RING_GROUPS), 0)
        for g in np.flatnonzero(count >= MIN_GROUP):
            inside = scores[groups == g]
            group_scale[g] = np.sqrt(np.mean(inside**2, axis=0))  # the MLE rescale of sigma within the group
            group_quantiles[g] = _conformal(inside / group_scale[g], levels)
        grouped = {"group_scale": group_scale, "group_quantiles": group_quantiles, "group_n": count}
    return Calibration(tuple(targets), scale, floor, np.asarray(levels, float), quantiles, np.median(sigma, axis=0), n,
                       source, None if weights is None else np.asarray(weights, dtype=np.float64), **grouped)


def _conformal(scores: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """(L, T) split-conformal quantiles of (n, T) nonconformity ``scores``: the ceil((n + 1) level)-th smallest."""
    n = len(scores)
    ordered = np.sort(scores, axis=0)
    return np.stack([ordered[min(n, math.ceil((n + 1) * lv)) - 1] for lv in levels])


def coverage_report(values: np.ndarray, predictions: Predictions, truth: np.ndarray, targets: Sequence[str]
                    ) -> dict[str, dict[str, float]]:
    """Per target: the share of molecules whose interval holds the truth, the mean interval width, the mean std,
    and the Spearman rank correlation between std and |error|."""
    err = np.abs(np.asarray(truth) - np.asarray(values))
    out = {}
    for j, name in enumerate(targets):
        inside = (predictions.lower[:, j] <= truth[:, j]) & (truth[:, j] <= predictions.upper[:, j])
        out[name] = {"coverage": float(inside.mean()),
                     "width": float(np.mean(predictions.upper[:, j] - predictions.lower[:, j])),
                     "std": float(np.mean(predictions.std[:, j])), "mae": float(err[:, j].mean()),
                     "spearman": spearman(predictions.std[:, j], err[:, j])}
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]
