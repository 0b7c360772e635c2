"""3D geometries from a connectivity with RDKit: ETKDGv3 with a fixed seed, then MMFF94 (UFF where MMFF lacks
parameters); the lowest-energy conformer is the molecule's geometry, and predictions average over all of them.

Shared by SMILES (:mod:`lieprop.data.smiles`) and 2D MOL blocks (:mod:`lieprop.data.sdf`). The same molecule, seed
and conformer count give identical coordinates in any process, which is what makes embedding cacheable and
parallel runs equal to serial ones. RDKit is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np

from lieprop.data.molecule import Molecule
from lieprop.data.stereo import has_stereo, open_stereo, open_stereo_warning, read_stereo, stereo_labels
from lieprop.data.textio import quote_input
from lieprop.data.validation import MoleculeError, ValidationLimits, check_geometry, validate


def rdkit_numbers(mol: Any) -> np.ndarray:
    """The atomic numbers of an RDKit molecule."""
    return np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()], dtype=np.int64)


def rdkit_message(log: Any) -> str:
    """RDKit's captured error lines, without time stamps and boilerplate."""
    lines = []
    for line in log.messages.splitlines():
        line = re.sub(r"^\[\d\d:\d\d:\d\d\]\s*", "", line).removeprefix("ERROR: ").strip()
        if line and "moving to the beginning of the next molecule" not in line:
            lines.append(line)
    # RDKit's lines quote the input: each is cut (a 20 MB SMILES must not make a 20 MB message), at most four kept
    return "; ".join(quote_input(line, 100, quoted=False) for line in lines[:4]) or "no details from RDKit"


