"""How fast does lieprop ingest molecules? Prints molecules/second for each reader.

    python benchmarks/ingest.py            # ~120 QM9-like SMILES, a few seconds per row
    python benchmarks/ingest.py --quick    # 40 SMILES, for a smoke run

Rows: SMILES -> 3D (ETKDGv3 + MMFF94) on 1 process and on all cores (pool start-up included, since a
batch job pays it too), XYZ parsing (multi-frame, through ASE, validation included), SDF parsing
(RDKit, validation included), and featurise + collate when ``lieprop.data.batch`` exists.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable

# QM9-like molecules: H, C, N, O, F, at most 9 heavy atoms.
_SMILES_TEXT = """
C N O CC CO C=O CN C#N CC#C CC=O CCO CCN COC CC#N NC=O OC=O CC(C)C CC(C)O CC(=O)C CC(=O)O CC(=O)N
CCCO CCCN COCC OCCO NCCN NCCO CC(N)=O CN(C)C CC(C)=O C1CC1 C1CO1 C1CN1 C1CCC1 C1COC1 C1CCO1 C1CCCC1
C1CCOC1 C1CCNC1 C1CCCCC1 C1CCOCC1 C1COCCO1 c1ccccc1 c1ccncc1 c1ccoc1 c1cc[nH]c1 c1cnoc1 c1ncncn1
Cc1ccccc1 Oc1ccccc1 Nc1ccccc1 Fc1ccccc1 c1ccc(F)cc1F Cc1ccncc1 Oc1ccncc1 Cc1ccoc1 Cc1cc[nH]c1
CC(C)(C)O CC(C)(C)N CC(C)(C)C CCC(C)=O CCC(=O)O CCC(N)=O CCOC=O COC(C)=O CC(O)CO OCC(O)CO
CC1CC1 CC1CO1 OC1CC1 NC1CC1 C#CC1CC1 CC1(C)CC1 OCC1CC1 C1CC2CC2C1 C1CC2CCC1C2 C1CC2CC1O2
CC#CC CC#CCO N#CCC#N O=CC=O CC(=O)C=O OC1COC1 FC(F)F FCC(F)F OCC(F)(F)F CC(F)(F)F FC1CC1
CCCCC CCCCO CCCCN CCCC=O CCOCC CCNCC CC(C)CO CC(C)CN CC(O)C=O NC(=O)C=O O=C1CCC1 O=C1CCO1 O=C1NCC1
O=C1CCCC1 O=C1OCCC1 O=C1NCCC1 CN1CCC1 CN1CCCC1 CC1=CCC1 C1=CCCC1 C1=CCCCC1 CC1=CC=CC1 C=CC=C
C=CC=O C=CC#N C=CCO C=CCN C=CC(=O)O CC=CC CC=CC=O CC(=C)C CC(=C)C=O OC=CC=O NC=CC=O
"""
QM9_LIKE_SMILES = _SMILES_TEXT.split()


def timed(fn: Callable[[], int], repeat: int = 1) -> tuple[int, float]:
    """Run ``fn`` (returns a count) ``repeat`` times; return the count and the best wall time."""
    best, count = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - start)
    return count, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 molecules instead of all (~120)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the parallel SMILES row (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats for the parsing rows (best is kept)")
    args = parser.parse_args(argv)

    from rdkit import Chem
    from rdkit.Geometry import Point3D

    from lieprop.data.elements import symbol
    from lieprop.data.readers import SmilesRecord, embed_many, embedding_pool, read_sdf, read_xyz

    smiles = QM9_LIKE_SMILES[:40] if args.quick else QM9_LIKE_SMILES
    records = [SmilesRecord(i, f"m{i}", s) for i, s in enumerate(smiles)]
    print(f"# {shlex.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"# python {platform.python_version()}, {os.cpu_count()} cores, {len(records)} molecules")
    print(f"{'task':<36}{'molecules':>10}{'seconds':>10}{'mol/s':>10}")
    rows: list[tuple[str, int, float]] = []

    def report(task: str, count: int, seconds: float) -> None:
        rows.append((task, count, seconds))
        print(f"{task:<36}{count:>10}{seconds:>10.3f}{count / seconds:>10.1f}", flush=True)

    items: list = []

    def embed_serial() -> int:
        items[:] = list(embed_many(records, workers=1))
        return len(items)

    report("SMILES -> 3D, 1 process", *timed(embed_serial))
    failed = [i for i in items if not i.ok]
    if failed:
        print(f"# {len(failed)} SMILES failed: {[(i.id, i.error.code) for i in failed]}", file=sys.stderr)
    molecules = [i.molecule for i in items if i.ok]

    if args.workers > 1:
        report(f"SMILES -> 3D, {args.workers} proc. (+pool start)",
               *timed(lambda: sum(1 for _ in embed_many(records, workers=args.workers, chunk_size=8))))
        with embedding_pool(args.workers) as pool:
            list(pool.map(abs, range(args.workers)))  # start the workers
            report(f"SMILES -> 3D, {args.workers} proc. (warm pool)", *timed(
                lambda: sum(1 for _ in embed_many(records, args.workers, chunk_size=8, executor=pool))))

    frames = []
    for m in molecules:
        frames.append(f"{m.n_atoms}\nid={m.id}\n")
        frames += [f"{symbol(int(z))} {x:.6f} {y:.6f} {w:.6f}\n"
                   for z, (x, y, w) in zip(m.numbers, m.positions, strict=True)]
    xyz = "".join(frames)
    report("XYZ parse + validate", *timed(lambda: sum(i.ok for i in read_xyz(xyz)), args.repeat))

    blocks = []
    for m in molecules:
        mol = Chem.AddHs(Chem.MolFromSmiles(m.provenance["smiles"]))
        conf = Chem.Conformer(mol.GetNumAtoms())
        for k, (x, y, w) in enumerate(m.positions):
            conf.SetAtomPosition(k, Point3D(float(x), float(y), float(w)))
        conf.Set3D(True)
        mol.AddConformer(conf)
        mol.SetProp("_Name", m.id)
        blocks.append(Chem.MolToMolBlock(mol) + "$$$$\n")
    sdf = "".join(blocks)
    report("SDF parse + validate", *timed(lambda: sum(i.ok for i in read_sdf(sdf)), args.repeat))

    try:
        from lieprop.data import batch
    except ImportError:
        print("# featurise + collate: skipped (lieprop.data.batch not available)")
    else:
        def featurise_collate() -> int:
            collated = batch.collate([m.numbers for m in molecules], [m.positions for m in molecules])
            collated.features  # noqa: B018 (the property computes the features)
            return len(molecules)

        try:
            report("featurise + collate (one batch)", *timed(featurise_collate, args.repeat))
        except (AttributeError, TypeError) as exc:
            print(f"# featurise + collate: skipped ({type(exc).__name__}: {exc})")

    from lieprop.data import qm9

    if qm9.cache_path().exists():  # building it takes a minute; `lieprop train` or load_qm9() does that once
        report("load the QM9 cache (130,831 mol.)", *timed(lambda: len(qm9.load_qm9())))
    else:
        print(f"# QM9 cache load: skipped (no cache at {qm9.cache_path()}; python -c "
              "'from lieprop.data.qm9 import load_qm9; load_qm9()' builds it)")
    return 0


if __name__ == "__main__":  # the guard matters: worker processes import this module
    raise SystemExit(main())
