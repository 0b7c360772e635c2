"""The HOMO ablation of Zhdanov, Hoffmann, Cesa (Implicit Convolutional Kernels for Steerable CNNs, NeurIPS 2023)
at our budget: lieprop's ``steerable`` architecture with (a) the standard steerable kernel (radial MLP x spherical
harmonics), (b) the implicit kernel, (c) the implicit kernel with geometric bond attributes, (d) with bond and
atom-type attributes, each trained on HOMO alone for the same CPU time (``--minutes`` of CPU seconds of the training
steps, ``budget_clock=cpu``: other work on the machine cannot eat into it) and seed(s), then tested on
the first ``--test`` molecules of the test split. The table puts the test MAE beside the paper's numbers (their
table: 43, 37.8, 35.1, 30.6 meV, one model per target, 100 epochs on a GPU), with the budget stated.

Each run is its own process (``--parallel`` at a time, ``--threads`` torch threads each), a real lieprop training
run (lieprop.training.loop.Trainer) of the ``default`` preset with ``architecture=steerable`` and
``orientation=none`` (the network is invariant by construction); ``--set KEY=VALUE`` changes any TrainConfig key
for every variant (e.g. ``--set network.depth=2``, ``--set ema_decay=0`` for runs of a few minutes).

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
      .venv/bin/python benchmarks/steerable_ablation.py --minutes 60 --seeds 0 1 2 --parallel 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

#: name -> (what it is, network keys, the paper's HOMO test MAE in meV)
VARIANTS: dict[str, tuple[str, dict, float]] = {
    "a": ("standard kernel", {"kernel": "standard", "edge_attributes": "none"}, 43.0),
    "b": ("implicit kernel", {"kernel": "implicit", "edge_attributes": "none"}, 37.8),
    "c": ("implicit + bond attributes", {"kernel": "implicit", "edge_attributes": "bonds"}, 35.1),
    "d": ("implicit + bond + atom-type attributes", {"kernel": "implicit", "edge_attributes": "bonds+types"}, 30.6),
}


def run_one(args, variant: str, seed: int) -> dict:
    """Train one variant for the budget and test it; returns its HOMO test MAE (meV) and run facts."""
    import torch
    from equal_budget import molecule_lists, test_split

    from lieprop.data.properties import BY_NAME
    from lieprop.training.config import load_config, parse_override
    from lieprop.training.loop import Trainer

    overrides = {"architecture": "steerable", "orientation": "none", "targets": ["homo"],
                 **dict(parse_override(kv) for kv in args.set)}
    network = {**overrides.pop("network", {}), **{k.removeprefix("network."): overrides.pop(k)
                                                  for k in [k for k in overrides if k.startswith("network.")]}}
    cfg = load_config("default", overrides={
        **overrides, "network": {**network, **VARIANTS[variant][1]}, "seed": seed, "max_minutes": args.minutes,
        "budget_clock": "cpu",
        "threads": args.threads, "limit_valid": 1000, "checkpoint_minutes": 1e9, "tensorboard": False,
        "out_dir": os.path.join(args.out, f"{variant}-seed{seed}"), "name": f"ablation-{variant}"})
    t = time.time()
    tr = Trainer(cfg, log=lambda *_: None)
    tr.fit()
    minutes = (time.time() - t) / 60
    test = test_split(["homo"], args.test)
    pred = tr.eval_model().predict(*molecule_lists(test))
    mae = float(np.abs(pred - test.targets).mean()) * BY_NAME["homo"].to_paper
    params = sum(p.numel() for p in tr.model.net.parameters())
    seen = tr.state.step * cfg.batch_size
    return {"variant": variant, "seed": seed, "mae_mev": mae, "steps": tr.state.step,
            "epochs": round(tr.state.step / tr.steps_per_epoch, 3), "params": params,
            "train_mol_s": round(seen / (args.minutes * 60), 1), "wall_minutes": round(minutes, 2),
            "torch_threads": torch.get_num_threads()}


def settings(args: argparse.Namespace) -> dict:
    """What a result depends on besides its variant and seed: a result is reused only under the same settings."""
    return {"minutes": args.minutes, "test": args.test, "threads": args.threads, "set": sorted(args.set)}


def reusable(path: str, args: argparse.Namespace) -> bool:
    """A finished result at ``path`` made under the current settings (results written before settings were
    recorded are taken as they are)."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        recorded = json.load(f).get("settings")
    return recorded is None or recorded == settings(args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="training CPU minutes per variant and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--test", type=int, default=2000, help="first N molecules of the test split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig key for every variant (value parsed as JSON when it parses)")
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/lieprop/steerable_ablation"))
    ap.add_argument("--fresh", action="store_true",
                    help="retrain every run; by default a run whose result is in --out is kept (the benchmark resumes)")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.one:
        variant, seed = args.one[0], int(args.one[1])
        result = {**run_one(args, variant, seed), "settings": settings(args)}
        path = os.path.join(args.out, f"{variant}-seed{seed}.json")
        with open(path + ".part", "w") as f:  # a run killed while writing leaves no result behind
            json.dump(result, f)
        os.replace(path + ".part", path)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    passthrough = [a for a in sys.argv[1:] if a != "--fresh"]
    queue = [(v, s) for v in args.variants for s in args.seeds]
    done = [(v, s) for v, s in queue if reusable(os.path.join(args.out, f"{v}-seed{s}.json"), args)]
    if args.fresh:
        for v, s in done:
            os.remove(os.path.join(args.out, f"{v}-seed{s}.json"))
    else:
        queue = [run for run in queue if run not in done]
        if done:
            print(f"# resuming: {len(done)} run(s) already done in {args.out}", flush=True)
    running: list[subprocess.Popen] = []
    while queue or running:
        while queue and len(running) < args.parallel:
            v, s = queue.pop(0)
            running.append(subprocess.Popen([sys.executable, __file__, *passthrough, "--one", v, str(s)], env=env))
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                print(f"# run failed ({p.returncode}): {' '.join(p.args[-3:])}", flush=True)
    print(f"\n# {' '.join(sys.argv)}")
    print(f"# budget: {args.minutes} CPU min of training per variant and seed, {args.threads} torch thread(s), "
          f"{args.parallel} run(s) at once on this CPU; HOMO only; test MAE on the first {args.test} test molecules."
          f"\n# paper: one model per target, 100 epochs on a GPU (Zhdanov, Hoffmann, Cesa 2023).")
    print("| variant | kernel / edge attributes | params | steps | epochs | train mol/s | HOMO MAE (meV) | "
          "paper (meV) |")
    print("|---|---|---|---|---|---|---|---|")
    for v in args.variants:
        rows = []
        for s in args.seeds:
            path = os.path.join(args.out, f"{v}-seed{s}.json")
            if os.path.exists(path):
                with open(path) as f:
                    rows.append(json.load(f))
        name, _, paper = VARIANTS[v]
        if not rows:
            print(f"| ({v}) | {name} | failed | | | | | {paper} |")
            continue
        maes = np.array([r["mae_mev"] for r in rows])
        mae = f"{maes.mean():.1f}" + (f" ± {maes.std(ddof=1):.1f} ({len(rows)} seeds)" if len(rows) > 1 else "")
        print(f"| ({v}) | {name} | {rows[0]['params']:,} | {np.mean([r['steps'] for r in rows]):.0f} | "
              f"{np.mean([r['epochs'] for r in rows]):.3g} | {np.mean([r['train_mol_s'] for r in rows]):.0f} | "
              f"{mae} | {paper} |")


if __name__ == "__main__":
    main()
