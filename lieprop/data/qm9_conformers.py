"""QM9 in the geometries users send: every molecule's SMILES embedded exactly as the service embeds a SMILES.

A chemist who sends a SMILES gets a prediction for lieprop's own conformer of it (ETKDGv3 with the fixed seed, then
MMFF94; :func:`lieprop.data.readers.from_smiles`), not for the DFT-relaxed QM9 geometry the model was trained on.
To train and evaluate for that path, this module embeds all 130,831 QM9 SMILES once, through that same function,
and caches the result next to the QM9 cache (``qm9-mmff-v2.npz`` under :func:`lieprop.data.qm9.cache_dir`).

QM9's SMILES carry no stereochemistry, but each label belongs to one stereoisomer, the one of its DFT geometry: 76%
of QM9 molecules have a stereocentre or a stereogenic double bond. So each SMILES first gets the stereo of its DFT
geometry (:func:`lieprop.data.stereo.isomeric_smiles`; ``smiles`` records what was embedded, ``stereo`` whether the
transfer worked: it fails where the relaxed geometry's bonds differ from the SMILES, and for the strained cages
where ETKDG cannot meet the stereo, which are embedded as written). Version 1 embedded the SMILES as written, so a
molecule with two stereocentres had a good chance of being trained and scored on the wrong diastereomer.

Building takes about 35 ms per molecule per core (about 40 minutes on two cores), in chunks of
:data:`CHUNK` molecules, each written to ``qm9-mmff-v2.parts/`` as soon as it is done: an interrupted build resumes
at the first missing chunk (``python -m lieprop.data.qm9_conformers --workers 2``). A molecule that does not embed, or
whose embedded composition differs from its QM9 composition, is kept with ``ok = False`` and its error, so rows stay
aligned with QM9's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lieprop.data.qm9 import N_MOLECULES, QM9Arrays, cache_dir, load_qm9
from lieprop.data.validation import MoleculeError

CONFORMER_VERSION = 2
#: Molecules per resumable chunk.
CHUNK = 2000


@dataclass(frozen=True)
class ConformerArrays:
    """Force-field geometries of QM9, row-aligned with :class:`~lieprop.data.qm9.QM9Arrays`: molecule ``i`` owns
    atoms ``offsets[i]:offsets[i+1]`` (none when ``ok[i]`` is False; ``errors[i]`` then says why). A trial cache
    holds only the first rows of QM9: :meth:`available` says which rows have a conformer."""

    numbers: np.ndarray  # (n_atoms_total,) int8
    positions: np.ndarray  # (n_atoms_total, 3) float32, Å
    offsets: np.ndarray  # (n_mol + 1,) int64
    ok: np.ndarray  # (n_mol,) bool
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

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(numbers, positions) of molecule ``i``'s conformer (empty arrays when it has none)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.numbers[a:b].astype(np.int64), self.positions[a:b].astype(np.float64)


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
    numbers: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    counts, ok, errors, embedded, stereo = [], [], [], [], []
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
            numbers.append(m.numbers.astype(np.int8))
            positions.append(m.positions.astype(np.float32))
            counts.append(len(m.numbers))
            ok.append(True)
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - recorded per molecule; the build goes on
            counts.append(0)
            ok.append(False)
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        embedded.append(isomeric or text)
        stereo.append(isomeric is not None)
    return {"numbers": np.concatenate(numbers) if numbers else np.zeros(0, np.int8),
            "positions": np.concatenate(positions) if positions else np.zeros((0, 3), np.float32),
            "counts": np.asarray(counts, np.int64), "ok": np.asarray(ok), "errors": np.asarray(errors, dtype=str),
            "smiles": np.asarray(embedded, dtype=str), "stereo": np.asarray(stereo)}


def build_conformers(data: QM9Arrays | None = None, workers: int = 1, limit: int | None = None,
                     log=print) -> Path:
    """Embed every QM9 SMILES (or the first ``limit``) into the conformer cache, resuming finished chunks."""
    data = data if data is not None else load_qm9()
    n = min(len(data), limit) if limit else len(data)
    parts = _parts_dir()
    parts.mkdir(parents=True, exist_ok=True)
    todo = [s for s in range(0, n, CHUNK) if not _part(s, n).exists()]
    log(f"conformers: {len(range(0, n, CHUNK)) - len(todo)} of {len(range(0, n, CHUNK))} chunks done; "
        f"embedding {sum(min(CHUNK, n - s) for s in todo)} molecules on {workers} worker(s)")
    start = time.time()

    def task(s: int) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
        rows = range(s, min(s + CHUNK, n))
        return [str(data.smiles[i]) for i in rows], [data.molecule(i) for i in rows]

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {s: pool.submit(embed_chunk, *task(s)) for s in todo}
        for k, (s, future) in enumerate(futures.items(), 1):
            arrays = future.result()
            tmp = parts / f"{s:06d}.tmp.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, _part(s, n))
            rate = k * CHUNK / max(1e-9, time.time() - start)
            log(f"conformers: chunk {s // CHUNK + 1}/{len(range(0, n, CHUNK))}, {int(arrays['ok'].sum())}/"
                f"{len(arrays['ok'])} embedded, {rate:.0f} molecules/s")
    return merge_parts(n)


def _part(start: int, n: int) -> Path:
    """The file of the chunk that starts at ``start`` (named by its rows, so a trial build of the first ``n``
    molecules never passes a short last chunk off as a full one)."""
    return _parts_dir() / f"{start:06d}-{min(start + CHUNK, n):06d}.npz"


def merge_parts(n: int = N_MOLECULES) -> Path:
    """Join the chunk files of the first ``n`` molecules into the cache file (once every chunk exists). A cache of
    fewer than all QM9 molecules (a trial build) covers only its first rows."""
    chunks = [np.load(_part(s, n)) for s in range(0, n, CHUNK)]
    counts = np.concatenate([c["counts"] for c in chunks])
    out = {"numbers": np.concatenate([c["numbers"] for c in chunks]),
           "positions": np.concatenate([c["positions"] for c in chunks]),
           "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
           "ok": np.concatenate([c["ok"] for c in chunks]),
           "errors": np.concatenate([c["errors"] for c in chunks]),
           "smiles": np.concatenate([c["smiles"] for c in chunks]),
           "stereo": np.concatenate([c["stereo"] for c in chunks])}
    path = conformer_cache_path()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, version=CONFORMER_VERSION, **out)
    os.replace(tmp, path)
    return path


def load_conformers() -> ConformerArrays:
    """The conformer cache; ``FileNotFoundError`` naming the command that builds it when it is missing."""
    path = conformer_cache_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; build it (about 75 minutes per core, resumable) with "
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
    args = parser.parse_args(argv)
    path = build_conformers(workers=args.workers, limit=args.limit, log=lambda m: print(m, flush=True))
    print(f"done: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
