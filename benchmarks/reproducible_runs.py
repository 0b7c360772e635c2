"""Does the same ``lieprop predict`` give the same bytes every time? Runs it per MKL mode, side by side.

    python benchmarks/reproducible_runs.py                 # 20 runs each of MKL's default mode and lieprop's
    python benchmarks/reproducible_runs.py --runs 40 --molecules 450 --workers 2

The input is the first ``--molecules`` SMILES of QM9's test split (needs the QM9 cache) or ``--input``; the model
is the bundled one (or ``--model``); ``--chunk-size 6`` makes many small model calls, each of which could come out
differently. Each run is a fresh process, and the modes alternate so that the machine's load hits both alike. The
table counts the runs whose file differs from the mode's first run, and the rows that differ. ``default`` is MKL's
own mode (``MKL_CBWR`` empty: code paths chosen by threads and memory alignment); ``strict`` is
``MKL_CBWR=AUTO,STRICT``, which ``import lieprop`` sets unless the environment has ``MKL_CBWR`` (docs/JOBS.md,
"Reproducibility").
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: MKL_CBWR per mode: empty is MKL's own default (its value "OFF" would mean AUTO: MKL reads an unknown word so)
MODES = {"default": "", "strict": "AUTO,STRICT"}


def write_input(path: Path, n: int) -> None:
    from lieprop.data.qm9 import load_qm9, split_indices

    data = load_qm9()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "smiles"])
        for i in split_indices(len(data))["test"][:n]:
            w.writerow([f"qm9-{int(i)}", data.smiles[int(i)]])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="runs per mode")
    p.add_argument("--molecules", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--input", help="a CSV of name,smiles to use instead of QM9's test SMILES")
    p.add_argument("--model", default=str(ROOT / "lieprop" / "models" / "lieprop-qm9.pt"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.input) if args.input else Path(tmp) / "in.csv"
        if not args.input:
            write_input(source, args.molecules)
        first: dict[str, list[str]] = {}
        differing = {mode: 0 for mode in MODES}
        rows_differing = {mode: 0 for mode in MODES}
        for r in range(args.runs):
            for mode, value in MODES.items():
                out = Path(tmp) / f"{mode}.csv"
                env = dict(os.environ, MKL_CBWR=value)
                subprocess.run([sys.executable, "-m", "lieprop.cli", "predict", str(source), "--out", str(out),
                                "--model", args.model, "--chunk-size", "6", "--workers", str(args.workers),
                                "--no-progress", "-q"], env=env, check=True, capture_output=True)
                lines = out.read_text().splitlines()
                out.unlink()
                if mode not in first:
                    first[mode] = lines
                    continue
                changed = sum(a != b for a, b in zip(first[mode], lines, strict=True))
                differing[mode] += changed > 0
                rows_differing[mode] += changed
            print(f"run {r + 1}/{args.runs}: " + ", ".join(f"{m} {differing[m]} differ" for m in MODES), flush=True)
    what = args.input or f"{args.molecules} QM9 test SMILES"
    print(f"\n# {' '.join(sys.argv)}\n# {what}, chunk size 6, {args.workers} workers, "
          f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| MKL_CBWR | runs | runs unlike the first | rows unlike the first (all runs) |")
    print("|---|---|---|---|")
    for mode, value in MODES.items():
        print(f"| {value or '(empty)'} ({mode}) | {args.runs} | {differing[mode]} | {rows_differing[mode]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
