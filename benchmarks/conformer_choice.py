"""Which of a SMILES's conformers to believe, and how far any choice could go (issue 13).

    python benchmarks/conformer_choice.py                    # the bundled model, whole valid and test splits (~7 min)
    python benchmarks/conformer_choice.py --molecules 2000   # the first 2,000 of each split

A SMILES is answered for lieprop's five MMFF94 conformers of it, the values averaged equally
(:func:`lieprop.model.prediction.average_conformers`). QM9 labelled one conformer per molecule, which a SMILES does
not name. This script predicts every cached conformer (:mod:`lieprop.data.qm9_conformers`) of the validation and
test molecules with the bundle's SMILES-path values (its member weights for the ``generated`` path) and compares,
on the test molecules with several conformers, ways to combine them:

* the equal mean (what the service serves), the median, the lowest-energy conformer alone;
* weights by energy rank, fitted per target on the validation split (minimum MAE over a simplex grid of five
  weights, renormalised over the conformers a molecule has);
* an **oracle** that knows the label and takes the conformer whose value is nearest to it: no way of choosing one
  of these conformers can do better with this network (a weighting could, but only one fitted to the label).

It also prints how much the property itself moves between a molecule's conformers, as the network that only knows
DFT geometries (member 0, bundle 3) sees it: the mean |conformer value - median over the conformers|. An answer
that does not know which conformer QM9 labelled errs by about that much on top of the network's own error.
Values in the paper units; MAE ratios are to the DFT geometry's MAE of the same molecules, as served.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.inference import default_model_path
from lieprop.model.bundle import Bundle, load_bundle
from lieprop.model.calibration import simplex_grid, weighted_mean
from lieprop.model.prediction import conformer_inputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformer_averaging import rotatable_bonds  # noqa: E402

#: Targets shown: the issue's four, and the others whose conformer dependence differs.
SHOWN = ("homo", "lumo", "gap", "u0", "mu", "alpha", "r2", "zpve", "cv")
#: Conformers per SMILES the table holds (the service's default count).
K = 5


def conformer_table(bundle: Bundle, molecules: list) -> tuple[np.ndarray, np.ndarray]:
    """(n, K, T) SMILES-path values of each molecule's conformers (NaN past its count), and (n, K, T) the first
    member's (the DFT-geometry network's) values of them."""
    inputs = conformer_inputs(molecules, distinct=False)  # every conformer, copies too
    counts = inputs.counts
    raw = bundle.model.predictions(inputs.numbers, inputs.positions, batch_size=128)
    cal = bundle.path_calibration("generated")
    served = weighted_mean(raw.members, None if cal is None else cal.weights)
    first = raw.members[0]
    table, dft_net = (np.full((len(counts), K, served.shape[1]), np.nan) for _ in range(2))
    start = 0
    for i, c in enumerate(counts):
        table[i, :c], dft_net[i, :c] = served[start:start + c], first[start:start + c]
        start += c
    return table, dft_net


def rank_weighted(table: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, T) mean of each molecule's conformers with ``weights`` (K, T) by energy rank, renormalised over the
    conformers it has (the equal mean where its ranks have no weight)."""
    present = ~np.isnan(table[:, :, :1])
    w = weights[None] * present
    total = w.sum(1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1), present / present.sum(1, keepdims=True))
    return np.nansum(table * w, 1)


