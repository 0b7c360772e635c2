"""Invariance error and cost of lieprop's frame-averaged predict, against plain evaluation of the same network.

For QM9 test molecules in a random pose (rotation or reflection, translation, atom permutation): the largest and mean
change of each prediction, in units of the target's MAE-free scale (the model's per-target standard deviation) and in
the target's unit for HOMO; plus frames per molecule and time per molecule for both paths.

    .venv/bin/python benchmarks/invariance.py [BUNDLE] [--n 500]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from lieprop.data.batch import collate, featurize
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.model.bundle import load_bundle
from lieprop.model.frames import molecule_frames
from lieprop.model.groups import random_rotations


def n_frames(z, x) -> int:
    """Network evaluations per molecule: distinct frames (plain frames on checkouts that predate weighted frames)."""
    fr = molecule_frames(z, x)
    return len(fr.distinct(z, x)[2]) if hasattr(fr, "distinct") else len(fr)


def pose(z, x, rng):
    r = random_rotations(1, torch.Generator().manual_seed(int(rng.integers(1 << 30))), dtype=torch.float64)[0].numpy()
    if rng.random() < 0.5:
        r = -r
    p = rng.permutation(len(z))
    return z[p], (x @ r.T + rng.normal(size=3) * 5)[p]


def plain(model, zs, xs, bs=128):
    """The network on the input as given (centred), no frames: what a T(3) LieConv does without them."""
    out = []
    with torch.no_grad():
        for i in range(0, len(zs), bs):
            b = collate(zs[i:i + bs], [x - x.mean(0) for x in xs[i:i + bs]])
            o = model.net(featurize(b.numbers), b.positions, b.mask, deterministic=True)
            out.append(model.to_physical(o, b.numbers).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", default="lieprop/models/lieprop-qm9.pt")
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_bundle(args.bundle).model
    data = load_qm9()
    rows = split_indices(len(data))["test"][: args.n]
    mols = [data.molecule(int(r)) for r in rows]
    rng = np.random.default_rng(0)
    moved = [pose(z, x, rng) for z, x in mols]
    zs, xs = [m[0] for m in mols], [m[1] for m in mols]
    zs2, xs2 = [m[0] for m in moved], [m[1] for m in moved]
    scale = model.scale.numpy()
    homo = model.targets.index("homo") if "homo" in model.targets else 0
    print(f"# {' '.join(sys.argv)}: {len(mols)} QM9 test molecules, random rotation/reflection + translation + "
          f"permutation")
    print("| path | frames per molecule | ms per molecule | max change / std | mean change / std | "
          "max HOMO change (meV) |")
    print("|---|---|---|---|---|---|")
    for name, framed, fn in (("plain network (no frames)", False, lambda z, x: plain(model, z, x)),
                             ("lieprop predict (frame averaging)", True, lambda z, x: model.predict(z, x))):
        fn(zs[:16], xs[:16])
        t = time.perf_counter()
        a = fn(zs, xs)
        sec = time.perf_counter() - t
        b = fn(zs2, xs2)
        d = np.abs(a - b) / scale
        frames = np.mean([n_frames(z, x) for z, x in mols]) if framed else 1.0
        print(f"| {name} | {frames:.3f} | {1000 * sec / len(mols):.2f} | {d.max():.2e} | {d.mean():.2e} | "
              f"{1000 * np.abs(a - b)[:, homo].max():.3g} |")


if __name__ == "__main__":
    main()
