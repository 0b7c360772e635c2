"""Which of a molecule's conformers are the same geometry: one model pass for each distinct one.

ETKDG's starts often relax under MMFF94 into the same minimum, or into a copy of it turned, mirrored or with
equivalent atoms swapped (a methyl's hydrogens): of the five conformers lieprop makes per QM9 SMILES, about half
duplicate another (and every conformer of a rigid molecule such as benzene does). Such copies have the same
properties, so a prediction runs the model once per distinct geometry and lets that pass stand for its copies
(:func:`lieprop.model.prediction.conformer_inputs`): the average over the conformers, its spread and everything
downstream stay what they were, at a fraction of the cost.

Two geometries are copies when their **distance spectra** agree: for every pair of elements, the sorted distances
between atoms of those elements. The spectrum does not change under rotation, translation, reflection or a
permutation of like atoms, and conformers that differ (another rotamer, another pucker) differ in it by tenths of
an Ångström. On the conformers of 4,000 QM9 test molecules the largest spectrum difference between two conformers of
one molecule is under 0.001 Å for 17,799 pairs (whose predictions differ by at most 0.2 meV in homo and 0.001 D in
mu), over 0.1 Å for 18,893, and between for 279; :data:`SAME_GEOMETRY` also merges the 98 pairs between 0.001 and
0.01 Å (their predictions differ by at most 0.44 meV in homo, 1.1 meV in gap, 0.0013 D in mu and 0.18 a0^2 in r2,
far below the model's error).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Two geometries of one molecule are copies when no entry of their distance spectra differs by this much (Å).
SAME_GEOMETRY = 0.01


def distance_spectrum(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Every interatomic distance (Å), grouped by the pair's elements and sorted within each group: invariant under
    rotation, translation, reflection and permutations of like atoms. ``positions`` (n, 3) gives one spectrum,
    (k, n, 3) one per geometry, (k, n(n-1)/2)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    i, j = np.triu_indices(len(numbers), 1)
    distance = np.linalg.norm(positions[..., i, :] - positions[..., j, :], axis=-1)
    pair = np.minimum(numbers[i], numbers[j]) * 1000 + np.maximum(numbers[i], numbers[j])
    order = np.argsort(pair, kind="stable")
    # one sort per geometry: each element pair's distances lifted above all of the previous pair's
    height = float(distance.max(initial=0.0)) + 1.0
    lift = np.unique(pair[order], return_inverse=True)[1] * height
    return np.sort(distance[..., order] + lift, axis=-1) - lift


def copy_of(numbers: np.ndarray, geometries: Sequence[np.ndarray], tolerance: float = SAME_GEOMETRY) -> list[int]:
    """For each of one molecule's ``geometries`` (same atoms, same order), the index of the first geometry it is a
    copy of (its own index when it is the first of its kind; a geometry with a non-finite coordinate is always its
    own). Memory grows with the number of geometries, not its square."""
    if len(geometries) < 2:
        return list(range(len(geometries)))
    stacked = np.stack([np.asarray(g, dtype=np.float64) for g in geometries])
    finite = np.isfinite(stacked).all(axis=(1, 2))
    spectra = np.full((len(stacked), len(numbers) * (len(numbers) - 1) // 2), np.nan)
    if finite.any():
        spectra[finite] = distance_spectrum(numbers, stacked[finite])
    out: list[int] = []
    kinds: list[int] = []  # the first geometry of each kind so far
    for k, spectrum in enumerate(spectra):
        same = (m for m in kinds if finite[k] and np.max(np.abs(spectra[m] - spectrum), initial=0.0) < tolerance)
        first = next(same, k)
        if first == k:
            kinds.append(k)
        out.append(first)
    return out