def fit_rank_weights(table: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(K, T) rank weights with the lowest MAE per target (:func:`lieprop.model.calibration.simplex_grid`)."""
    grid = simplex_grid(K, 3000)
    weights = np.empty((K, table.shape[2]))
    for j in range(table.shape[2]):
        column = table[:, :, j:j + 1]
        mae = [np.abs(rank_weighted(column, g[:, None])[:, 0] - truth[:, j]).mean() for g in grid]
        weights[:, j] = grid[int(np.argmin(mae))]
    return weights


def oracle(table: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n, T) the value of each molecule's conformer nearest its label (knows the answer: a bound, not a method)."""
    distance = np.abs(np.nan_to_num(table, nan=np.inf) - truth[:, None])
    return np.take_along_axis(table, distance.argmin(1)[:, None], 1)[:, 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=None, help="the first N molecules of each split")
    parser.add_argument("--model", default=None, help="bundle (default: the bundled model)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data, confs = load_qm9(), load_conformers()
    bundle = load_bundle(args.model or default_model_path())
    targets = list(bundle.model.targets)
    shown = [t for t in SHOWN if t in targets]
    columns = [PROPERTY_NAMES.index(t) for t in targets]
    splits = split_indices(len(data), bundle.meta.get("split", "cormorant"))
    sets = {}
    for split in ("valid", "test"):
        rows = splits[split][: args.molecules]
        rows = rows[confs.available(rows)]
        table, dft_net = conformer_table(bundle, confs.molecules(rows))
        several = (~np.isnan(table[:, 1, 0]))  # molecules with more than one conformer
        given = bundle.values(*zip(*(data.molecule(int(r)) for r in rows[several]), strict=True), path="given")
        truth = data.targets_in_units()[rows[several]][:, columns]
        sets[split] = table[several], dft_net[several], given, truth, rows[several]
    table, dft_net, given, truth, rows = sets["test"]
    weights = fit_rank_weights(sets["valid"][0], sets["valid"][3])
    estimators: dict[str, Callable[[], np.ndarray]] = {
        "mean of the conformers (served)": lambda: np.nanmean(table, 1),
        "median": lambda: np.nanmedian(table, 1),
        "lowest-energy conformer": lambda: table[:, 0],
        "weights by energy rank (fitted on valid)": lambda: rank_weighted(table, weights),
        "oracle: the conformer nearest the label": lambda: oracle(table, truth),
    }

    def paper(values: np.ndarray, t: str) -> float:
        return float(values[targets.index(t)] * BY_NAME[t].to_paper)

    dft_mae = np.abs(given - truth).mean(0)
    units = [BY_NAME[t].paper_unit or BY_NAME[t].unit for t in shown]
    print(f"{len(truth)} test molecules with several conformers ({len(sets['valid'][3])} validation molecules fit "
          f"the rank weights); MAE (ratio to the DFT geometry's):\n")
    print("| combination | " + " | ".join(f"{t} ({u})" for t, u in zip(shown, units, strict=True)) + " |")
    print("|---" * (1 + len(shown)) + "|")
    print("| DFT geometry | " + " | ".join(f"{paper(dft_mae, t):.4g}" for t in shown) + " |")
    for name, estimate in estimators.items():
        mae = np.abs(estimate() - truth).mean(0)
        cells = [f"{paper(mae, t):.4g} ({mae[targets.index(t)] / dft_mae[targets.index(t)]:.2f}x)" for t in shown]
        print(f"| {name} | " + " | ".join(cells) + " |")
    spread = np.nanmean(np.abs(dft_net - np.nanmedian(dft_net, 1, keepdims=True)), 1).mean(0)
    print("| the property's own move between conformers (DFT network) | "
          + " | ".join(f"{paper(spread, t):.4g} ({spread[targets.index(t)] / dft_mae[targets.index(t)]:.2f}x)"
                       for t in shown) + " |")
    rotors = np.array([rotatable_bonds(str(confs.smiles[r])) for r in rows])
    served, best = np.nanmean(table, 1), oracle(table, truth)
    moves = np.nanmean(np.abs(dft_net - np.nanmedian(dft_net, 1, keepdims=True)), 1)
    print("\nBy rotatable bonds: served / oracle MAE ratio to the DFT geometry's, and the property's own move:\n")
    print("| rotatable bonds | molecules | " + " | ".join(shown) + " |")
    print("|---" * (2 + len(shown)) + "|")
    for label, mask in (("0", rotors == 0), ("1", rotors == 1), ("2+", rotors >= 2)):
        dft = np.abs(given[mask] - truth[mask]).mean(0)
        ratio = [np.abs(v[mask] - truth[mask]).mean(0) / dft for v in (served, best)]
        move = moves[mask].mean(0) / dft
        cells = [f"{ratio[0][targets.index(t)]:.2f}x / {ratio[1][targets.index(t)]:.2f}x; {move[targets.index(t)]:.2f}x"
                 for t in shown]
        print(f"| {label} | {int(mask.sum())} | " + " | ".join(cells) + " |")
    print("\nRank weights (lowest energy first): " + "; ".join(
        f"{t} {'/'.join(f'{w:.2f}' for w in weights[:, targets.index(t)])}" for t in shown))
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
