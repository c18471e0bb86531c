"""The run card: what a result depends on, recorded with every run so that tables compare like with like.

``main.py`` builds one card per run (:func:`build`) and the run folder records it twice: under
``run_card`` in ``args.json`` when the run starts and in ``summary.json`` when it ends (a resumed run
keeps the args.json card it started with; its summary.json card is the resuming process's). With
``--log_online`` it is also the W&B config entry ``run_card``. ``Result_Evaluations.py`` refuses to
put runs with differing cards into one table (see its docstring). The card is a flat JSON dict:

* ``arch``: the ``--arch`` string; ``backbone``: the same without the ``normalize`` modifier, in a
  canonical modifier order (an unnormalised embedding is part of a method's definition: the study
  trains N-pair, lifted and angular losses without it);
* ``weights``: what the backbone started from: ``sha256:<hex>`` of the ``--pretrained_path`` file,
  the library's weight tag (``torchvision:ResNet50_Weights.IMAGENET1K_V1``,
  ``timm:resnet50.a1_in1k``, ``pretrainedmodels:bninception/imagenet``), or ``random``;
* ``embed_dim``; ``input_crop`` / ``input_resize``: the training crop and the evaluation resize of
  the backbone's input configuration;
* ``augmentation``, ``data_sampler``, ``samples_per_class``, ``bs``, ``n_epochs``;
* ``selection_split`` (``validation`` or ``testing``) and ``selection_metrics`` (``--storage_metrics``:
  the first selects the epoch, the others break its ties);
* ``class_split_hash``: :func:`class_split_hash` of the classes of every split (a class is named by its
  images, so the same classes give the same hash whatever order or ids they were found in); a
  validation split drawn with ``--seed`` makes it differ between seeds, never between methods;
* ``git_commit`` and ``git_dirty`` (``git status --porcelain`` not empty: uncommitted or untracked
  files); both None outside a git checkout or without git;
* ``config_hash``: :func:`config_hash`, the SHA-256 of every flag except :data:`BOOKKEEPING`.

Every hash is the full SHA-256 hex digest; a weights file is hashed in 1 MiB chunks (any size, little
memory) and nothing is cached between runs (a file replaced under the same name gets a new hash).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CARD_VERSION = 1
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Flags that say where, how fast or under which name a run ran, not what it computes: the config
# hash leaves them out, so the seeds and reruns of one setup share it. What is excluded, and why:
# - names and places: save_path, savename, group, source_path (the data's location; the class-split
#   hash records the data itself), data_cache (a folder; its image size is data_cache_size), config
#   (the file the flags came from; the flags themselves are hashed), pretrained_path (where a weights
#   file lies; its content is the card's weights identity, a SHA-256);
# - the seed (seeds of one setup differ in it by definition);
# - W&B: log_online, project and every wandb_* flag;
# - devices and processes: device, gpu, kernels, evaluate_on_gpu, channels_last (memory layout),
#   eval_chunk (memory only), world_size, process_group, dist_backend, dist_timeout (torchrun runs
#   the same experiment on N processes);
# - console and progress: no_progress, console_metrics;
# - what is measured besides the selection: evaluation_metrics, no_train_metrics, train_eval_every,
#   save_embeddings (the selection's --storage_metrics stay in);
# - how the process started: resume, evaluate_only, checkpoint.
BOOKKEEPING = frozenset({
    "save_path", "savename", "group", "source_path", "data_cache", "config", "pretrained_path", "seed",
    "log_online", "project",
    "device", "gpu", "kernels", "evaluate_on_gpu", "channels_last", "eval_chunk",
    "world_size", "process_group", "dist_backend", "dist_timeout",
    "no_progress", "console_metrics",
    "evaluation_metrics", "no_train_metrics", "train_eval_every", "save_embeddings",
    "resume", "evaluate_only", "checkpoint",
})  # fmt: skip
BOOKKEEPING_PREFIXES = ("wandb_",)
# The card fields copied from the flags as they are.
FLAG_FIELDS = ("embed_dim", "augmentation", "data_sampler", "samples_per_class", "bs", "n_epochs")
CHUNK = 1 << 20


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | Path, chunk_size: int = CHUNK) -> str:
    """The SHA-256 hex digest of a file, read in ``chunk_size`` pieces (a weights file of any size
    in constant memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def class_split_hash(classes: Mapping[str, Iterable[str]]) -> str:
    """SHA-256 of ``{split: sorted class names}`` as canonical JSON: the order in which the classes
    (or the splits) are listed does not matter, which classes each split holds does."""
    canonical = {str(split): sorted({str(c) for c in names}) for split, names in classes.items()}
    return sha256_text(json.dumps(canonical, sort_keys=True, separators=(",", ":")))


def is_bookkeeping(flag: str) -> bool:
    return flag in BOOKKEEPING or flag.startswith(BOOKKEEPING_PREFIXES)


def hashed_config(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` without the :data:`BOOKKEEPING` flags: what :func:`config_hash` hashes."""
    return {k: v for k, v in args.items() if not is_bookkeeping(k)}


def config_hash(args: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of :func:`hashed_config`."""
    return sha256_text(json.dumps(hashed_config(args), sort_keys=True, separators=(",", ":")))


def _git(*args: str, root: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=root)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(root: str | Path = PROJECT_ROOT) -> str | None:
    """The commit checked out at ``root`` (the project by default); None outside a git checkout."""
    out = _git("rev-parse", "HEAD", root=Path(root))
    return (out or "").strip() or None


def git_state(root: str | Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout at ``root``; dirty: ``git status --porcelain`` lists
    anything (a modified, staged or untracked file). ``(None, None)`` outside a git checkout."""
    commit = git_commit(root)
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", root=Path(root))
    return commit, None if status is None else bool(status.strip())


def build(
    args: Mapping[str, Any],
    *,
    architecture: Mapping[str, Any],
    class_split: str,
    selection_split: str,
    root: str | Path = PROJECT_ROOT,
) -> dict[str, Any]:
    """The run card of a run with the public flags ``args``. ``architecture``: the backbone's fields
    (``architectures.card_fields``: arch, backbone, weights, input_crop, input_resize);
    ``class_split``: ``datasets.class_split_hash`` of its splits; ``selection_split``: the split
    that selects the epoch; ``root``: the checkout whose commit is recorded."""
    commit, dirty = git_state(root)
    return {
        "card_version": CARD_VERSION,
        **architecture,
        **{k: args.get(k) for k in FLAG_FIELDS},
        "selection_split": selection_split,
        "selection_metrics": list(args.get("storage_metrics") or []),
        "class_split_hash": class_split,
        "git_commit": commit,
        "git_dirty": dirty,
        "config_hash": config_hash(args),
    }
