"""What every entry point shares: logging setup, the ConfigError -> exit 2 wrapper, and the
argparse helpers that merge a stored run's flags with the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utilities.errors import ConfigError
from utilities.progress import bar_cleared, close_bars


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (pytest swaps it). A tqdm
    bar on the terminal (:mod:`utilities.progress`) is cleared before the line and redrawn below
    it, so the bar stays one line instead of being cut into the log."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        with bar_cleared(self.stream):
            super().emit(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Run output as plain lines on stdout (the tqdm bar stays on stderr). Idempotent."""
    root = logging.getLogger()
    if not any(isinstance(h, _StdoutHandler) for h in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("numba", "matplotlib", "PIL", "urllib3", "wandb", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_RUN: dict[str, Path] = {}


def announce_run(folder: Path) -> None:
    """The run folder now being written (an interrupted run is continued with ``--resume`` on it)."""
    _RUN["folder"] = Path(folder)


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line. An error raised in a DataLoader worker arrives in the
    main process re-built with the worker's whole traceback as its message; its last line is the
    original ``module.Class: message``, of which the message is kept."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        head, sep, message = last.partition(": ")
        text = message if sep and "Error" in head.rsplit(".", 1)[-1] else last
    return " ".join(text.split())


def run_entry_point(main: Callable[[], Any]) -> None:
    """Run an entry point: logging set up, a :class:`ConfigError` is one line on stderr and exit
    code 2, Ctrl-C one line (saying how to continue the run) and exit code 130."""
    setup_logging()
    try:
        main()
    except ConfigError as err:
        close_bars()
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        close_bars()
        folder = _RUN.get("folder")
        hint = f"; continue with: python main.py --resume {folder}" if folder else ""
        print(f"error: interrupted{hint}", file=sys.stderr)
        sys.exit(130)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except ``None`` (a flag whose help says what its absence means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


class ShortUsageParser(argparse.ArgumentParser):
    """An argparse parser whose errors are two short lines (a pointer to ``--help`` and the error)
    instead of the usage block of every flag."""

    def format_usage(self) -> str:
        return f"usage: {self.prog} [options]; see --help\n"

    def error(self, message: str):
        self.exit(2, f"{self.format_usage()}error: {message}\n")


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
