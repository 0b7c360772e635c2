"""SDF and MOL blocks: cut a stream at ``$$$$`` lines, read each record through RDKit.

3D coordinates are kept. Implicit hydrogens are added with coordinates (``provenance["hydrogens_added"]``). A 2D
block (no "3D" flag and all z = 0) is embedded like a SMILES (:mod:`lieprop.data.conformers`) and flagged with a
warning, since a flat drawing is no geometry a model trained on DFT-relaxed structures should see. The id is the
title line, else an ``id``/``name`` data field, else the record index. RDKit is imported inside the parser.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from lieprop.data.conformers import embed, rdkit_message, rdkit_numbers, validate_embedded
from lieprop.data.molecule import Molecule
from lieprop.data.records import DEFAULT_CONFORMERS, ID_KEYS, Item, ParseOptions, RawRecord, ReadOptions
from lieprop.data.textio import Lines
from lieprop.data.validation import MoleculeError, ValidationLimits, check_composition, validate


def split_sdf_records(raw: Iterator[str], options: ReadOptions | None = None) -> Iterator[RawRecord]:
    """Cut an SDF stream at ``$$$$`` lines; blank records are no records. ``options`` is unused (the registry's
    splitter signature, :mod:`lieprop.data.formats`)."""
    lines = Lines(raw)
    block: list[str] = []
    start = 1
    while (line := lines.next()) is not None:
        if line.rstrip() == "$$$$":
            if "".join(block).strip():
                yield RawRecord("".join(block) + "$$$$\n", start)
            block, start = [], lines.number + 1
        else:
            block.append(line)
    if "".join(block).strip():
        yield RawRecord("".join(block) + "\n$$$$\n", start)


def sdf_item(index: int, record: RawRecord, limits: ValidationLimits, seed: int,
             n_conformers: int = DEFAULT_CONFORMERS) -> Item:
    """Parse and validate one MOL block cut by :func:`split_sdf_records` into an :class:`Item`."""
    title = record.text.split("\n", 1)[0].strip()
    fallback = title or str(index)
    try:
        molecule = _sdf_molecule(index, record, title, limits, seed, n_conformers)
        return Item(index, molecule.id, molecule)
    except MoleculeError as exc:
        return Item(index, fallback, error=exc)
    except Exception as exc:  # an RDKit failure we did not foresee must not end the batch
        return Item(index, fallback, error=MoleculeError(
            "invalid_sdf", f"SDF record {index} (line {record.line}): {type(exc).__name__}: {exc}"
        ))


def parse_sdf_record(index: int, record: RawRecord, options: ParseOptions) -> Item:
    """:func:`sdf_item` with the registry's parser signature (:mod:`lieprop.data.formats`)."""
    return sdf_item(index, record, options.limits, options.seed, options.n_conformers)


def _sdf_molecule(index: int, record: RawRecord, title: str, limits: ValidationLimits, seed: int,
                  n_conformers: int) -> Molecule:
    from rdkit import Chem, rdBase

    where = f"SDF record {index} (line {record.line}{', ' + repr(title) if title else ''})"
    with rdBase.CaptureErrorLog() as log:
        supplier = Chem.ForwardSDMolSupplier(io.BytesIO(record.text.encode()), sanitize=False, removeHs=False)
        mol = next(supplier, None)
    if mol is None:
        raise MoleculeError("invalid_sdf", f"{where}: RDKit cannot read the MOL block: {rdkit_message(log)}")
    ident = title or next(
        (mol.GetProp(k) for k in mol.GetPropNames() if k.lower() in ID_KEYS and mol.GetProp(k).strip()), None
    ) or str(index)
    if mol.GetNumAtoms() == 0:
        raise MoleculeError("empty_input", f"{where}: the MOL block has no atoms")
    with rdBase.CaptureErrorLog():
        problems = Chem.DetectChemistryProblems(mol)
    if problems:
        raise MoleculeError("invalid_sdf", f"{where}: " + "; ".join(p.Message() for p in problems))
    Chem.SanitizeMol(mol)

    flat = mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D()
    if flat and mol.GetNumConformers():
        # the stereo a drawing gives (wedges, the geometry of a double bond): embedded as drawn, not left open
        Chem.AssignChiralTypesFromBondDirs(mol)
        Chem.DetectBondStereochemistry(mol)
        Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    n_implicit = sum(atom.GetTotalNumHs() for atom in mol.GetAtoms())
    if n_implicit:
        mol = Chem.AddHs(mol, addCoords=not flat)
    provenance: dict[str, Any] = {"source": "sdf", "record": index, "hydrogens_added": bool(n_implicit),
                                  "n_hydrogens_added": int(n_implicit), "conformer": None}
    warnings: list[str] = []
    if any(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms()):
        warnings.append("out of domain: the molecule has unpaired electrons; QM9 molecules are closed-shell")
    charge = Chem.GetFormalCharge(mol)
    if flat:
        check_composition(rdkit_numbers(mol), charge, limits)  # refuse before spending time embedding
        conformers, conformer, embed_warnings = embed(mol, seed, n_conformers, what=where,
                                                       timeout=limits.embed_timeout)
        positions, others = conformers[0], tuple(conformers[1:])
        provenance.update(conformer=conformer, embedded_from_2d=True)
        warnings += [
            "the MOL block has 2D coordinates only; a 3D geometry was generated with "
            f"{conformer['method']} + {conformer['force_field']}",
            *embed_warnings,
        ]
    else:
        positions, others = mol.GetConformer().GetPositions(), ()
    molecule = Molecule(rdkit_numbers(mol), positions, ident, charge, provenance, tuple(warnings), others)
    return validate_embedded(molecule, limits) if flat else validate(molecule, limits)
