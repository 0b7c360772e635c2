"""The format registry (lieprop/data/formats.py): one entry per input format, read by everything else.

Two kinds of specification: the registry is consistent (every kind can be parsed, scheduled and reported; every
extension and alias means one format; the old tables are views of it), and adding a format is one entry plus its
parser: a toy format registered here, in a fixture, is read by ``read_file`` and scored by ``score_file`` without
any other module knowing about it.
"""

from __future__ import annotations

import csv
import gzip
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from lieprop.data import formats
from lieprop.data.formats import Format, Kind
from lieprop.data.readers import FORMATS, read_file
from lieprop.data.records import Item, ParseOptions, ReadOptions
from lieprop.data.validation import MoleculeError, error_codes

DATA = Path(__file__).parent / "data"


# --- the registry is consistent ----------------------------------------------------------------


def test_every_kind_can_be_parsed_scheduled_and_reported():
    codes = error_codes()
    for kind in formats.kinds():
        assert callable(kind.split) and callable(kind.parse)
        assert kind.task_size >= 1
        assert kind.error_code in codes and kind.failure_code in codes
        # worker processes unpickle parsers and splitters by module path: they must be module-level functions
        assert pickle.loads(pickle.dumps(kind.parse)) is kind.parse
        assert pickle.loads(pickle.dumps(kind.split)) is kind.split


def test_every_format_belongs_to_a_registered_kind():
    for fmt in formats.registered():
        assert formats.kind(fmt.kind.name) is fmt.kind
        assert formats.get(fmt.name) is fmt


def test_every_extension_selects_exactly_one_format_also_gzipped():
    extensions = formats.extensions()
    assert len(extensions) == len(set(extensions))
    for fmt in formats.registered():
        for ext in fmt.extensions:
            assert formats.detect(f"molecules{ext}") is fmt
            assert formats.detect(f"some.dir/molecules{ext.upper()}.gz") is fmt
            assert formats.known_suffix(f"molecules{ext}.gz") == f"{ext}.gz"


def test_names_and_aliases_resolve_to_their_format():
    assert formats.resolve("sd") is formats.get("sdf")
    assert formats.resolve("SMILES") is formats.get("smi")
    assert formats.resolve(".xyz") is formats.get("xyz")
    for fmt in formats.registered():
        for name in (fmt.name, *fmt.aliases):
            assert formats.resolve(name) is fmt
            assert formats.canonical(name.upper()) == fmt.name


def test_unknown_names_and_extensions_are_refused_naming_what_is_supported():
    with pytest.raises(ValueError, match="unknown input format 'pdb'; supported: xyz, extxyz, sdf, mol, smi, csv"):
        formats.resolve("pdb", what="input format")
    with pytest.raises(ValueError, match=r"cannot tell the format of 'x.pdb'.*\.xyz, \.extxyz, \.sdf, \.sd"):
        formats.detect("x.pdb")
    assert formats.lookup("pdb") is None and formats.find("x.pdb") is None
    assert formats.known_suffix("x.pdb.gz") is None and formats.known_suffix("x.gz") is None
    assert formats.canonical(".PDB") == "pdb"


def test_the_rest_contract_codes_come_from_the_kinds_in_a_fixed_order():
    assert error_codes()[:3] == ("invalid_smiles", "invalid_xyz", "invalid_sdf")
    from lieprop.data.validation import ERROR_CODES, ErrorCode

    assert get_args(ErrorCode) == ERROR_CODES == error_codes()


def test_the_old_tables_are_views_of_the_registry():
    from lieprop.inference import EMBEDDING_KINDS, INPUT_KINDS
    from lieprop.scoring.pipeline import TASK_SIZE
    from lieprop.scoring.records import KINDS

    assert dict(FORMATS) == {f.name: f.extensions for f in formats.registered()}
    assert dict(KINDS) == {"xyz": "xyz", "extxyz": "xyz", "sdf": "sdf", "mol": "sdf", "smi": "smiles",
                           "csv": "smiles"}
    assert dict(TASK_SIZE) == {"smiles": 16, "xyz": 128, "sdf": 64}
    assert dict(INPUT_KINDS) == {"smiles": "smiles", "xyz": "xyz", "sdf": "sdf", "numbers": "atoms"}
    assert set(EMBEDDING_KINDS) == {"smiles", "sdf"}


