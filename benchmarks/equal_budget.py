"""Equal budget, tuned alike: every lieprop architecture and PyG SchNet on the same QM9 split, targets and trainer.

What is equal for every contender:
- **the trainer**: lieprop's (:class:`lieprop.training.loop.Trainer`): the Cormorant training split, standardised
  targets (per-element offsets fitted on the training split), L1 loss, Adam with warm-up and a cosine schedule over
  the budget, size-bucketed batches, gradient clipping, and EMA of the weights (decay 0.999) for all. SchNet takes
  part as a registered architecture (``schnet_architecture.py``: torch_geometric's network, lieprop's trainer), so the
  contenders differ in the network alone.
- **the budget**: ``--minutes`` of CPU time of the training steps (``budget_clock=cpu``: other work on this shared
  machine cannot eat into it), one torch thread each, ``--parallel`` runs at once.
- **the tuning**: the same grid of learning rate x batch size (``--lrs``, ``--batches``) for every contender, each
  point a pilot of ``--pilot-minutes`` scored on 1,000 validation molecules (the mean over targets of MAE / target
  scale); the best point is then trained with ``--seeds`` seeds.
- **the test**: the first ``--test`` molecules of the test split, through each model's invariant predict.
- **the arithmetic**: subnormal floats flushed to zero in every run (``torch.set_flush_denormal``), unless
  ``--keep-denormals``. A CPU computes on subnormals on a slow path; PyG SchNet's Gaussian distance expansion makes
  many, which cut its training steps to a third (docs/BENCHMARKS.md, "Subnormal floats"). Runs with the flush are
  kept apart from runs without it (``-ftz`` in their names).

Prints the pilot grid, then test MAE per target as mean ± std over seeds, then MAE by molecule size (heavy atoms).
Every run's result is kept in OUT (a JSON per run): an interrupted benchmark resumes where it stopped.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
      .venv/bin/python benchmarks/equal_budget.py --pilot-minutes 2 --minutes 10 --seeds 0 1 2 --parallel 2

Needs torch_geometric for SchNet (``pip install -e '.[bench]'``); ``--contenders`` leaves any out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import schnet_architecture  # noqa: E402

from lieprop.data.properties import BY_NAME  # noqa: E402
from lieprop.data.qm9 import load_qm9, split_indices  # noqa: E402
from lieprop.training.data import split_data  # noqa: E402

#: heavy-atom slices of the size table (QM9 molecules have 1 to 9 heavy atoms)
SIZE_SLICES: dict[str, tuple[int, int]] = {"1-6": (1, 6), "7": (7, 7), "8": (8, 8), "9": (9, 9)}


@dataclass(frozen=True)
class Contender:
    """A network to compare: a training preset and the keys that pick its architecture and size."""

    label: str
    preset: str
    sets: dict = field(default_factory=dict)


CONTENDERS: dict[str, Contender] = {
    # the bundled family, at the size its 6-minute pilots chose for short budgets (docs/MODEL_CARD.md)
    "lieconv": Contender("lieprop LieConv T(3)", "budget"),
    # the implicit-kernel network with bond and atom-type edge attributes (the paper's best variant), default size
    "steerable": Contender("lieprop steerable (implicit kernels)", "default", {"architecture": "steerable"}),
    "lconv": Contender("lieprop L-conv (fixed se(3))", "default", {"architecture": "lconv"}),
    "schnet": Contender("PyG SchNet", "default", {"architecture": "schnet"}),
}


def test_split(targets, n):
    """The first ``n`` molecules of the test split (cached per process)."""
    key = (tuple(targets), n)
    if key not in _TEST:
        data = load_qm9()
        _TEST[key] = split_data(data, split_indices(len(data))["test"][:n], targets)
    return _TEST[key]


_TEST: dict = {}


def molecule_lists(split) -> tuple[list, list]:
    zs, xs = zip(*(split.molecule(i) for i in range(len(split))), strict=True)
    return list(zs), list(xs)


def run_name(spec: dict) -> str:
    ftz = "-ftz" if spec.get("ftz") else ""
    return f"{spec['contender']}-lr{spec['lr']:g}-b{spec['batch']}-s{spec['seed']}-m{spec['minutes']:g}{ftz}"


def run_one(spec: dict, args) -> dict:
    """Train one contender at one grid point and seed for ``spec['minutes']`` CPU minutes; pilots report the
    validation score, finals the test MAE per target and per size slice."""
    import torch

    from lieprop.training.config import load_config
    from lieprop.training.loop import Trainer

    schnet_architecture.register()
    torch.set_flush_denormal(bool(spec.get("ftz")))
    c = CONTENDERS[spec["contender"]]
    final = spec["phase"] == "final"
    cfg = load_config(c.preset, overrides={
        **c.sets, "targets": args.targets, "lr": spec["lr"], "batch_size": spec["batch"], "seed": spec["seed"],
        "max_minutes": spec["minutes"], "budget_clock": "cpu", "threads": 1, "ema_decay": 0.999,
        "limit_valid": 1000, "checkpoint_minutes": 1e9, "tensorboard": False, "name": "equal-budget",
        "out_dir": os.path.join(args.out, "runs", spec["phase"], run_name(spec))})
    t = time.time()
    tr = Trainer(cfg, log=lambda *_: None)
    tr.fit()
    last = tr.state.history[-1]
    seen = tr.state.step * cfg.batch_size
    result = {**spec, "steps": tr.state.step, "epochs": round(tr.state.step / tr.steps_per_epoch, 3),
              "params": sum(p.numel() for p in tr.model.net.parameters()), "valid_score": last["valid_score"],
              "train_mol_s": round(seen / (60 * spec["minutes"]), 1), "wall_minutes": round((time.time() - t) / 60, 2),
              "torch_threads": torch.get_num_threads()}
    if final:
        test = test_split(args.targets, args.test)
        err = np.abs(tr.eval_model().predict(*molecule_lists(test)) - test.targets)  # (molecules, targets)
        heavy = np.array([int((test.molecule(i)[0] > 1).sum()) for i in range(len(test))])
        result["mae"] = err.mean(0).tolist()
        result["by_size"] = {name: {"n": int(((heavy >= lo) & (heavy <= hi)).sum()),
                                    "mae": err[(heavy >= lo) & (heavy <= hi)].mean(0).tolist()}
                             for name, (lo, hi) in SIZE_SLICES.items() if ((heavy >= lo) & (heavy <= hi)).any()}
    return result


def result_path(args, spec: dict) -> str:
    return os.path.join(args.out, spec["phase"], run_name(spec) + ".json")


def load(args, spec: dict) -> dict | None:
    path = result_path(args, spec)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_all(args, specs: list[dict]) -> None:
    """Run every spec without a result yet, ``--parallel`` processes at a time, one torch thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="4294967296",
               MALLOC_TRIM_THRESHOLD_="4294967296")
    queue = [s for s in specs if load(args, s) is None]
    running: list[tuple[subprocess.Popen, dict]] = []
    while queue or running:
        while queue and len(running) < args.parallel:
            spec = queue.pop(0)
            print(f"# {time.strftime('%H:%M:%S')} start {spec['phase']} {run_name(spec)}", flush=True)
            cmd = [sys.executable, __file__, "--one", json.dumps(spec), "--out", args.out,
                   "--targets", *args.targets, "--test", str(args.test)]
            running.append((subprocess.Popen(cmd, env=env), spec))
        time.sleep(2)
        for p, spec in [r for r in running if r[0].poll() is not None]:
            running.remove((p, spec))
            if p.returncode:
                print(f"# run failed ({p.returncode}): {run_name(spec)}", flush=True)


