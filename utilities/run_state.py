"""Everything ``main.py`` needs to resume a run bit-exactly or to evaluate a checkpoint.

A checkpoint (``checkpoint_last.pt``, written at every epoch boundary; ``checkpoint_best.pt``, the
same state at the selected epoch) holds the model, the criterion (proxies, β, class weights, any
memory), optimiser, scheduler, sampler and miner state, the training DataLoader's seed generator,
every RNG state (python, numpy, torch CPU and CUDA), the epoch, the logged history
(``metrics.csv`` rows and the per-split results that drive epoch selection), the selected epoch,
the accumulated wall time and the run's arguments. Only tensors and plain Python are stored, so it
loads with ``torch.load(weights_only=True)``.

Resume contract: ``python main.py --resume RUN_FOLDER`` rebuilds the run from its stored arguments
exactly as a fresh run does (same seeding, same construction order), then overwrites every state
from ``checkpoint_last.pt`` and continues with the next epoch. A process killed mid-epoch loses that
epoch and redoes it; because every source of randomness is restored at the epoch boundary, the
final ``metrics.csv`` and ``summary.json`` equal those of an uninterrupted run on CPU (apart from
the wall-clock columns ``train_time``, ``eval_time*`` and ``wall_time``). Without a checkpoint
(killed during the first epoch) the run restarts from scratch in the same folder. On CUDA the
same states are restored, but bit-exactness also depends on the kernels being deterministic.
``--n_epochs`` may be raised to extend a finished run (with ``--scheduler cosine`` this changes the
schedule, so the result is no longer that of a single longer run).

Only runtime flags (:data:`RESUME_OVERRIDABLE`) may be changed when resuming; any other explicit
flag is a :class:`~utilities.errors.ConfigError`, since it would silently change the experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utilities import checkpoint
from utilities.errors import ConfigError

RESUME_OVERRIDABLE = {
    "resume",
    "device",
    "gpu",
    "no_progress",
    "n_epochs",
    "log_online",
    "evaluate_on_gpu",
    "kernels",
}
# Flags that describe the process, not the experiment: never restored from a stored run.
_NOT_RESTORED = {"resume", "evaluate_only", "checkpoint"}


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
    defaults: argparse.Namespace, stored: dict[str, Any], explicit: dict[str, Any]
) -> argparse.Namespace:
    """Defaults, overwritten by a stored run's arguments, overwritten by explicit flags."""
    merged = vars(defaults).copy()
    merged.update({k: v for k, v in stored.items() if k not in _NOT_RESTORED})
    merged.update(explicit)
    return argparse.Namespace(**merged)


def resume_namespace(
    parser: argparse.ArgumentParser, argv: list[str] | None, opt: argparse.Namespace
) -> tuple[argparse.Namespace, dict | None]:
    """For ``--resume FOLDER``: the stored run's namespace and its last checkpoint (or None)."""
    folder = Path(opt.resume)
    args_file = folder / "args.json"
    if not args_file.is_file():
        raise ConfigError(f"--resume {folder}: not a run folder (no args.json in it)")
    explicit = explicit_flags(parser, argv)
    forbidden = sorted(set(explicit) - RESUME_OVERRIDABLE)
    if forbidden:
        raise ConfigError(
            "--resume continues a run with its stored configuration; these flags cannot be changed: "
            + ", ".join(f"--{k}" for k in forbidden)
            + f" (allowed: {', '.join('--' + k for k in sorted(RESUME_OVERRIDABLE - {'resume'}))})"
        )
    state = (
        checkpoint.load(folder / "checkpoint_last.pt") if (folder / "checkpoint_last.pt").is_file() else None
    )
    stored = state["args"] if state is not None else json.loads(args_file.read_text())["args"]
    new = stored_namespace(opt, stored, explicit)
    new.resume = str(folder)
    return new, state


def evaluate_namespace(
    parser: argparse.ArgumentParser, argv: list[str] | None, opt: argparse.Namespace
) -> tuple[argparse.Namespace, dict]:
    """For ``--evaluate_only --checkpoint PATH``: the checkpoint's run arguments, any explicit flag
    (e.g. ``--source_path``, ``--evaluation_metrics``, ``--save_path``) taking precedence."""
    if not opt.checkpoint:
        raise ConfigError("--evaluate_only needs --checkpoint PATH (a checkpoint_*.pt of a run)")
    path = Path(opt.checkpoint)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {path}: no such file")
    state = checkpoint.load(path)
    if "model" not in state or "args" not in state:
        raise ConfigError(f"--checkpoint {path}: not a checkpoint written by main.py (no model/args)")
    explicit = explicit_flags(parser, argv)
    new = stored_namespace(opt, state["args"], explicit)
    new.evaluate_only, new.checkpoint = True, str(path)
    if "savename" not in explicit:
        new.savename = f"{path.parent.name}_eval_{path.stem}"
    return new, state


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """Parse the command line; with ``--resume`` / ``--evaluate_only`` also load the stored run's
    arguments and checkpoint. Returns ``(opt, state)``; ``state`` is None for a fresh run."""
    import parameters

    parser = parameters.build_parser()
    opt = parser.parse_args(argv)
    if opt.resume and opt.evaluate_only:
        raise ConfigError("--resume and --evaluate_only exclude each other")
    if opt.resume:
        return resume_namespace(parser, argv, opt)
    if opt.evaluate_only:
        return evaluate_namespace(parser, argv, opt)
    return opt, None


