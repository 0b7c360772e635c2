"""What one step of QM9's own geometry method costs here: B3LYP/6-31G(2df,p) energy and gradient (issue 13).

    pip install pyscf                    # not a lieprop dependency
    python benchmarks/dft_step_cost.py   # one QM9 test molecule with 9 heavy atoms, ~8 minutes on two cores

QM9's geometries are B3LYP/6-31G(2df,p) minima; lieprop's SMILES path uses MMFF94 geometries, and the model's
error from them is larger (docs/BENCHMARKS.md, "SMILES path: which conformer, and how far any choice could go").
Relaxing a SMILES's conformer with QM9's method would remove the geometry's share of that error, if it were
affordable. This script times one self-consistent field and one nuclear gradient with PySCF for the first test
molecule with nine heavy atoms, in its lowest-energy cached MMFF conformer (:mod:`lieprop.data.qm9_conformers`);
a relaxation takes tens of such steps.
"""

from __future__ import annotations

import argparse
import time

from lieprop.data.elements import symbol
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.qm9_conformers import load_conformers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="PySCF threads (default 2)")
    parser.add_argument("--basis", default="6-31g(2df,p)", help="basis set (default QM9's)")
    args = parser.parse_args(argv)
    from pyscf import dft, gto, lib

    data, confs = load_qm9(), load_conformers()
    rows = split_indices(len(data))["test"]
    rows = rows[confs.available(rows)]
    row = next(int(r) for r in rows if (data.molecule(int(r))[0] > 1).sum() == 9 and confs.ok[r])
    numbers, positions = confs.molecule(row)
    lib.num_threads(args.threads)
    atoms = [(symbol(int(z)), tuple(float(c) for c in x)) for z, x in zip(numbers, positions, strict=True)]
    mol = gto.M(atom=atoms, basis=args.basis, verbose=0)
    field = dft.RKS(mol)
    field.xc = "b3lyp"
    started = time.perf_counter()
    field.kernel()
    scf = time.perf_counter() - started
    started = time.perf_counter()
    field.nuc_grad_method().kernel()
    gradient = time.perf_counter() - started
    print(f"QM9 row {row} ({confs.smiles[row]}): {mol.natm} atoms, {mol.nao} basis functions, B3LYP/{args.basis}, "
          f"{args.threads} threads")
    print(f"SCF {scf:.0f} s, gradient {gradient:.0f} s: {scf + gradient:.0f} s per relaxation step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
