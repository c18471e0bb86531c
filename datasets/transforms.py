"""The study's augmentations (``--augmentation base|adv|big|red``), on a fast decode path.

Semantics (as in the study; crop 224, 227 for GoogLeNet/BN-Inception, 256 with ``big``):

* ``base`` / ``big``: RandomResizedCrop(crop) (scale 0.08-1, ratio 3/4-4/3), RandomHorizontalFlip;
* ``adv``: RandomResizedCrop, RandomGrayscale(0.2), ColorJitter(0.2, 0.2, 0.2, 0.2), flip;
* ``red``: Resize(256), RandomCrop(crop), flip;
* evaluation: Resize(256) (shorter side), CenterCrop(crop).

The random parameters are drawn with torchvision's own samplers, in torchvision's order, from the
torch RNG (seeded per DataLoader worker), so with ``--data_decode full`` an image comes out
**bit-identical** to the torchvision pipeline (the tests check this). What is faster:

* **Reduced-size decode** (``--data_decode reduced``, default): the crop box is drawn first; when
  the box is still at least 2× (4×, 8×) larger than the output in both directions, the JPEG is
  decoded directly at 1/2 (1/4, 1/8) size by libjpeg's DCT scaling (PIL ``draft``) and the box is
  resampled from that. The result is the same crop, downscaled by a better-filtered path; it
  differs from the full decode only by resampling noise (a few grey levels).
* **Cached images** (``--data_cache``) arrive as uint8 tensor views of a memory map and take
  the same steps on tensors (torch's antialiased bilinear resize in uint8; see ``images.py``).
* **No float work in the workers**: the output is a ``uint8`` (3, crop, crop) tensor; the
  network normalises on the device (``architectures/base.py``), which also makes the host->device
  copy 4× smaller. Dividing by 255, the mean/std normalisation and BN-Inception's BGR flip are
  exactly the study's, applied later.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from utilities.errors import ConfigError

if TYPE_CHECKING:
    import torchvision.transforms as T

BILINEAR = Image.Resampling.BILINEAR
DRAFT_SCALES = (8, 4, 2)


class UnreadableImageError(ConfigError):
    """An image file that is missing, not an image, or truncated; the message is one line,
    :func:`unreadable_message`.

    Raised in a DataLoader worker, the error reaches the main process re-built by torch
    (``torch._utils.ExceptionWrapper.reraise`` calls ``cls(text)`` with a text of several lines:
    "Caught UnreadableImageError in DataLoader worker process N.", "Original Traceback (most
    recent call last):", the worker's traceback, and last "datasets.transforms.UnreadableImageError:
    <message>"). The constructor recognises that form and keeps only the original one-line
    message; the worker's traceback, which says nothing more about a bad file, stays in
    ``worker_traceback``."""

    def __init__(self, text: str = "") -> None:
        self.worker_traceback = ""
        if _WORKER_MARK in text:
            self.worker_traceback = text
            last = text.rstrip().splitlines()[-1]
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            text = last[len(prefix) :] if last.startswith(prefix) else last.partition(": ")[2] or last
        super().__init__(text)


_WORKER_MARK = "\nOriginal Traceback (most recent call last):"
# what PIL raises for a file it cannot decode (struct.error: malformed headers, EOFError: short files)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def error_reason(err: BaseException) -> str:
    """A short one-line reason for a decode error of PIL (its message without the file name)."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image file of a format PIL reads"
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        return err.strerror  # "Permission denied", "Input/output error": without the repeated path
    text = " ".join(str(err).split()) or type(err).__name__
    if (
        "truncated" in text.lower()
    ):  # "image file is truncated (N bytes not processed)", "Truncated File Read"
        return "truncated file"
    if isinstance(err, Image.DecompressionBombError):
        return text.split(" could be decompression bomb")[0]
    return text


def unreadable_message(path: str, reason: str, dataset: str = "") -> str:
    """``<dataset>: cannot read image <path> (<reason>); remove or replace it``, one line."""
    where = f"{dataset}: " if dataset else ""
    return f"{where}cannot read image {path} ({reason}); remove or replace it"


