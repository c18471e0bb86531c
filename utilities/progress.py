"""The console progress of a run: one tqdm bar line on a terminal, nothing otherwise.

The bar shows the current stage of the current epoch (training batches, a split's embedding
batches, its metrics) followed by the run's elapsed time and ETA (the mean epoch time of this
process times what is left of the run). It is drawn only where the stream tqdm writes to (stderr)
is a terminal, ``--no_progress`` is not given, and, under torchrun, on rank 0: a redirected run
(a sweep log) gets no bar at all, only its one line per epoch on stdout. The bar is one line that
each stage redraws (never a stack of bars); a log line printed while it is shown clears it first
(:func:`utilities.cli.setup_logging`).

:class:`Progress` also keeps the epoch times whether or not a bar is drawn, so the epoch line can
give the ETA (:meth:`Progress.eta`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| {run}"


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (False for files, pipes and pytest's captures)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def columns(stream: Any) -> int:
    """The terminal's width (0 when it reports none, as a fresh pseudo-terminal may)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def format_seconds(seconds: float) -> str:
    """``"4:05"``, ``"1:02:03"``: the clock format of the bar and the epoch line."""
    s = round(seconds)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Epoch timing of a run (always) and its one progress bar (when ``enabled``).

    ``n_epochs``: the run's last epoch + 1 (the ETA counts the epochs before it). Call
    :meth:`start_epoch` / :meth:`end_epoch` around each epoch; wrap each stage's loop in
    :meth:`track`, or tick it with the function :meth:`steps` returns."""

    mininterval = 0.1  # seconds between two redraws of the bar

    def __init__(
        self,
        n_epochs: int = 0,
        *,
        enabled: bool = False,
        stream: Any = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.n_epochs = n_epochs
        self.enabled = enabled
        self.stream = stream
        self.epoch: int | None = None
        self._clock = clock
        self._start = clock()
        self._epoch_start = self._start
        self._epoch_times: list[float] = []
        self._in_epoch = False
        self._note = ""
        self._bar: Any = None

    @classmethod
    def for_run(cls, opt, dist) -> Progress:
        """A bar on stderr when it is a terminal, ``--no_progress`` is not given and this process
        reports the run (rank 0)."""
        stream = sys.stderr
        enabled = not opt.no_progress and dist.is_main and is_terminal(stream)
        return cls(opt.n_epochs, enabled=enabled, stream=stream)

    # ---- epochs -------------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_start, self._in_epoch, self._note = epoch, self._clock(), True, ""

    def end_epoch(self) -> None:
        self._epoch_times.append(self._clock() - self._epoch_start)
        self._in_epoch = False

    def eta(self) -> float | None:
        """Seconds left in the run: the mean epoch time of this process times the epochs after the
        current one, plus what the mean leaves of the current one; None before an epoch ended."""
        if not self._epoch_times or self.epoch is None:
            return None
        mean = sum(self._epoch_times) / len(self._epoch_times)
        left = mean * max(0, self.n_epochs - self.epoch - 1)
        if self._in_epoch:
            left += max(0.0, mean - (self._clock() - self._epoch_start))
        return left

    def elapsed(self) -> float:
        return self._clock() - self._start

    # ---- the bar ------------------------------------------------------------------------------------
    def track(self, iterable: Iterable[T], stage: str, total: int | None = None) -> Iterable[T]:
        """``iterable`` itself when no bar is drawn; else its items, each advancing the bar."""
        if not self.enabled:
            return iterable
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        return self._track(iterable, stage, total)

    def _track(self, iterable: Iterable[T], stage: str, total: int | None) -> Iterator[T]:
        self._stage(stage, total)
        for item in iterable:
            yield item
            self._advance()
        self._bar.refresh()  # the finished stage, whatever the redraw interval skipped

    def steps(self, stage: str, total: int) -> Callable[[str], None] | None:
        """A function to call before each of ``total`` steps with its name (e.g. a metric), or None
        when no bar is drawn."""
        if not self.enabled:
            return None
        self._stage(stage, total)
        first = [True]

        def tick(name: str) -> None:
            self._bar.set_description_str(f"{self._label(stage)} [{name}]", refresh=False)
            if first[0]:
                first[0] = False
                self._bar.refresh()
            else:
                self._advance()

        return tick

    def note(self, text: str) -> None:
        """A short text after the stage (e.g. the running loss)."""
        self._note = text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _label(self, stage: str) -> str:
        if self.epoch is None:
            return stage
        return f"epoch {self.epoch + 1}/{self.n_epochs} {stage}"

    def _run_info(self) -> str:
        eta = self.eta()
        info = f"{format_seconds(self.elapsed())} elapsed, ETA {'?' if eta is None else format_seconds(eta)}"
        return f"{self._note} | {info}" if self._note else info

    def _stage(self, stage: str, total: int | None) -> None:
        if self._bar is None:
            self._bar = RunBar(
                total=total,
                desc=self._label(stage),
                file=self.stream,
                leave=False,
                # follow the terminal's width; one that reports no size would hide the bar
                **({"dynamic_ncols": True} if columns(self.stream) else {"ncols": 100, "nrows": 24}),
                mininterval=self.mininterval,
                bar_format=BAR_FORMAT,
                run_info=self._run_info(),
            )
        else:
            self._bar.reset(total=total)
            self._bar.set_description_str(self._label(stage), refresh=False)
        self._bar.run_info = self._run_info()
        self._bar.refresh()

    def _advance(self) -> None:
        self._bar.run_info = self._run_info()
        self._bar.update(1)


def close_bars() -> None:
    """Remove any bar from the terminal (before an error line ends the run)."""
    for bar in list(getattr(RunBar, "_instances", ())):
        bar.close()


@contextlib.contextmanager
def bar_cleared(stream: Any) -> Iterator[None]:
    """Clear a shown bar while ``stream`` gets a line, and redraw it below the line (the bar and
    the log share the terminal)."""
    if not getattr(RunBar, "_instances", None):
        yield
        return
    with RunBar.external_write_mode(file=stream):
        yield


class RunBar(tqdm):
    """tqdm with a ``{run}`` field (elapsed, ETA of the run) in its format."""

    def __init__(self, *args: Any, run_info: str = "", **kwargs: Any) -> None:
        self.run_info = run_info  # before tqdm's first draw
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        return {**super().format_dict, "run": self.run_info}
