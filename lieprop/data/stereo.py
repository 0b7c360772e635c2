"""Stereochemistry of a connectivity and of a 3D geometry: what a SMILES leaves open, and what a geometry chose.

A SMILES without ``@`` / ``/`` marks names several stereoisomers; the conformer lieprop embeds for it is one of them,
picked by the embedder's random start. Two enantiomers have the same QM9 properties (and lieprop's models give them
the same values), but two diastereomers (cis/trans on a ring, E/Z on a double bond, the relative configuration of
two centres) are different molecules with different dipoles, energies and orbital energies. So:

* :func:`open_stereo` counts the stereo elements an input left unassigned (those its embedded geometry has and the
  input did not give), and says whether they can change the prediction (:attr:`OpenStereo.changes_prediction`);
* :func:`read_stereo` writes the isomeric SMILES of a geometry (stereo perceived from 3D), so a result can say
  which stereoisomer it is for;
* :func:`stereo_labels` / :func:`has_stereo` check that a conformer has the stereo its input asked for (the
  embedder's fallback for strained cages, whose chirality checks ETKDG cannot pass, relies on them);
* :func:`isomeric_smiles` does the same for a SMILES and a geometry whose atoms are in another order (QM9's SMILES
  and its DFT geometry), which is how the QM9 conformer cache learns the stereoisomer each label belongs to.

RDKit is imported inside the functions, as everywhere in :mod:`lieprop.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OpenStereo:
    """The stereo elements of an embedded molecule (those its 3D geometry has a CIP label for): how many there are,
    and how many of them the input left unassigned, as tetrahedral centres and double bonds."""

    centres: int
    double_bonds: int
    open_centres: int
    open_double_bonds: int

    @property
    def open(self) -> int:
        return self.open_centres + self.open_double_bonds

    @property
    def changes_prediction(self) -> bool:
        """Whether the stereoisomers the input allows include diastereomers (whose properties differ). A mirror image
        inverts every centre and keeps every double bond, so with a single centre in all (double bonds given or not)
        the choices are two enantiomers: the same prediction either way."""
        return self.open_double_bonds > 0 or (self.open_centres > 0 and self.centres > 1)


def open_stereo(requested: dict[tuple[str, int], str], perceived: dict[tuple[str, int], str]) -> OpenStereo:
    """The stereo an input left open: the elements labelled in the embedded geometry (``perceived``, from
    :func:`read_stereo`) that the input did not label (``requested``, :func:`stereo_labels` of the input).

    Counting CIP labels of a real geometry, rather than RDKit's potential stereo of the connectivity, leaves out what
    cannot vary (cubane's and a small bicycle's bridgeheads, azides, allenes), and counts cis/trans on rings (the
    pseudo-asymmetric ``r``/``s`` labels)."""
    centres = [k for k in perceived if k[0] == "atom"]
    double_bonds = [k for k in perceived if k[0] == "bond"]
    return OpenStereo(len(centres), len(double_bonds), sum(k not in requested for k in centres),
                      sum(k not in requested for k in double_bonds))


def stereo_labels(mol: Any) -> dict[tuple[str, int], str]:
    """The CIP labels of ``mol``'s assigned stereo elements: ``{("atom", i): "R" | "S", ("bond", j): "E" | "Z"}``
    (RDKit's new CIP labeller; an element left open, or not stereogenic, has none)."""
    from rdkit import Chem
    from rdkit.Chem import rdCIPLabeler

    copy = Chem.Mol(mol)
    rdCIPLabeler.AssignCIPLabels(copy)
    labels = {("atom", a.GetIdx()): a.GetProp("_CIPCode") for a in copy.GetAtoms() if a.HasProp("_CIPCode")}
    labels.update({("bond", b.GetIdx()): b.GetProp("_CIPCode") for b in copy.GetBonds() if b.HasProp("_CIPCode")})
    return labels


def _from_3d(mol: Any, conf_id: int = -1) -> Any:
    """A copy of ``mol`` with conformer ``conf_id`` only (all when -1) and its stereo read from that geometry."""
    from rdkit import Chem

    copy = Chem.Mol(mol, confId=conf_id) if conf_id >= 0 else Chem.Mol(mol)
    Chem.AssignStereochemistryFrom3D(copy, confId=-1)
    return copy


def read_stereo(mol: Any, conf_id: int = -1) -> tuple[str, dict[tuple[str, int], str]]:
    """The stereo of conformer ``conf_id`` of ``mol``, read from 3D: its isomeric SMILES (hydrogens implicit) and
    its CIP labels (:func:`stereo_labels`)."""
    from rdkit import Chem

    placed = _from_3d(mol, conf_id)
    return Chem.MolToSmiles(Chem.RemoveHs(placed)), stereo_labels(placed)


def has_stereo(mol: Any, labels: dict[tuple[str, int], str], conf_id: int) -> bool:
    """Whether conformer ``conf_id`` of ``mol`` has every stereo label in ``labels`` (from :func:`stereo_labels`
    of the same molecule, atoms in the same order)."""
    found = stereo_labels(_from_3d(mol, conf_id))
    return all(found.get(key) == label for key, label in labels.items())


def geometry_graph(numbers: np.ndarray, positions: np.ndarray, heavy_only: bool = False) -> Any:
    """An RDKit molecule of a geometry (positions in Å) as conformer 0, bonded by distance (RDKit's
    ``DetermineConnectivity``: single bonds, no orders); ``heavy_only`` then removes the hydrogens."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    conformer = Chem.Conformer(len(numbers))
    for i, (z, x) in enumerate(zip(numbers, positions, strict=True)):
        mol.AddAtom(Chem.Atom(int(z)))
        conformer.SetAtomPosition(i, Point3D(*map(float, x)))
    mol.AddConformer(conformer, assignId=True)
    rdDetermineBonds.DetermineConnectivity(mol)
    if heavy_only:
        for i in sorted((a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 1), reverse=True):
            mol.RemoveAtom(i)
    out = mol.GetMol()
    out.UpdatePropertyCache(strict=False)
    if heavy_only:
        Chem.FastFindRings(out)
    return out


def isomeric_smiles(smiles: str, numbers: np.ndarray, positions: np.ndarray) -> str | None:
    """The isomeric SMILES of ``smiles`` in the stereoisomer that geometry (``numbers``, ``positions`` in Å, any
    atom order, hydrogens included) has; ``None`` when the geometry's bonds (perceived from its distances) do not
    match the SMILES' connectivity, so its stereo cannot be transferred."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        return None
    mol = Chem.AddHs(parsed)
    if mol.GetNumAtoms() != len(numbers):
        return None
    # the SMILES' graph with every bond single and nothing aromatic: matched against bonds perceived from distances
    bare = Chem.RWMol(mol)
    for bond in bare.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
    for atom in bare.GetAtoms():
        atom.SetIsAromatic(False)
    query = bare.GetMol()
    query.UpdatePropertyCache(strict=False)
    target = geometry_graph(numbers, positions)
    if target.GetNumBonds() != query.GetNumBonds():
        return None
    match = target.GetSubstructMatch(query)
    if not match:
        return None
    placed = Chem.Conformer(mol.GetNumAtoms())
    for i, j in enumerate(match):
        placed.SetAtomPosition(i, Point3D(*map(float, positions[j])))
    mol.RemoveAllConformers()
    mol.AddConformer(placed, assignId=True)
    return read_stereo(mol)[0]


def open_stereo_warning(stereo: OpenStereo, chosen: str) -> str:
    """The warning of an input whose unassigned stereo elements may change the prediction."""
    parts = []
    if stereo.open_centres:
        parts.append(f"{stereo.open_centres} stereocentre{'s' * (stereo.open_centres > 1)}")
    if stereo.open_double_bonds:
        parts.append(f"{stereo.open_double_bonds} double bond{'s' * (stereo.open_double_bonds > 1)}")
    return (f"the input leaves the configuration of {' and '.join(parts)} unassigned, so it names several "
            f"stereoisomers whose properties differ; the prediction is for the one the generated conformer has, "
            f"{chosen} (give the stereochemistry, e.g. with @/@@ and / \\ in a SMILES, to choose)")