# ---- RNG state ---------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """python, numpy, torch CPU and CUDA RNG states as tensors / plain Python (weights_only-safe)."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what third-party code draws from
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---- the checkpoint ----------------------------------------------------------------------------


def plain(x: Any) -> Any:
    """Numpy scalars/arrays -> Python/tensors, so the history is weights_only-loadable."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, np.generic):
        return x.item()
    return x


def training_state(
    *,
    epoch: int,
    model,
    criterion,
    optimizer,
    scheduler,
    sampler,
    batchminer,
    train_loader,
    rows: list[dict],
    history: dict[str, list[dict]],
    best_epoch: int | None,
    wall_time: float,
    args: dict[str, Any],
) -> dict[str, Any]:
    """The full resumable state at the end of ``epoch`` (call after ``scheduler.step()``)."""
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "criterion": criterion.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else {},
        "miner": batchminer.state_dict() if batchminer is not None else {},
        "loader_generator": train_loader.generator.get_state()
        if train_loader.generator is not None
        else None,
        "rng": rng_state(),
        "rows": plain(rows),
        "history": plain(history),
        "best_epoch": best_epoch,
        "wall_time": wall_time,
        "args": args,
    }


def restore_training_state(
    state: dict[str, Any], *, model, criterion, optimizer, scheduler, sampler, batchminer, train_loader
) -> None:
    """Load every component's state from :func:`training_state` (RNG states last)."""
    model.load_state_dict(state["model"])
    criterion.load_state_dict(state["criterion"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["sampler"]:
        sampler.load_state_dict(state["sampler"])
    if batchminer is not None and state["miner"]:
        batchminer.load_state_dict(state["miner"])
    if state["loader_generator"] is not None and train_loader.generator is not None:
        train_loader.generator.set_state(state["loader_generator"])
    set_rng_state(state["rng"])


# ---- evaluate only -----------------------------------------------------------------------------


def evaluate_checkpoint(
    model,
    state: dict[str, Any],
    eval_loaders: dict,
    opt: argparse.Namespace,
    device: torch.device,
    metric_device: torch.device,
) -> dict[str, Any]:
    """``--evaluate_only``: load the checkpoint's weights, evaluate every split once and write a run
    folder (args.json, metrics.csv with the checkpoint's epoch, summary.json) like a training run's."""
    import time

    from evaluation import eval_options, evaluate_split, format_results
    from utilities.logger import RunLogger

    start = time.time()
    model.load_state_dict(state["model"])
    logger = RunLogger(opt)
    epoch = int(state["epoch"])
    results = {}
    for split, loader in eval_loaders.items():
        results[split] = evaluate_split(  # --save_embeddings: embeddings_<split>.npz in the new folder
            model,
            loader,
            opt.evaluation_metrics,
            device,
            seed=opt.seed,
            metric_device=metric_device,
            **eval_options(opt, split, logger.folder, epoch),
        )
        logger.log(epoch, split, results[split])
        print(f"{split}: " + format_results(results[split], opt.evaluation_metrics))
    summary = {
        "evaluate_only": True,
        "checkpoint": str(opt.checkpoint),
        "selected_epoch": epoch,
        "selection_split": None,
        "metrics": results,
        "wall_time": time.time() - start,
    }
    logger.summary(summary)
    print(f"Evaluated {opt.checkpoint} (epoch {epoch}); results in {logger.folder}")
    return summary


# ---- test hook -----------------------------------------------------------------------------------

KILL_ENV = "DML_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process when ``$DML_TEST_KILL_AT`` equals ``name``.

    Points used by main.py: ``train:<epoch>:<step>`` (before a training step, i.e. mid-epoch),
    ``logged:<epoch>`` (metrics.csv written, checkpoint not yet) and ``saved:<epoch>`` (after
    the epoch's checkpoints). A no-op unless the variable is set; used by tests/lifecycle.
    """
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class KillableLoader:
    """Wraps the training loader to call :func:`kill_point` before each step (only under the hook)."""

    def __init__(self, loader, epoch: int) -> None:
        self.loader, self.epoch = loader, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for step, batch in enumerate(self.loader):
            kill_point(f"train:{self.epoch}:{step}")
            yield batch


def train_iterable(loader, epoch: int):
    return KillableLoader(loader, epoch) if os.environ.get(KILL_ENV) else loader
