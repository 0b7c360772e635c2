"""Would more conformers per SMILES bring the SMILES path closer to the DFT geometries? (issue 13)

    python benchmarks/conformer_averaging.py                         # 400 test molecules, the bundled model
    python benchmarks/conformer_averaging.py --molecules 1000 --model runs/v3b/best.pt --conformers 10

For each of the first ``--molecules`` molecules of the QM9 test split it predicts from: the DFT geometry; the
service's own conformer (``lieprop.data.readers.from_smiles``: ETKDGv3, fixed seed, MMFF94); and ``--conformers``
ETKDGv3 conformers (seed 42) each MMFF94-optimised, combined three ways: the lowest-MMFF-energy one, the mean
prediction over all, and the Boltzmann-weighted mean at 298 K. Values are those the service gives (a bundle whose
calibration weights its members per geometry path is weighted as it serves). It prints the MAE per target in the
paper's units.
Embedding takes ~15 ms per conformer per core; the model runs on every conformer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.readers import from_smiles
from lieprop.inference import default_model_path
from lieprop.model.bundle import load_bundle

KT_KCAL_MOL = 0.593  # k_B T at 298 K


def conformers(smiles: str, k: int, seed: int = 42) -> tuple[np.ndarray, list[tuple[float, np.ndarray]]]:
    """Atomic numbers and (MMFF94 energy in kcal/mol, positions) of ``k`` optimised ETKDGv3 conformers."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed, params.numThreads = seed, 1
    ids = list(AllChem.EmbedMultipleConfs(mol, k, params))
    props = AllChem.MMFFGetMoleculeProperties(mol)
    out = []
    for cid in ids:
        ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=cid)
        ff.Minimize(maxIts=2000)
        out.append((float(ff.CalcEnergy()), mol.GetConformer(cid).GetPositions()))
    return np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=400)
    parser.add_argument("--conformers", type=int, default=10)
    parser.add_argument("--model", default=None, help="bundle (default: the bundled model)")
    args = parser.parse_args(argv)
    data = load_qm9()
    rows = split_indices(len(data))["test"][: args.molecules]
    bundle = load_bundle(args.model or default_model_path())
    model = bundle.model
    started = time.time()
    kept, single_z, single_x, all_z, all_x, owner, energy = [], [], [], [], [], [], []
    for j, row in enumerate(rows):
        smiles = str(data.smiles[row])
        try:
            service = from_smiles(smiles, "x")
            z, confs = conformers(smiles, args.conformers)
        except Exception:  # noqa: BLE001 (a molecule RDKit cannot embed is left out, and counted)
            continue
        if not confs:
            continue
        kept.append(j)
        single_z.append(service.numbers)
        single_x.append(service.positions)
        for e, x in confs:
            all_z.append(z)
            all_x.append(x)
            owner.append(len(kept) - 1)
            energy.append(e)
    print(f"{len(kept)} of {len(rows)} molecules embedded, {len(all_z)} conformers, {time.time() - started:.0f} s")
    # the values the service gives: a DFT geometry on the given path, conformers on the generated one
    dft = bundle.values(*zip(*(data.molecule(int(rows[j])) for j in kept), strict=True), path="given")
    single = bundle.values(single_z, single_x, path="generated")
    each = bundle.values(all_z, all_x, path="generated")
    owner_a, energy_a = np.array(owner), np.array(energy)
    groups = [owner_a == i for i in range(len(kept))]
    lowest = np.stack([each[g][np.argmin(energy_a[g])] for g in groups])
    mean = np.stack([each[g].mean(0) for g in groups])

    def boltzmann(g: np.ndarray) -> np.ndarray:
        w = np.exp(-(energy_a[g] - energy_a[g].min()) / KT_KCAL_MOL)
        return (each[g] * (w / w.sum())[:, None]).sum(0)

    weighted = np.stack([boltzmann(g) for g in groups])
    cols = [PROPERTY_NAMES.index(t) for t in model.targets]
    truth = data.targets_in_units()[rows[kept]][:, cols]
    print(f"\n| target | unit | DFT geometry | service conformer | lowest MMFF of {args.conformers} | "
          f"mean of {args.conformers} | Boltzmann mean |")
    print("|---|---|---|---|---|---|---|")
    for j, name in enumerate(model.targets):
        p = BY_NAME[name]
        maes = [np.abs(pred[:, j] - truth[:, j]).mean() * p.to_paper for pred in (dft, single, lowest, mean, weighted)]
        print(f"| {name} | {p.paper_unit or p.unit} | " + " | ".join(f"{m:.4g}" for m in maes) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
