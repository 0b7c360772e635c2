"""The figures and the table of docs/SYMMETRY.md: ``lieprop discover`` on the four synthetic cases built from real
QM9 molecules (needs the training extra: qm9pack and matplotlib).

    python docs/figures/make_symmetry_figures.py            # writes docs/figures/symmetry_*.png, prints the table

Each case pairs 64 QM9 molecules (rows 20, 23, ..., of the first qm9pack file: 5 to 19 atoms, some linear or flat)
with a moved copy (``lieprop.model.discovery.example_pairs``, seed 0), writes them as a multi-frame XYZ file and
runs the command on it, exactly as a user would: ``lieprop discover pairs.xyz --generators 3 --out report.json
--plot figure.png``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lieprop.cli import main as lieprop
from lieprop.data.qm9 import parse_qm9pack, qm9pack_csvs
from lieprop.data.xyz import write_xyz_frames
from lieprop.model.discovery import example_pairs

HERE = Path(__file__).resolve().parent
CASES = {  # case -> what the pairs hold
    "rotation": "rotations about random axes (angles up to 0.5 rad)",
    "rotation_z": "rotations about the z axis",
    "scaling": "uniform scalings (factors exp(±0.25))",
    "jitter": "every atom moved independently (0.1 Å per coordinate)",
}


def main() -> None:
    data = parse_qm9pack(qm9pack_csvs()[:1], limit=400)
    molecules = [data.molecule(i) for i in range(20, 400, 3)][:64]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, what in CASES.items():
            pairs, report = Path(tmp) / f"{case}.xyz", Path(tmp) / f"{case}.json"
            write_xyz_frames(pairs, example_pairs(molecules, case, seed=0))
            rc = lieprop(["discover", str(pairs), "--generators", "3", "--out", str(report), "--quiet",
                          "--plot", str(HERE / f"symmetry_{case}.png")])
            if rc:
                raise SystemExit(f"lieprop discover failed on {case}")
            r = json.loads(report.read_text())
            best = r["best_match"]
            cosines = ", ".join(f"{c:.4f}" for c in r["matches"][best]["cosines"]) if best else "-"
            rows.append(f"| {case} | {what} | {r['rank'] if r['symmetry'] else '-'} | {best or 'no symmetry'} | "
                        f"{cosines} | {r['residual']:.2g} | {r['baseline_residual']:.3f} |")
    print("| case | pairs | rank | verdict | principal-angle cosines | residual (Å) | baseline (Å) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
