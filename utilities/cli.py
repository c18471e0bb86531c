"""What every entry point shares: logging setup, the ConfigError -> exit 2 wrapper, and the
argparse helpers that merge a stored run's flags with the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from utilities.errors import ConfigError


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Run output as plain lines on stdout (tqdm bars stay on stderr). Idempotent."""
    root = logging.getLogger()
    if not any(isinstance(h, _StdoutHandler) for h in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_entry_point(main: Callable[[], Any]) -> None:
    """Run an entry point: logging set up, a :class:`ConfigError` is one line on stderr, exit 2."""
    setup_logging()
    try:
        main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """The flags present on the command line (defaults suppressed), as ``{dest: value}``."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return vars(parser.parse_args(argv))
    finally:
        for action, default in saved:
            action.default = default


def stored_namespace(
    defaults: argparse.Namespace, stored: dict[str, Any], explicit: dict[str, Any], not_restored: set[str]
) -> argparse.Namespace:
    """Defaults, overwritten by a stored run's arguments (except ``not_restored``), overwritten by
    explicit flags."""
    merged = vars(defaults).copy()
    merged.update({k: v for k, v in stored.items() if k not in not_restored})
    merged.update(explicit)
    return argparse.Namespace(**merged)
