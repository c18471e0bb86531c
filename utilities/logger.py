"""The run folder and optional Weights & Biases logging.

``<save_path>/<dataset>/<run name>/`` gets

* ``args.json``: the resolved namespace, git commit, package versions and the run card
  (``run_card``, utilities/run_card.py), written at start;
* ``metrics.csv``: one row per evaluation (epoch, split, every metric, eval time) plus one
  ``split = training`` row per epoch with the mean loss, training time and miner statistics;
* ``summary.json``: written at the end (selected epoch, selection split, every split's metrics at
  that epoch, wall time, and the run card again: a resumed run records the resuming process's).

With ``--log_online`` the same numbers go to W&B, the run card in the run's config
(``WANDB_MODE=offline`` works without network). The API key is read by wandb itself from
``WANDB_API_KEY`` or ``wandb login``; it is never a flag and never written here. If W&B cannot
start (within ``--wandb_timeout`` seconds), the run continues with local logging only.

The folder is locked (``flock`` on ``.run.lock``) while a process writes it, so two processes never
train into (or resume) the same run; temporary files a killed process left behind are removed when
the folder is opened again. A failed write (full disk, read-only file system, ...) is a one-line
:class:`~utilities.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import errno
import fcntl
import fnmatch
import importlib.metadata
import json
import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from utilities.errors import ConfigError
from utilities.run_card import git_commit

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
ARRAYS_NAME = "metrics_arrays.jsonl"
# Temporary files of the atomic writes (checkpoints, JSON, CSV, embeddings, the writability probe):
# a process killed mid-write leaves one behind; they are removed when the run folder is reopened.
TEMPORARY_PATTERNS = (
    ".checkpoint_*.tmp",
    "*.json.tmp",
    "*.csv.tmp",
    "*.jsonl.tmp",
    "*.tmp.npz",
    ".write_test.*.tmp",
)
_LOCKS: dict[str, list[int]] = {}  # resolved run folder -> [fd, holders] of this process

SECRET_MARKERS = ("key", "token", "secret", "password")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "torchvision", "numba", "scikit-learn", "numpy", "wandb"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def public_args(opt: argparse.Namespace) -> dict[str, Any]:
    """The namespace without anything that looks like a credential."""
    return {
        k: v
        for k, v in sorted(vars(opt).items())
        if not any(m in k.lower() for m in SECRET_MARKERS) and _jsonable(v)
    }


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def run_folder(opt: argparse.Namespace) -> Path:
    """``<save_path>/<dataset>/<name>``, created and locked; a fresh suffix ``_1``, ``_2``... if it
    already exists (also when another process creates it at the same moment)."""
    return _make_run_folder(opt)[0]


def _make_run_folder(opt: argparse.Namespace) -> tuple[Path, list[Path]]:
    """The new run folder and the parent folders this call created (innermost first)."""
    if opt.savename == "group_plus_seed":
        name = f"{opt.group}_s{opt.seed}" if opt.log_online else ""
    else:
        name = opt.savename
    if not name:
        name = f"{opt.dataset}_{opt.loss}_{opt.arch}_{datetime.datetime.now():%Y-%m-%d-%H-%M-%S}"
    base = Path(opt.save_path) / opt.dataset / name
    created = [p for p in base.parents if not p.exists()]  # innermost first
    with writing(base.parent):
        base.parent.mkdir(parents=True, exist_ok=True)
    path, i = base, 0
    while True:
        try:
            path.mkdir()  # atomic: of two processes racing for a name exactly one gets it
            break
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}_{i}")
        except OSError as err:
            raise ConfigError(f"cannot write {path}: {describe_os_error(err, path)}") from None
    lock_run_folder(path)
    return path, created


class RunLogger:
    """Writes the run folder; mirrors everything to W&B when ``--log_online`` is set."""

    def __init__(
        self,
        opt: argparse.Namespace,
        folder: Path | None = None,
        *,
        resume: bool = False,
        card: dict[str, Any] | None = None,
    ) -> None:
        """``card``: the run card (utilities/run_card.py), written to args.json (not on resume),
        summary.json and the W&B config; None writes none."""
        self._created: list[Path] = []
        self.card = card
        if folder is None:
            self.folder, parents = _make_run_folder(opt)
            self._created = [self.folder, *parents]
        else:
            self.folder = Path(folder)
            lock_run_folder(self.folder)
        self._release = weakref.finalize(self, release_run_folder, self.folder)
        remove_temporaries(self.folder)
        self.rows: list[dict[str, Any]] = []
        self.wandb = None
        # a resumed run drops array lines of epochs it redoes (at restore(), or at the first log())
        self._arrays_pruned = not resume
        if not resume:  # a resumed run keeps the args.json (and git commit) it started with
            info = {"args": public_args(opt), "git_commit": git_commit(), "versions": _versions()}
            if card is not None:
                info["run_card"] = card
            _write_atomic(self.folder / "args.json", json.dumps(info, indent=2))
        if opt.log_online:
            self.wandb = _start_wandb(opt, self.folder, card)

    def close(self) -> None:
        """Release the run folder's lock (also done when the logger is garbage collected)."""
        self._release()

    def discard(self) -> None:
        """Remove the run folder (and the parents) this logger created: for a run that is refused
        before it did anything, so no partial folder is left. A no-op for a resumed folder."""
        self.close()
        if not self._created:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in self._created[1:]:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty
        self._created = []

    def log(self, epoch: int, split: str, values: dict[str, Any]) -> None:
        if not self._arrays_pruned:
            self._prune_arrays()
        row = {"epoch": epoch, "split": split}
        row.update({k: v for k, v in values.items() if _is_scalar(v)})
        self.rows.append(row)
        self._write_csv()
        self._online(lambda run: run.log(_wandb_row(row)))
        self._log_arrays(epoch, split, {k: v for k, v in values.items() if isinstance(v, (list, tuple))})

    def _log_arrays(self, epoch: int, split: str, arrays: dict[str, Any]) -> None:
        """Array metrics (e.g. ``rho_spectrum@0``) do not fit the CSV: one JSON line per evaluation
        in ``metrics_arrays.jsonl``, and a W&B histogram (plus one of log(value), as the study did)."""
        if not arrays:
            return
        path = self.folder / ARRAYS_NAME
        with writing(path), path.open("a") as f:
            f.write(
                json.dumps({"epoch": epoch, "split": split, **{k: list(v) for k, v in arrays.items()}}) + "\n"
            )
        if self.wandb is not None:
            import wandb  # optional and slow to import: only runs with --log_online pay for it

            hist = {}
            for k, v in arrays.items():
                values = np.asarray(v, dtype=np.float64)
                hist[f"{split}/{k}"] = wandb.Histogram(values)
                hist[f"{split}/LOG-{k}"] = wandb.Histogram(np.log(np.clip(values, 1e-300, None)))
            self._online(lambda run: run.log(hist | {"epoch": epoch}))

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Resume: the checkpoint's rows replace metrics.csv (dropping rows of an unfinished epoch);
        a new W&B run (same name) gets the history replayed."""
        self.rows = [dict(r) for r in rows]
        self._write_csv()
        self._prune_arrays()
        for row in self.rows:
            self._online(lambda run, row=row: run.log(_wandb_row(row)))

    def _prune_arrays(self) -> None:
        """Keep one line per (epoch, split) of the current rows in ``metrics_arrays.jsonl``: lines
        of an epoch that was logged but not checkpointed before a kill (it is redone), duplicates
        and a line cut short by a kill are dropped."""
        self._arrays_pruned = True
        path = self.folder / ARRAYS_NAME
        if not path.is_file():
            return
        keep = {(r["epoch"], r["split"]) for r in self.rows}
        lines, seen = [], set()
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                key = (record["epoch"], record["split"])
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
            if key in keep and key not in seen:
                seen.add(key)
                lines.append(line + "\n")
        _write_atomic(path, "".join(lines))

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [c for c in row if c not in columns]
        tmp = self.folder / "metrics.csv.tmp"
        with writing(self.folder / "metrics.csv"), _removed_on_failure(tmp):
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
            os.replace(tmp, self.folder / "metrics.csv")

    def summary(self, summary: dict[str, Any]) -> None:
        if self.card is not None:
            summary = {**summary, "run_card": self.card}
        # atomic: the sweep script takes an existing summary.json as "this run is finished"
        _write_atomic(self.folder / "summary.json", json.dumps(summary, indent=2, default=_json_default))

        def finish(run) -> None:
            for k, v in _flatten(summary).items():
                run.summary[k] = v
            run.finish()

        self._online(finish)

    def _online(self, action) -> None:
        """One W&B call; its first failure (a dead service, a lost network) switches W&B off for
        the rest of the run with one line, and the local logs carry on."""
        if self.wandb is None:
            return
        try:
            action(self.wandb)
        except Exception as err:
            log.warning(f"W&B failed ({type(err).__name__}: {err}); continuing with local logging only")
            self.wandb = None


class SilentLogger:
    """What ranks other than 0 hold under torchrun instead of a :class:`RunLogger`: the same
    interface, writing nothing (rank 0 is the run's one writer). ``folder``: rank 0's run folder."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.rows: list[dict[str, Any]] = []

    def log(self, epoch: int, split: str, values: dict[str, Any]) -> None:
        pass

    def restore(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def discard(self) -> None:
        pass


def _wandb_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics.csv row as W&B keys ``<split>/<metric>``, stepped by epoch."""
    return {f"{row['split']}/{k}": v for k, v in row.items() if k not in ("epoch", "split")} | {
        "epoch": row["epoch"]
    }


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}/"))
        elif _is_scalar(v):
            out[key] = v
    return out


def _start_wandb(opt: argparse.Namespace, folder: Path, card: dict[str, Any] | None = None):
    try:
        import wandb  # optional and slow to import: only runs with --log_online pay for it

        return wandb.init(
            project=opt.project,
            group=opt.group,
            name=folder.name,
            dir=str(folder),
            config=public_args(opt) | ({"run_card": card} if card is not None else {}),
            reinit="finish_previous",  # a sweep in one process: close the last run (bool form is deprecated)
            # wandb waits 90 s for an unreachable server by default: 8 h over a 335-run sweep
            settings=wandb.Settings(init_timeout=getattr(opt, "wandb_timeout", 10.0)),
        )
    except Exception as err:  # any failure to start W&B must not cost the run
        log.warning(f"W&B logging disabled, continuing with local logging only: {type(err).__name__}: {err}")
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a killed process never leaves a truncated file."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path), _removed_on_failure(tmp):
        tmp.write_text(text)
        os.replace(tmp, path)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """Delete the temporary file of a failed write (a full disk gets its space back)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ---- the file system: writability, write errors, the folder lock, leftovers ------------------------


def describe_os_error(err: OSError, path: str | Path) -> str:
    """A short reason for a failed write: "no space left on the file system at /data", ..."""
    where = f"the file system at {_mount_point(Path(path))}"
    by_errno = {
        errno.ENOSPC: f"no space left on {where}",
        errno.EDQUOT: f"disk quota exceeded on {where}",
        errno.EROFS: f"{where} is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }
    if err.errno in by_errno:
        return by_errno[err.errno]
    return (err.strerror or str(err) or type(err).__name__).splitlines()[0].lower()


def _mount_point(path: Path) -> str:
    """The mount point of the file system that holds (or would hold) ``path``."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """An :class:`OSError` inside the block becomes "cannot write PATH: <reason>" (one line)."""
    try:
        yield
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {describe_os_error(err, path)}") from err


def check_writable(path: str | Path, flag: str = "--save_path") -> None:
    """Before any data is loaded: files can be created in ``path`` (or, where it does not exist yet,
    in its nearest existing parent, where it will be created). Probes with a temporary file that is
    removed at once, so permissions, read-only mounts and quotas are all seen as the run would."""
    path = Path(path)
    probe = Path(os.path.abspath(path))
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".write_test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ConfigError(
            f"{flag} {path}: cannot create files in {probe}: {describe_os_error(err, probe)}"
        ) from None


def lock_run_folder(folder: str | Path) -> None:
    """Hold an exclusive lock on the run folder for as long as this process writes it (until
    :func:`release_run_folder`, or the process ends): a second process gets a ConfigError."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _LOCKS:  # this process holds it already (e.g. main.main called twice in-process)
        _LOCKS[key][1] += 1
        return
    with writing(folder / LOCK_NAME):
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(folder) from None
    except OSError as err:  # a file system without locks (some network mounts): run unguarded
        log.warning(f"cannot lock {folder / LOCK_NAME} ({err}); not guarded against a second process")
    _LOCKS[key] = [fd, 1]


def probe_lock(folder: str | Path) -> None:
    """Raise the lock's ConfigError now if another process holds ``folder``; takes no lock and
    writes nothing (for checks before the run starts)."""
    folder = Path(folder)
    if str(folder.resolve()) in _LOCKS or not (folder / LOCK_NAME).is_file():
        return
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # unreadable: the writability check or the real lock will say why
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(folder) from None
    except OSError:
        pass  # no locks on this file system: lock_run_folder warns
    finally:
        os.close(fd)  # also releases the probe's lock


def _in_use(folder: Path) -> ConfigError:
    return ConfigError(f"run folder {folder} is in use by another process (it holds {folder / LOCK_NAME})")


def release_run_folder(folder: str | Path) -> None:
    key = str(Path(folder).resolve())
    entry = _LOCKS.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _LOCKS[key]
        with contextlib.suppress(OSError):
            fcntl.flock(entry[0], fcntl.LOCK_UN)  # for forked DataLoader workers sharing the fd too
        os.close(entry[0])


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete what an interrupted atomic write left in ``folder`` (call with the folder locked)."""
    removed = []
    for path in Path(folder).iterdir():
        if path.is_file() and any(fnmatch.fnmatchcase(path.name, p) for p in TEMPORARY_PATTERNS):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
    if removed:
        log.info(f"Removed {len(removed)} temporary file(s) left by an interrupted write in {folder}")
    return removed