def chosen_point(args, name: str) -> tuple[float, int] | None:
    """The grid point with the best pilot validation score for contender ``name``."""
    pilots = [r for r in (load(args, s) for s in pilot_specs(args, name)) if r is not None]
    if not pilots:
        return None
    best = min(pilots, key=lambda r: r["valid_score"])
    return best["lr"], best["batch"]


def flush_key(args) -> dict:
    """The spec key of runs that flush subnormals (none for ``--keep-denormals``, so older runs keep their names)."""
    return {} if args.keep_denormals else {"ftz": True}


def pilot_specs(args, name: str) -> list[dict]:
    return [pilot_spec(args, name, lr, b) for lr in args.lrs for b in args.batches]


def pilot_spec(args, name: str, lr: float, batch: int) -> dict:
    return {"phase": "pilot", "contender": name, "lr": lr, "batch": batch, "seed": 0, "minutes": args.pilot_minutes,
            **flush_key(args)}


def final_specs(args, name: str) -> list[dict]:
    point = chosen_point(args, name)
    if point is None:
        return []
    return [{"phase": "final", "contender": name, "lr": point[0], "batch": point[1], "seed": s,
             "minutes": args.minutes, **flush_key(args)} for s in args.seeds]


def mean_std(values: list[float], fmt: str) -> str:
    v = np.array(values)
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}" if len(v) > 1 else f"{v.mean():{fmt}}"


