"""The chemical elements lieprop knows, and the QM9 domain (H, C, N, O, F)."""

from __future__ import annotations

import numpy as np

#: Atomic numbers of the elements QM9 contains, in feature order.
QM9_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9)
#: Symbols, indexed by atomic number (0 is a placeholder), up to Rn.
_SYMBOL_TEXT = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn"
)
SYMBOLS: tuple[str, ...] = tuple(_SYMBOL_TEXT.split())
#: Atomic number -> index in the one-hot feature (-1 for elements outside QM9).
ELEMENT_INDEX: np.ndarray = np.full(len(SYMBOLS), -1, dtype=np.int64)
ELEMENT_INDEX[list(QM9_ELEMENTS)] = np.arange(len(QM9_ELEMENTS))

#: Single-bond covalent radii (Å) of the QM9 elements, in feature order (H, C, N, O, F; Cordero et al., Dalton
#: Trans. 2008, C sp3): the sum of two is a typical single-bond length, the scale of the steerable network's
#: geometric bond attributes (lieprop.model.molecular_graph).
COVALENT_RADII: tuple[float, ...] = (0.31, 0.76, 0.71, 0.66, 0.57)

#: QM9 domain limits (docs/QM9.md): at most 9 heavy atoms and 29 atoms in all.
QM9_MAX_HEAVY_ATOMS = 9
QM9_MAX_ATOMS = 29


def symbol(z: int) -> str:
    """Chemical symbol of atomic number ``z`` (``"Z=<z>"`` when unknown)."""
    return SYMBOLS[z] if 0 < z < len(SYMBOLS) else f"Z={z}"


def atomic_number(sym: str) -> int:
    """Atomic number of a chemical symbol (case-insensitive); raises ``KeyError`` if unknown."""
    s = sym.strip().capitalize()
    try:
        return SYMBOLS.index(s, 1)
    except ValueError:
        raise KeyError(f"unknown element symbol {sym!r}") from None
