"""QM9 from the ``qm9pack`` package: a one-time conversion into a compact cache, splits and a Dataset.

The qm9pack CSVs take tens of seconds to parse, so :func:`load_qm9` parses them once into a ragged
``.npz`` (atomic numbers, float32 positions, offsets, raw targets) under the user cache directory
(``$LIEPROP_CACHE_DIR`` or ``~/.cache/lieprop``) stamped with :data:`CACHE_VERSION`, and loads that
afterwards in about a second.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lieprop.data.elements import ELEMENT_INDEX, atomic_number
from lieprop.data.properties import PROPERTIES, atomref_matrix

CACHE_VERSION = 1
N_MOLECULES = 130_831
#: Split sizes: (train, valid, test). The test part takes the rest of the permutation.
SPLITS: dict[str, tuple[int, int]] = {
    "cormorant": (100_000, 17_748),  # Cormorant / LieConv / EGNN: seed-0 permutation, 100k/17,748/13,083
    "schnet": (110_000, 10_000),  # SchNet / DimeNet / PaiNN style: 110k / 10k / rest
}


def cache_dir() -> Path:
    """Where lieprop keeps converted data and run state."""
    return Path(os.environ.get("LIEPROP_CACHE_DIR", Path.home() / ".cache" / "lieprop"))


def qm9pack_csvs() -> list[Path]:
    """Paths of the qm9pack CSVs (without importing qm9pack, whose __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("QM9 needs the training extra: pip install 'lieprop[train]' (package qm9pack)")
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    return [root / f"qm9_part{i}.csv" for i in (1, 2, 3)]


@dataclass(frozen=True)
class QM9Arrays:
    """All of QM9 as ragged arrays. Molecule ``i`` owns atoms ``offsets[i]:offsets[i+1]``."""

    numbers: np.ndarray  # (n_atoms_total,) int8
    positions: np.ndarray  # (n_atoms_total, 3) float32, Å
    offsets: np.ndarray  # (n_mol + 1,) int64
    targets: np.ndarray  # (n_mol, 12) float64, raw QM9 units (Hartree, D, a0^3, a0^2, cal/(mol K))
    index: np.ndarray  # (n_mol,) int64, the QM9 index (1-based gdb number)
    smiles: np.ndarray  # (n_mol,) str

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_atoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(numbers, positions) of molecule ``i``."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.numbers[a:b].astype(np.int64), self.positions[a:b].astype(np.float64)

    def targets_in_units(self) -> np.ndarray:
        """(n_mol, 12) targets in lieprop's units (eV for energies; total, not atomization)."""
        return self.targets * np.array([p.to_unit for p in PROPERTIES])

    def atom_reference(self) -> np.ndarray:
        """(n_mol, 12) sum of atom references per molecule in lieprop's units (zeros where none)."""
        ref = atomref_matrix()  # (5, 12)
        counts = np.zeros((len(self), ref.shape[0]))
        mol_of_atom = np.repeat(np.arange(len(self)), self.n_atoms)
        np.add.at(counts, (mol_of_atom, ELEMENT_INDEX[self.numbers.astype(np.int64)]), 1.0)
        return counts @ ref


def parse_qm9pack(paths: list[Path] | None = None, limit: int | None = None) -> QM9Arrays:
    """Parse the qm9pack CSVs (all of them, or the first ``limit`` molecules)."""
    paths = paths or qm9pack_csvs()
    numbers: list[int] = []
    positions: list[list[float]] = []
    offsets = [0]
    targets: list[list[float]] = []
    index: list[int] = []
    smiles: list[str] = []
    columns = [p.qm9_column for p in PROPERTIES]
    symbol_cache: dict[str, int] = {}
    for path in paths:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                syms = row["Elements"].strip("[]").replace("'", "").replace('"', "").split(",")
                zs = [symbol_cache.setdefault(s, atomic_number(s)) for s in syms]
                # Numbers may read "1." or Mathematica-style "1.2*^-6": not JSON, so parse them by hand.
                flat = row["XYZ_Ang"].replace("[", "").replace("]", "").replace("*^", "e").split(",")
                xyz = [[float(a), float(b), float(c)] for a, b, c in zip(*[iter(flat)] * 3, strict=True)]
                if len(xyz) != len(zs):
                    raise ValueError(f"QM9 row {row['Index']}: {len(zs)} elements but {len(xyz)} positions")
                numbers.extend(zs)
                positions.extend(xyz)
                offsets.append(offsets[-1] + len(zs))
                targets.append([float(row[c].replace("*^", "e")) for c in columns])
                index.append(int(row["Index"]))
                smiles.append(row["SMILES"])
                if limit is not None and len(index) >= limit:
                    break
        if limit is not None and len(index) >= limit:
            break
    return QM9Arrays(
        numbers=np.asarray(numbers, dtype=np.int8),
        positions=np.asarray(positions, dtype=np.float32),
        offsets=np.asarray(offsets, dtype=np.int64),
        targets=np.asarray(targets, dtype=np.float64),
        index=np.asarray(index, dtype=np.int64),
        smiles=np.asarray(smiles),
    )


def cache_path() -> Path:
    return cache_dir() / f"qm9-v{CACHE_VERSION}.npz"


def load_qm9(rebuild: bool = False) -> QM9Arrays:
    """All of QM9, from the cache (built on first use: about a minute)."""
    path = cache_path()
    if rebuild or not path.exists():
        data = parse_qm9pack()
        if len(data) != N_MOLECULES:
            raise ValueError(f"qm9pack gave {len(data)} molecules, expected {N_MOLECULES}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, version=CACHE_VERSION, **{f: getattr(data, f) for f in QM9Arrays.__dataclass_fields__})
        os.replace(tmp, path)
        return data
    with np.load(path) as z:
        if int(z["version"]) != CACHE_VERSION:
            return load_qm9(rebuild=True)
        return QM9Arrays(**{f: z[f] for f in QM9Arrays.__dataclass_fields__})


#: Atom-count bins of the by-size table: [lo, hi] inclusive. QM9 has 3-29 atoms; its test split none under 7.
SIZE_BINS: tuple[tuple[int, int], ...] = ((3, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20),
                                          (21, 22), (23, 25), (26, 29))
def size_bin(n_atoms: int) -> str:
    """The label of the :data:`SIZE_BINS` bin holding a molecule of ``n_atoms`` atoms ("30+" past the last)."""
    for lo, hi in SIZE_BINS:
        if lo <= n_atoms <= hi:
            return f"{lo}-{hi}"
    return f"{SIZE_BINS[-1][1] + 1}+" if n_atoms > SIZE_BINS[-1][1] else f"<{SIZE_BINS[0][0]}"


#: Molecules this small or smaller make the small-molecule sanity set (water, ammonia, methane, HCN, ...).
SMALL_MAX_ATOMS = 10


def small_molecules(data: QM9Arrays, max_atoms: int = SMALL_MAX_ATOMS) -> np.ndarray:
    """Rows of every QM9 molecule with at most ``max_atoms`` atoms, from all splits (763 for 10 atoms).

    This is a *sanity* set, not a held-out one: most of it is in the training split. The Cormorant test split holds
    no molecule under 7 atoms, so a test-split MAE says nothing about the molecules a chemist types first.
    """
    return np.flatnonzero(data.n_atoms <= max_atoms)


def split_indices(n: int = N_MOLECULES, scheme: str = "cormorant", seed: int = 0) -> dict[str, np.ndarray]:
    """Train/valid/test molecule indices: a ``numpy.random.seed(seed)`` permutation cut into parts.

    For ``n`` other than the size of QM9 the parts keep the scheme's proportions.
    """
    if scheme not in SPLITS:
        raise ValueError(f"unknown split {scheme!r}; known: {sorted(SPLITS)}")
    n_train, n_valid = SPLITS[scheme]
    if n != N_MOLECULES:  # a subset (tests, pilots): the same proportions
        n_train, n_valid = int(n * n_train / N_MOLECULES), int(n * n_valid / N_MOLECULES)
    rng = np.random.RandomState(seed)
    perm = rng.permutation(n)
    return {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}
