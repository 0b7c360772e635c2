"""A parse function whose worker process dies on the SMILES ``CRASH`` (tests/test_jobs.py); a module of its own so
that worker processes import it quickly."""

from __future__ import annotations

import os

from lieprop.scoring.records import parse_records


def parse_or_crash(kind, records, seed, limits, conformers):
    if any(getattr(r, "smiles", None) == "CRASH" for r in records):
        os._exit(1)
    return parse_records(kind, records, seed, limits, conformers)
