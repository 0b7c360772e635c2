"""``lieprop calibrate``: fit an ensemble's uncertainty on the validation split and measure it on the test split.

A calibration is fitted per geometry path (:data:`lieprop.model.calibration.PATHS`) on the validation split, each on
the molecules the service serves that path to (:func:`path_sets`): QM9's DFT geometries for geometries a user gives;
the force-field conformers lieprop makes from each molecule's SMILES (:mod:`lieprop.data.qm9_conformers`), averaged
as the service averages them, for the SMILES that keep several conformers; and one force-field geometry alone (the
lowest-energy conformer, and the one ``conformers: 1`` embeds) for a user's force-field geometry
(``relaxed_with="forcefield"``) and ``conformers: 1``; and, apart, the SMILES left with one conformer of several,
strained cages that err twice as much (the report also says what these two paths' coverage would be with the
calibration they would otherwise borrow). Every path's calibration is grouped by the molecules' ring count
(:data:`lieprop.model.calibration.RING_GROUPS`, from the geometry each result is predicted from, as the service
takes it), and the report gives each ring group's coverage, grouped and as the path's one calibration would give
it.
The report then measures, on the test split and per path, what a chemist relies on: the
coverage of the 90% interval (and of every stored level: the reliability curve), its mean width, and whether the std
ranks molecules by their error (Spearman correlation of std and |error|). It also checks that the uncertainty knows
its domain: the std of the force-field geometries over that of the DFT geometries of the same molecules, and the raw
spread of molecules outside QM9 (more than 9 heavy atoms; :data:`OUTSIDE_QM9`) over that of QM9's own test
molecules, both on the SMILES path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lieprop.data.molecule import Molecule
from lieprop.data.pool import embed_many
from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.data.readers import from_smiles
from lieprop.data.validation import ValidationLimits
from lieprop.model.bundle import load_bundle, record_metadata
from lieprop.model.calibration import (
    DEFAULT_LEVEL,
    FORCEFIELD,
    LEVELS,
    LONE_CONFORMER,
    RING_GROUPS,
    Calibration,
    calibrations_to_dict,
    coverage_report,
    fit_calibration,
    fit_member_weights,
    path_calibration,
    ring_group,
    weighted_mean,
)
from lieprop.model.prediction import Predictions, predict_molecules
from lieprop.model.predictor import EnsembleModel

#: Molecules of CHONF with 10 to 24 heavy atoms: outside QM9 (at most 9), for the domain check. Common drugs,
#: natural products and aromatics; no labels needed, only their spread.
OUTSIDE_QM9 = (
    "CC(=O)Oc1ccccc1C(=O)O", "CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "COc1ccc2cc(C(C)C(=O)O)ccc2c1", "CCOC(=O)c1ccc(N)cc1", "CCN(CC)CC(=O)Nc1c(C)cccc1C", "COc1cc(C=O)ccc1O",
    "O=c1ccc2ccccc2o1", "OC(=O)Cc1c[nH]c2ccccc12", "NCCc1c[nH]c2ccc(O)cc12", "NC(Cc1c[nH]c2ccccc12)C(=O)O",
    "NC(Cc1ccccc1)C(=O)O", "NC(Cc1ccc(O)cc1)C(=O)O", "CC(C)C1CCC(C)CC1O", "CC1(C)C2CCC1(C)C(=O)C2",
    "CC1=CCC(C(C)=C)CC1", "Cc1ccc(C(C)C)c(O)c1", "C=CCc1ccc(O)c(OC)c1", "O=CC=Cc1ccccc1", "CC(=O)Nc1ccccc1",
    "O=C(O)c1ccccc1O", "COC(=O)c1ccccc1O", "c1ccc2ccccc2c1", "c1ccc(-c2ccccc2)cc1", "c1ccc2cc3ccccc3cc2c1",
    "CNCCC(Oc1ccc(C(F)(F)F)cc1)c1ccccc1", "OC(=O)c1ccc(F)cc1F", "CCCCCCCCCC", "CCCCCCCCCCO",
)


#: The QM9 geometries that stand for each geometry path.
PATH_GEOMETRY = {"given": "dft", "generated": "forcefield"}
#: What each calibrated path is fitted on: the molecules the service serves it to. The DFT geometries; the SMILES
#: whose conformers are averaged; one force-field geometry (:data:`~lieprop.model.calibration.FORCEFIELD`: a
#: user's, ``relaxed_with="forcefield"``, or the one conformer ``conformers: 1`` makes), for which each molecule
#: stands twice, in its lowest-energy conformer and in the one ``conformers: 1`` embeds (ETKDG's first); and the
#: SMILES left with one conformer of several (:data:`~lieprop.model.calibration.LONE_CONFORMER`).
PATH_SOURCES = {"given": "dft", "generated": "forcefield, averaged over the conformers (molecules with several)",
                FORCEFIELD: "forcefield, one conformer (the lowest-energy one, and the one conformers: 1 embeds)",
                LONE_CONFORMER: "forcefield, the molecules left with one conformer"}


def path_sets(model: Any, data: Any, conformers: Any, rows: np.ndarray, workers: int = 2
              ) -> dict[str, tuple[np.ndarray, Predictions, np.ndarray]]:
    """For each calibrated path (:data:`PATH_SOURCES`), the QM9 ``rows`` (repeated where a molecule stands twice)
    the path is fitted or measured on, the model's raw predictions of them and their ring groups
    (:func:`~lieprop.model.calibration.ring_group` of the geometry predicted, as the service takes it; ``rows``
    must have conformers)."""
    molecules = conformers.molecules(rows)
    several = np.array([len(m.geometries) > 1 for m in molecules], dtype=bool)
    averaged = predict_molecules(model, molecules)  # as the service answers each SMILES
    limits = ValidationLimits(max_atoms=1000, embed_timeout=0)  # QM9's own molecules: never refused
    first = [(k, None, str(conformers.smiles[r])) for k, r in enumerate(rows)]
    single = list(embed_many(first, workers, n_conformers=1, limits=limits))
    embedded = np.array([item.ok for item in single], dtype=bool)
    lowest = [Molecule(m.numbers, m.positions) for m in molecules]
    one = lowest + [Molecule(item.molecule.numbers, item.molecule.positions) for item in single if item.ok]
    numbers, positions = zip(*(data.molecule(int(r)) for r in rows), strict=True)
    dft = np.array([ring_group(z, x) for z, x in zip(numbers, positions, strict=True)], dtype=np.int64)
    served = np.array([ring_group(m.numbers, m.positions) for m in one], dtype=np.int64)
    return {"given": (rows, model.predictions(list(numbers), list(positions)), dft),
            "generated": (rows[several], averaged.select(several), served[: len(rows)][several]),
            FORCEFIELD: (np.concatenate([rows, rows[embedded]]), predict_molecules(model, one), served),
            LONE_CONFORMER: (rows[~several], averaged.select(~several), served[: len(rows)][~several])}


def calibrate(bundle_path: str | Path, out_dir: str | Path | None = None, limit: int | None = None,
              record: bool = False, data: Any = None, log=print, poses: int | None = None,
              member_weights: bool = True) -> dict[str, Any]:
    """Fit the calibrations of a bundle's spread and report them (see the module doc); with ``record`` (whole
    splits only) store the calibrations, the spread's definition and the test report in the bundle.

    The spread is the ensemble members' or, with ``poses`` > 1, that of every member (or the single model) in that
    many fixed poses relative to its frames (:meth:`lieprop.model.predictor.PropertyModel.pose_values`). With
    ``member_weights`` an ensemble's members are also weighted per path and target
    (:func:`lieprop.model.calibration.fit_member_weights`); without, its value stays the members' plain mean."""
    bundle = load_bundle(bundle_path)
    model = bundle.model
    if poses is not None:
        model.spread_poses = poses
    if not isinstance(model, EnsembleModel) and model.spread_poses < 2:
        raise ValueError(f"{bundle_path} is a single model: calibration needs a spread (an ensemble, lieprop "
                         "ensemble; or poses, --poses 4)")
    if record and limit:
        raise ValueError("only a calibration on the whole validation and test splits can be recorded")
    data = data if data is not None else load_qm9()
    conformers = load_conformers()
    parts = split_indices(len(data), bundle.meta.get("split", "cormorant"))
    cols = [PROPERTY_NAMES.index(t) for t in model.targets]
    truth_all = data.targets_in_units()[:, cols]
    sets: dict[tuple[str, str], tuple[np.ndarray, Predictions]] = {}
    rings: dict[tuple[str, str], np.ndarray] = {}  # the ring groups of each set's geometries, as served
    for split in ("valid", "test"):
        rows = parts[split][:limit] if limit else parts[split]
        rows = rows[conformers.available(rows)]  # the same molecules on every path
        for path, (path_rows, raw, groups) in path_sets(model, data, conformers, rows).items():
            log(f"{split} / {PATH_SOURCES[path]} geometries: {len(path_rows)} predictions")
            sets[split, path] = path_rows, raw
            rings[split, path] = groups
    # a path no molecule of a split takes (lone_conformer within a small --limit) is not fitted: the bundle then
    # answers it with the path it falls back to
    paths = [p for p in PATH_SOURCES if all(len(sets[split, p][0]) for split in ("valid", "test"))]
    for path in PATH_SOURCES:
        if path not in paths:
            log(f"no molecule takes the {path} path in these splits: it is not calibrated")
    calibrations = {}
    for path in paths:
        geometry = PATH_SOURCES[path]
        rows, raw = sets["valid", path]
        if path == LONE_CONFORMER:  # a few hundred molecules: one force-field geometry's member weights
            weights = calibrations[FORCEFIELD].weights
        else:
            weights = fit_member_weights(raw.members, truth_all[rows]) if member_weights and raw.members is not None \
                else None
        values = raw.value if weights is None else weighted_mean(raw.members, weights)
        n = len(np.unique(rows))
        count = f"{n} molecules" + (f", {len(rows)} geometries" if n < len(rows) else "")
        calibrations[path] = fit_calibration(values, raw.std, truth_all[rows], model.targets,
                                             source=f"validation split, {geometry} geometries ({count})",
                                             weights=weights, groups=rings["valid", path])
    report: dict[str, Any] = {"bundle": str(bundle_path), "sha256": bundle.sha256, "members": bundle.n_members,
                              "spread": {"poses": model.spread_poses},
                              "calibration": calibrations_to_dict(calibrations), "test": {}, "reliability": {}}
    served: dict[str, np.ndarray] = {}  # each path's test values, as results report them
    for path in paths:
        rows, raw = sets["test", path]
        cal = calibrations[path]
        truth = truth_all[rows]
        groups = rings["test", path]
        calibrated = cal.apply(raw, DEFAULT_LEVEL, groups=groups)
        served[path] = calibrated.value
        report["test"][path] = {"n": len(rows), "geometry": PATH_SOURCES[path],
                                "targets": coverage_report(calibrated.value, calibrated, truth, model.targets),
                                "by_rings": by_rings(cal, raw, truth, groups, model.targets)}
        if cal.weights is not None:  # what the weights bought: the plain mean's MAE beside the weighted one's
            plain = np.abs(raw.value - truth).mean(0)
            for j, t in enumerate(model.targets):
                report["test"][path]["targets"][t].update(mae_plain_mean=float(plain[j]),
                                                          weights=[float(w) for w in cal.weights[:, j]])
        report["reliability"][path] = {str(level): [float(v) for v in _covered(
            cal.apply(raw, level, groups=groups), truth).mean(0)] for level in LEVELS}
    # why one force-field geometry has a calibration of its own: the averaged conformers' one, applied to it
    rows, raw = sets["test", FORCEFIELD]
    borrowed = _covered(calibrations["generated"].apply(raw, DEFAULT_LEVEL, groups=rings["test", FORCEFIELD]),
                        truth_all[rows]).mean(0)
    report["test"][FORCEFIELD]["coverage_with_generated_calibration"] = {
        t: float(borrowed[j]) for j, t in enumerate(model.targets)}
    if LONE_CONFORMER in paths:  # and why a SMILES left with one conformer has one: forcefield's, applied to it
        rows, raw = sets["test", LONE_CONFORMER]
        borrowed = _covered(calibrations[FORCEFIELD].apply(raw, DEFAULT_LEVEL, groups=rings["test", LONE_CONFORMER]),
                            truth_all[rows]).mean(0)
        report["test"][LONE_CONFORMER]["coverage_with_forcefield_calibration"] = {
            t: float(borrowed[j]) for j, t in enumerate(model.targets)}
    given, generated = (calibrations[p].sigma(sets["test", p][1].std, rings["test", p]) for p in PATH_GEOMETRY)
    same = np.isin(sets["test", "given"][0], sets["test", "generated"][0])  # the molecules both paths serve
    given = given[same]
    given_mae = np.abs(served["given"][same] - truth_all[sets["test", "generated"][0]]).mean(0)
    generated_mae = np.abs(served["generated"] - truth_all[sets["test", "generated"][0]]).mean(0)
    report["domain"] = {
        "generated_over_given_std": {t: float(np.median(generated[:, j] / given[:, j]))
                                     for j, t in enumerate(model.targets)},
        "generated_over_given_mae": {t: float(generated_mae[j] / given_mae[j]) for j, t in enumerate(model.targets)},
        **outside_domain(model, sets["test", "generated"][1].std),
    }
    log(format_report(report))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "uncertainty.json").write_text(json.dumps(report, indent=2))
        _plots(report, sets, calibrations, truth_all, model.targets, out, rings)
    if record:
        before = bundle.calibration or {}
        # a path new to the bundle was served by the one it falls back to: compare with that one's weights
        changed = any(not _same_weights(path_calibration(before, path), cal) for path, cal in calibrations.items())
        if changed:  # the served values changed: accuracy recorded for the old ones no longer describes the bundle
            log(f"the member weights changed the values {bundle_path} serves: its recorded test MAE is removed; "
                "record it again with lieprop evaluate --record (--split test, --split test --geometry forcefield, "
                "--split small)")
        record_metadata(bundle_path, drop=STALE_WITH_NEW_VALUES if changed else (),
                        calibration=calibrations_to_dict(calibrations),
                        spread={"poses": model.spread_poses}, uncertainty_evaluation={
            "test": report["test"], "reliability": report["reliability"], "domain": report["domain"],
            "command": f"lieprop calibrate {bundle_path} --record"})
    return report


