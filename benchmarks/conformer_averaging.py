"""What averaging over several conformers buys the SMILES path, and what it costs (issue 13).

    python benchmarks/conformer_averaging.py                     # the bundled model, the whole test split (~5 min)
    python benchmarks/conformer_averaging.py --molecules 2000 --timing 100

A SMILES is answered for lieprop's conformers of it (ETKDGv3 with the fixed seed, MMFF94,
:data:`lieprop.data.records.DEFAULT_CONFORMERS` of them), each predicted and the values averaged
(:func:`lieprop.model.prediction.average_conformers`). This script scores QM9's test molecules in the cached
conformers (:mod:`lieprop.data.qm9_conformers`, the service's own SMILES path) averaged over the ``k`` lowest in
energy, k = 1 ... all, and in the one conformer ``conformers: 1`` gives (ETKDG's first, embedded here), beside the
DFT geometry's MAE, on the whole split and by slice (heavy atoms; rotatable bonds,
where conformers differ most). Values are what the bundle serves on the SMILES path (its member weights for that
path, when its calibration has them).

Then it times, side by side in one run, what a SMILES costs with one conformer and with the default count: the
embedding (``from_smiles``, one process) and the model (one geometry or all of them per molecule).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import numpy as np

from lieprop.data.molecule import Molecule
from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.data.qm9_conformers import load_conformers
from lieprop.data.readers import DEFAULT_CONFORMERS, embed_many, from_smiles
from lieprop.data.validation import MoleculeError, ValidationLimits
from lieprop.inference import default_model_path
from lieprop.model.bundle import load_bundle
from lieprop.model.prediction import conformer_inputs

#: Targets shown (the issue's four, and r2, the most conformer-dependent).
SHOWN = ("homo", "gap", "u0", "mu", "r2")


def rotatable_bonds(smiles: str) -> int:
    from rdkit import Chem
    from rdkit.Chem import rdMolDescriptors

    return int(rdMolDescriptors.CalcNumRotatableBonds(Chem.MolFromSmiles(smiles)))


def model_ms(bundle: Any, molecules: list[Molecule], distinct: bool) -> float:
    """Milliseconds of the model for ``molecules`` (batches of 128 geometries), averaging their conformers, with
    copies of a conformer left out (``distinct``, as lieprop serves) or each conformer predicted."""
    started = time.perf_counter()
    inputs = conformer_inputs(molecules, distinct=distinct)
    inputs.average(list(bundle.model.predictions(inputs.numbers, inputs.positions, batch_size=128)))
    return (time.perf_counter() - started) * 1000


def cost_table(smiles: list[str], bundle: Any) -> str:
    """Side by side: embedding each SMILES (one process) with one conformer and with the default count, and the
    model's time for what was embedded (batches of 128 geometries), per SMILES: with the default count, each
    conformer predicted and, as lieprop serves, each distinct one (:mod:`lieprop.data.duplicates`)."""
    limits = ValidationLimits(max_atoms=1000, embed_timeout=0)
    lines = [f"Cost per SMILES ({len(smiles)} test SMILES, one process; model: the bundle, batches of 128 "
             "geometries):", "", "| conformers | embedding (ms) | model passes per SMILES | model (ms) |",
             "|---|---|---|---|"]
    for n in (1, DEFAULT_CONFORMERS):
        started = time.perf_counter()
        embedded = []
        for s in smiles:
            # a cage ETKDG cannot build as QM9 writes it (no stereo) fails: timed all the same
            with contextlib.suppress(MoleculeError):
                embedded.append(from_smiles(s, n_conformers=n, limits=limits))
        embed_ms = (time.perf_counter() - started) * 1000 / len(smiles)
        for distinct in (False, True) if n > 1 else (False,):
            passes = len(conformer_inputs(embedded, distinct=distinct).numbers) / len(embedded)
            label = f"{n}" + ("" if n == 1 else ", distinct ones (served)" if distinct else ", every one")
            model = model_ms(bundle, embedded, distinct) / len(smiles)  # per SMILES, as the embedding column
            lines.append(f"| {label} | {embed_ms:.1f} | {passes:.2f} | {model:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=None, help="the first N test molecules (default: all)")
    parser.add_argument("--model", default=None, help="bundle (default: the bundled model)")
    parser.add_argument("--timing", type=int, default=200, help="SMILES timed per setting (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="processes embedding the one-conformer path")
    parser.add_argument("--timing-only", action="store_true", help="only the cost table")
    args = parser.parse_args(argv)
    data, confs = load_qm9(), load_conformers()
    rows = split_indices(len(data))["test"][: args.molecules]
    rows = rows[confs.available(rows)]
    bundle = load_bundle(args.model or default_model_path())
    if args.timing_only:
        print(cost_table([str(data.smiles[r]) for r in rows[: args.timing]], bundle))
        return 0
    targets = list(bundle.model.targets)
    shown = [t for t in SHOWN if t in targets]
    truth = data.targets_in_units()[rows][:, [PROPERTY_NAMES.index(t) for t in targets]]
    given = bundle.values(*zip(*(data.molecule(int(r)) for r in rows), strict=True), path="given")
    molecules = confs.molecules(rows)
    most = max(len(m.geometries) for m in molecules)
    by_k = {}
    for k in range(1, most + 1):
        first_k = [Molecule(m.numbers, m.positions, other_conformers=m.other_conformers[: k - 1]) for m in molecules]
        by_k[k] = bundle.molecule_values(first_k, path="generated")
    # what ``conformers: 1`` serves: ETKDG's first conformer (not the lowest in energy of five), embedded here
    limits = ValidationLimits(max_atoms=1000, embed_timeout=0)
    records = [(k, None, str(confs.smiles[r])) for k, r in enumerate(rows)]
    single = list(embed_many(records, args.workers, n_conformers=1, limits=limits))
    one = np.array([item.ok for item in single])
    one_values = np.full_like(by_k[1], np.nan)
    one_values[one] = bundle.molecule_values([item.molecule for item in single if item.ok], path="generated")
    heavy = np.array([m.n_heavy for m in molecules])
    rotors = np.array([rotatable_bonds(str(confs.smiles[r])) for r in rows])

    def mae(values: np.ndarray, mask: np.ndarray, t: str) -> float:
        j = targets.index(t)
        return float(np.abs(values[mask, j] - truth[mask, j]).mean() * BY_NAME[t].to_paper)

    units = [BY_NAME[t].paper_unit or BY_NAME[t].unit for t in shown]
    header = " | ".join(f"{t} ({u})" for t, u in zip(shown, units, strict=True))
    n_geometries = np.array([len(m.geometries) for m in molecules])
    print(f"{len(rows)} test molecules; conformers per molecule: mean {n_geometries.mean():.2f}, "
          f"{int((n_geometries < most).sum())} with fewer than {most} (other stereoisomers left out, or fewer "
          "usable)\n")
    print("MAE on the SMILES path averaged over the k lowest-energy conformers (ratio to the DFT geometry's MAE):\n")
    print(f"| conformers averaged | {header} |")
    print("|---" * (1 + len(shown)) + "|")
    everyone = np.ones(len(rows), dtype=bool)
    print("| DFT geometry | " + " | ".join(f"{mae(given, everyone, t):.4g}" for t in shown) + " |")
    cells = [f"{mae(one_values, one, t):.4g} ({mae(one_values, one, t) / mae(given, one, t):.2f}x)" for t in shown]
    print(f"| 1, as `conformers: 1` embeds it ({int(one.sum())} molecules) | " + " | ".join(cells) + " |")
    for k, values in by_k.items():
        cells = [f"{mae(values, everyone, t):.4g} ({mae(values, everyone, t) / mae(given, everyone, t):.2f}x)"
                 for t in shown]
        print(f"| {k} | " + " | ".join(cells) + " |")

    slices = [("heavy atoms <= 6", heavy <= 6), ("heavy atoms 7-8", (heavy >= 7) & (heavy <= 8)),
              ("heavy atoms 9", heavy == 9), ("no rotatable bond", rotors == 0), ("1 rotatable bond", rotors == 1),
              ("2+ rotatable bonds", rotors >= 2)]
    print(f"\nBy slice: MAE with 1 conformer (`conformers: 1`) / with {most} (ratio of the two), and the DFT "
          "geometry's MAE:\n")
    print(f"| slice | molecules | {header} |")
    print("|---" * (2 + len(shown)) + "|")
    for label, mask in slices:
        mask = mask & one
        if not mask.any():
            continue
        cells = []
        for t in shown:
            single_mae, many, dft = mae(one_values, mask, t), mae(by_k[most], mask, t), mae(given, mask, t)
            cells.append(f"{single_mae:.3g} / {many:.3g} ({many / single_mae:.2f}x); DFT {dft:.3g}")
        print(f"| {label} | {int(mask.sum())} | " + " | ".join(cells) + " |")

    print("\n" + cost_table([str(data.smiles[r]) for r in rows[: args.timing]], bundle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
