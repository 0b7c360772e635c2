"""The 12 QM9 properties: names, units, conversions from QM9's raw units, and atom references."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HARTREE_EV = 27.211386245988


@dataclass(frozen=True)
class Property:
    """One predicted property.

    ``qm9_column`` is the qm9pack CSV column, ``to_unit`` multiplies the raw QM9 value into ``unit``,
    ``extensive`` says whether the model pools atom contributions by sum (True) or mean (False), and
    ``atomref`` whether per-element reference values are subtracted for learning (energies and cv).
    """

    name: str
    description: str
    unit: str
    qm9_column: str
    to_unit: float
    extensive: bool
    atomref: str | None = None  # column of ATOMREF_HARTREE used for this property
    paper_unit: str = ""
    to_paper: float = 1.0  # multiplies ``unit`` into the unit of the published MAE tables


PROPERTIES: tuple[Property, ...] = (
    Property("mu", "dipole moment", "D", "Dipole_debye", 1.0, False, None, "D"),
    Property("alpha", "isotropic polarizability", "a0^3", "Polarizability_bohr3", 1.0, True, None, "a0^3"),
    Property("homo", "HOMO energy", "eV", "HOMO_au", HARTREE_EV, False, None, "meV", 1000.0),
    Property("lumo", "LUMO energy", "eV", "LUMO_au", HARTREE_EV, False, None, "meV", 1000.0),
    Property("gap", "HOMO-LUMO gap", "eV", "HOMO_LUMO_gap_au", HARTREE_EV, False, None, "meV", 1000.0),
    Property("r2", "electronic spatial extent", "a0^2", "R2_bohr2", 1.0, True, None, "a0^2"),
    Property("zpve", "zero-point vibrational energy", "eV", "ZPVE_au", HARTREE_EV, True, None, "meV", 1000.0),
    Property("u0", "internal energy at 0 K", "eV", "InternalEnergy_0K_au", HARTREE_EV, True, "u0", "meV", 1000.0),
    Property("u298", "internal energy at 298.15 K", "eV", "InternalEnergy_298K_au", HARTREE_EV, True, "u298",
             "meV", 1000.0),
    Property("h298", "enthalpy at 298.15 K", "eV", "Enthalphy_298K_au", HARTREE_EV, True, "h298", "meV", 1000.0),
    Property("g298", "free energy at 298.15 K", "eV", "GibbsFreeEnergy_298K_au", HARTREE_EV, True, "g298",
             "meV", 1000.0),
    Property("cv", "heat capacity at 298.15 K", "cal/(mol K)", "Heatcapacity_Cv_cal_mol_K", 1.0, True, "cv",
             "cal/(mol K)"),
)
PROPERTY_NAMES: tuple[str, ...] = tuple(p.name for p in PROPERTIES)
#: Properties that cannot be negative (a dipole's magnitude, a gap, a polarizability, ...): predictions are clipped
#: at 0, which can only bring them closer to the truth.
NON_NEGATIVE: frozenset[str] = frozenset({"mu", "alpha", "gap", "r2", "zpve", "cv"})
BY_NAME: dict[str, Property] = {p.name: p for p in PROPERTIES}
#: Properties whose totals have atomization counterparts (``u0_atomization`` ...).
ENERGY_NAMES: tuple[str, ...] = ("u0", "u298", "h298", "g298")

#: QM9 atom reference table (B3LYP/6-31G(2df,p)), Hartree except cv in cal/(mol K). Rows: H, C, N, O, F.
ATOMREF_ELEMENTS = (1, 6, 7, 8, 9)
ATOMREF_HARTREE: dict[str, tuple[float, ...]] = {
    "zpve": (0.0, 0.0, 0.0, 0.0, 0.0),
    "u0": (-0.500273, -37.846772, -54.583861, -75.064579, -99.718730),
    "u298": (-0.498857, -37.845355, -54.582445, -75.063163, -99.717314),
    "h298": (-0.497912, -37.844411, -54.581501, -75.062219, -99.716370),
    "g298": (-0.510927, -37.861317, -54.598897, -75.079532, -99.733544),
    "cv": (2.981, 2.981, 2.981, 2.981, 2.981),
}


def atomref_matrix() -> np.ndarray:
    """(n_elements=5, n_properties=12) reference values in each property's unit (zero where none)."""
    out = np.zeros((len(ATOMREF_ELEMENTS), len(PROPERTIES)))
    for j, p in enumerate(PROPERTIES):
        if p.atomref is not None:
            scale = 1.0 if p.atomref == "cv" else HARTREE_EV
            out[:, j] = np.asarray(ATOMREF_HARTREE[p.atomref]) * scale
    return out


def resolve(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate property names (None means all 12); raises ``ValueError`` naming unknown ones."""
    if names is None:
        return PROPERTY_NAMES
    bad = [n for n in names if n.removesuffix("_atomization") not in BY_NAME
           or (n.endswith("_atomization") and n.removesuffix("_atomization") not in ENERGY_NAMES)]
    if bad:
        raise ValueError(f"unknown properties {bad}; known: {list(PROPERTY_NAMES)} "
                         f"and {[e + '_atomization' for e in ENERGY_NAMES]}")
    return tuple(names)
