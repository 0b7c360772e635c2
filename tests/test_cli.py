"""The command line introduces itself: ``lieprop --help`` and every subcommand's ``--help`` work and list what
exists."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lieprop.cli import build_parser


def _subcommands() -> dict:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sub.choices


def test_lieprop_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "lieprop.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in _subcommands():
        assert f"    {name}" in out.stdout, f"{name} missing from lieprop --help"


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_help_formats_with_its_examples(name):
    parser = _subcommands()[name]
    text = parser.format_help()
    assert "examples:" in text and f"lieprop {name}" in text


def test_a_percent_sign_in_a_summary_is_text_not_a_format():
    """``calibrate`` says "90% intervals": argparse %-formats summaries, so the helper escapes it."""
    assert "90% intervals" in build_parser().format_help()
