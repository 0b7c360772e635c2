"""``lieprop train`` and ``lieprop evaluate``: argument parsing only; the work is in loop.py / evaluate.py."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lieprop.cli_parser import subcommand


def add_train(sub: Any) -> None:
    p = subcommand(sub, "train", "train a model (LieConv, L-conv or steerable) on QM9 (needs the training extra: "
                   "pip install 'lieprop[train]')", """\
  lieprop train --out runs/homo --set targets='["homo"]' --max-minutes 30
  lieprop train --config my.toml --set width=128 --set lr=1e-3
  lieprop train --preset paper --device cuda --out runs/paper     # the paper's sizes, for a GPU
  lieprop train --out runs/homo --resume                          # continue exactly where it stopped
  lieprop train --out runs/more --set init_from=runs/homo/best.pt --max-minutes 60  # warm start from one network
  lieprop train --out runs/m2 --set init_from=ensemble.pt --set init_member=2        # ... or from an ensemble's member
  lieprop train --nproc 2 --out runs/ddp --max-minutes 30         # data-parallel: 2 processes (torchrun), same steps
  torchrun --nproc_per_node=4 -m lieprop.cli train --device cuda --out runs/gpu4     # 4 GPUs (NCCL)""")
    p.add_argument("--preset", default="default", help="default | budget | paper | se3 | tiny")
    p.add_argument("--config", help="TOML (or YAML) file with TrainConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (value parsed as JSON when it parses)")
    p.add_argument("--out", help="run directory (checkpoint.pt, best.pt, log.csv, tensorboard/)")
    p.add_argument("--max-minutes", type=float, help="wall-time budget; the LR schedule spans it")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes on this machine (starts torchrun; gloo on the CPU, "
                        "NCCL on GPUs); batch_size stays the global batch")
    p.set_defaults(func=run_train)


def train_argv(args: argparse.Namespace) -> list[str]:
    """The ``lieprop train`` arguments of ``args``, without ``--nproc``: what each torchrun process gets."""
    argv = ["train", "--preset", args.preset]
    for flag, value in (("--config", args.config), ("--out", args.out), ("--max-minutes", args.max_minutes),
                        ("--epochs", args.epochs), ("--device", args.device)):
        if value is not None:
            argv += [flag, str(value)]
    for item in args.set:
        argv += ["--set", item]
    return [*argv, "--resume"] if args.resume else argv


