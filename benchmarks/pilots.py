"""Short training pilots at equal wall time: which LieConv configuration learns fastest on this machine?

Each pilot is a real ``lieprop train`` run of ``--minutes`` on the Cormorant training split, with the
equal-budget targets by default. Pilots run ``--parallel`` at a time, one torch thread each (so two pilots
on a 2-core machine share it evenly), and the table lists the validation MAE of each run's best epoch in
the published units, with the mean standardised score (lower is better) and the same score on the small-molecule
sanity set (every QM9 molecule with at most 10 atoms, see lieprop.data.qm9.small_molecules).

    .venv/bin/python benchmarks/pilots.py --minutes 6 \\
        base= rbf32=radial_basis=32 b32='batch_size=32'
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

from lieprop.data.properties import BY_NAME


def parse_pilot(text: str) -> tuple[str, list[str]]:
    """``name=key=value,key=value`` -> (name, ["key=value", ...]); ``name=`` is the preset as it is."""
    name, _, rest = text.partition("=")
    return name, [kv for kv in rest.split(",") if kv]


def best_row(log: str) -> dict:
    with open(log) as f:
        rows = list(csv.DictReader(f))
    return min(rows, key=lambda r: float(r["valid_score"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pilots", nargs="+", help="name=key=value,key=value (name= for the default preset)")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--targets", nargs="+", default=["homo", "lumo", "gap", "u0", "mu"])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/lieprop/pilots"))
    args = ap.parse_args()
    pilots = [parse_pilot(p) for p in args.pilots]
    targets = json.dumps(args.targets)
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="4294967296",
               MALLOC_TRIM_THRESHOLD_="4294967296")
    queue, running = list(pilots), []
    while queue or running:
        while queue and len(running) < args.parallel:
            name, sets = queue.pop(0)
            out = os.path.join(args.out, name)
            cmd = [sys.executable, "-m", "lieprop.cli", "train", "--out", out, "--max-minutes", str(args.minutes),
                   "--set", f"targets={targets}", "--set", "threads=1", "--set", "limit_valid=2000",
                   "--set", "checkpoint_minutes=1000"]
            for kv in sets:
                cmd += ["--set", kv]
            print("#", " ".join(cmd), flush=True)
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "stderr.log"), "w") as err:
                running.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))
        time.sleep(2)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                print(f"# pilot failed ({p.returncode}): {' '.join(p.args)}", flush=True)
    print(f"\n# {' '.join(sys.argv)}: best validation epoch after {args.minutes} min, 1 thread each")
    print("| pilot | settings | steps | mol/s | " + " | ".join(
        f"{t} ({BY_NAME[t].paper_unit})" for t in args.targets) + " | score | small-molecule score |")
    print("|---|---|---|---|" + "---|" * (len(args.targets) + 2))
    for name, sets in pilots:
        log = os.path.join(args.out, name, "log.csv")
        if not os.path.exists(log):
            print(f"| {name} | {' '.join(sets)} | failed |")
            continue
        r = best_row(log)
        small = float(r.get("small_score") or "nan")
        maes = [float(r[f"valid_mae_{t}"]) * BY_NAME[t].to_paper for t in args.targets]
        print(f"| {name} | {' '.join(sets) or 'default'} | {r['step']} | {float(r['train_mol_s']):.0f} | "
              + " | ".join(f"{v:.4g}" for v in maes) + f" | {float(r['valid_score']):.3f} | {small:.3f} |")


if __name__ == "__main__":
    main()
