"""QM9 in the geometries users send: every molecule's SMILES embedded exactly as the service embeds a SMILES.

A chemist who sends a SMILES gets a prediction for lieprop's own conformers of it (ETKDGv3 with the fixed seed, then
MMFF94, :data:`~lieprop.data.records.DEFAULT_CONFORMERS` of them, the prediction averaging over them;
:func:`lieprop.data.readers.from_smiles`), not for the DFT-relaxed QM9 geometry the model was trained on. To train
and evaluate for that path, this module embeds QM9's SMILES once, through that same function, and caches every
conformer next to the QM9 cache (``qm9-mmff-v3.npz`` under :func:`lieprop.data.qm9.cache_dir`).

QM9's SMILES carry no stereochemistry, but each label belongs to one stereoisomer, the one of its DFT geometry: 76%
of QM9 molecules have a stereocentre or a stereogenic double bond. So each SMILES first gets the stereo of its DFT
geometry (:func:`lieprop.data.stereo.isomeric_smiles`; ``smiles`` records what was embedded, ``stereo`` whether the
transfer worked: it fails where the relaxed geometry's bonds differ from the SMILES, and for the strained cages
where ETKDG cannot meet the stereo, which are embedded as written). Version 1 embedded the SMILES as written, so a
molecule with two stereocentres had a good chance of being trained and scored on the wrong diastereomer; version 2
kept one conformer per molecule; version 3 keeps all the service's conformers (the first, the lowest in energy, is
:meth:`ConformerArrays.molecule`, what training uses).

Building takes about 0.1 s per molecule per core (five conformers), in chunks of :data:`CHUNK` molecules, each
written to ``qm9-mmff-v3.parts/`` as soon as it is done: an interrupted build resumes at the first missing chunk
(``python -m lieprop.data.qm9_conformers --workers 2``). ``--splits valid,test`` builds only those splits' rows
(what calibration and evaluation need, about a quarter of the work); the others are then not ``built`` and a later
build without ``--splits`` adds them. ``--fraction F`` embeds only a seeded random fraction of the selected rows
(``--splits train --fraction 0.2``: a fifth of the training molecules, about 40 minutes on two cores, for a
force-field fine-tune that fits in a working session); the subsets are nested, so a larger fraction later embeds only
the rows the smaller one lacked. A molecule that does not embed, or whose embedded composition differs from its
QM9 composition, is kept with ``ok = False`` and its error, so rows stay aligned with QM9's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lieprop.data.molecule import Molecule
from lieprop.data.qm9 import N_MOLECULES, QM9Arrays, cache_dir, load_qm9, split_indices
from lieprop.data.validation import MoleculeError

CONFORMER_VERSION = 3
#: Molecules per resumable chunk.
CHUNK = 2000
#: Seed of the random order in which ``--fraction`` picks rows (fixed, so that the subsets are nested).
SUBSET_SEED = 0


@dataclass(frozen=True)
class ConformerArrays:
    """Force-field geometries of QM9, row-aligned with :class:`~lieprop.data.qm9.QM9Arrays`: molecule ``i`` owns
    atoms ``offsets[i]:offsets[i+1]`` and ``n_geometries[i]`` conformers of them, their positions one after the other
    in ``positions[position_offsets[i]:position_offsets[i+1]]``, the lowest in energy first (none when ``ok[i]`` is
    False; ``errors[i]`` then says why). A trial cache holds only the first rows of QM9, a ``--splits`` build only
    some splits' rows: :meth:`available` says which rows have conformers."""

    numbers: np.ndarray  # (n_atoms_total,) int8
    offsets: np.ndarray  # (n_mol + 1,) int64
    positions: np.ndarray  # (sum of n_atoms * n_geometries, 3) float32, Å
    position_offsets: np.ndarray  # (n_mol + 1,) int64
    n_geometries: np.ndarray  # (n_mol,) int64
    ok: np.ndarray  # (n_mol,) bool
    built: np.ndarray  # (n_mol,) bool, whether the row was embedded at all (a ``--splits`` build leaves rows out)
    errors: np.ndarray  # (n_mol,) str, empty when ok
    smiles: np.ndarray  # (n_mol,) str, the SMILES embedded: QM9's, with its DFT geometry's stereo where ``stereo``
    stereo: np.ndarray  # (n_mol,) bool, whether the stereo came from the DFT geometry

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def available(self, rows: np.ndarray) -> np.ndarray:
        """Boolean mask over QM9 ``rows``: which have a conformer here."""
        rows = np.asarray(rows)
        inside = rows < len(self)
        out = np.zeros(rows.shape, dtype=bool)
        out[inside] = self.ok[rows[inside]]
        return out

    def geometries(self, i: int) -> tuple[np.ndarray, ...]:
        """Molecule ``i``'s conformers ((n_atoms, 3) each, Å), the lowest in energy first (none when it has none)."""
        n = int(self.offsets[i + 1] - self.offsets[i])
        block = self.positions[self.position_offsets[i]:self.position_offsets[i + 1]].astype(np.float64)
        return tuple(block.reshape(-1, n, 3)) if n else ()

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(numbers, positions) of molecule ``i``'s lowest-energy conformer (empty arrays when it has none)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.numbers[a:b].astype(np.int64), self.positions[self.position_offsets[i]:][: b - a].astype(np.float64)

    def molecules(self, rows: Sequence[int]) -> list[Molecule]:
        """The rows as the service's SMILES results would hold them: the lowest-energy conformer as ``positions``,
        the others as ``other_conformers`` (a prediction averages over all)."""
        out = []
        for i in rows:
            first, *others = self.geometries(int(i))
            out.append(Molecule(self.molecule(int(i))[0], first, other_conformers=tuple(others)))
        return out


