"""Training-pipeline throughput (images/s): the full training step against its compute ceiling.

    uv run python benchmarks/bench_train.py                      # CPU: smallcnn, a few steps
    python benchmarks/bench_train.py --device cuda --amp --channels_last \\
        --arch resnet50_frozen_normalize,timm:vit_small_patch16_224_normalize

For every backbone (``--arch``, repeatable or comma-separated) and loader variant (``--loaders``)
three rates are measured, in images per second:

1. **full step**: what ``main.py`` runs. The project's own DataLoader
   (``utilities.training.make_loader`` with the ``datasampler`` batch sampler over the ``cub200``
   training split from ``datasets.select``, reading JPEG files from disk with ``--kernels``
   workers), iterated epoch after epoch as ``main.py`` does (``set_epoch``, then a fresh pass, so
   the workers are restarted at every epoch), each batch through
   ``utilities.training.train_one_epoch``: transfer, forward, loss (``criteria.select`` with its
   ``batch_mining`` miner), backward, optimizer step (``build_optimizer``), ``loss.item()``;
2. **synthetic**: the same ``train_one_epoch`` on one pre-made batch that already sits on the
   device (the first real batch: uint8, NCHW, the loader's shape, dtype and memory format), i.e.
   the compute ceiling of the step with a data pipeline that costs nothing;
3. **loader alone**: the loader of (1) iterated and each batch moved to the device
   (``non_blocking``, as training does), no model.

**Efficiency = (1) / (2)**: the fraction of the compute ceiling that training reaches with the
real data pipeline; 1.0 means the step never waits for data. When (3) is far above (2) and the
efficiency is still low, the loss is in the hand-over (worker restarts at epoch starts: see the
``epoch stall`` column, transfers); when (3) is near or below (2), the loader is too slow: more
workers or ``cache``.

Loader variants (``--loaders``, comma-separated; each can take the suffix ``+persistent``):

* ``plain``: image files, the default reduced-size JPEG decode (``--data_decode reduced``);
* ``cache``: ``--data_cache`` (pre-resized uint8 images in one memory-mapped file, shorter side
  ``--data_cache_size``, built once before the timing; its build time is printed);
* ``decode_jpeg`` (opt-in, not a project option): the workers only read the file bytes; the main
  process decodes the batch with ``torchvision.io.decode_jpeg(device=...)`` (nvJPEG on CUDA) and
  applies the ``base`` augmentation (random resized crop, flip) on the device. It tells whether
  GPU-side decoding would pay; it is measured inside the timed region of (1) and (3);
* ``+persistent``: ``persistent_workers=True``. ``make_loader`` now sets it for training too (the
  epoch reaches the workers with each index), so the suffix changes nothing for ``plain`` and
  ``cache``; it was how this benchmark measured the restart cost that led to that change (on CPU,
  efficiency 0.72 -> 0.955 for ``cache``).

Timing: ``--warmup`` steps first (not timed: allocator, cuDNN and worker start-up), then
``--steps`` timed steps; on CUDA the clock is read only after ``torch.cuda.synchronize()``. The
timed steps run on, across epoch boundaries, over a training split of about ``--epoch_steps``
batches (52 at the default batch of 112: CUB200's 5,864 training images), so the timed steps
include the worker restarts of ``main.py`` at their real frequency. ``epoch stall s`` is the mean
extra time of the first step of an epoch over the median step (``-`` when no epoch starts in the
timed steps). cuDNN runs as ``main.py`` sets it (``seed_everything``: deterministic, no autotune)
unless ``--cudnn_benchmark``. Peak GPU memory is ``torch.cuda.max_memory_allocated`` over the
full-step run. Workers: ``--kernels`` (default min(8, CPUs)); on a CPU device the main process
runs with one torch thread (``--threads``), leaving the other cores to the workers. A variant that
fails (say, a torchvision without nvJPEG) is named below the table; the other rows still come.

Data: generated, so it runs anywhere: ``--n_unique`` distinct photo-like JPEGs (a smooth random
colour field plus noise texture, quality 90, longer side drawn from ``--jpeg_size``, 4:3-ish,
some portrait; about 65 KB at 500 × 375, like CUB's photographs), hard-linked into the CUB200
study layout (``images/NNN.Class_Name/*.jpg``) as many times as the epoch needs, so every item is
a real JPEG decode (the files sit in the page cache, as a dataset does after its first epoch). ``--data_root DIR`` keeps the data (and the
cache) for later runs; the default is a temporary folder. Weights are random (``--not_pretrained``):
the speed of a step does not depend on them. Any other ``main.py`` flag (``--optim``,
``--data_decode``, ``--loss_margin_beta``, ...) is passed through. ``--json FILE`` writes the
settings and the rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import architectures
import batch_mining
import criteria
import datasampler
import datasets
import parameters
from datasets.base import SplitDataset
from utilities.errors import ConfigError
from utilities.seeding import resolve_device, seed_everything
from utilities.training import build_optimizer, make_loader, train_one_epoch

COLUMNS = (
    "arch",
    "loader",
    "workers",
    "full_img_s",
    "synthetic_img_s",
    "loader_img_s",
    "efficiency",
    "epoch_stall_s",
    "peak_gpu_gib",
)
HEADINGS = (
    "arch",
    "loader",
    "workers",
    "full step img/s",
    "synthetic img/s",
    "loader alone img/s",
    "efficiency",
    "epoch stall s",
    "peak GPU GiB",
)
LOADER_KINDS = ("plain", "cache", "decode_jpeg")
TRAIN_CLASSES = 100  # CUB200's training classes (official ids 1-100)
SEED = 0
FIXTURE_MARK = "bench_train_fixture.json"

# device-dependent defaults: a quick CPU smoke run, or the study's setting on a GPU
CPU_DEFAULTS = {
    "arch": ["smallcnn_normalize"],
    "bs": 32,
    "steps": 8,
    "warmup": 2,
    "epoch_steps": 8,
    "n_unique": 32,
}
GPU_DEFAULTS = {
    "arch": ["resnet50_frozen_normalize", "timm:vit_small_patch16_224_normalize"],
    "bs": 112,
    "steps": 52,  # one CUB epoch: one worker restart per 52 timed steps, as in a CUB run
    "warmup": 10,
    "epoch_steps": 52,
    "n_unique": 256,
}


# ---- data -----------------------------------------------------------------------------------------


def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like image: smooth colour regions (upsampled random field) plus sensor-like noise,
    so the JPEG has about the size and entropy, and so the decode cost, of a photograph."""
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC
    )
    pixels = np.asarray(field, dtype=np.float32) + rng.normal(0.0, 10.0, (h, w, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links: a copy decodes the same
        shutil.copyfile(source, target)


def make_fixture(
    root: Path, *, n_train: int, n_unique: int, jpeg_size: tuple[int, int], samples_per_class: int
) -> int:
    """Write the CUB200 study layout under ``root/cub200``: about ``n_train`` training images in
    up to 100 classes (ids 1-100, at least ``samples_per_class`` images each) and two small test
    classes (101, 102), all hard links to ``n_unique`` distinct JPEGs in ``root/jpegs``. Returns
    the number of training images."""
    rng = np.random.default_rng(SEED)
    store = root / "jpegs"
    store.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(n_unique):
        long = int(rng.integers(jpeg_size[0], jpeg_size[1] + 1))
        short = round(long * rng.uniform(0.66, 0.85))
        w, h = (long, short) if rng.random() < 0.8 else (short, long)
        path = store / f"{i:05d}.jpg"
        _photo(rng, w, h).save(path, quality=90)
        sources.append(path)
    n_classes = max(2, min(TRAIN_CLASSES, n_train // max(1, samples_per_class)))
    per_class = max(samples_per_class, -(-n_train // n_classes))
    images = root / "cub200" / "images"
    k = 0
    for cid in [*range(1, n_classes + 1), 101, 102]:
        folder = images / f"{cid:03d}.Class_{cid}"
        folder.mkdir(parents=True)
        for j in range(per_class if cid <= n_classes else 2):
            _link(sources[k % n_unique], folder / f"img_{j:05d}.jpg")
            k += 1
    return n_classes * per_class


def prepare_data(root: Path, spec: dict[str, Any]) -> None:
    """Generate the data under ``root``, or reuse what an earlier run generated with the same
    ``spec``; never deletes a folder this benchmark did not write."""
    mark = root / FIXTURE_MARK
    if mark.is_file():
        if json.loads(mark.read_text()) == spec:
            return
        for part in ("cub200", "jpegs", "cache"):  # ours (the mark says so): rebuild
            shutil.rmtree(root / part, ignore_errors=True)
    elif (root / "cub200").exists():
        raise ConfigError(f"--data_root {root} holds a cub200 folder this benchmark did not write")
    root.mkdir(parents=True, exist_ok=True)
    make_fixture(
        root,
        n_train=spec["n_train"],
        n_unique=spec["n_unique"],
        jpeg_size=tuple(spec["jpeg_size"]),
        samples_per_class=spec["samples_per_class"],
    )
    mark.write_text(json.dumps(spec))


# ---- the GPU-decode variant (benchmark only) --------------------------------------------------------


def read_bytes(path: str) -> np.ndarray:
    """The file's bytes: all a ``decode_jpeg`` worker does per image. A numpy array, so the batch
    travels to the main process inside the pickle: a list of small tensors would be sent as one
    shared-memory file descriptor each (torch's default sharing strategy), which runs out of
    descriptors or fails to duplicate them under load."""
    return np.fromfile(path, dtype=np.uint8)


def collate_bytes(
    batch: list[tuple[np.ndarray, int, int]],
) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    data, labels, index = zip(*batch, strict=True)
    return list(data), torch.tensor(labels), torch.tensor(index)


class DeviceDecode:
    """Decode a batch of JPEG byte strings on ``device`` (nvJPEG on CUDA) and apply the ``base``
    augmentation there: RandomResizedCrop(crop) with torchvision's parameter sampler, antialiased
    bilinear resize, horizontal flip with p = 0.5. Output: uint8 (B, 3, crop, crop) on ``device``,
    what the network takes from the regular loader."""

    def __init__(self, crop: int, device: torch.device) -> None:
        self.crop, self.device = crop, device
        self.scale, self.ratio = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)

    def __call__(self, data: list[np.ndarray]) -> torch.Tensor:
        with warnings.catch_warnings():
            # torchvision >= 0.29 warns on every call that its codecs move to TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = torchvision.io.decode_jpeg(
                [torch.from_numpy(b) for b in data], mode=torchvision.io.ImageReadMode.RGB, device=self.device
            )
        out = torch.empty((len(decoded), 3, self.crop, self.crop), dtype=torch.uint8, device=self.device)
        for k, img in enumerate(decoded):
            top, left, h, w = T.RandomResizedCrop.get_params(img, self.scale, self.ratio)
            # float32: torch's antialiased resize of uint8 is a CPU-only fast path
            patch = img[None, :, top : top + h, left : left + w].float()
            patch = nn.functional.interpolate(
                patch, size=(self.crop, self.crop), mode="bilinear", antialias=True, align_corners=False
            )
            if torch.rand(1) < 0.5:
                patch = patch.flip(-1)
            out[k] = patch[0].round_().clamp_(0, 255)
        return out


# ---- timing ---------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clocked:
    """Hands ``warmup + steps`` batches of ``source`` (``(epoch, batch)`` pairs) to a consumer and
    times the last ``steps`` of them: from the request of the first timed batch to the request
    after the last one (on CUDA after a synchronize, so queued GPU work is inside the time)."""

    def __init__(
        self, source: Iterator[tuple[int, Any]], warmup: int, steps: int, device: torch.device
    ) -> None:
        self.source, self.warmup, self.steps, self.device = source, warmup, steps, device
        self.images = 0
        self.seconds = math.nan
        self.marks: list[tuple[int, float]] = []  # (epoch, time requested) of every timed batch
        self.end = math.nan
        self.epoch_before = -1  # epoch of the last warm-up batch

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.warmup + self.steps):
            if i == self.warmup:
                synchronize(self.device)
            now = time.perf_counter()
            epoch, batch = next(self.source)
            if i >= self.warmup:
                self.marks.append((epoch, now))
                self.images += len(batch[1])
            else:
                self.epoch_before = epoch
            yield batch
        synchronize(self.device)
        self.end = time.perf_counter()
        self.seconds = self.end - self.marks[0][1]

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def epoch_stall(self) -> float | None:
        """Mean time of the first step of an epoch minus the median step time, or None when no
        epoch starts within the timed steps. Meaningful where every step ends in a synchronising
        call (``train_one_epoch``'s ``loss.item()``)."""
        times = [t for _, t in self.marks] + [self.end]
        durations = [b - a for a, b in itertools.pairwise(times)]
        epochs = [self.epoch_before] + [e for e, _ in self.marks]
        steps = list(zip(durations, epochs[:-1], epochs[1:], strict=True))
        first = [d for d, prev, cur in steps if cur != prev]
        rest = [d for d, prev, cur in steps if cur == prev]
        if not first or not rest:
            return None
        return statistics.mean(first) - statistics.median(rest)


def epoch_batches(
    loader: torch.utils.data.DataLoader, dataset: SplitDataset, transform: Callable | None = None
) -> Iterator[tuple[int, Any]]:
    """``(epoch, batch)`` over endless epochs, each as ``main.py`` runs one: ``set_epoch`` first,
    then a fresh pass over the loader (new workers unless they are persistent)."""
    for epoch in itertools.count():
        dataset.set_epoch(SEED, epoch)
        for images, labels, index in loader:
            yield epoch, (images if transform is None else transform(images), labels, index)


def train_clocked(
    parts: dict[str, Any],
    source: Iterator[tuple[int, Any]],
    sampler,
    args: argparse.Namespace,
    device: torch.device,
) -> Clocked:
    """Run ``train_one_epoch`` (what ``main.py`` runs per epoch) over ``warmup + steps`` batches."""
    clocked = Clocked(source, args.warmup, args.steps, device)
    stats = train_one_epoch(
        parts["model"],
        parts["criterion"],
        clocked,
        parts["optimizer"],
        device,
        epoch=0,
        sampler=sampler,
        progress=False,  # no bar: a falsy value means none for the bool and the Progress form alike
    )
    if not math.isfinite(stats["loss"]):  # train_one_epoch already stops on a non-finite loss
        raise RuntimeError(f"non-finite loss {stats['loss']}")
    return clocked


def loader_clocked(
    source: Iterator[tuple[int, Any]], args: argparse.Namespace, device: torch.device
) -> Clocked:
    """The loader alone: every batch moved to the device as ``train_one_epoch`` moves it."""
    clocked = Clocked(source, args.warmup, args.steps, device)
    for images, _, _ in clocked:
        images.to(device, non_blocking=True)
    return clocked


# ---- one backbone ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderVariant:
    kind: str  # plain, cache or decode_jpeg
    persistent: bool

    @property
    def name(self) -> str:
        return self.kind + ("+persistent" if self.persistent else "")


def parse_loaders(text: str) -> list[LoaderVariant]:
    out = []
    for name in filter(None, (s.strip() for s in text.split(","))):
        kind, _, suffix = name.partition("+")
        if kind not in LOADER_KINDS or suffix not in ("", "persistent"):
            raise argparse.ArgumentTypeError(
                f"unknown loader {name!r}; choose from {', '.join(LOADER_KINDS)}, each optionally +persistent"
            )
        out.append(LoaderVariant(kind, suffix == "persistent"))
    return out


def run_options(args: argparse.Namespace, arch: str, kernels: int, cache: bool) -> argparse.Namespace:
    """``main.py``'s namespace (every global and plugin default) for this measurement."""
    flags = [
        "--dataset", "cub200",
        "--source_path", str(args.data_root),
        "--arch", arch,
        "--bs", str(args.bs),
        "--kernels", str(kernels),
        "--samples_per_class", str(args.samples_per_class),
        "--loss", args.loss,
        "--batch_mining", args.batch_mining,
        "--amp", args.amp,
        "--seed", str(SEED),
        "--not_pretrained",
    ]  # fmt: skip
    if args.channels_last:
        flags.append("--channels_last")
    if cache:
        flags += ["--data_cache", str(args.data_cache), "--data_cache_size", str(args.data_cache_size)]
    return parameters.parse(flags + args.passthrough)


def input_size(arch: str, image_size: int | None) -> architectures.InputConfig:
    """The backbone's crop and evaluation resize, the crop replaced by ``--image_size``."""
    cfg = architectures.input_config(arch)
    if image_size is None:
        return cfg
    return replace(cfg, crop=image_size, resize=round(image_size * cfg.resize / cfg.crop))


def set_cudnn(args: argparse.Namespace) -> None:
    seed_everything(SEED)  # as main.py: cuDNN deterministic, no autotuning
    if args.cudnn_benchmark:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def bench_arch(
    arch: str,
    args: argparse.Namespace,
    device: torch.device,
    splits_of: Callable[..., SplitDataset],
    failures: list[str],
) -> Iterator[dict[str, Any]]:
    """The rows of one backbone, each as soon as it is measured: one synthetic run, then
    :func:`bench_variant` per loader variant and worker count. A variant that fails adds a line
    to ``failures`` instead."""
    set_cudnn(args)
    opt = run_options(args, arch, args.kernels[0], cache=False)
    size = input_size(arch, args.image_size)
    train_set = splits_of(arch, size, cache=False)
    batchminer = batch_mining.select(opt.batch_mining, opt) if criteria.requires_miner(opt.loss) else None
    criterion = criteria.select(opt.loss, opt, n_classes=train_set.n_classes, batchminer=batchminer).to(
        device
    )
    model = architectures.select(arch, opt).to(device)
    parts = {"model": model, "criterion": criterion, "optimizer": build_optimizer(model, criterion, opt)}

    sampler = datasampler.select(opt.data_sampler, opt, train_set.labels)
    first = next(iter(sampler))
    images, labels, index = torch.utils.data.default_collate([train_set[i] for i in first])
    resident = (images.to(device), labels, index)  # the loader's shape, dtype and memory format
    synthetic = train_clocked(parts, itertools.repeat((0, resident)), sampler, args, device).rate
    del resident

    for variant in args.loaders:
        for kernels in args.kernels:
            try:
                row = bench_variant(arch, variant, kernels, parts, synthetic, args, device, splits_of)
            except Exception as err:  # one broken variant (e.g. no nvJPEG) must not cost the others' rows
                failures.append(f"{arch} {variant.name} {kernels} workers: {type(err).__name__}: {err}")
                continue
            yield row


def bench_variant(
    arch: str,
    variant: LoaderVariant,
    kernels: int,
    parts: dict[str, Any],
    synthetic: float,
    args: argparse.Namespace,
    device: torch.device,
    splits_of: Callable[..., SplitDataset],
) -> dict[str, Any]:
    """One row: the loader alone, then the full step, with this loader variant and worker count."""
    set_cudnn(args)
    size = input_size(arch, args.image_size)
    opt = run_options(args, arch, kernels, cache=variant.kind == "cache")
    data = splits_of(arch, size, cache=variant.kind == "cache")
    transform = None
    if variant.kind == "decode_jpeg":
        data = SplitDataset(data.samples, data.labels, read_bytes, name="training")
        transform = DeviceDecode(size.crop, device)
    sampler = datasampler.select(opt.data_sampler, opt, data.labels)

    def source() -> Iterator[tuple[int, Any]]:
        loader = training_loader(data, opt, datasampler.select(opt.data_sampler, opt, data.labels), variant)
        return epoch_batches(loader, data, transform)

    alone = _closing(source(), lambda batches: loader_clocked(batches, args, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    full = _closing(source(), lambda batches: train_clocked(parts, batches, sampler, args, device))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "arch": arch,
        "loader": variant.name,
        "workers": kernels,
        "full_img_s": full.rate,
        "synthetic_img_s": synthetic,
        "loader_img_s": alone.rate,
        "efficiency": full.rate / synthetic,
        "epoch_stall_s": full.epoch_stall(),
        "peak_gpu_gib": peak,
    }


def _closing(batches: Iterator, measure: Callable[[Iterator], Clocked]) -> Clocked:
    """Measure, then stop the batch generator at once (its loader's workers shut down)."""
    try:
        return measure(batches)
    finally:
        batches.close()


def training_loader(
    data: SplitDataset, opt: argparse.Namespace, sampler, variant: LoaderVariant
) -> torch.utils.data.DataLoader:
    """``make_loader``'s training loader; the benchmark-only variants rebuild it with its own
    settings and one change (byte-string batches, persistent workers)."""
    loader = make_loader(data, opt, batch_sampler=sampler, seed=SEED)
    if variant.kind != "decode_jpeg" and not variant.persistent:
        return loader
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_sampler=loader.batch_sampler,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        collate_fn=collate_bytes if variant.kind == "decode_jpeg" else loader.collate_fn,
        persistent_workers=loader.persistent_workers or (variant.persistent and loader.num_workers > 0),
    )


# ---- command line ---------------------------------------------------------------------------------


def _comma_list(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [convert(s.strip()) for s in text.split(",") if s.strip()]

    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        allow_abbrev=False,  # unknown flags go to main.py's parser; no prefix may capture them
        epilog="Any other flag is a main.py flag and is passed on (e.g. --optim sgd, --data_decode full).",
    )
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument(
        "--arch",
        action="append",
        type=_comma_list(str),
        help="backbone(s), repeatable or comma-separated; default: smallcnn_normalize on CPU, "
        "resnet50_frozen_normalize and timm:vit_small_patch16_224_normalize on CUDA",
    )
    ap.add_argument("--bs", type=int, default=None, help="batch size (CPU 32, CUDA 112)")
    ap.add_argument("--image_size", type=int, default=None, help="training crop (default: the backbone's)")
    ap.add_argument("--amp", nargs="?", const="auto", default="off", choices=["off", "auto", "bf16", "fp16"])
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument(
        "--kernels",
        action="append",
        type=_comma_list(int),
        help="DataLoader workers, repeatable or comma-separated (default: min(8, CPUs))",
    )
    ap.add_argument(
        "--loaders",
        type=parse_loaders,
        default=parse_loaders("plain,cache"),
        help=f"comma-separated, from {', '.join(LOADER_KINDS)}, each optionally +persistent (default plain,cache)",
    )
    ap.add_argument(
        "--data_cache", default="", help="folder of the --data_cache variant (default: <data_root>/cache)"
    )
    ap.add_argument(
        "--data_cache_size", type=int, default=None, help="default: max(256, the evaluation resize)"
    )
    ap.add_argument("--steps", type=int, default=None, help="timed steps (CPU 8, CUDA 52)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 2, CUDA 10)")
    ap.add_argument("--loss", default="margin")
    ap.add_argument("--batch_mining", default="distance")
    ap.add_argument("--samples_per_class", type=int, default=2)
    ap.add_argument(
        "--cudnn_benchmark",
        action="store_true",
        help="cuDNN autotuning instead of main.py's deterministic mode",
    )
    ap.add_argument("--data_root", default="", help="generate (or reuse) the JPEGs here and keep them")
    ap.add_argument(
        "--epoch_steps", type=int, default=None, help="batches per epoch of the data (CPU 8, CUDA 52)"
    )
    ap.add_argument("--n_unique", type=int, default=None, help="distinct JPEG files (CPU 32, CUDA 256)")
    ap.add_argument(
        "--jpeg_size", type=int, nargs=2, default=[400, 500], metavar=("MIN", "MAX"), help="longer side, px"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the main process (default: 1 on CPU, leaving the cores to the workers; "
        "torch's own on CUDA)",
    )
    ap.add_argument("--json", default="", help="also write the settings and rows to this file")
    return ap


def resolve(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    args.arch = [a for group in args.arch for a in group] if args.arch else None
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.kernels = [k for group in args.kernels for k in group] if args.kernels else [min(8, cpus)]
    args.cpus = cpus
    if args.data_cache_size is None:
        args.data_cache_size = max([256] + [input_size(a, args.image_size).resize for a in args.arch])
    if args.steps < 1 or args.warmup < 0 or not args.loaders:
        raise ConfigError("--steps must be >= 1, --warmup >= 0, and --loaders must name one loader")
    return args


def print_header(meta: dict[str, Any]) -> None:
    print(
        f"\n{meta['device_name']}, {meta['cpus']} CPUs; torch {meta['torch']}, torchvision {meta['torchvision']}"
    )
    print(
        f"bs {meta['bs']}, crop {', '.join(map(str, meta['crop']))}, amp {meta['amp_dtype']}, "
        f"channels_last {meta['channels_last']}, loss {meta['loss']} + {meta['batch_mining']}, "
        f"cuDNN {meta['cudnn']}, {meta['threads']} main-process thread(s); "
        f"{meta['warmup']} warm-up + {meta['steps']} timed steps"
    )
    cache = meta["cache_build_s"]
    print(
        f"data: {meta['train_images']} training images ({meta['n_unique']} distinct JPEGs, longer side "
        f"{meta['jpeg_size'][0]}-{meta['jpeg_size'][1]} px), {meta['epoch_steps']} steps per epoch"
        + (f"; cache build or reuse (one-time) {cache:.1f} s" if cache is not None else "")
    )
    print("efficiency = full step / synthetic (1.0: the step never waits for data)\n")
    print("| " + " | ".join(HEADINGS) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADINGS) - 2)) + "|", flush=True)


def print_row(r: dict[str, Any]) -> None:
    cells = [
        r["arch"],
        r["loader"],
        str(r["workers"]),
        f"{r['full_img_s']:.1f}",
        f"{r['synthetic_img_s']:.1f}",
        f"{r['loader_img_s']:.1f}",
        f"{r['efficiency']:.3f}",
        "-" if r["epoch_stall_s"] is None else f"{r['epoch_stall_s']:.2f}",
        "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f}",
    ]
    print("| " + " | ".join(cells) + " |", flush=True)


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"meta": meta, "columns": list(COLUMNS), "rows": rows}, indent=1))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark, print the table; returns the rows (keys: ``COLUMNS``)."""
    args, passthrough = build_parser().parse_known_args(argv)
    args.passthrough = passthrough
    device = resolve_device(args.device, [0])
    args = resolve(args, device)
    threads = torch.get_num_threads()
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    temporary = not args.data_root
    args.data_root = Path(args.data_root or tempfile.mkdtemp(prefix="bench_train_")).expanduser()
    args.data_cache = Path(args.data_cache).expanduser() if args.data_cache else args.data_root / "cache"
    try:
        spec = {
            "n_train": args.epoch_steps * args.bs,
            "n_unique": args.n_unique,
            "jpeg_size": list(args.jpeg_size),
            "samples_per_class": args.samples_per_class,
        }
        prepare_data(args.data_root, spec)
        splits: dict[tuple, SplitDataset] = {}
        cache_build: list[float] = []

        def splits_of(arch: str, size: architectures.InputConfig, cache: bool) -> SplitDataset:
            """The training split (built once per crop and reader: the start check reads every file)."""
            key = (size.crop, size.resize, cache)
            if key not in splits:
                opt = run_options(args, arch, args.kernels[0], cache)
                start = time.perf_counter()
                splits[key] = datasets.select("cub200", opt, size)["training"]
                if cache and not cache_build:  # the first use builds the cache (or finds it built)
                    cache_build.append(time.perf_counter() - start)
            return splits[key]

        # the first backbone's splits before any timing: the start check, the cache build
        first_size = input_size(args.arch[0], args.image_size)
        first_split = splits_of(args.arch[0], first_size, cache=False)
        if any(v.kind == "cache" for v in args.loaders):
            splits_of(args.arch[0], first_size, cache=True)
        amp = architectures.autocast_dtype(args.amp, device.type)
        rows: list[dict[str, Any]] = []
        failures: list[str] = []
        meta = {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "cpus": args.cpus,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "bs": args.bs,
            "crop": sorted({input_size(a, args.image_size).crop for a in args.arch}),
            "amp_dtype": str(amp).removeprefix("torch.") if amp is not None else "off",
            "channels_last": args.channels_last,
            "loss": args.loss,
            "batch_mining": args.batch_mining,
            "cudnn": "benchmark" if args.cudnn_benchmark else "deterministic (as main.py)",
            "warmup": args.warmup,
            "steps": args.steps,
            "train_images": len(first_split),
            "epoch_steps": len(first_split) // args.bs,
            "n_unique": args.n_unique,
            "jpeg_size": list(args.jpeg_size),
            "cache_build_s": cache_build[0] if cache_build else None,
            "threads": torch.get_num_threads(),
            "passthrough": args.passthrough,
            "failed": failures,
        }
        print_header(meta)
        for arch in args.arch:
            # rows as they come, the JSON rewritten after each: a run stopped early keeps its rows
            for row in bench_arch(arch, args, device, splits_of, failures):
                rows.append(row)
                print_row(row)
                if args.json:
                    write_json(Path(args.json), meta, rows)
            if device.type == "cuda":  # the next backbone's peak memory without this one's blocks
                torch.cuda.empty_cache()
        for line in failures:
            print(f"failed: {line}")
        if args.json:
            write_json(Path(args.json), meta, rows)
        return rows
    finally:
        torch.set_num_threads(threads)
        if temporary:
            shutil.rmtree(args.data_root, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"error: {err}")
