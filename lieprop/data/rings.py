"""Rings of a 3D geometry: how many independent rings its covalent-bond graph has.

Two atoms are bonded when they are closer than :data:`BOND_FACTOR` times the sum of their covalent radii
(:data:`lieprop.data.elements.COVALENT_RADII`); the number of independent rings is then the graph's cycle rank,
bonds - atoms + connected pieces, which for a molecule is the size of its smallest set of smallest rings (benzene 1,
naphthalene 2, cubane 5) and what RDKit's ``CalcNumRings`` counts from a SMILES. It needs no connectivity from the
user, so every input path (XYZ, SDF, SMILES conformers, arrays) gets the same count, from the geometry the model saw.

Calibration uses it to group molecules (:func:`lieprop.model.calibration.ring_group`): the model's errors grow with
the number of rings faster than its ensemble spread does (strained polycyclic cages err most), so intervals fitted on
all molecules at once would over-cover acyclic molecules and under-cover cages.
"""

from __future__ import annotations

import numpy as np

from lieprop.data.elements import COVALENT_RADII, ELEMENT_INDEX, QM9_ELEMENTS
from lieprop.data.validation import count_components

#: Bonded when closer than this times the sum of the two covalent radii. In QM9's DFT geometries bonds reach about
#: 1.13 times the sum and non-bonded contacts (across strained small rings) start near 1.15; MMFF conformers of
#: strained cages stretch a few bonds further. With 1.15 the count equals the cycle rank of the SMILES's graph for
#: 99.98% of 4,000 validation molecules in their DFT geometry and 99.8% in their force-field conformer (1.2: 98.6%
#: and 99.95%; 1.1: 99.88% and 99.1%).
BOND_FACTOR = 1.15
#: The covalent radius (Å) of an element outside QM9's five (a carbon-like guess; such molecules are outside the
#: model's domain anyway).
OTHER_RADIUS = 0.76


def _radius_table() -> np.ndarray:
    table = np.full(len(ELEMENT_INDEX), OTHER_RADIUS)
    table[list(QM9_ELEMENTS)] = COVALENT_RADII
    return table


_RADIUS_BY_Z = _radius_table()


def covalent_radii(numbers: np.ndarray) -> np.ndarray:
    """(n,) covalent radii (Å) of atomic ``numbers`` (:data:`OTHER_RADIUS` outside H, C, N, O, F)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    return np.where((numbers > 0) & (numbers < len(_RADIUS_BY_Z)),
                    _RADIUS_BY_Z[np.clip(numbers, 0, len(_RADIUS_BY_Z) - 1)], OTHER_RADIUS)


def bonds(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n, n) boolean adjacency of the covalent bonds (no self-bonds)."""
    x = np.asarray(positions, dtype=np.float64)
    r = covalent_radii(numbers)
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    out = d < BOND_FACTOR * (r[:, None] + r[None, :])
    np.fill_diagonal(out, False)
    return out


def ring_count(numbers: np.ndarray, positions: np.ndarray) -> int:
    """The number of independent rings of a geometry: the cycle rank of its bond graph (:func:`bonds`)."""
    adjacency = bonds(numbers, positions)
    n = adjacency.shape[0]
    if n == 0:
        return 0
    edges = int(adjacency.sum()) // 2
    return edges - n + count_components(adjacency)