def print_tables(args) -> None:
    names = args.contenders
    print(f"\n# {' '.join(sys.argv)}")
    print(f"# pilots: {len(args.lrs)} x {len(args.batches)} grid, {args.pilot_minutes} CPU min each; finals: "
          f"{args.minutes} CPU min per seed; 1 torch thread per run, {args.parallel} runs at once; EMA 0.999 for all; "
          f"subnormals {'kept' if args.keep_denormals else 'flushed to zero'}")
    print("\n| pilot validation score (lower is better) | " + " | ".join(f"b{b}" for b in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    for name in names:
        for lr in args.lrs:
            cells = []
            for b in args.batches:
                r = load(args, pilot_spec(args, name, lr, b))
                cells.append(f"{r['valid_score']:.3f}" if r else "-")
            print(f"| {name} lr {lr:g} | " + " | ".join(cells) + " |")
    finals = {n: [r for r in (load(args, s) for s in final_specs(args, n)) if r] for n in names}
    print(f"\n# test MAE on the first {args.test} test molecules, mean ± std over seeds")
    print("| target | unit | " + " | ".join(CONTENDERS[n].label for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for j, t in enumerate(args.targets):
        p = BY_NAME[t]
        fmt = ".3f" if p.paper_unit == "D" else ".1f"
        cells = [mean_std([r["mae"][j] * p.to_paper for r in finals[n]], fmt) if finals[n] else "-" for n in names]
        print(f"| {t} | {p.paper_unit} | " + " | ".join(cells) + " |")
    facts = {
        "seeds": lambda rs: str(len(rs)),
        "chosen lr, batch": lambda rs: f"{rs[0]['lr']:g}, {rs[0]['batch']}",
        "parameters": lambda rs: f"{rs[0]['params']:,}",
        "epochs": lambda rs: mean_std([r["epochs"] for r in rs], ".2f"),
        "train mol/s (CPU)": lambda rs: f"{np.mean([r['train_mol_s'] for r in rs]):.0f}",
    }
    for fact, fn in facts.items():
        print(f"| {fact} | | " + " | ".join(fn(finals[n]) if finals[n] else "-" for n in names) + " |")
    for t in [t for t in ("homo", "u0") if t in args.targets]:
        j, p = args.targets.index(t), BY_NAME[t]
        print(f"\n# {t} test MAE ({p.paper_unit}) by heavy atoms, mean over seeds")
        print("| heavy atoms | molecules | " + " | ".join(CONTENDERS[n].label for n in names) + " |")
        print("|---|---|" + "---|" * len(names))
        for s in SIZE_SLICES:
            some = next((r for n in names for r in finals[n] if s in r["by_size"]), None)
            if some is None:
                continue
            digits = 3 if p.paper_unit == "D" else 1
            cells = [f"{np.mean([r['by_size'][s]['mae'][j] * p.to_paper for r in finals[n]]):.{digits}f}"
                     if finals[n] else "-" for n in names]
            print(f"| {s} | {some['by_size'][s]['n']} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="CPU minutes of training per final run")
    ap.add_argument("--pilot-minutes", type=float, default=2.0, help="CPU minutes per pilot")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--targets", nargs="+", default=["homo", "lumo", "gap", "u0", "mu"])
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    ap.add_argument("--test", type=int, default=3000, help="first N molecules of the test split")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (one torch thread each)")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="compute on subnormal floats (the runs before 2026-11-30 session 8)")
    ap.add_argument("--tables", action="store_true", help="print the tables of the results so far and stop")
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/lieprop/equal_budget"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child: one run's JSON spec
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        result = run_one(spec, args)
        os.makedirs(os.path.dirname(result_path(args, spec)), exist_ok=True)
        tmp = result_path(args, spec) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, result_path(args, spec))
        return
    if not args.tables:
        run_all(args, [s for n in args.contenders for s in pilot_specs(args, n)])
        run_all(args, [s for n in args.contenders for s in final_specs(args, n)])
    print_tables(args)


if __name__ == "__main__":
    main()
