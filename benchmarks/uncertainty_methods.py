"""Which uncertainty can this machine afford, and which ranks errors best? Ensembles against test-time poses.

Three ways to get a spread for every prediction, all calibrated the same way (per geometry path, on validation
molecules; lieprop.model.calibration) and measured on the same test molecules in both paths:

* ``ensemble``: the spread of an ensemble bundle's members (each member a training run: the cost is training time,
  and inference costs one network pass per member);
* ``poses``: the spread of ONE model in K fixed poses relative to its frames (test-time poses: a T(3) LieConv
  network is not rotation-invariant by itself, and how much its answer moves with the pose says how sure it is; no
  training, K more network passes per molecule; lieprop.model.predictor.PropertyModel.pose_values);
* ``ensemble+poses``: every member in every pose (M x K more passes).

(MC dropout and mean-variance heads need a network trained with dropout or a variance head: not affordable here
on top of the ensemble's training runs.) Prints, per method and path: mean Spearman(std, |error|) over the 12
targets, mean coverage of the 90% interval, and the mean interval width relative to the MAE.

    .venv/bin/python benchmarks/uncertainty_methods.py --ensemble models/ens.pt --single lieprop/models/lieprop-qm9.pt \
        --limit 2000 --poses 4
"""

from __future__ import annotations

import argparse

import numpy as np

from lieprop.data.properties import PROPERTY_NAMES
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.model.bundle import load_bundle
from lieprop.model.calibration import coverage_report, fit_calibration


def with_poses(model, poses: int):
    """``model.predictions`` with its spread taken over ``poses`` fixed poses (0: the model's own spread)."""
    def predict(zs, xs):
        model.spread_poses = poses
        return model.predictions(zs, xs, batch_size=256)
    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", action="append", required=True, help="an ensemble bundle (may repeat)")
    parser.add_argument("--ensemble-poses", action="store_true", help="also every member in every pose")
    parser.add_argument("--single", required=True, help="a single-model bundle for the pose method")
    parser.add_argument("--limit", type=int, default=2000, help="validation and test molecules each")
    parser.add_argument("--poses", type=int, default=4)
    args = parser.parse_args()
    data, conformers = load_qm9(), load_conformers()
    single = load_bundle(args.single).model
    targets = single.targets
    truth_all = data.targets_in_units()[:, [PROPERTY_NAMES.index(t) for t in targets]]
    parts = split_indices(len(data), "cormorant")
    methods = {f"poses ({args.poses}, {args.single})": with_poses(single, args.poses)}
    for path in args.ensemble:
        bundle = load_bundle(path)
        methods[f"ensemble ({bundle.n_members}, {path})"] = with_poses(bundle.model, 0)
        if args.ensemble_poses:
            methods[f"ensemble+poses ({path})"] = with_poses(bundle.model, args.poses)
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
