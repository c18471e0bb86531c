"""Training-loader throughput (images/s): this project's pipeline vs. the plain per-image baseline.

Generates ``--n_images`` (500) JPEGs of 400 × 300 in the CUB200 study layout, then iterates the
*training* loader (RandomResizedCrop 224 + horizontal flip, ``--augmentation base``) for
``--epochs`` epochs with ``--workers`` (2) DataLoader workers, batches of ``--bs``, and reports
images/s (best of ``--repeats``):

* ``baseline``: plain PIL decode + torchvision RandomResizedCrop / RandomHorizontalFlip /
  ToTensor / Normalize per image, float32 batches (the reference study's pipeline);
* ``plain``: this project's loader with full-size decode (``--data_decode full``);
* ``reduced decode``: the default, JPEGs decoded at 1/2-1/8 size when the crop box allows it;
* ``cache``: ``--data_cache`` (pre-resized uint8 store, shorter side 256); its one-time build
  time is printed separately.

Our loaders hand uint8 batches to the network, which normalises on the device. Column (a) keeps
the comparison fair on a CPU-only machine: the timed loop for our rows also converts each batch to
normalised float32 in the main process (the work the GPU would do), competing with the workers for
the same cores; column (b) is the loader alone, as it runs when the network is on a GPU. All rows use
``utilities.training.make_loader`` (seeded workers, pinned memory on CUDA), so loader settings
are identical.

Run by hand: ``python benchmarks/bench_loader.py [--n_images 500 --workers 2 --epochs 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import architectures
import datasets
import parameters
from utilities.training import make_loader

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def make_cub(root: Path, n_images: int, size: tuple[int, int] = (400, 300)) -> None:
    """``n_images`` photo-like JPEGs (smooth colour fields + noise texture) in 10 training classes
    of the CUB layout, plus 5 images of one test class (the loader needs a non-empty test split)."""
    rng = np.random.default_rng(0)
    w, h = size
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n_images + 5):
        cid = 1 + i % 10 if i < n_images else 101
        folder = root / "cub200" / "images" / f"{cid:03d}.Class_{cid}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.random(3) * 6
        img = 128 + 60 * np.sin(gx[..., None] / (9 + 3 * phase) + gy[..., None] / 13 + phase)
        img += rng.normal(0, 12, (h, w, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:05d}.jpg", quality=90)


class Baseline(torch.utils.data.Dataset):
    """The study's per-image pipeline: PIL open + convert, torchvision transforms to float."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(224),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), 0, i


def throughput(dataset, opt, epochs: int, normalize: bool) -> float:
    n = len(dataset)
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(n, generator=g).tolist()
        batches = [order[i : i + opt.bs] for i in range(0, n - opt.bs + 1, opt.bs)]
        for x, _, _ in make_loader(dataset, opt, batch_sampler=batches, seed=epoch):
            if normalize:  # what the network does on the device with our uint8 batches
                x = x.float().sub_(MEAN).div_(STD)
            images += x.shape[0]
    return images / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_images", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--bs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", default="", help="generate the images here and keep them (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        if not (root / "cub200").is_dir():
            make_cub(root, args.n_images)

        def opt_for(*extra: str) -> argparse.Namespace:
            return parameters.parse(
                [
                    "--dataset",
                    "cub200",
                    "--source_path",
                    str(root),
                    "--arch",
                    "resnet50",
                    "--bs",
                    str(args.bs),
                    "--kernels",
                    str(args.workers),
                    "--samples_per_class",
                    "1",
                    *extra,
                ]
            )

        plain_opt = opt_for("--data_decode", "full")
        train_paths = datasets.select("cub200", plain_opt, architectures.input_config(plain_opt.arch))[
            "training"
        ].samples

        def ours(*extra: str):
            opt = opt_for(*extra)
            return datasets.select("cub200", opt, architectures.input_config(opt.arch))["training"], opt

        rows = []
        configs = [
            ("baseline (PIL + torchvision, float)", lambda: (Baseline(train_paths), plain_opt), False),
            ("plain (full decode, uint8)", lambda: ours("--data_decode", "full"), True),
            ("reduced decode", lambda: ours(), True),
        ]
        cache_dir = root / "cache"
        t0 = time.perf_counter()
        ours("--data_cache", str(cache_dir))  # build once (not timed below)
        build = time.perf_counter() - t0
        configs.append(("cache (--data_cache, 256 px)", lambda: ours("--data_cache", str(cache_dir)), True))

        results = {name: [] for name, _, _ in configs}
        loader_only = {name: [] for name, _, _ in configs}
        for _ in range(args.repeats):  # interleaved, so machine load drifts hit every row alike
            for name, build_fn, normalize in configs:
                dataset, opt = build_fn()
                results[name].append(throughput(dataset, opt, args.epochs, normalize))
                loader_only[name].append(throughput(dataset, opt, args.epochs, False) if normalize else None)
        base = max(results[configs[0][0]])
        for name, _, normalize in configs:
            best = max(results[name])
            alone = max(loader_only[name]) if normalize else best
            rows.append((name, best, best / base, alone, alone / base))

        print(
            f"\n{args.n_images} JPEGs 400x300, RandomResizedCrop 224 + flip, {args.workers} workers, "
            f"bs {args.bs}, {args.epochs} epochs, best of {args.repeats}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} main-process thread(s)"
        )
        print("(a) with float32 normalisation of every batch on the CPU (our rows: in the main process);")
        print("(b) the loader alone (our rows hand uint8 batches to the device, which normalises)")
        print(
            f"| {'loader':<38} | {'(a) img/s':>9} | {'(a) ratio':>9} | {'(b) img/s':>9} | {'(b) ratio':>9} |"
        )
        print(f"|{'-' * 40}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
        for name, ips, ratio, alone, ratio_alone in rows:
            print(f"| {name:<38} | {ips:>9.1f} | {ratio:>8.2f}x | {alone:>9.1f} | {ratio_alone:>8.2f}x |")
        print(
            f"cache build (one-time, {len(train_paths) + 5} images, {args.workers} processes): {build:.1f} s"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
