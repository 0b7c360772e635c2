"""Copies of one geometry among a molecule's conformers (lieprop.data.duplicates): the specification."""

from __future__ import annotations

import numpy as np

from lieprop.data.duplicates import SAME_GEOMETRY, copy_of, distance_spectrum
from lieprop.data.readers import from_smiles


def rotation(seed: int) -> np.ndarray:
    """A proper rotation matrix (QR of a seeded random matrix, determinant +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_the_spectrum_is_each_element_pairs_sorted_distances_one_pair_after_another():
    mol = from_smiles("NCC(O)C=O", n_conformers=1)
    z, x = mol.numbers, mol.positions
    expected = []
    for a in sorted(set(z)):
        for b in sorted(set(z)):
            if b < a:
                continue
            d = [np.linalg.norm(x[i] - x[j]) for i in range(len(z)) for j in range(i + 1, len(z))
                 if sorted((z[i], z[j])) == [a, b]]
            expected.extend(sorted(d))
    np.testing.assert_allclose(distance_spectrum(z, x), expected, atol=1e-9)
    np.testing.assert_allclose(distance_spectrum(z, x[None] + [[[1e6, 0, 0]]])[0], expected, atol=1e-6)


def test_the_spectrum_ignores_rotation_translation_mirroring_and_swapped_like_atoms():
    mol = from_smiles("CC(O)C=O", n_conformers=1)
    z, x = mol.numbers, mol.positions
    spectrum = distance_spectrum(z, x)
    turned = x @ rotation(0).T + [4.0, -2.0, 7.5]
    mirrored = x * [-1, 1, 1]
    hydrogens = np.flatnonzero(z == 1)
    swapped = x.copy()
    swapped[hydrogens] = x[hydrogens[::-1]]
    for other in (turned, mirrored, swapped):
        np.testing.assert_allclose(distance_spectrum(z, other), spectrum, atol=1e-9)


def test_a_copy_points_to_the_first_geometry_of_its_kind_and_other_conformers_stay():
    chain = from_smiles("OCCCC(C)C")
    first, second = chain.geometries[0], chain.geometries[1]
    assert np.max(np.abs(distance_spectrum(chain.numbers, first) - distance_spectrum(chain.numbers, second))) > 0.1
    turned = first @ rotation(1).T
    nudged = second + 0.1 * SAME_GEOMETRY * np.cos(np.arange(second.size)).reshape(second.shape)
    assert copy_of(chain.numbers, [first, second, turned, nudged]) == [0, 1, 0, 1]
    assert copy_of(chain.numbers, [first]) == [0]


def test_a_geometry_with_a_non_finite_coordinate_is_its_own_and_spoils_no_other():
    chain = from_smiles("OCCCC(C)C")
    first = chain.geometries[0]
    broken = first.copy()
    broken[0, 0] = np.nan
    assert copy_of(chain.numbers, [first, broken, first, broken]) == [0, 1, 0, 3]