#: Metadata that ``lieprop evaluate --record`` wrote for the values a bundle served: stale once new member weights
#: change those values.
STALE_WITH_NEW_VALUES = ("test_mae", "test_mae_by_size", "test_evaluation", "test_mae_forcefield",
                         "test_evaluation_forcefield", "small_mae", "small_evaluation")


def _same_weights(old: Calibration | None, new: Calibration) -> bool:
    """Whether two calibrations make the same values (the same member weights, or none in both)."""
    a = None if old is None else old.weights
    if a is None or new.weights is None:
        return a is None and new.weights is None
    return a.shape == new.weights.shape and bool(np.array_equal(a, new.weights))


def _covered(p: Predictions, truth: np.ndarray) -> np.ndarray:
    return (p.lower <= truth) & (truth <= p.upper)


def by_rings(cal: Calibration, raw: Predictions, truth: np.ndarray, groups: np.ndarray, targets: list[str]
             ) -> dict[str, dict[str, Any]]:
    """Per ring group (:data:`RING_GROUPS`) of a path's test molecules: how many, and per target the coverage of
    the 90% interval with the grouped calibration (``coverage``), with the path's one calibration for every group
    (``coverage_ungrouped``), the mean std and the MAE."""
    grouped = _covered(cal.apply(raw, DEFAULT_LEVEL, groups=groups), truth)
    plain = _covered(cal.apply(raw, DEFAULT_LEVEL), truth)
    sigma = cal.sigma(raw.std, groups)
    err = np.abs(truth - cal.apply(raw, DEFAULT_LEVEL).value)
    out = {}
    for g, label in enumerate(RING_GROUPS):
        inside = groups == g
        if not inside.any():
            continue
        out[label] = {"n": int(inside.sum()), "targets": {t: {
            "coverage": float(grouped[inside, j].mean()), "coverage_ungrouped": float(plain[inside, j].mean()),
            "std": float(sigma[inside, j].mean()), "mae": float(err[inside, j].mean())} for j, t in enumerate(targets)}}
    return out