def run_train(args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError

    from lieprop.training.config import load_config, parse_override
    from lieprop.training.loop import train

    try:
        overrides = dict(parse_override(item) for item in args.set)
    except ValueError as exc:
        print(f"lieprop train: {exc}", file=sys.stderr)
        return 2
    for key, value in (("out_dir", args.out), ("max_minutes", args.max_minutes), ("epochs", args.epochs),
                       ("device", args.device)):
        if value is not None:
            overrides[key] = value
    try:
        cfg = load_config(args.preset, args.config, overrides)
    except (ValidationError, ValueError) as exc:
        print(f"lieprop train: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.nproc < 1:
        print(f"lieprop train: --nproc must be at least 1, got {args.nproc}", file=sys.stderr)
        return 2
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command again
        import subprocess

        from lieprop.training.distributed import torchrun_command

        return subprocess.run(torchrun_command(args.nproc, train_argv(args))).returncode
    tr = train(cfg, resume=args.resume)
    if tr.cluster.main:
        print(f"best bundle: {tr.out / 'best.pt'}  log: {tr.out / 'log.csv'}")
    return 0


def add_evaluate(sub: Any) -> None:
    p = subcommand(sub, "evaluate", "MAE per target of a model bundle on a QM9 split, next to published numbers", """\
  lieprop evaluate                                   # the bundled model on the full test split
  lieprop evaluate runs/homo/best.pt --split valid --limit 2000 --out reports/homo
  lieprop evaluate runs/main/best.pt --split test --record --out reports/main   # MAE into the bundle's card
  lieprop evaluate --split small                     # water, ammonia, methane, ...: every molecule of <= 10 atoms""")
    p.add_argument("bundle", nargs="?", help="model bundle (default: the bundled model)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "small"],
                   help="a split of the bundle's scheme, or 'small': every QM9 molecule with at most 10 atoms "
                        "(a sanity set from all splits, mostly training molecules; not held out)")
    p.add_argument("--geometry", default="dft", choices=["dft", "forcefield"],
                   help="dft: QM9's DFT-relaxed geometries (default); forcefield: the conformers lieprop makes from "
                        "each molecule's SMILES, i.e. what a SMILES user gets (build them once with python -m "
                        "lieprop.data.qm9_conformers)")
    p.add_argument("--limit", type=int, help="only the first N molecules of the split")
    p.add_argument("--out", help="directory for report.json, parity.png and errors.png")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--record", action="store_true",
                   help="store the test MAE table in the bundle (whole test split only)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from lieprop.model.bundle import BundleError
    from lieprop.training.evaluate import evaluate

    path = args.bundle
    if path is None:
        from lieprop.model.loading import default_model_path

        path = default_model_path()
    try:
        evaluate(path, args.split, args.out, args.limit, plots=not args.no_plots, record=args.record,
                 geometry=args.geometry)
    except (BundleError, ValueError, FileNotFoundError) as exc:
        print(f"lieprop evaluate: {exc}", file=sys.stderr)
        return 2
    return 0


def add_ensemble(sub: Any) -> None:
    p = subcommand(sub, "ensemble", "combine bundles of one architecture and config into an ensemble bundle, whose "
                "predictions carry the members' spread (std) for every property", """\
  lieprop train --out runs/s0 --set seed=0 --max-minutes 60
  lieprop train --out runs/s1 --set seed=1 --max-minutes 60
  lieprop ensemble runs/s0/best.pt runs/s1/best.pt --out models/ens.pt --name lieprop-qm9-ens
  lieprop ensemble models/ens.pt#0 runs/s2/best.pt --out models/ens2.pt   # keep member 0, replace member 1
  lieprop evaluate models/ens.pt --record            # the ensemble's own test MAE into its card
  lieprop serve --model models/ens.pt                # every value now comes with a std""")
    p.add_argument("bundles", nargs="+", help="member bundles (an ensemble bundle adds all its members, "
                   "ENSEMBLE.pt#K only its member K, 0 the first)")
    p.add_argument("--out", required=True, help="the ensemble bundle to write")
    p.add_argument("--name", default=None, help="its name (default: the first member's name + '-ensemble')")
    p.set_defaults(func=run_ensemble)


def run_ensemble(args: argparse.Namespace) -> int:
    from lieprop.model.bundle import BundleError, load_bundle, make_ensemble, member_reference

    try:
        name = args.name or f"{load_bundle(member_reference(args.bundles[0])[0]).name}-ensemble"
        sha = make_ensemble(args.bundles, args.out, name)
        n = load_bundle(args.out).n_members
    except BundleError as exc:
        print(f"lieprop ensemble: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {name}, {n} members, sha256 {sha[:12]}; measure it with lieprop evaluate {args.out} --record")
    return 0


def add_calibrate(sub: Any) -> None:
    p = subcommand(sub, "calibrate", "fit an ensemble's uncertainty (std and 90% intervals) on the validation split, "
                   "in DFT and force-field geometries, and report coverage, width and rank correlation on the test "
                   "split", """\
  lieprop calibrate models/ens.pt --out reports/ens          # report only: uncertainty.json, reliability.png, ...
  lieprop calibrate models/ens.pt --record                   # store the calibration in the bundle (whole splits)
  lieprop calibrate models/ens.pt --limit 2000               # a quick look on the first 2000 of each split
  lieprop calibrate models/ens.pt --plain-mean               # no member weights: the members' plain mean""")
    p.add_argument("bundle", help="an ensemble bundle (lieprop ensemble)")
    p.add_argument("--out", help="directory for uncertainty.json, reliability.png and error_vs_std.png")
    p.add_argument("--limit", type=int, help="only the first N molecules of each split")
    p.add_argument("--poses", type=int, default=None, help="take the spread over every member in this many fixed "
                   "poses relative to its frames (test-time poses; a single model can be calibrated this way too)")
    p.add_argument("--plain-mean", action="store_true", help="report the members' plain mean; by default the members "
                   "are weighted per geometry path and target to minimise the validation MAE (a member that is "
                   "better on one path counts more there)")
    p.add_argument("--record", action="store_true", help="store the calibration and the test report in the bundle")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from lieprop.model.bundle import BundleError
    from lieprop.training.uncertainty import calibrate

    try:
        calibrate(args.bundle, args.out, args.limit, record=args.record, poses=args.poses,
                  member_weights=not args.plain_mean)
    except (BundleError, ValueError, FileNotFoundError) as exc:
        print(f"lieprop calibrate: {exc}", file=sys.stderr)
        return 2
    return 0
