"""Reading images: straight from the files, or from a pre-resized ``uint8`` cache (``--data_cache``).

:class:`FileReader` opens a file lazily (PIL reads only the header), so the transform can still ask
libjpeg for a reduced-size decode (``datasets/transforms.py``). A missing, non-image or truncated
file raises :class:`~datasets.transforms.UnreadableImageError` naming the file. Before any of that,
:func:`check_images_readable` looks at every listed image of every split at start (header and
last bytes, seconds for SOP), so a bad file stops the run before training, not when first drawn.

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
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from datasets.transforms import (
    DECODE_ERRORS,
    UnreadableImageError,
    error_reason,
    resize_shorter,
    unreadable_message,
)
from utilities.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
logger = logging.getLogger(__name__)
CHECK_THREADS = 8  # the start check's reader threads


def open_image(path: str, dataset: str = "") -> Image.Image:
    """Open ``path`` lazily (header only); errors name the file (:func:`unreadable_message`)."""
    try:
        return Image.open(path)
    except DECODE_ERRORS as err:
        raise UnreadableImageError(unreadable_message(path, error_reason(err), dataset)) from None


class FileReader:
    """``reader(path)`` -> a lazily opened PIL image; ``dataset`` names the dataset in errors."""

    def __init__(self, dataset: str = "") -> None:
        self.dataset = dataset

    def __call__(self, path: str) -> Image.Image:
        return open_image(path, self.dataset)


def check_files_exist(paths: list[str], dataset: str) -> None:
    """Every listed image must exist: report the missing ones (how many, and the first few)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(
            f"{dataset}: {len(missing)} of {len(paths)} listed images are missing, e.g. {missing[:3]}"
        )


# ---- the start check: every image readable --------------------------------------------------------

# how a complete file of each format ends (trailing NUL padding allowed); other formats are decoded
_TRAILERS = {"JPEG": (b"\xff\xd9",), "MPO": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",), "GIF": (b";",)}


def _complete(fh: BinaryIO, fmt: str | None, size: int) -> bool:
    """Whether the file looks complete by its last bytes (a truncated download or copy does not)."""
    if fmt == "WEBP":  # RIFF: the header gives the length of the rest
        fh.seek(4)
        return int.from_bytes(fh.read(4), "little") + 8 <= size
    trailers = _TRAILERS.get(fmt or "")
    if trailers is None:
        return False
    fh.seek(max(0, size - 64))
    tail = fh.read().rstrip(b"\0")
    return tail.endswith(trailers)


def image_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as an image, or None. Fast: reads the header (``Image.open``)
    and the last bytes; only a file that does not end the way its format ends (a truncated JPEG,
    or a JPEG with bytes after its end marker) is decoded, a JPEG at 1/8 size (libjpeg's DCT
    scaling still reads every byte, so a truncation is found)."""
    try:
        size = os.stat(path).st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as fh, Image.open(fh) as img:
            w, h = img.size
            if w <= 0 or h <= 0:
                return f"image of size {w}x{h}"
            if not _complete(fh, img.format, size):
                if isinstance(img, JpegImagePlugin.JpegImageFile):
                    img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (w // 8, h // 8))
                img.load()
    except DECODE_ERRORS as err:
        return error_reason(err)
    return None


def _problems(paths: list[str]) -> list[tuple[str, str]]:
    return [(p, reason) for p in paths if (reason := image_problem(p)) is not None]


def check_images_readable(paths: list[str], dataset: str, threads: int = CHECK_THREADS) -> None:
    """The start check: every listed image has a readable header and a complete body
    (:func:`image_problem`); otherwise one :class:`ConfigError` line naming the first bad file
    (in listing order) and how many there are. ``threads`` overlap the reads of a cold disk or a
    network file system (the parsing holds the GIL, so from the page cache they gain nothing)."""
    start = time.perf_counter()
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    if threads > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(min(threads, len(chunks))) as pool:
            bad = [item for part in pool.map(_problems, chunks) for item in part]
    else:
        bad = _problems(paths)
    logger.debug("%s: checked %d images in %.1f s", dataset, len(paths), time.perf_counter() - start)
    if bad:
        raise ConfigError(_bad_images_message(bad, len(paths), dataset))


def _bad_images_message(bad: list[tuple[str, str]], n_total: int, dataset: str) -> str:
    path, reason = bad[0]
    message = unreadable_message(path, reason, dataset)
    if len(bad) > 1:
        message += f" ({len(bad)} of {n_total} listed images are unreadable; all are checked at start)"
    return message


# ---- the pre-resized cache ----------------------------------------------------------------------


def _cache_key(paths: list[str], size: int) -> str:
    digest = hashlib.sha1(f"v1:{size}".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode_resized(path: str, size: int) -> np.ndarray | str:
    """The image resized for the cache, or the reason it cannot be decoded."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            out = resize_shorter(img, size, draft=False) if min(w, h) > size else img.convert("RGB")
            return np.asarray(out, dtype=np.uint8)
    except DECODE_ERRORS as err:
        return error_reason(err)


def _decode_chunk(args: tuple[list[str], int]) -> list[np.ndarray | str]:
    paths, size = args
    return [_decode_resized(p, size) for p in paths]


class ImageCache:
    """Pre-resized images of ``paths`` under ``folder``; ``cache(path)`` -> a (3, H, W) uint8 tensor."""

    def __init__(
        self, folder: str | Path, paths: list[str], size: int, name: str = "data", workers: int = 0
    ) -> None:
        self.paths = list(paths)
        self.size = size
        self.name = name
        key = _cache_key(self.paths, size)
        self.folder = Path(folder).expanduser() / f"{name}-{size}-{key}"
        if not (self.folder / "index.npy").is_file():
            # the fast start check first: a bad file is named in seconds, not after a long build
            # (a complete cache needs no check: it was built from these files, sizes and times)
            check_images_readable(self.paths, name)
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

    def _write(self, results, out, index: np.ndarray) -> int:
        """Write the decoded images; a file that cannot be decoded (the start check reads only
        headers and ends) stops the build after all were tried, with the start check's message."""
        i, offset, bad = 0, 0, []
        for chunk in results:
            for arr in chunk:
                if isinstance(arr, str):
                    bad.append((self.paths[i], arr))
                else:
                    out.write(arr.tobytes())
                    index[i] = (offset, arr.shape[0], arr.shape[1])
                    offset += arr.nbytes
                i += 1
        if bad:
            raise ConfigError(_bad_images_message(bad, len(self.paths), self.name))
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
