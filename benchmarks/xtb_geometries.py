"""Would relaxing lieprop's force-field conformers with GFN2-xTB bring the SMILES path closer to the DFT path?
(issue 13; a tried-and-rejected idea, kept measurable)

    pip install tblite                                  # GFN2-xTB (not a lieprop dependency)
    python benchmarks/xtb_geometries.py                 # 400 random test molecules (~6 min on two cores)
    python benchmarks/xtb_geometries.py --molecules 100 --fmax 0.03

A SMILES's error is 1.4x (homo) to 5x (mu) its DFT geometry's, and the force field's geometry is one suspect:
MMFF94's bond lengths and angles are not B3LYP's. GFN2-xTB, a tight-binding quantum method, relaxes a QM9-sized
molecule in a fraction of a second. This script takes QM9 test molecules in the cached conformers the service makes
from their SMILES (:mod:`lieprop.data.qm9_conformers`), relaxes every conformer with GFN2-xTB (``tblite``'s ASE
calculator, ASE's LBFGS to ``--fmax`` eV/Å), and scores, on the same molecules, the bundle's values from: the DFT
geometry; the lowest-energy MMFF conformer, read as a force-field geometry (``forcefield`` path) and as a DFT one
(``given``); the MMFF conformers averaged (``generated``, what a SMILES gets); and the same three for the
xTB-relaxed conformers. Each cell is the MAE and its ratio to the DFT geometry's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lieprop.data.molecule import Molecule
from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.inference import default_model_path
from lieprop.model.bundle import load_bundle

SHOWN = ("homo", "lumo", "gap", "u0", "mu", "alpha", "r2", "zpve", "cv")


def xtb_relax(numbers: np.ndarray, positions: np.ndarray, fmax: float, steps: int = 300) -> tuple[np.ndarray, int]:
    """``positions`` relaxed with GFN2-xTB (neutral, closed shell) to forces below ``fmax`` eV/Å; and the steps."""
    from ase import Atoms
    from ase.optimize import LBFGS
    from tblite.ase import TBLite

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    optimizer = LBFGS(atoms, logfile=None)
    optimizer.run(fmax=fmax, steps=steps)
    return atoms.get_positions().copy(), int(optimizer.nsteps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=400, help="random test molecules (default 400)")
    parser.add_argument("--fmax", type=float, default=0.05, help="xTB relaxation's force threshold, eV/Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="bundle (default: the bundled model)")
    args = parser.parse_args(argv)
    try:
        import tblite.ase  # noqa: F401
    except ImportError:
        parser.error("this benchmark needs GFN2-xTB: pip install tblite")
    data, confs = load_qm9(), load_conformers()
    bundle = load_bundle(args.model or default_model_path())
    test = split_indices(len(data), bundle.meta.get("split", "cormorant"))["test"]
    test = test[confs.available(test)]
    rows = np.sort(np.random.default_rng(args.seed).choice(test, min(args.molecules, len(test)), replace=False))
    targets = list(bundle.model.targets)
    truth = data.targets_in_units()[rows][:, [PROPERTY_NAMES.index(t) for t in targets]]

    mmff = confs.molecules(rows)
    started, steps, xtb = time.perf_counter(), [], []
    for m in mmff:
        relaxed = [xtb_relax(m.numbers, g, args.fmax) for g in m.geometries]
        steps.extend(s for _, s in relaxed)
        xtb.append(Molecule(m.numbers, relaxed[0][0], other_conformers=tuple(g for g, _ in relaxed[1:])))
    seconds = time.perf_counter() - started

    def first(molecules: list[Molecule], path: str) -> np.ndarray:
        return bundle.values([m.numbers for m in molecules], [m.positions for m in molecules], path)

    dft = bundle.values(*zip(*(data.molecule(int(r)) for r in rows), strict=True), path="given")
    values = {"DFT geometry (given)": dft,
              "MMFF, lowest-energy conformer (forcefield)": first(mmff, "forcefield"),
              "MMFF, lowest-energy conformer (given)": first(mmff, "given"),
              "MMFF, conformers averaged (generated: a SMILES today)": bundle.molecule_values(mmff, "generated"),
              "xTB-relaxed, lowest-energy conformer (forcefield)": first(xtb, "forcefield"),
              "xTB-relaxed, lowest-energy conformer (given)": first(xtb, "given"),
              "xTB-relaxed, conformers averaged (generated)": bundle.molecule_values(xtb, "generated")}
    shown = [t for t in SHOWN if t in targets]
    base = np.abs(dft - truth).mean(0)
    n_geometries = sum(len(m.geometries) for m in mmff)
    print(f"{len(rows)} random test molecules (seed {args.seed}), {n_geometries} conformers relaxed with GFN2-xTB "
          f"(fmax {args.fmax} eV/Å): {seconds / len(rows):.2f} s per molecule, {np.mean(steps):.0f} LBFGS steps "
          "per conformer on average\n")
    print("| geometry (path) | " + " | ".join(f"{t} ({BY_NAME[t].paper_unit or BY_NAME[t].unit})" for t in shown)
          + " |")
    print("|---" * (1 + len(shown)) + "|")
    for label, v in values.items():
        mae = np.abs(v - truth).mean(0)
        cols = [targets.index(t) for t in shown]
        cells = [f"{mae[j] * BY_NAME[t].to_paper:.3g} ({mae[j] / base[j]:.2f}x)"
                 for t, j in zip(shown, cols, strict=True)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
