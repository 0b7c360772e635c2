"""How fast does ``lieprop predict`` score files? Molecules/second and peak memory, by input, workers and engine.

    python benchmarks/batch_scoring.py                 # 2,000 SMILES and 5,000 XYZ frames; Ray rows if installed
    python benchmarks/batch_scoring.py --quick         # 100 SMILES and 200 XYZ frames, local engine only
    python benchmarks/batch_scoring.py --model runs/best/model.pt --smiles 10000 --xyz 50000 --ray

Inputs are real QM9 molecules when qm9pack is installed (the training extra): a SMILES CSV of the GDB SMILES, and
a multi-frame XYZ of the DFT geometries, both spread over the whole set. Without qm9pack the SMILES cycle through
~120 QM9-like ones (repeats are embedded once, so SMILES rows then overstate the speed). Every row runs
``lieprop predict INPUT --out OUT.parquet`` in a fresh process, as a user would, and reads its summary: mol/s over
the scoring session (pool start-up included, imports and model loading not), the wall time of the whole command,
and the peak resident memory of the ``lieprop predict`` process (VmHWM; worker processes and Ray actors not
included). The model is the bundled one unless ``--model`` names another (an untrained stand-in when neither
exists, with a note).
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import QM9_LIKE_SMILES as FALLBACK_SMILES  # noqa: E402  (the same QM9-like SMILES as the ingest benchmark)

_RATE = re.compile(r"([\d,.]+) rows/s \((\w+) engine")
_PEAK = re.compile(r"peak memory ([\d,.]+) MB")


def qm9_molecules(n: int) -> list[tuple[str, str, list[str], list[list[float]]]] | None:
    """``n`` QM9 molecules spread over the set: (id, SMILES, element symbols, positions in Å); None without qm9pack."""
    try:
        from lieprop.data.qm9 import N_MOLECULES, qm9pack_csvs

        files = qm9pack_csvs()
    except (ImportError, ModuleNotFoundError):
        return None
    step = max(1, N_MOLECULES // n)
    out = []
    csv.field_size_limit(1 << 24)
    for path in files:
        with open(path, newline="") as f:
            for k, row in enumerate(csv.DictReader(f)):
                if k % step == 0:
                    out.append((f"gdb_{row['Index']}", row["SMILES"], ast.literal_eval(row["Elements"]),
                                ast.literal_eval(row["XYZ_Ang"])))
                    if len(out) == n:
                        return out
    return out


def write_inputs(folder: Path, n_smiles: int, n_xyz: int) -> tuple[Path, Path, str]:
    smiles_path, xyz_path = folder / "library.csv", folder / "frames.xyz"
    molecules = qm9_molecules(max(n_smiles, n_xyz))
    source = "QM9 (qm9pack)"
    if molecules is None:
        from lieprop.data.elements import symbol
        from lieprop.data.readers import from_smiles

        source = f"{len(FALLBACK_SMILES)} QM9-like SMILES, repeated (qm9pack not installed)"
        embedded = [from_smiles(s, f"m{i}") for i, s in enumerate(FALLBACK_SMILES)]
        molecules = [(f"m{i}", FALLBACK_SMILES[i % len(FALLBACK_SMILES)],
                      [symbol(int(z)) for z in embedded[i % len(embedded)].numbers],
                      embedded[i % len(embedded)].positions.tolist()) for i in range(max(n_smiles, n_xyz))]
    with open(smiles_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "smiles"])
        w.writerows((ident, smiles) for ident, smiles, _, _ in molecules[:n_smiles])
    with open(xyz_path, "w") as f:
        for k in range(n_xyz):
            ident, _, elements, positions = molecules[k % len(molecules)]
            f.write(f"{len(elements)}\n{ident}\n")
            f.writelines(f"{e} {x:.6f} {y:.6f} {z:.6f}\n" for e, (x, y, z) in zip(elements, positions, strict=True))
    return smiles_path, xyz_path, source


def stand_in_model(folder: Path) -> Path:
    import torch

    from lieprop.data.properties import PROPERTY_NAMES
    from lieprop.model.bundle import save_bundle
    from lieprop.model.network import NetworkConfig
    from lieprop.model.predictor import PropertyModel

    torch.manual_seed(0)
    cfg = NetworkConfig(targets=list(PROPERTY_NAMES))
    path = folder / "stand-in.pt"
    save_bundle(PropertyModel(cfg), path, "untrained-stand-in")
    return path


def run(input_path: Path, out: Path, model: Path, workers: int, engine: str, chunk: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "lieprop.cli", "predict", str(input_path), "--out", str(out), "--model", str(model),
           "--workers", str(workers), "--engine", engine, "--chunk-size", str(chunk), "--overwrite", "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rate, peak = _RATE.search(done.stderr), _PEAK.search(done.stderr)
    assert rate and peak, done.stderr
    return {"rate": float(rate.group(1).replace(",", "")), "wall": wall, "peak": float(peak.group(1).replace(",", ""))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 SMILES and 200 XYZ frames, no Ray (unless --ray)")
    parser.add_argument("--smiles", type=int, default=None, help="SMILES rows (default 2000; quick 100)")
    parser.add_argument("--xyz", type=int, default=None, help="XYZ frames (default 5000; quick 200)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                        help="include the Ray engine (default: when Ray is installed, not with --quick)")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: lieprop's)")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled one)")
    args = parser.parse_args(argv)

    from lieprop.inference import default_model_path
    from lieprop.scoring.pipeline import DEFAULT_CHUNK_SIZE
    from lieprop.scoring.ray_engine import ray_available

    n_smiles = args.smiles or (100 if args.quick else 2000)
    n_xyz = args.xyz or (200 if args.quick else 5000)
    chunk = args.chunk_size or (100 if args.quick else DEFAULT_CHUNK_SIZE)
    engines = ["local"] + (["ray"] if (args.ray if args.ray is not None else not args.quick and ray_available())
                           else [])
    if "ray" in engines and not ray_available():
        parser.error("--ray needs Ray: pip install 'lieprop[ray]'")
    with tempfile.TemporaryDirectory(prefix="lieprop-bench-") as tmp:
        folder = Path(tmp)
        model = args.model or default_model_path()
        note = ""
        if not model.exists():
            model, note = stand_in_model(folder), " (untrained stand-in: no bundled model yet)"
        smiles_path, xyz_path, source = write_inputs(folder, n_smiles, n_xyz)
        print(f"# {shlex.join([os.path.basename(sys.executable), *sys.argv])}")
        print(f"# python {platform.python_version()}, {os.cpu_count()} cores, model {model.name}{note}, "
              f"inputs: {source}, chunk size {chunk}")
        print("| input | molecules | engine | workers | mol/s | wall s | peak RSS MB |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for label, path, n in (("SMILES CSV", smiles_path, n_smiles), ("XYZ frames", xyz_path, n_xyz)):
            for engine in engines:
                for workers in args.workers:
                    r = run(path, folder / "out.parquet", model, workers, engine, chunk)
                    print(f"| {label} | {n:,} | {engine} | {workers} | {r['rate']:,.1f} | {r['wall']:.1f} | "
                          f"{r['peak']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