def outside_domain(model: Any, inside_spread: np.ndarray) -> dict[str, Any]:
    """The raw spread of :data:`OUTSIDE_QM9` (embedded as the service embeds SMILES) over that of QM9 test molecules
    on the same path (``inside_spread``), per target, as a ratio of medians."""
    limits = ValidationLimits(max_atoms=200)
    molecules = [from_smiles(s, limits=limits) for s in OUTSIDE_QM9]
    raw = predict_molecules(model, molecules)
    return {"outside_qm9_molecules": len(molecules),
            "outside_over_inside_spread": {t: float(np.median(raw.std[:, j]) / np.median(inside_spread[:, j]))
                                           for j, t in enumerate(model.targets)}}


def format_report(report: dict[str, Any]) -> str:
    """The test-split table per path as Markdown."""
    lines = []
    for path, part in report["test"].items():
        weighted = all("weights" in row for row in part["targets"].values())
        extra = " member weights | MAE of the plain mean |" if weighted else ""
        lines += [f"test split, {path} geometries ({part['geometry']}, {part['n']} results), 90% intervals", "",
                  "| target | unit | MAE | mean std | coverage | mean width | Spearman(std, abs error) |" + extra,
                  "|---|---|---|---|---|---|---|" + ("---|---|" if weighted else "")]
        for t, row in part["targets"].items():
            p = BY_NAME[t]
            k = p.to_paper
            line = (f"| {t} | {p.paper_unit or p.unit} | {row['mae'] * k:.4g} | {row['std'] * k:.4g} | "
                    f"{row['coverage']:.3f} | {row['width'] * k:.4g} | {row['spearman']:.2f} |")
            if weighted:
                line += f" {' / '.join(f'{w:.2f}' for w in row['weights'])} | {row['mae_plain_mean'] * k:.4g} |"
            lines.append(line)
        lines.append("")
        if part.get("by_rings"):
            shown = [t for t in ("homo", "gap", "u0", "mu", "r2") if t in part["targets"]]
            lines += [f"test split, {path} geometries by ring count: coverage of the 90% interval, ring-grouped "
                      "(the path's one calibration in brackets)", "",
                      "| rings | molecules | " + " | ".join(shown) + " | all: min-max |",
                      "|---" * (3 + len(shown)) + "|"]
            for label, group in part["by_rings"].items():
                cov = [row["coverage"] for row in group["targets"].values()]
                cells = [f"{group['targets'][t]['coverage']:.3f} ({group['targets'][t]['coverage_ungrouped']:.3f})"
                         for t in shown]
                lines.append(f"| {label} | {group['n']} | " + " | ".join(cells) + f" | {min(cov):.3f}-{max(cov):.3f} |")
            lines.append("")
    return "\n".join(lines)


