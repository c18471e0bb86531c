"""Reading images: straight from the files, or from a pre-resized ``uint8`` cache (``--data_cache``).

:class:`FileReader` opens a file lazily (PIL reads only the header), so the transform can still ask
libjpeg for a reduced-size decode (``datasets/transforms.py``). A missing, non-image or truncated
file raises :class:`~datasets.transforms.UnreadableImageError` naming the file.

:class:`ImageCache` is built once per (image list, cache size) and reused by every later run that
points ``--data_cache`` at the same folder (a sweep): every image is decoded once, its shorter side
resized to ``--data_cache_size`` (bilinear, as torchvision's ``Resize``; smaller images are kept
as they are) and stored as raw RGB bytes in one file read through a memory map, so a training step
never decodes a JPEG again. The folder name hashes the image paths, sizes and modification times,
so a changed dataset gets a new cache. Built in a temporary folder and renamed when complete, so an
interrupted build or two runs building at once never leave a half-written cache. Size on disk:
about 3·s²·(aspect) bytes per image, e.g. 0.26 MB at s = 256 and 4:3 (CUB ≈ 3 GB, SOP ≈ 30 GB).

Semantics with the cache: evaluation images are bit-identical (the cache stores exactly the
``Resize(256)`` image when ``--data_cache_size`` equals the evaluation resize, and the centre crop
is a slice); random crops are drawn in the same relative coordinates (torchvision's samplers) but
resampled from the cached copy, with torch's antialiased bilinear on uint8 tensors instead of
PIL's (values within a few grey levels), so a crop smaller than the output is up-sampled from
fewer source pixels than with the full-size file. ``adv``'s colour jitter runs on tensors too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from datasets.transforms import UnreadableImageError, resize_shorter
from utilities.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def open_image(path: str) -> Image.Image:
    """Open ``path`` lazily (header only); errors name the file."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise UnreadableImageError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from None


class FileReader:
    """``reader(path)`` -> a lazily opened PIL image."""

    def __call__(self, path: str) -> Image.Image:
        return open_image(path)


def check_files_exist(paths: list[str], dataset: str) -> None:
    """Every listed image must exist: report the missing ones (how many, and the first few)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(
            f"{dataset}: {len(missing)} of {len(paths)} listed images are missing, e.g. {missing[:3]}"
        )


# ---- the pre-resized cache ----------------------------------------------------------------------


def _cache_key(paths: list[str], size: int) -> str:
    digest = hashlib.sha1(f"v1:{size}".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode_resized(path: str, size: int) -> np.ndarray:
    with open_image(path) as img:
        try:
            w, h = img.size
            out = resize_shorter(img, size, draft=False) if min(w, h) > size else img.convert("RGB")
            return np.asarray(out, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as err:
            raise UnreadableImageError(f"cannot decode image {path}: {err}") from None


def _decode_chunk(args: tuple[list[str], int]) -> list[np.ndarray]:
    paths, size = args
    return [_decode_resized(p, size) for p in paths]


class ImageCache:
    """Pre-resized images of ``paths`` under ``folder``; ``cache(path)`` -> a (3, H, W) uint8 tensor."""

    def __init__(
        self, folder: str | Path, paths: list[str], size: int, name: str = "data", workers: int = 0
    ) -> None:
        self.paths = list(paths)
        self.size = size
        key = _cache_key(self.paths, size)
        self.folder = Path(folder).expanduser() / f"{name}-{size}-{key}"
        if not (self.folder / "index.npy").is_file():
            self._build(workers)
        self.index = np.load(self.folder / "index.npy")  # (N, 3): byte offset, height, width
        self.position = {p: i for i, p in enumerate(self.paths)}
        self._data: np.memmap | None = None  # opened lazily: once per DataLoader worker

    def _build(self, workers: int) -> None:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=self.folder.parent))
        try:
            index = np.zeros((len(self.paths), 3), dtype=np.int64)
            offset = 0
            chunks = [(self.paths[i : i + 64], self.size) for i in range(0, len(self.paths), 64)]
            with open(tmp / "images.u8", "wb") as out:
                if workers > 0 and len(chunks) > 1:
                    with ProcessPoolExecutor(workers) as pool:
                        results = pool.map(_decode_chunk, chunks)
                        offset = self._write(results, out, index)
                else:
                    offset = self._write(map(_decode_chunk, chunks), out, index)
            np.save(tmp / "index.npy", index)
            (tmp / "meta.json").write_text(
                json.dumps({"n": len(self.paths), "size": self.size, "bytes": offset})
            )
            try:
                tmp.rename(self.folder)
            except OSError:  # another run finished the same cache first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _write(results, out, index: np.ndarray) -> int:
        i, offset = 0, 0
        for chunk in results:
            for arr in chunk:
                out.write(arr.tobytes())
                index[i] = (offset, arr.shape[0], arr.shape[1])
                offset += arr.nbytes
                i += 1
        return offset

    def __len__(self) -> int:
        return len(self.paths)

    def array(self, path: str) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(
                self.folder / "images.u8", dtype=np.uint8, mode="c"
            )  # copy-on-write: never written
        offset, h, w = self.index[self.position[path]]
        return self._data[offset : offset + h * w * 3].reshape(h, w, 3)

    def __call__(self, path: str) -> torch.Tensor:
        """A (3, H, W) uint8 view of the memory map: no decode and no copy until the crop."""
        return torch.from_numpy(self.array(path)).permute(2, 0, 1)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_data"] = None  # memory maps are reopened in each worker
        return state
