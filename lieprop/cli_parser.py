"""The one way lieprop's subcommands make their parsers, so that every ``--help`` reads (and works) alike."""

from __future__ import annotations

import argparse
from typing import Any


def subcommand(sub: Any, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand ``name`` of ``sub`` (argparse's subparsers action) with ``help`` as its one-line summary and
    description, and ``examples`` (indented lines) as its epilog. ``help`` is plain text: a ``%`` in it (e.g. "90%
    intervals") is escaped, since argparse %-formats the summary that ``lieprop --help`` lists."""
    return sub.add_parser(name, help=help.replace("%", "%%"), description=help, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
