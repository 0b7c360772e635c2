"""Evaluate a bundle on a QM9 split: MAE per target in the units of the published tables, plots, JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.data.qm9 import SIZE_BINS, load_qm9, size_bin, small_molecules, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.model.bundle import load_bundle, record_metadata
from lieprop.training.uncertainty import PATH_GEOMETRY

#: Published test MAE (docs/QM9.md), in each property's paper unit (meV for energies).
PUBLISHED: dict[str, dict[str, float]] = {
    "LieConv T(3)": {"alpha": 0.084, "gap": 49, "homo": 30, "lumo": 25, "mu": 0.032, "cv": 0.038, "g298": 22,
                     "h298": 24, "r2": 0.800, "u298": 19, "u0": 19, "zpve": 2.28},
    "SchNet*": {"alpha": 0.235, "gap": 63, "homo": 41, "lumo": 34, "mu": 0.033, "cv": 0.033, "g298": 14,
                "h298": 14, "r2": 0.073, "u298": 19, "u0": 14, "zpve": 1.70},
    "EGNN": {"alpha": 0.071, "gap": 48, "homo": 29, "lumo": 25, "mu": 0.029, "cv": 0.031, "g298": 12, "h298": 12,
             "r2": 0.106, "u298": 12, "u0": 11, "zpve": 1.55},
}


#: Splits ``lieprop evaluate`` knows: the scheme's three, and ``small``, every QM9 molecule with at most 10 atoms
#: (a sanity set from all splits, not a held-out one: see lieprop.data.qm9.small_molecules).
SPLITS = ("train", "valid", "test", "small")


def mae_by_size(n_atoms: np.ndarray, err: np.ndarray, targets: list[str]) -> dict[str, dict]:
    """{bin label: {"n": molecules, "mae": {target: MAE in the paper unit}}} for the bins that hold molecules."""
    labels = np.array([size_bin(int(n)) for n in n_atoms])
    out = {}
    for lo, hi in SIZE_BINS:
        sel = labels == f"{lo}-{hi}"
        if sel.any():
            out[f"{lo}-{hi}"] = {"n": int(sel.sum()),
                                 "mae": {t: float(np.abs(err[sel, j]).mean() * BY_NAME[t].to_paper)
                                         for j, t in enumerate(targets)}}
    return out


#: Geometries ``lieprop evaluate`` can score a split in: QM9's DFT-relaxed ones, or the force-field conformers that
#: lieprop makes from each molecule's SMILES (the service's SMILES path; lieprop.data.qm9_conformers).
GEOMETRIES = ("dft", "forcefield")


def evaluate(bundle_path: str | Path, split: str = "test", out_dir: str | Path | None = None,
             limit: int | None = None, batch_size: int = 256, plots: bool = True, record: bool = False,
             data=None, log=print, geometry: str = "dft") -> dict:
    """MAE per target of ``bundle_path`` on QM9 ``split`` (of the bundle's split scheme); writes
    ``report.json`` (and ``parity.png`` / ``errors.png``) into ``out_dir`` when given. With ``record``
    (the full test split, or the full ``small`` sanity set) the MAE table and its by-size table are stored in the
    bundle's metadata, where ``lieprop info`` and ``/v1/properties`` read them and the service warns about molecules
    of sizes the model is known to fail on (lieprop.inference). ``geometry="forcefield"`` scores the molecules in
    the conformers the service makes from their SMILES (molecules without one are left out and counted); recorded,
    it is the model card's SMILES-path table (``test_mae_forcefield``)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; known: {GEOMETRIES}")
    bundle = load_bundle(bundle_path)
    model = bundle.model
    scheme = bundle.meta.get("split", "cormorant")
    data = data if data is not None else load_qm9()
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    rows = small_molecules(data) if split == "small" else split_indices(len(data), scheme)[split]
    if limit:
        rows = rows[:limit]
    source = data
    skipped = 0
    if geometry == "forcefield":
        source = load_conformers()
        keep = source.available(rows)
        skipped, rows = int((~keep).sum()), rows[keep]
    # an ensemble whose calibration weights its members per geometry path is scored as it serves: weighted; and
    # force-field geometries as the service's SMILES results: averaged over the conformers
    path = {geometry: path for path, geometry in PATH_GEOMETRY.items()}[geometry]
    weighted = bundle.weighs_members(path)
    t0 = time.perf_counter()
    if geometry == "forcefield":
        pred = bundle.molecule_values(source.molecules(rows), path, batch_size=batch_size)
    else:
        zs, xs = zip(*(source.molecule(int(r)) for r in rows), strict=True)
        pred = bundle.values(zs, xs, path, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    cols = [PROPERTY_NAMES.index(t) for t in model.targets]
    truth = data.targets_in_units()[rows][:, cols]
    err = pred - truth
    table = {}
    for j, t in enumerate(model.targets):
        p = BY_NAME[t]
        table[t] = {"mae": float(np.abs(err[:, j]).mean() * p.to_paper), "unit": p.paper_unit or p.unit,
                    "rmse": float(np.sqrt((err[:, j] ** 2).mean()) * p.to_paper),
                    **{name: pub.get(t) for name, pub in PUBLISHED.items()}}
    report = {"bundle": str(bundle_path), "name": bundle.name, "sha256": bundle.sha256, "split": split,
              "scheme": scheme, "geometry": geometry, "n_molecules": len(rows), "n_without_geometry": skipped,
              "value": f"members weighted for the {path} path (calibration)" if weighted else "model output",
              "predict_seconds": round(seconds, 2),
              "molecules_per_second": round(len(rows) / seconds, 1), "mae": table,
              "by_size": mae_by_size(data.n_atoms[rows], err, model.targets)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        if plots:
            _plots(model.targets, pred, truth, out)
    if record and geometry == "forcefield":
        if split != "test" or limit:
            raise ValueError("only an evaluation on the whole test split can be recorded in the bundle")
        record_metadata(bundle_path,
                        test_mae_forcefield={t: row["mae"] / BY_NAME[t].to_paper for t, row in table.items()},
                        test_evaluation_forcefield={
                            "split": f"{scheme}/test", "n_molecules": len(rows), "n_without_geometry": skipped,
                            "command": f"lieprop evaluate {bundle_path} --split test --geometry forcefield "
                                       "--record"})
    elif record and split == "small" and not limit:
        record_metadata(bundle_path, small_mae={t: row["mae"] / BY_NAME[t].to_paper for t, row in table.items()},
                        small_evaluation={"n_molecules": len(rows), "by_size": report["by_size"],
                                          "command": f"lieprop evaluate {bundle_path} --split small --record"})
    elif record:
        if split != "test" or limit:
            raise ValueError("only an evaluation on the whole test split or the whole small set can be recorded "
                             "in the bundle")
        record_metadata(bundle_path, test_mae={t: row["mae"] / BY_NAME[t].to_paper for t, row in table.items()},
                        test_mae_by_size=report["by_size"],
                        test_evaluation={"split": f"{scheme}/test", "n_molecules": len(rows),
                                         "command": f"lieprop evaluate {bundle_path} --split test --record"})
    log(format_table(report))
    log("")
    log(format_by_size(report))
    return report


def format_by_size(report: dict) -> str:
    """MAE per atom-count bin as Markdown (paper units), with the number of molecules in each bin."""
    targets = list(report["mae"])
    units = [report["mae"][t]["unit"] for t in targets]
    lines = ["| atoms | molecules | " + " | ".join(f"{t} ({u})" for t, u in zip(targets, units, strict=True)) + " |",
             "|---|---|" + "---|" * len(targets)]
    for label, row in report["by_size"].items():
        lines.append(f"| {label} | {row['n']} | " + " | ".join(f"{row['mae'][t]:.4g}" for t in targets) + " |")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """The MAE table as Markdown, next to the published numbers."""
    names = list(PUBLISHED)
    lines = [f"| target | unit | lieprop MAE | {' | '.join(names)} |", "|---|---|---|" + "---|" * len(names)]
    for t, row in report["mae"].items():
        pub = " | ".join("" if row.get(n) is None else f"{row[n]:g}" for n in names)
        lines.append(f"| {t} | {row['unit']} | {row['mae']:.4g} | {pub} |")
    return "\n".join(lines)


def _plots(targets: list[str], pred: np.ndarray, truth: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(targets)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    for kind in ("parity", "errors"):
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for j, t in enumerate(targets):
            ax = axes[j // cols][j % cols]
            unit = BY_NAME[t].unit
            if kind == "parity":
                ax.scatter(truth[:, j], pred[:, j], s=2, alpha=0.3)
                lo, hi = float(truth[:, j].min()), float(truth[:, j].max())
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
                ax.set_xlabel(f"DFT ({unit})")
                ax.set_ylabel("predicted")
            else:
                ax.hist(pred[:, j] - truth[:, j], bins=80)
                ax.set_xlabel(f"error ({unit})")
            ax.set_title(t)
        for k in range(n, rows * cols):
            axes[k // cols][k % cols].axis("off")
        fig.tight_layout()
        fig.savefig(out / f"{kind}.png", dpi=90)
        plt.close(fig)
