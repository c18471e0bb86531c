"""Docstrings that cannot rot: every flag they name exists, and every default they copy is right.

A docstring may write a flag followed by its default, "``--loss_triplet_margin`` (0.2)": when the
parenthesis starts with a number (or numbers), they must equal the parser's default. Docstrings
name no file outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import parameters
from evaluation.__main__ import build_parser as evaluation_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "criteria",
    "batch_mining",
    "datasampler",
    "datasets",
    "architectures",
    "metrics",
    "evaluation",
    "utilities",
]
FILES = [
    *sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")),
    ROOT / "main.py",
    ROOT / "parameters.py",
]
MENTION = re.compile(r"``--([A-Za-z0-9_]+)``(?:\s*\(([^()]*)\))?")
NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?$")


def _defaults() -> dict[str, object]:
    out = {}
    for parser in (parameters.build_parser(), evaluation_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                out[option.lstrip("-")] = action.default
    return out


DEFAULTS = _defaults()


def leading_numbers(text: str) -> list[float]:
    """The numbers at the start of ``text``: "0.5 rad" -> [0.5]; "0 2" -> [0, 2]; "the" -> []."""
    out = []
    for token in re.split(r"[\s,;]+", text.strip()):
        if not NUMBER.match(token):
            break
        out.append(float(token))
    return out


def copied_defaults(path: Path) -> list[tuple[str, str | None, int]]:
    text = path.read_text()
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in MENTION.finditer(text)]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_flags_exist_and_copied_defaults_are_right(path):
    for flag, paren, line in copied_defaults(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        assert flag in DEFAULTS, f"{where} names --{flag}, which no entry point defines"
        numbers = leading_numbers(paren or "")
        if not numbers:
            continue
        default = DEFAULTS[flag]
        expected = [float(v) for v in default] if isinstance(default, list) else [float(default)]
        assert numbers == pytest.approx(expected), (
            f"{where}: --{flag} ({paren}) but the default is {default!r}"
        )


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_files_outside_the_repository(path):
    assert "DESIGN.md" not in path.read_text(), f"{path.relative_to(ROOT)} cites DESIGN.md"


def test_the_checks_can_fail():
    assert leading_numbers("0.5 rad") == [0.5] and leading_numbers("0 2") == [0.0, 2.0]
    assert leading_numbers("5e-4, like ArcFace") == [5e-4] and leading_numbers("default by form") == []
    assert DEFAULTS["loss_triplet_margin"] == 0.2 and "no_such_flag" not in DEFAULTS
