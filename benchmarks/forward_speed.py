"""One network's forward pass, ms per molecule, at batch 1, 8 and 32, for one or several code trees side by side.

    python benchmarks/forward_speed.py                                       # this checkout
    python benchmarks/forward_speed.py --source before=/path/to/old --source after=. --rounds 3
    python benchmarks/forward_speed.py --env default=MKL_CBWR= --env strict=MKL_CBWR=AUTO,STRICT --threads 2

Each tree runs in its own process (``PYTHONPATH`` = the tree), one after the other, ``--rounds`` times interleaved,
so that the machine's drift hits every tree alike; ``--env`` runs this checkout with one environment variable set
instead. The network is member 0 of the bundled model (or ``--model``), in eval mode without gradients, on one torch
thread (or ``--threads``). The molecules are QM9 test molecules, expanded into their frames
and padded as ``PropertyModel.evaluate`` does: batch 1 is the 4th test molecule, batches 8 and 32 the first 8 and 32
(needs the QM9 cache).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 8, 32)


def measure(model_path: str, threads: int = 1) -> dict[int, float]:
    """ms per molecule of one network's forward pass at each of BATCHES, in this process's lieprop."""
    import torch

    from lieprop.data.batch import collate, featurize
    from lieprop.data.qm9 import load_qm9, split_indices
    from lieprop.model.bundle import load_bundle

    torch.set_num_threads(threads)
    data = load_qm9()
    mols = [data.molecule(int(i)) for i in split_indices(len(data))["test"][:32]]
    model = load_bundle(model_path).model
    member = model.members[0] if hasattr(model, "members") else model
    net = member.net.eval()
    out = {}
    for batch in BATCHES:
        zs, xs = zip(*(mols[:batch] if batch > 1 else [mols[3]]), strict=True)
        frames = member.expand(zs, xs)
        b = collate([frames.frame_numbers[i] for i in frames.order], [frames.frame_coords[i] for i in frames.order])
        features = featurize(b.numbers)
        with torch.inference_mode():
            for _ in range(3):
                net(features, b.positions, b.mask, deterministic=True)
            reps = max(5, 200 // batch)
            start = time.perf_counter()
            for _ in range(reps):
                net(features, b.positions, b.mask, deterministic=True)
        out[batch] = 1000 * (time.perf_counter() - start) / reps / batch
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", action="append", default=None, metavar="LABEL=DIR",
                   help="a code tree (repeatable; default: this checkout)")
    p.add_argument("--env", action="append", default=[], metavar="LABEL=NAME=VALUE",
                   help="this checkout with the environment variable NAME=VALUE (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--model", default=str(ROOT / "lieprop" / "models" / "lieprop-qm9.pt"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(" ".join(f"{v:.4f}" for v in measure(args.model, args.threads).values()))
        return 0
    sources = [(label, tree, {}) for label, tree in (s.partition("=")[::2] for s in args.source or [])]
    for variant in args.env:
        label, _, assignment = variant.partition("=")
        name, _, value = assignment.partition("=")
        sources.append((label, str(ROOT), {name: value}))
    sources = sources or [("this", str(ROOT), {})]
    rows = []
    for r in range(args.rounds):
        for label, tree, extra in sources:
            env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), OMP_NUM_THREADS=str(args.threads), **extra)
            done = subprocess.run([sys.executable, __file__, "--one", "1", "--model", args.model,
                                   "--threads", str(args.threads)], env=env,
                                  capture_output=True, text=True, check=True)
            values = [float(v) for v in done.stdout.split()]
            rows.append(f"| {label} | {r + 1} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
            print(rows[-1], flush=True)
    print(f"\n# {' '.join(sys.argv)}\n# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| code | round | " + " | ".join(f"batch {b} ms/molecule" for b in BATCHES) + " |")
    print("|---|---|" + "---|" * len(BATCHES))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
