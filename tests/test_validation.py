"""What `validate` accepts, what it refuses (with which error code), and what it flags."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from helpers import random_rotation
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lieprop.data.molecule import Molecule
from lieprop.data.validation import (
    DEFAULT_LIMITS,
    ERROR_CODES,
    MoleculeError,
    ValidationLimits,
    validate,
)

# Ethanol, a B3LYP-like geometry (Å).
ETHANOL = Molecule(
    [6, 6, 8, 1, 1, 1, 1, 1, 1],
    [[-0.0011, -0.0059, 0.0110], [1.5172, 0.0059, -0.0124], [1.9713, 1.3409, 0.0254],
     [-0.3835, -1.0226, -0.0199], [-0.3950, 0.5108, 0.8846], [-0.4139, 0.5018, -0.8595],
     [1.8850, -0.5140, -0.9003], [1.8748, -0.5089, 0.8815], [2.9302, 1.3279, 0.0086]],
    id="ethanol",
)


def chain(n_heavy: int, n_h: int = 0, spacing: float = 1.5) -> Molecule:
    """A zig-zag of carbons plus hydrogens next to them: a connected, clash-free test geometry."""
    heavy = np.array([[i * spacing, 0.3 * (i % 2), 0.0] for i in range(n_heavy)])
    directions = np.array([[0, 0, 1.1], [0, 0, -1.1], [0, 1.1, 0], [0, -1.1, 0]])
    hydrogens = [heavy[k % n_heavy] + directions[k // n_heavy] for k in range(n_h)]
    return Molecule([6] * n_heavy + [1] * n_h, np.vstack([heavy, *hydrogens]))


def moved(mol: Molecule, positions: np.ndarray) -> Molecule:
    return Molecule(mol.numbers, positions, mol.id, mol.charge)


def code_of(mol: Molecule, limits: ValidationLimits = DEFAULT_LIMITS) -> str:
    try:
        validate(mol, limits)
    except MoleculeError as exc:
        return exc.code
    return "ok"


# --- the error type -----------------------------------------------------------------------------


def test_error_codes_are_the_rest_contract():
    assert set(ERROR_CODES) == {
        "invalid_smiles", "invalid_xyz", "invalid_sdf", "unsupported_element", "too_many_atoms",
        "embedding_failed", "embedding_timeout", "charged_molecule", "invalid_geometry", "empty_input",
        "too_expensive",
    }


def test_error_has_code_message_and_rest_form():
    err = MoleculeError("empty_input", "nothing here")
    assert (err.code, err.message) == ("empty_input", "nothing here")
    assert err.to_dict() == {"code": "empty_input", "message": "nothing here"}
    assert str(err) == "empty_input: nothing here"


def test_error_survives_pickling_for_process_pools():
    err = MoleculeError("invalid_smiles", "cannot parse")
    assert pickle.loads(pickle.dumps(err)) == err


def test_unknown_error_code_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown error code"):
        MoleculeError("oops", "x")  # type: ignore[arg-type]


def test_limits_are_frozen_and_default_to_qm9():
    assert ValidationLimits(29, 9, 0.5, 4.0, False) == DEFAULT_LIMITS
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_atoms = 100  # type: ignore[misc]


# --- accepted -----------------------------------------------------------------------------------


def test_ethanol_passes_unchanged():
    assert validate(ETHANOL) is ETHANOL
    assert ETHANOL.warnings == ()


def test_a_single_atom_is_a_valid_geometry():
    assert code_of(Molecule([1], [[0.0, 0.0, 0.0]])) == "ok"


def test_a_hydrogen_bonded_dimer_is_one_piece():
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    dimer = Molecule([8, 1, 1, 8, 1, 1], np.vstack([water, water + [2.9, 0.0, 0.0]]))
    assert code_of(dimer) == "ok"


# --- refused ------------------------------------------------------------------------------------


def test_no_atoms_is_empty_input():
    assert code_of(Molecule([], np.zeros((0, 3)))) == "empty_input"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_coordinates_are_invalid_geometry(bad):
    positions = ETHANOL.positions.copy()
    positions[4, 1] = bad
    with pytest.raises(MoleculeError) as info:
        validate(moved(ETHANOL, positions))
    assert info.value.code == "invalid_geometry"
    assert "atom(s) 4" in info.value.message


def test_unsupported_element_is_named():
    chloromethane = Molecule([6, 17, 1, 1, 1], [[0, 0, 0], [1.78, 0, 0], [-0.36, 1.03, 0],
                                                [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89]])
    with pytest.raises(MoleculeError) as info:
        validate(chloromethane)
    assert info.value.code == "unsupported_element"
    assert "Cl (Z=17)" in info.value.message
    assert "H, C, N, O, F" in info.value.message


def test_several_unsupported_elements_are_all_named():
    mol = Molecule([35, 6, 17], [[0, 0, 0], [1.9, 0, 0], [3.7, 0, 0]])
    message = pytest.raises(MoleculeError, validate, mol).value.message
    assert "Cl (Z=17), Br (Z=35)" in message


def test_more_than_29_atoms_is_too_many():
    assert code_of(chain(10, 22)) == "too_many_atoms"  # decane, C10H22: 32 atoms
    assert code_of(chain(9, 20)) == "ok"  # 29 atoms, 9 heavy: the edge of QM9


def test_charged_molecule_is_refused_unless_allowed():
    charged = Molecule(ETHANOL.numbers, ETHANOL.positions, charge=1)
    assert code_of(charged) == "charged_molecule"
    accepted = validate(charged, ValidationLimits(allow_charged=True))
    assert any("charge +1" in w for w in accepted.warnings)


def test_atoms_closer_than_min_distance_are_invalid_geometry():
    positions = ETHANOL.positions.copy()
    positions[8] = positions[2] + [0.3, 0.0, 0.0]  # hydroxyl H on top of the O
    with pytest.raises(MoleculeError) as info:
        validate(moved(ETHANOL, positions))
    assert info.value.code == "invalid_geometry"
    assert "atoms 2 (O) and 8 (H) are 0.300 Å apart" in info.value.message


def test_fragments_far_apart_are_invalid_geometry():
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    far = Molecule([8, 1, 1, 8, 1, 1], np.vstack([water, water + [10.0, 0.0, 0.0]]))
    with pytest.raises(MoleculeError) as info:
        validate(far)
    assert info.value.code == "invalid_geometry"
    assert "2 fragments" in info.value.message


def test_a_stray_atom_is_a_fragment():
    positions = ETHANOL.positions.copy()
    positions[8] = [20.0, 0.0, 0.0]
    assert code_of(moved(ETHANOL, positions)) == "invalid_geometry"
    assert code_of(moved(ETHANOL, positions), ValidationLimits(max_fragment_gap=25.0)) == "ok"


def test_checks_run_in_a_fixed_order():
    # Cl and a clash: the element is reported, since it is the more fundamental problem
    mol = Molecule([17, 6], [[0, 0, 0], [0.1, 0, 0]])
    assert code_of(mol) == "unsupported_element"


# --- out of domain but accepted -----------------------------------------------------------------


def test_more_than_9_heavy_atoms_warns_when_max_atoms_is_raised():
    decane = chain(10, 22)
    checked = validate(decane, ValidationLimits(max_atoms=40))
    assert len(checked.warnings) == 1
    assert "10 heavy atoms" in checked.warnings[0] and "out of domain" in checked.warnings[0]


def test_validating_twice_does_not_repeat_warnings():
    limits = ValidationLimits(max_atoms=40)
    once = validate(chain(10, 22), limits)
    assert validate(once, limits).warnings == once.warnings


# --- invariance ---------------------------------------------------------------------------------


geometries = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        arrays(np.int64, n, elements=st.sampled_from([1, 6, 7, 8, 9, 17])),
        arrays(np.float64, (n, 3), elements=st.floats(-4, 4, allow_nan=False)),
    )
)


@settings(max_examples=150, deadline=None)
@given(geometries, st.integers(0, 2**32 - 1), arrays(np.float64, 3, elements=st.floats(-1e3, 1e3)),
       st.booleans(), st.randoms(use_true_random=False))
def test_rotation_translation_and_reordering_never_change_the_outcome(geometry, seed, shift, reflect, rnd):
    numbers, positions = geometry
    limits = DEFAULT_LIMITS
    if len(numbers) > 1:  # keep away from the thresholds, where rounding could flip the outcome
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)[np.triu_indices(len(numbers), 1)]
        assume(np.abs(d - limits.min_distance).min() > 1e-6)
        assume(np.abs(d - limits.max_fragment_gap).min() > 1e-6)
    rotation = random_rotation(seed) * (-1 if reflect else 1)
    order = list(range(len(numbers)))
    rnd.shuffle(order)
    original = Molecule(numbers, positions)
    transformed = Molecule(numbers[order], (positions @ rotation.T + shift)[order])
    assert code_of(transformed) == code_of(original)
