"""Molecules per second of each shipped bundle's prediction, side by side.

    python benchmarks/bundle_speed.py                               # every bundle in lieprop/models
    python benchmarks/bundle_speed.py a.pt b.pt --threads 2 --batch 1

The call is the bundle's ``model.predict`` on QM9 test molecules (DFT geometries; needs the QM9 cache), ``--batch``
molecules per call: what the service's model process runs for a batch, frames, ensemble members and all, without
parsing or HTTP. The bundles take turns, ``--rounds`` times, so that the machine's drift hits them alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="*", help="bundle files (default: every bundle in lieprop/models)")
    p.add_argument("--molecules", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    import torch

    from lieprop.data.qm9 import load_qm9, split_indices
    from lieprop.model.bundle import load_bundle

    torch.set_num_threads(args.threads)
    data = load_qm9()
    molecules = [data.molecule(int(i)) for i in split_indices(len(data))["test"][: args.molecules]]
    paths = args.bundles or sorted(str(b) for b in (ROOT / "lieprop" / "models").glob("*.pt"))
    bundles = {path: load_bundle(path) for path in paths}
    rates: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(args.rounds):
        for path, bundle in bundles.items():
            start = time.perf_counter()
            for s in range(0, len(molecules), args.batch):
                numbers, positions = zip(*molecules[s : s + args.batch], strict=True)
                bundle.model.predict(list(numbers), list(positions))
            rates[path].append(len(molecules) / (time.perf_counter() - start))
    print(f"# {' '.join(sys.argv)}\n# {len(molecules)} QM9 test molecules, batch {args.batch}, {args.threads} torch "
          f"thread(s), {args.rounds} rounds; load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| bundle | architecture | networks | molecules/s (mean ± std over rounds) |")
    print("|---|---|---|---|")
    for path, bundle in bundles.items():
        networks = len(getattr(bundle.model, "members", ())) or 1
        rate = np.asarray(rates[path])
        print(f"| {bundle.name} | {bundle.architecture} | {networks} | {rate.mean():.0f} ± {rate.std():.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