def conformer_cache_path() -> Path:
    return cache_dir() / f"qm9-mmff-v{CONFORMER_VERSION}.npz"


def _parts_dir() -> Path:
    return conformer_cache_path().with_suffix(".parts")


def embed_chunk(smiles: list[str], geometries: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Embed ``smiles``, each in the stereoisomer of its DFT geometry (numbers, positions), as the service embeds
    a SMILES; a process-pool task. Returns the chunk's arrays."""
    from lieprop.data.readers import from_smiles
    from lieprop.data.stereo import isomeric_smiles
    from lieprop.data.validation import ValidationLimits

    limits = ValidationLimits(max_atoms=1000, embed_timeout=0)  # QM9's own molecules: never refused for size or time
    records: list[dict[str, Any]] = []
    for text, (composition, dft) in zip(smiles, geometries, strict=True):
        try:
            isomeric = isomeric_smiles(text, composition, dft)
        except Exception:  # noqa: BLE001 - RDKit on an odd geometry: the SMILES as written, as when no match
            isomeric = None
        try:
            try:
                m = from_smiles(isomeric or text, limits=limits)
            except MoleculeError:
                if isomeric is None:
                    raise
                isomeric = None  # ETKDG cannot meet the stereo of some strained cages: the SMILES as written
                m = from_smiles(text, limits=limits)
            if not np.array_equal(np.sort(m.numbers), np.sort(composition)):
                raise MoleculeError("invalid_smiles", "the SMILES gives another composition than the QM9 geometry")
            record = {"numbers": m.numbers.astype(np.int8),
                      "positions": np.concatenate(m.geometries).astype(np.float32),
                      "counts": len(m.numbers), "n_geometries": len(m.geometries), "ok": True, "errors": ""}
        except Exception as exc:  # noqa: BLE001 - recorded per molecule; the build goes on
            record = {"counts": 0, "n_geometries": 0, "ok": False, "errors": f"{type(exc).__name__}: {exc}"[:200]}
        records.append({**record, "built": True, "smiles": isomeric or text, "stereo": isomeric is not None})
    return _pack(records)


def _pack(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A chunk's arrays from one record per row (the per-row fields, and ``numbers``/``positions`` when embedded)."""
    def joined(field: str, empty: np.ndarray) -> np.ndarray:
        parts = [r[field] for r in records if field in r]
        return np.concatenate(parts) if parts else empty

    types = {"counts": np.int64, "n_geometries": np.int64, "ok": bool, "built": bool, "errors": str, "smiles": str,
             "stereo": bool}
    return {"numbers": joined("numbers", np.zeros(0, np.int8)),
            "positions": joined("positions", np.zeros((0, 3), np.float32)),
            **{f: np.asarray([r[f] for r in records], dtype=t) for f, t in types.items()}}


#: The error of a row a ``--splits`` build left out.
NOT_BUILT = "not built: python -m lieprop.data.qm9_conformers (without --splits or --fraction) embeds every row"


#: The per-row fields of a chunk's arrays (beside the ragged ``numbers`` and ``positions``).
_ROW_FIELDS = ("counts", "n_geometries", "ok", "built", "errors", "smiles", "stereo")


def _row_records(arrays: dict[str, np.ndarray], rows: Sequence[int]) -> dict[int, dict[str, Any]]:
    """A chunk's arrays (:func:`embed_chunk`'s, or a part file's) cut per row: {QM9 row: that row's fields}, for
    the rows the arrays hold in order."""
    atom_at = np.concatenate([[0], np.cumsum(arrays["counts"])])
    pos_at = np.concatenate([[0], np.cumsum(arrays["counts"] * arrays["n_geometries"])])
    return {i: {"numbers": arrays["numbers"][atom_at[k]:atom_at[k + 1]],
                "positions": arrays["positions"][pos_at[k]:pos_at[k + 1]],
                **{f: arrays[f][k] for f in _ROW_FIELDS}} for k, i in enumerate(rows)}


def _assemble(data: QM9Arrays, rows: range, found: dict[int, dict[str, Any]]) -> dict[str, np.ndarray]:
    """A chunk's arrays from the records ``found`` for some of its rows (:func:`_row_records`); the other rows are
    recorded as not built."""
    return _pack([found.get(i) or {"counts": 0, "n_geometries": 0, "ok": False, "built": False, "errors": NOT_BUILT,
                                   "smiles": str(data.smiles[i]), "stereo": False} for i in rows])


def subset(n: int, fraction: float) -> np.ndarray:
    """Boolean mask over ``n`` QM9 rows: a seeded random ``fraction`` of them, nested (a larger fraction's subset
    holds every smaller one's), whatever other selection it is combined with."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rank = np.empty(N_MOLECULES, dtype=np.int64)
    rank[np.random.default_rng(SUBSET_SEED).permutation(N_MOLECULES)] = np.arange(N_MOLECULES)
    return rank[:n] < fraction * N_MOLECULES


def build_conformers(data: QM9Arrays | None = None, workers: int = 1, limit: int | None = None,
                     splits: Sequence[str] | None = None, fraction: float | None = None, log=print) -> Path:
    """Embed every QM9 SMILES (or the first ``limit``; or only the rows of ``splits``, e.g. ``("valid", "test")``
    of the default split; or a random ``fraction`` of those, :func:`subset`) into the conformer cache, resuming: a
    chunk's rows already embedded by an earlier build are kept, and only the selected rows it lacks are embedded."""
    data = data if data is not None else load_qm9()
    n = min(len(data), limit) if limit else len(data)
    selected = np.ones(n, dtype=bool)
    if splits:
        parts = split_indices(len(data))
        unknown = sorted(set(splits) - set(parts))
        if unknown:
            raise ValueError(f"unknown splits {unknown}; known: {', '.join(parts)}")
        selected[:] = False
        for name in splits:
            chosen = parts[name]
            selected[chosen[chosen < n]] = True
    if fraction is not None:
        selected &= subset(n, fraction)
    starts = list(range(0, n, CHUNK))
    parts_dir = _parts_dir()
    parts_dir.mkdir(parents=True, exist_ok=True)

    def earlier(s: int) -> dict[int, dict[str, Any]]:
        """The rows of chunk ``s`` an earlier build embedded."""
        path = _part(s, n)
        if not path.exists():
            return {}
        with np.load(path) as z:
            arrays = {f: z[f] for f in z.files}
        records = _row_records(arrays, range(s, min(s + CHUNK, n)))
        return {i: r for i, r in records.items() if r["built"]}

    kept = {s: earlier(s) for s in starts}
    missing = {s: [i for i in range(s, min(s + CHUNK, n)) if selected[i] and i not in kept[s]] for s in starts}
    for s in starts:  # a chunk with nothing selected still needs its file, of rows not built, for the merge
        if not missing[s] and not _part(s, n).exists():
            np.savez(_part(s, n), **_assemble(data, range(s, min(s + CHUNK, n)), kept[s]))
    todo = [s for s in starts if missing[s]]
    log(f"conformers: {len(starts) - len(todo)} of {len(starts)} chunks done; embedding "
        f"{sum(len(missing[s]) for s in todo)} molecules on {workers} worker(s)")
    start = time.time()
    embedded = 0

    def task(s: int) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
        return [str(data.smiles[i]) for i in missing[s]], [data.molecule(i) for i in missing[s]]

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {s: pool.submit(embed_chunk, *task(s)) for s in todo}
        for s, future in futures.items():
            found = {**kept[s], **_row_records(future.result(), missing[s])}
            arrays = _assemble(data, range(s, min(s + CHUNK, n)), found)
            tmp = parts_dir / f"{s:06d}.tmp.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, _part(s, n))
            embedded += len(missing[s])
            log(f"conformers: chunk {s // CHUNK + 1}/{len(starts)}, {int(arrays['ok'].sum())}/"
                f"{int(arrays['built'].sum())} embedded, {embedded / max(1e-9, time.time() - start):.0f} molecules/s")
    return merge_parts(n)


def _part(start: int, n: int) -> Path:
    """The file of the chunk that starts at ``start`` (named by its rows, so a trial build of the first ``n``
    molecules never passes a short last chunk off as a full one)."""
    return _parts_dir() / f"{start:06d}-{min(start + CHUNK, n):06d}.npz"


def merge_parts(n: int = N_MOLECULES) -> Path:
    """Join the chunk files of the first ``n`` molecules into the cache file (once every chunk exists). A cache of
    fewer than all QM9 molecules (a trial build) covers only its first rows."""
    chunks = [np.load(_part(s, n)) for s in range(0, n, CHUNK)]

    def joined(field: str) -> np.ndarray:
        return np.concatenate([c[field] for c in chunks])

    counts, n_geometries = joined("counts"), joined("n_geometries")
    out = {"numbers": joined("numbers"), "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
           "positions": joined("positions"),
           "position_offsets": np.concatenate([[0], np.cumsum(counts * n_geometries)]).astype(np.int64),
           **{f: joined(f) for f in ("n_geometries", "ok", "built", "errors", "smiles", "stereo")}}
    path = conformer_cache_path()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, version=CONFORMER_VERSION, **out)
    os.replace(tmp, path)
    return path


def load_conformers() -> ConformerArrays:
    """The conformer cache; ``FileNotFoundError`` naming the command that builds it when it is missing."""
    path = conformer_cache_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; build it (about 3.5 hours per core, resumable) with "
                                "python -m lieprop.data.qm9_conformers --workers N")
    with np.load(path) as z:
        if int(z["version"]) != CONFORMER_VERSION:
            raise FileNotFoundError(f"{path} is from another version; rebuild it with python -m "
                                    "lieprop.data.qm9_conformers")
        return ConformerArrays(**{f: z[f] for f in ConformerArrays.__dataclass_fields__})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="embedding processes (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N molecules (a trial run)")
    parser.add_argument("--splits", default=None, help="only these splits' rows, e.g. valid,test (default: all rows)")
    parser.add_argument("--fraction", type=float, default=None,
                        help="only a seeded random fraction of those rows, e.g. 0.2 (nested: a larger one adds rows)")
    args = parser.parse_args(argv)
    splits = args.splits.split(",") if args.splits else None
    path = build_conformers(workers=args.workers, limit=args.limit, splits=splits, fraction=args.fraction,
                            log=lambda m: print(m, flush=True))
    print(f"done: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