def test_a_clashing_entry_is_refused():
    xyz = formats.get("xyz")
    with pytest.raises(ValueError, match="extension '.xyz' is taken"):
        formats.register(Format("xyz2", (".xyz",), xyz.kind))
    with pytest.raises(ValueError, match="name 'sd' is taken"):
        formats.register(Format("sd", (".sd2",), xyz.kind))
    other = Kind("xyz", "XYZ", "frame", xyz.kind.split, xyz.kind.parse, task_size=1)
    with pytest.raises(ValueError, match="another kind named 'xyz'"):
        formats.register(Format("xyz3", (".xyz3",), other))
    assert formats.names() == ("xyz", "extxyz", "sdf", "mol", "smi", "csv")


# --- adding a format: one entry plus its parser ---------------------------------------------------
#
# The toy format: one molecule per line, ``name: Z x y z; Z x y z; ...`` (Å). Blank lines and # comments are skipped.


def split_toy(lines: Iterator[str], options: ReadOptions) -> Iterator[tuple[int, str]]:
    """(line number, line) of every molecule line."""
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield number, line.strip()


def parse_toy(index: int, record: tuple[int, str], options: ParseOptions) -> Item:
    from lieprop.data.atoms import from_arrays

    number, line = record
    name, _, atoms = line.rpartition(":")
    ident = name.strip() or str(index)
    try:
        rows = [[float(v) for v in atom.split()] for atom in atoms.split(";")]
        if any(len(row) != 4 for row in rows):
            raise ValueError("an atom is 'Z x y z'")
        molecule = from_arrays([int(r[0]) for r in rows], [r[1:] for r in rows], id=ident, limits=options.limits)
    except ValueError as exc:
        return Item(index, ident, error=MoleculeError("invalid_toy", f"line {number}: {exc}"))
    except MoleculeError as exc:
        return Item(index, ident, error=exc)
    return Item(index, ident, molecule)


TOY = Format("toy", (".toy",), Kind("toy", "toy", "line", split_toy, parse_toy, task_size=4), aliases=("toys",))

WATER = "8 0 0 0.1173; 1 0 0.7572 -0.4692; 1 0 -0.7572 -0.4692"
METHANE = ("6 0 0 0; 1 0.629 0.629 0.629; 1 -0.629 -0.629 0.629; 1 -0.629 0.629 -0.629; "
           "1 0.629 -0.629 -0.629")
TOY_FILE = f"# a toy file\nwater: {WATER}\n\nbroken: 8 0 0\nmethane: {METHANE}\nneon: 10 0 0 0\n"


@pytest.fixture
def toy(tmp_path):
    """The toy format registered for one test, and a file of it."""
    formats.register(TOY)
    path = tmp_path / "molecules.toy"
    path.write_text(TOY_FILE)
    try:
        yield path
    finally:
        formats.unregister("toy")


def outcomes(items):
    return [(i.index, i.id, "ok" if i.ok else i.error.code) for i in items]


def test_a_registered_format_is_read_by_read_file(toy):
    expected = [(0, "water", "ok"), (1, "broken", "invalid_toy"), (2, "methane", "ok"),
                (3, "neon", "unsupported_element")]
    assert outcomes(read_file(toy)) == expected
    assert outcomes(read_file(toy.rename(toy.with_suffix(".txt")), format="TOYS")) == expected
    packed = toy.parent / "packed.toy.gz"
    packed.write_bytes(gzip.compress(TOY_FILE.encode()))
    assert outcomes(read_file(packed)) == expected
    assert "toy" in FORMATS and "invalid_toy" in error_codes()


def test_a_registered_format_without_records_is_one_empty_input_item(toy):
    toy.write_text("# nothing\n")
    [item] = read_file(toy)
    assert (item.index, item.id, item.error.to_dict()) == (0, "0", {
        "code": "empty_input", "message": "no toy line found: the input is empty"})


def test_a_registered_format_is_scored_by_score_file(toy, tmp_path):
    from lieprop.scoring.pipeline import ScoreOptions, score_file

    out = tmp_path / "scores.csv"
    summary = score_file(toy, out, ScoreOptions(properties=("homo",)), workers=1)
    assert (summary.counts.ok, summary.counts.failed) == (2, 2)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["index"], r["id"], r["ok"], r["error"]) for r in rows] == [
        ("0", "water", "true", ""), ("1", "broken", "false", "invalid_toy"), ("2", "methane", "true", ""),
        ("3", "neon", "false", "unsupported_element")]
    assert float(rows[0]["homo [eV]"]) < 0


def test_unregistering_forgets_the_format_and_its_code(toy):
    formats.unregister("toy")
    try:
        assert formats.lookup("toy") is None and formats.find(toy) is None
        assert "invalid_toy" not in error_codes()
        with pytest.raises(ValueError, match="unknown error code 'invalid_toy'"):
            MoleculeError("invalid_toy", "no such format any more")
    finally:
        formats.register(TOY)  # for the fixture's own unregister
