"""Which uncertainty can this machine afford, and which ranks errors best? Ensembles against test-time poses.

Two ways to get a spread for every prediction, both calibrated the same way (per geometry path, on validation
molecules; lieprop.model.calibration) and measured on the same test molecules in both paths:

* ``ensemble``: the spread of an ensemble bundle's members (each member a training run: the cost is training time,
  and inference costs one network pass per member);
* ``poses``: the spread of ONE model evaluated in K random orientations without frames (test-time augmentation: a
  T(3) LieConv network is not rotation-invariant by itself, and how much its answer moves with the pose says how
  sure it is; no training, K network passes per molecule).

(MC dropout and mean-variance heads need a network trained with dropout or a variance head: not affordable here
on top of the ensemble's training runs.) Prints, per method and path: mean Spearman(std, |error|) over the 12
targets, mean coverage of the 90% interval, and the mean interval width relative to the MAE.

    .venv/bin/python benchmarks/uncertainty_methods.py --ensemble models/ens.pt --single lieprop/models/lieprop-qm9.pt \
        --limit 2000 --poses 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lieprop.data.properties import PROPERTY_NAMES
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.model.bundle import load_bundle
from lieprop.model.calibration import coverage_report, fit_calibration
from lieprop.model.groups import random_rotations
from lieprop.model.prediction import Predictions
from lieprop.model.predictor import expand


def pose_spread(model, zs, xs, poses: int, seed: int = 0) -> Predictions:
    """One model in ``poses`` random orientations (no frames): mean and spread over poses."""
    gen = torch.Generator().manual_seed(seed)
    rotations = random_rotations(poses * len(zs), gen, dtype=torch.float64).numpy().reshape(poses, len(zs), 3, 3)
    values = []
    for k in range(poses):
        moved = [x @ rotations[k, i].T for i, x in enumerate(xs)]
        values.append(model.evaluate(expand(zs, moved, "intrinsic"), batch_size=256))
    return Predictions.from_members(np.stack(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", required=True, help="an ensemble bundle")
    parser.add_argument("--single", required=True, help="a single-model bundle for the pose method")
    parser.add_argument("--limit", type=int, default=2000, help="validation and test molecules each")
    parser.add_argument("--poses", type=int, default=4)
    args = parser.parse_args()
    data, conformers = load_qm9(), load_conformers()
    ensemble, single = load_bundle(args.ensemble).model, load_bundle(args.single).model
    targets = ensemble.targets
    truth_all = data.targets_in_units()[:, [PROPERTY_NAMES.index(t) for t in targets]]
    parts = split_indices(len(data), "cormorant")
    methods = {"ensemble": lambda zs, xs: ensemble.predictions(zs, xs, batch_size=256),
               "poses": lambda zs, xs: pose_spread(single, zs, xs, args.poses)}
    print("| method | path | molecules | mean Spearman(std, abs error) | mean coverage (90%) | "
          "mean width / MAE |\n|---|---|---|---|---|---|")
    for name, method in methods.items():
        for path, source in (("given", data), ("generated", conformers)):
            got = {}
            for split in ("valid", "test"):
                rows = parts[split][: args.limit]
                rows = rows[conformers.available(rows)]
                zs, xs = zip(*(source.molecule(int(r)) for r in rows), strict=True)
                got[split] = rows, method(list(zs), list(xs))
            (vrows, valid), (trows, test) = got["valid"], got["test"]
            cal = fit_calibration(valid.value, valid.std, truth_all[vrows], targets)
            report = coverage_report(test.value, cal.apply(test), truth_all[trows], targets)
            rho = np.mean([r["spearman"] for r in report.values()])
            cover = np.mean([r["coverage"] for r in report.values()])
            width = np.mean([r["width"] / r["mae"] for r in report.values()])
            print(f"| {name} | {path} | {len(trows)} | {rho:.3f} | {cover:.3f} | {width:.2f} |", flush=True)


if __name__ == "__main__":
    main()