def embed(mol: Any, seed: int, n_conformers: int, *, what: str, timeout: int = 0
          ) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Embed ``mol`` (hydrogens explicit) in place: ``n_conformers`` ETKDGv3 conformers, each optimised with a
    force field. Returns the positions of those of one stereoisomer, (K, n_atoms, 3) from the lowest energy up (a
    prediction averages over them: :func:`lieprop.model.prediction.average_conformers`), the provenance
    ``conformer`` entry (``requested``: ``n_conformers``; ``n_conformers`` embedded, ``averaged``: the K returned)
    and warnings.

    The entry names the stereoisomer embedded (``stereo_smiles``: stereo read from the 3D geometry) and counts the
    stereo elements the input left unassigned (``unassigned_stereo``); when those allow diastereomers, a warning
    says the prediction is for the embedded one (:mod:`lieprop.data.stereo`).

    ``timeout``: seconds of ETKDG per requested conformer (0: no limit), for all attempts together (the
    distance-geometry start, then random coordinates); RDKit's ``EmbedParameters.timeout`` stops it. The first
    conformer must come within ``timeout`` seconds, so an input that cannot be embedded fails that fast whatever
    ``n_conformers`` is. A molecule that embeds within the limit gets exactly the geometries it gets without one.

    Raises :class:`MoleculeError` ``embedding_failed`` (``what`` names the input) when ETKDG finds no geometry,
    ``embedding_timeout`` when it ran out of time first.
    """
    from rdkit import rdBase
    from rdkit.Chem import AllChem

    requested = stereo_labels(mol)  # the stereo the input gives, before the embedder picks a stereoisomer
    budget = timeout * n_conformers
    started = time.monotonic()
    timed_out = False

    def run(n: int, random_coords: bool, enforce_chirality: bool, limit: float) -> list[int]:
        nonlocal timed_out
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed)
        params.numThreads = 1
        params.useRandomCoords = random_coords
        params.enforceChirality = enforce_chirality
        if budget:
            params.timeout = max(1, math.ceil(limit - (time.monotonic() - started)))
        got = list(AllChem.EmbedMultipleConfs(mol, n, params))
        ids = [i for i in got if i >= 0]  # RDKit reports a timeout as conformer id -1
        if budget and len(ids) < n and (len(ids) < len(got) or time.monotonic() - started >= limit):
            timed_out = True
        return ids

    def attempt(random_coords: bool, enforce_chirality: bool = True) -> list[int]:
        if budget and n_conformers > 1:
            # one conformer first, within one conformer's time: an input on which ETKDG runs out of time even once
            # (a hostile ring) fails after ``timeout`` seconds, not ``n_conformers`` times that. The full run's
            # conformers do not depend on the probe (same seed; conformer 0 is the probe's when it succeeds, and a
            # probe that failed in time may still be followed by later conformers), so the geometries do not
            # depend on the limit.
            run(1, random_coords, enforce_chirality, min(budget, timeout + time.monotonic() - started))
            if timed_out:
                return []
            mol.RemoveAllConformers()
        return run(n_conformers, random_coords, enforce_chirality, budget)

    with rdBase.CaptureErrorLog():
        ids = attempt(False)
        random_coords = not ids
        if random_coords and not timed_out:  # ETKDG's distance-geometry start fails for some strained systems
            ids = attempt(True)
        unchecked = not ids and not timed_out and bool(requested)
        if unchecked:
            # ETKDG's chirality checks reject every start for some strained cages with given stereo (4% of QM9's
            # molecules in their DFT stereo): embed without them; only optimised conformers with that stereo count
            ids = attempt(True, enforce_chirality=False)
    if timed_out:
        mol.RemoveAllConformers()
        raise MoleculeError(
            "embedding_timeout",
            f"{what}: ETKDGv3 found no 3D geometry within the time limit of {timeout} s per conformer "
            f"(seed {seed})",
        )
    if not ids:
        raise MoleculeError("embedding_failed", f"{what}: ETKDGv3 found no 3D geometry (seed {seed})")

    with rdBase.CaptureErrorLog():
        if AllChem.MMFFHasAllMoleculeParams(mol):
            force_field = "MMFF94"
            props = AllChem.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94")

            def make(cid: int) -> Any:
                return AllChem.MMFFGetMoleculeForceField(mol, props, confId=cid)
        elif AllChem.UFFHasAllMoleculeParams(mol):
            force_field = "UFF"

            def make(cid: int) -> Any:
                return AllChem.UFFGetMoleculeForceField(mol, confId=cid)
        else:
            force_field = None
        results = []  # (energy, conformer id, converged)
        for cid in ids:
            if force_field is None:
                results.append((float("nan"), cid, False))
                continue
            ff = make(cid)
            converged = ff.Minimize(maxIts=2000) == 0
            results.append((float(ff.CalcEnergy()), cid, converged))
    if unchecked:
        results = [r for r in results if has_stereo(mol, requested, r[1])]
        if not results:
            raise MoleculeError("embedding_failed", f"{what}: ETKDGv3 found no 3D geometry with the stereochemistry "
                                f"it gives (seed {seed})")
    results.sort(key=lambda r: (np.nan_to_num(r[0], nan=np.inf), r[1]))
    energy, best, converged = results[0]
    chosen, perceived = read_stereo(mol, best)
    stereo = open_stereo(requested, perceived)
    # the prediction averages over the conformers of the stereoisomer it names: where the input leaves stereo open,
    # ETKDG may have built other diastereomers too, and those are other molecules
    kept = [results[0]] + [r for r in results[1:] if not perceived or has_stereo(mol, perceived, r[1])]
    conformer = {
        "method": "ETKDGv3", "seed": int(seed), "random_coords": random_coords,
        "requested": int(n_conformers), "n_conformers": len(ids), "averaged": len(kept), "force_field": force_field,
        "converged": converged,
        "energy_kcal_mol": None if np.isnan(energy) else energy,
        "stereo_smiles": chosen, "unassigned_stereo": stereo.open,
    }
    warnings = [open_stereo_warning(stereo, chosen)] if stereo.changes_prediction else []
    if force_field is None:
        warnings.append("no force field has parameters for this molecule; the ETKDG geometry is unoptimised")
    elif not converged:
        warnings.append(f"the {force_field} optimisation of the generated conformer did not converge")
    return np.stack([mol.GetConformer(r[1]).GetPositions() for r in kept]), conformer, warnings


def validate_embedded(molecule: Molecule, limits: ValidationLimits) -> Molecule:
    """Validate a generated geometry; a broken one is the embedder's failure, not the input's. Another conformer
    that is broken is left out of the average (``provenance.conformer.averaged`` counts those kept)."""
    try:
        molecule = validate(molecule, limits)
    except MoleculeError as exc:
        if exc.code != "invalid_geometry":
            raise
        message = f"the generated 3D geometry is unusable: {exc.message}"
        raise MoleculeError("embedding_failed", message) from None
    usable = []
    for other in molecule.other_conformers:
        try:
            check_geometry(molecule.numbers, other, limits)
            usable.append(other)
        except MoleculeError:
            continue
    if len(usable) == len(molecule.other_conformers):
        return molecule
    provenance = {**molecule.provenance, "conformer": {**molecule.provenance["conformer"], "averaged": len(usable) + 1}}
    return Molecule(molecule.numbers, molecule.positions, molecule.id, molecule.charge, provenance, molecule.warnings,
                    tuple(usable))