def _draft(img: Image.Image, need_w: float, need_h: float, enabled: bool) -> tuple[float, float]:
    """Decode ``img`` (a lazily opened JPEG) at the largest 1/k size that still has at least
    ``need_w`` × ``need_h`` pixels; returns the (x, y) factors new size / original size."""
    if (
        not enabled
        or not isinstance(img, JpegImagePlugin.JpegImageFile)
        or getattr(img, "_im", None) is not None
    ):
        return 1.0, 1.0
    w, h = img.size
    for k in DRAFT_SCALES:
        if w / k >= need_w and h / k >= need_h:
            img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (w // k, h // k))
            return img.size[0] / w, img.size[1] / h
    return 1.0, 1.0


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _resize_uint8(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Antialiased bilinear resize of a (3, H, W) uint8 tensor, staying in uint8 (torch's fast
    path; torchvision's functional resize would round-trip through float32)."""
    return torch.nn.functional.interpolate(img[None], size=(h, w), mode="bilinear", antialias=True)[0]


def resize_shorter(img: Image.Image, size: int, draft: bool) -> Image.Image:
    """torchvision ``Resize(size)`` (shorter side to ``size``), possibly from a reduced decode."""
    if isinstance(img, torch.Tensor):  # a cached uint8 image (datasets/images.py)
        h, w = img.shape[-2:]
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return img if (new_w, new_h) == (w, h) else _resize_uint8(img, new_h, new_w)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return _rgb(img)
    _draft(img, new_w, new_h, draft)
    return _rgb(img).resize((new_w, new_h), BILINEAR)


class RandomResizedCropFast:
    """torchvision ``RandomResizedCrop(size)`` with JPEG reduced-size decoding."""

    def __init__(self, size: int, draft: bool = True) -> None:
        self.size = size
        self.draft = draft
        self.scale, self.ratio = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)

    def __call__(self, img: Image.Image) -> Image.Image:
        import torchvision.transforms as T  # lazy (imports all of torchvision): see build_transforms

        top, left, h, w = T.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        if isinstance(img, torch.Tensor):  # cached uint8 image: torch's antialiased bilinear
            return _resize_uint8(img[:, top : top + h, left : left + w], self.size, self.size)
        # decoded at 1/k, the box (w/k × h/k) must still hold at least size × size pixels
        sx, sy = _draft(img, self.size * img.size[0] / w, self.size * img.size[1] / h, self.draft)
        img = _rgb(img)
        if (sx, sy) == (1.0, 1.0):  # exactly torchvision's F.resized_crop on PIL images
            return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), BILINEAR)
        box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
        return img.resize((self.size, self.size), BILINEAR, box=box)


class ResizeFast:
    """torchvision ``Resize(size)`` (shorter side) with JPEG reduced-size decoding."""

    def __init__(self, size: int, draft: bool = True) -> None:
        self.size, self.draft = size, draft

    def __call__(self, img: Image.Image) -> Image.Image:
        return resize_shorter(img, self.size, self.draft)


def to_uint8(img: Image.Image | torch.Tensor) -> torch.Tensor:
    import torchvision.transforms.functional as F  # lazy: see build_transforms

    return img.contiguous() if isinstance(img, torch.Tensor) else F.pil_to_tensor(_rgb(img))


class ImageTransform:
    """Compose the steps on a lazily opened PIL image; closes it and names the file on errors."""

    def __init__(self, steps: list[Callable], name: str, dataset: str = "") -> None:
        self.steps = steps
        self.name = name
        self.dataset = dataset  # names the dataset in the error message

    def __call__(self, img: Image.Image) -> torch.Tensor:
        path = getattr(img, "filename", "") or "<in-memory>"
        try:
            for step in self.steps:
                img = step(img)
            return to_uint8(img)
        except UnreadableImageError:
            raise
        except DECODE_ERRORS as err:
            raise UnreadableImageError(unreadable_message(path, error_reason(err), self.dataset)) from None
        finally:
            if isinstance(img, Image.Image):
                img.close()

    def __repr__(self) -> str:
        return f"ImageTransform({self.name}: {self.steps})"


def build_transforms(
    augmentation: str, crop: int, resize: int = 256, draft: bool = True, dataset: str = ""
) -> tuple[ImageTransform, ImageTransform]:
    """(train transform, eval transform) for ``--augmentation``, crop size and eval resize;
    ``dataset`` names the dataset in the message of an image that cannot be decoded."""
    # lazy: any torchvision import loads torchvision.models, seconds of CPU that --help and
    # configuration errors skip
    import torchvision.transforms as T

    if augmentation == "big":
        crop = resize
    flip = T.RandomHorizontalFlip(0.5)
    if augmentation in ("base", "big"):
        train = [RandomResizedCropFast(crop, draft), flip]
    elif augmentation == "adv":
        train = [
            RandomResizedCropFast(crop, draft),
            T.RandomGrayscale(p=0.2),
            T.ColorJitter(0.2, 0.2, 0.2, 0.2),
            flip,
        ]
    elif augmentation == "red":
        train = [ResizeFast(resize, draft), T.RandomCrop(crop), flip]
    else:
        raise ConfigError(f"unknown --augmentation '{augmentation}'; choose from: base, adv, big, red")
    evaluation = [ResizeFast(resize, draft), T.CenterCrop(crop)]
    return ImageTransform(train, augmentation, dataset), ImageTransform(evaluation, "eval", dataset)


def torchvision_reference(augmentation: str, crop: int, resize: int = 256) -> tuple[T.Compose, T.Compose]:
    """The plain torchvision pipelines (uint8 output) that :func:`build_transforms` reproduces;
    used by tests and ``benchmarks/bench_loader.py`` as the baseline."""
    import torchvision.transforms as T  # lazy: see build_transforms

    if augmentation == "big":
        crop = resize
    rrc, flip = T.RandomResizedCrop(crop), T.RandomHorizontalFlip(0.5)
    train = {
        "base": [rrc, flip],
        "big": [rrc, flip],
        "adv": [rrc, T.RandomGrayscale(p=0.2), T.ColorJitter(0.2, 0.2, 0.2, 0.2), flip],
        "red": [T.Resize(resize), T.RandomCrop(crop), flip],
    }[augmentation]
    to_tensor = T.PILToTensor()
    return T.Compose([*train, to_tensor]), T.Compose([T.Resize(resize), T.CenterCrop(crop), to_tensor])
