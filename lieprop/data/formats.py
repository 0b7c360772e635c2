"""The input format registry: every input format lieprop reads, and everything the rest of the code needs to know
about it, in one entry.

A :class:`Format` is what a user names (``--format sdf``, a ``.sdf.gz`` file name): its extensions, aliases, and how
its text is cut into raw records. Its :class:`Kind` is how those records become molecules, shared by the formats
that hold the same records (``xyz`` and ``extxyz`` hold XYZ frames; ``sdf`` and ``mol`` MOL blocks; ``smi`` and
``csv`` SMILES): the per-record parser, the records per worker task, the error code of an unreadable record,
whether parsing may embed a conformer (slow: the service sends such items to its process pool), and the key under
which a REST item may carry one molecule of the kind.

Readers (:mod:`lieprop.data.readers`), file scoring (:mod:`lieprop.scoring`), the REST items
(:mod:`lieprop.data.items`), the error codes (:mod:`lieprop.data.validation`) and the CLI help all read this
registry, so adding a format is one :func:`register` call (a built-in one: one entry in :data:`BUILTIN_FORMATS`)
plus the module with its splitter and parser. docs/DESIGN.md ("Formats") has the contract.

Parsers run in worker processes, which import this module afresh: a format registered at run time by other code
(a test) is known in the registering process only, so read it with ``workers=1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lieprop.data import validation
from lieprop.data.molecule import Molecule
from lieprop.data.records import ParseOptions, ReadOptions, RecordParser
from lieprop.data.sdf import parse_sdf_record, split_sdf_records
from lieprop.data.smiles import check_smiles_csv, parse_smiles_record, smiles_molecule, split_smi, split_smiles_csv
from lieprop.data.textio import open_text
from lieprop.data.validation import MoleculeError
from lieprop.data.xyz import parse_xyz_record, split_xyz_frames

#: Cuts a text (its lines, as a file handle yields them) into raw records, lazily, in order; never parses.
Splitter = Callable[[Iterator[str], ReadOptions], Iterator[Any]]
#: Reads the one molecule of a REST item's text: ``(text, id, options) -> Molecule``; raises :class:`MoleculeError`.
TextParser = Callable[[str, str, ParseOptions], Molecule]
#: Checks a source before any work (a CSV's header): raises ``ValueError`` with a message for the user.
SourceCheck = Callable[[Path | str, ReadOptions], None]

#: REST item keys that are no text kind: the id, and the array kind (``numbers`` + ``positions`` + ``charge``).
RESERVED_ITEM_KEYS = frozenset({"id", "numbers", "positions", "charge"})


@dataclass(frozen=True)
class Kind:
    """How the records of one kind become molecules.

    ``name`` names the kind in job plans and worker tasks; ``label`` and ``record`` name a record in messages
    (``"no XYZ frame found"``). ``split`` cuts a text of this kind into records (a :data:`Splitter`; a format may
    bring its own), ``parse`` turns one record into an :class:`~lieprop.data.records.Item` (a module-level
    :data:`~lieprop.data.records.RecordParser`, as workers unpickle it by name). ``task_size``: records per worker
    task, so that a task takes some milliseconds (embedding a SMILES ~10 ms, parsing an XYZ frame ~0.2 ms).
    ``error_code``: the code of an unreadable record (default ``invalid_<name>``); ``failure_code``: the code
    when parsing dies unexpectedly (a crashed worker; default ``error_code``). ``embeds``: parsing may generate a
    conformer. ``item_key``: the REST item key carrying one molecule's text (None: no REST items of this kind);
    ``from_text`` reads such a text (default: split it, expect exactly one record, parse it). ``empty_item``: an
    input without records is one ``empty_input`` item (else no items at all).
    """

    name: str
    label: str
    record: str
    split: Splitter
    parse: RecordParser
    task_size: int
    error_code: str = ""
    failure_code: str = ""
    embeds: bool = False
    item_key: str | None = None
    from_text: TextParser | None = None
    empty_item: bool = True

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"a kind's name is a lower-case identifier, got {self.name!r}")
        if self.task_size < 1:
            raise ValueError(f"task_size must be >= 1, got {self.task_size}")
        if not self.error_code:
            object.__setattr__(self, "error_code", f"invalid_{self.name}")
        if not self.failure_code:
            object.__setattr__(self, "failure_code", self.error_code)
        if self.item_key in RESERVED_ITEM_KEYS:
            raise ValueError(f"the REST item key {self.item_key!r} is reserved")

    def empty_error(self) -> MoleculeError:
        """The error of an input without records (``empty_input``)."""
        return MoleculeError("empty_input", f"no {self.label} {self.record} found: the input is empty")

    def records(self, source: Path | str) -> Iterator[Any]:
        """Raw records of a text of this kind (a REST item's text, or a file), lazily."""
        return _split(source, self.split, ReadOptions(), None)


@dataclass(frozen=True)
class Format:
    """One input format: ``name`` (``format=`` values), file ``extensions`` (with the dot; ``.gz`` is looked
    through), ``aliases`` (other names users give it), its record :class:`Kind`, and how its files are cut:
    ``split`` (default: the kind's), ``newline`` (how files are opened: ``""`` for the ``csv`` module), ``check``
    (run before any work, e.g. a CSV header must have the SMILES column). ``note`` goes into help texts."""

    name: str
    extensions: tuple[str, ...]
    kind: Kind
    aliases: tuple[str, ...] = ()
    split: Splitter | None = None
    newline: str | None = None
    check: SourceCheck | None = None
    note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in (self.name, *self.aliases):
            if not name or name != normalize_name(name):
                raise ValueError(f"format names and aliases are lower case without a dot, got {name!r}")
        for ext in self.extensions:
            if not ext.startswith(".") or ext != ext.lower() or ext == ".gz":
                raise ValueError(f"extensions are lower case and start with a dot, got {ext!r}")

    @property
    def splitter(self) -> Splitter:
        return self.split or self.kind.split

    def records(self, source: Path | str, options: ReadOptions | None = None) -> Iterator[Any]:
        """The raw records of a file (``.gz`` decompressed) or of contents given as a string, lazily, in order.

        Runs ``check`` first, so a bad file fails here (``ValueError``) rather than halfway through a run.
        """
        options = options or ReadOptions()
        if self.check is not None:
            self.check(source, options)
        return _split(source, self.splitter, options, self.newline)


def _split(source: Path | str, split: Splitter, options: ReadOptions, newline: str | None) -> Iterator[Any]:
    with open_text(source, newline=newline, max_decompressed_bytes=options.max_decompressed_bytes) as handle:
        yield from split(iter(handle), options)


def numbered(kind: Kind, records: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """``(index, record)`` pairs; an input without records gives ``(0, the kind's empty_input error)`` when the
    kind says so, which :func:`~lieprop.data.records.parse_record` turns into an error item."""
    count = 0
    for count, record in enumerate(records, 1):
        yield count - 1, record
    if count == 0 and kind.empty_item:
        yield 0, kind.empty_error()


# --------------------------------------------------------------------------------------------------
# The registry (copy on write, so that readers on other threads always see a consistent one)

_formats: dict[str, Format] = {}
_kinds: dict[str, Kind] = {}


def register(fmt: Format) -> Format:
    """Add a format (and its kind, when new). Raises ``ValueError`` when its name, an alias or an extension is
    taken, or when another kind of the same name or REST item key is registered. Returns ``fmt``."""
    taken_names = {n: f.name for f in _formats.values() for n in (f.name, *f.aliases)}
    for name in (fmt.name, *fmt.aliases):
        if name in taken_names:
            raise ValueError(f"the format name {name!r} is taken by format {taken_names[name]!r}")
    taken_exts = {e: f.name for f in _formats.values() for e in f.extensions}
    for ext in fmt.extensions:
        if ext in taken_exts:
            raise ValueError(f"the extension {ext!r} is taken by format {taken_exts[ext]!r}")
    _add_kind(fmt.kind)
    _set(formats={**_formats, fmt.name: fmt})
    return fmt


def unregister(name: str) -> Format:
    """Remove a format (and its kind, when no other format holds it); returns it. ``KeyError`` if unknown."""
    fmt = get(name)
    formats = {n: f for n, f in _formats.items() if n != name}
    kinds = dict(_kinds)
    if all(f.kind.name != fmt.kind.name for f in formats.values()):
        kinds.pop(fmt.kind.name, None)
    _set(formats=formats, kinds=kinds)
    return fmt


def _add_kind(kind: Kind) -> None:
    known = _kinds.get(kind.name)
    if known is not None:
        if known != kind:
            raise ValueError(f"another kind named {kind.name!r} is registered")
        return
    if kind.item_key is not None and any(k.item_key == kind.item_key for k in _kinds.values()):
        raise ValueError(f"the REST item key {kind.item_key!r} is taken")
    _set(kinds={**_kinds, kind.name: kind})


def _set(formats: dict[str, Format] | None = None, kinds: dict[str, Kind] | None = None) -> None:
    global _formats, _kinds
    if kinds is not None:
        _kinds = kinds
        validation.set_kind_codes({k.name: (k.error_code, k.failure_code) for k in kinds.values()})
    if formats is not None:
        _formats = formats


# --------------------------------------------------------------------------------------------------
# Looking formats up


def registered() -> tuple[Format, ...]:
    """Every format, in registration order (the order of help texts and error messages)."""
    return tuple(_formats.values())


def names() -> tuple[str, ...]:
    """The format names, in order: what ``format=`` / ``--format`` accept (besides aliases)."""
    return tuple(_formats)


def extensions() -> tuple[str, ...]:
    """Every known extension, in order (``.gz`` may follow any of them)."""
    return tuple(e for f in _formats.values() for e in f.extensions)


def describe() -> str:
    """The inputs for a help text: ``.xyz (multi-frame), ..., .csv (SMILES column), optionally .gz``."""
    parts = ["/".join(f.extensions) + (f" ({f.note})" if f.note else "") for f in _formats.values()]
    return ", ".join(parts) + ", optionally .gz"


def get(name: str) -> Format:
    """The format of this exact (canonical) name; ``KeyError`` if none."""
    try:
        return _formats[name]
    except KeyError:
        raise KeyError(f"no input format {name!r}; known: {', '.join(_formats)}") from None


def normalize_name(name: str) -> str:
    """A user-given format name as the registry spells names: lower case, no leading dot (``".XYZ"`` -> ``xyz``)."""
    return name.strip().lower().lstrip(".")


def lookup(name: str) -> Format | None:
    """The format a user-given name or alias means (``"SD"``, ``".sdf"``, ``"smiles"``), or None."""
    wanted = normalize_name(name)
    return next((f for f in _formats.values() if wanted == f.name or wanted in f.aliases), None)


def canonical(name: str) -> str:
    """The canonical name of a user-given format name or alias when it is known, else the normalised name (so
    that a caller can name the unknown format in its own message)."""
    fmt = lookup(name)
    return fmt.name if fmt is not None else normalize_name(name)


def resolve(name: str, what: str = "format") -> Format:
    """The format a user-given name or alias means; ``ValueError("unknown <what> 'pdb'; supported: xyz, ...")``."""
    fmt = lookup(name)
    if fmt is None:
        raise ValueError(f"unknown {what} {name!r}; supported: {', '.join(_formats)}")
    return fmt


def split_suffix(filename: str | Path) -> tuple[str, bool]:
    """A file name's format extension, lower case, and whether ``.gz`` follows it: ``a.SDF.gz`` -> ``(".sdf",
    True)``; ``a`` -> ``("", False)``."""
    suffixes = [s.lower() for s in Path(filename).suffixes]
    gz = suffixes[-1:] == [".gz"] and len(suffixes) > 1
    return (suffixes[-2] if gz else (suffixes[-1:] or [""])[0]), gz


def find(filename: str | Path) -> Format | None:
    """The format a file name's extension selects (``.gz`` looked through), or None."""
    ext, _ = split_suffix(filename)
    return next((f for f in _formats.values() if ext in f.extensions), None)


def detect(filename: str | Path) -> Format:
    """The format a file name's extension selects (``.xyz.gz`` counts as ``.xyz``); ``ValueError`` naming the
    known extensions and formats when none does."""
    fmt = find(filename)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {Path(filename).name!r} from its extension; supported extensions: "
            f"{', '.join(extensions())} (optionally + .gz), or pass format= one of {', '.join(_formats)}"
        )
    return fmt


def known_suffix(filename: str | Path) -> str | None:
    """A file name's format extension with ``.gz`` kept (``.csv``, ``.sdf.gz``) when the format is known, else
    None: the suffix to store an upload under, so that it is read as it was named."""
    ext, gz = split_suffix(filename)
    if find(filename) is None:
        return None
    return ext + (".gz" if gz else "")


def kinds() -> tuple[Kind, ...]:
    """Every record kind, in registration order."""
    return tuple(_kinds.values())


def kind(name: str) -> Kind:
    """The record kind of this name (``smiles``, ``xyz``, ``sdf``, ...); ``KeyError`` if none."""
    try:
        return _kinds[name]
    except KeyError:
        raise KeyError(f"no record kind {name!r}; known: {', '.join(_kinds)}") from None


def item_kinds() -> tuple[Kind, ...]:
    """The kinds a REST item can carry as text (``smiles``, ``xyz``, ``sdf``), in order."""
    return tuple(k for k in _kinds.values() if k.item_key is not None)


def by_item_key(key: str) -> Kind | None:
    """The kind a REST item key carries, or None (``numbers``, ``id``, unknown keys)."""
    return next((k for k in _kinds.values() if k.item_key == key), None)


# --------------------------------------------------------------------------------------------------
# The built-in formats

SMILES = Kind("smiles", "SMILES", "line", split_smi, parse_smiles_record, task_size=16,
              failure_code="embedding_failed", embeds=True, item_key="smiles", from_text=smiles_molecule,
              empty_item=False)
XYZ = Kind("xyz", "XYZ", "frame", split_xyz_frames, parse_xyz_record, task_size=128, item_key="xyz")
SDF = Kind("sdf", "SDF", "record", split_sdf_records, parse_sdf_record, task_size=64, embeds=True, item_key="sdf")

#: Built-in kinds, in the order of the REST contract's error codes and item keys (docs/DESIGN.md).
BUILTIN_KINDS = (SMILES, XYZ, SDF)
#: Built-in formats, in the order help texts and error messages list them.
BUILTIN_FORMATS = (
    Format("xyz", (".xyz",), XYZ, note="multi-frame"),
    Format("extxyz", (".extxyz",), XYZ, note="multi-frame"),
    Format("sdf", (".sdf", ".sd"), SDF, aliases=("sd",)),
    Format("mol", (".mol",), SDF),
    Format("smi", (".smi", ".smiles"), SMILES, aliases=("smiles",)),
    Format("csv", (".csv",), SMILES, split=split_smiles_csv, newline="", check=check_smiles_csv,
           note="SMILES column"),
)

for _kind in BUILTIN_KINDS:
    _add_kind(_kind)
for _format in BUILTIN_FORMATS:
    register(_format)
