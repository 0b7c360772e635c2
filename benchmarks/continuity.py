"""Is a served prediction continuous in the coordinates at symmetric geometries?

For symmetric molecules (QM9 DFT geometries, and the service's own SMILES -> MMFF geometries for molecules QM9 lacks)
and, as the reference a smooth model sets, random QM9 test molecules: the largest change of HOMO, gap (meV) and mu
(mD) when

* every atom moves by 1e-5 Å in a random direction (``--trials`` draws, largest change kept), and
* the molecule is put in a random pose and its coordinates are written with 3 decimals, as most XYZ/PDB/MOL files
  hold them (largest change over ``--trials`` poses, against the unrounded molecule).

Also frames per molecule (distinct network evaluations) for each. Run it from two checkouts to compare frames::

    .venv/bin/python benchmarks/continuity.py [BUNDLE] [--trials 20]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.readers import from_smiles
from lieprop.model.bundle import load_bundle
from lieprop.model.frames import molecule_frames

#: name -> QM9 SMILES (DFT geometry) or ("smiles", SMILES) for the service's RDKit/MMFF geometry.
MOLECULES: dict[str, str | tuple[str, str]] = {
    "methane": "C", "ammonia": "N", "water": "O", "HCN": "C#N", "formaldehyde": "C=O", "acetylene": "C#C",
    "ethane": "CC", "cyclopropane": "C1CC1", "CF4": "FC(F)(F)F", "neopentane": "CC(C)(C)C",
    "benzene": "C1=CC=CC=C1", "cubane": "C12C3C4C1C1C2C3C41",
    "CH3F (MMFF)": ("smiles", "CF"), "CO2 (MMFF)": ("smiles", "O=C=O"), "methane (MMFF)": ("smiles", "C"),
    "adamantane (MMFF)": ("smiles", "C1C2CC3CC1CC(C2)C3"),
}


def n_frames(z: np.ndarray, x: np.ndarray) -> int:
    """Network evaluations per molecule (distinct frames; plain frames on checkouts that predate weighted frames)."""
    fr = molecule_frames(z, x)
    return len(fr.distinct(z, x)[2]) if hasattr(fr, "distinct") else len(fr)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def geometry(data, source) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(source, tuple):
        m = from_smiles(source[1])
        return np.asarray(m.numbers), np.asarray(m.positions, np.float64)
    row = int(np.flatnonzero(data.smiles == source)[0])
    return data.molecule(row)


def changes(model, z, x, trials: int, rng: np.random.Generator, cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(largest change per 1e-5 Å move, largest change per 3-decimal rounding), each (len(cols),)."""
    base = model.predict([z], [x])[0, cols]
    moved = []
    for _ in range(trials):
        d = rng.normal(size=x.shape)
        moved.append(x + 1e-5 * d / np.linalg.norm(d, axis=1, keepdims=True))
    posed = [np.round(x @ random_rotation(rng).T + rng.uniform(-5, 5, 3), 3) for _ in range(trials)]
    out = model.predict([z] * (2 * trials), moved + posed)[:, cols]
    return np.abs(out[:trials] - base).max(0), np.abs(out[trials:] - base).max(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", default="lieprop/models/lieprop-qm9.pt")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--generic", type=int, default=50, help="random QM9 test molecules for the smooth reference")
    args = ap.parse_args()
    model = load_bundle(args.bundle).model
    data = load_qm9()
    cols = [model.targets.index(t) for t in ("homo", "gap", "mu")]
    units = np.array([1000.0, 1000.0, 1000.0])  # eV -> meV, D -> mD
    rng = np.random.default_rng(0)
    print(f"# {' '.join(sys.argv)}: largest change over {args.trials} trials")
    print("| molecule | frames | 1e-5 Å: homo (meV) | gap (meV) | mu (mD) | 3 decimals: homo (meV) | gap (meV) | "
          "mu (mD) |")
    print("|---|---|---|---|---|---|---|---|")
    worst = np.zeros((2, 3))
    for name, source in MOLECULES.items():
        z, x = geometry(data, source)
        frames = n_frames(z, x)
        move, rnd = changes(model, z, x, args.trials, rng, cols)
        worst = np.maximum(worst, [move * units, rnd * units])
        values = np.concatenate([move, rnd]) * np.tile(units, 2)
        print(f"| {name} | {frames} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
    print("| **largest, symmetric molecules** | | " + " | ".join(f"**{v:.3g}**" for v in worst.ravel()) + " |")
    rows = split_indices(len(data))["test"][: args.generic]
    t0 = time.perf_counter()
    res = np.array([np.concatenate(changes(model, *data.molecule(int(r)), max(4, args.trials // 4), rng, cols))
                    for r in rows]) * np.tile(units, 2)
    frames = np.mean([n_frames(*data.molecule(int(r))) for r in rows])
    print(f"| {args.generic} QM9 test molecules, median (smooth reference) | {frames:.2f} | "
          + " | ".join(f"{v:.3g}" for v in np.median(res, 0)) + " |")
    print(f"| {args.generic} QM9 test molecules, largest | | " + " | ".join(f"{v:.3g}" for v in res.max(0)) + " |")
    print(f"\n# {time.perf_counter() - t0:.0f} s for the reference rows")


if __name__ == "__main__":
    main()