def _plots(report: dict[str, Any], sets: dict, calibrations: dict[str, Calibration], truth_all: np.ndarray,
           targets: list[str], out: Path, rings: dict[tuple[str, str], np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for path, curve in report["reliability"].items():
        levels = [float(k) for k in curve]
        observed = [float(np.mean(v)) for v in curve.values()]
        ax.plot(levels, observed, "o-", label=f"{path} geometries (mean over targets)")
    ax.plot([0.5, 1.0], [0.5, 1.0], "k--", lw=0.8, label="ideal")
    ax.set_xlabel("expected coverage")
    ax.set_ylabel("observed coverage (test split)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)
    shown = [t for t in ("homo", "gap", "u0", "mu") if t in targets]
    values = {path: calibrations[path].apply(sets["test", path][1]).value for path in PATH_GEOMETRY}  # once a path
    fig, axes = plt.subplots(1, len(shown), figsize=(3.3 * len(shown), 3.2), squeeze=False)
    for ax, t in zip(axes[0], shown, strict=True):
        j = targets.index(t)
        k = BY_NAME[t].to_paper
        for path in PATH_GEOMETRY:
            rows, raw = sets["test", path]
            sigma = calibrations[path].sigma(raw.std, rings["test", path])[:, j] * k
            err = np.abs(truth_all[rows, j] - values[path][:, j]) * k
            bins = np.quantile(sigma, np.linspace(0, 1, 11))
            which = np.clip(np.searchsorted(bins, sigma, side="right") - 1, 0, 9)
            ax.plot([sigma[which == b].mean() for b in range(10)], [err[which == b].mean() for b in range(10)],
                    "o-", label=path)
        lim = ax.get_xlim()
        ax.plot(lim, [v * np.sqrt(2 / np.pi) for v in lim], "k--", lw=0.8, label="calibrated Gaussian")
        ax.set_xlabel(f"std ({BY_NAME[t].paper_unit or BY_NAME[t].unit})")
        ax.set_ylabel("mean abs error")
        ax.set_title(t)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "error_vs_std.png", dpi=100)
    plt.close(fig)
