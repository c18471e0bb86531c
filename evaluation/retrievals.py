"""A picture of retrievals: queries and their k nearest gallery items, from a saved ``.npz``.

``python -m evaluation --embeddings FILE.npz --show_retrievals N`` draws N queries, one per row:
the query in the first column (thin grey frame), then its k nearest gallery items, nearest first.

* **Neighbours**: the order of the exact ranking pass (:mod:`metrics.ranking`): squared Euclidean
  distance in float32 (``metrics.ranking._distances``), ties to the lower row (its ranking key,
  ``metrics.ranking._keys``), the query itself excluded by index (a duplicate of it is a legitimate
  result), and only gallery rows when the file has ``is_query`` / ``is_gallery`` masks (In-Shop);
  leave-one-out otherwise. The picture shows the Euclidean distance ``d`` (the square root).
* **Which queries** (``--retrieval_order``): ``random`` (seeded by ``--seed``, drawn in row
  order), ``first`` (the first N queries), or ``worst``: the largest **rank of the first correct
  result** first, i.e. the rank of the query's nearest same-label gallery item in its ranking of
  the gallery (1/rank is its reciprocal rank, ``mrr``), taken from the ranking pass; ties go to
  the lower row. A query without any same-label gallery item ranks G + 1 (never found; G = the
  gallery size) and so comes first.
* **Frames**: a correct result (same label as the query) has a thick solid green frame and a ✓
  badge, a wrong one a thick dashed red frame and a ✗ badge, so the grid reads in greyscale and
  without telling red from green; under each image: the symbol, the rank, ``d``, the label, the row.
* **Images**: the file's ``paths`` (written by ``main.py --save_embeddings``) name each row's image
  as the dataset listed it. Files are opened with PIL and letterboxed into a square thumbnail;
  ``--image_root`` resolves relative paths, and absolute ones whose dataset moved (the longest tail
  of the path that exists under it wins). The embedded ``digits`` dataset has no files: its rows are
  recorded as ``digits:<i>`` (row i of scikit-learn's ``load_digits()``) and drawn from that array.

:func:`show_retrievals` returns a :class:`RetrievalGrid`: the PNG's path and pixel size, and per
query its row, the neighbour rows, their distances, correct flags and the frame colour, style and
symbol read back from the drawn figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from metrics import ranking
from metrics.context import EvalContext
from utilities.errors import ConfigError
from utilities.logger import writing

ORDERS = ("random", "first", "worst")
MEASURE = "rank of the first correct result (largest first; ties: lower row first)"
DIGITS_PREFIX = "digits:"  # row identifier of the embedded dataset: digits:<row of load_digits()>

# Geometry in inches at DPI dots per inch, chosen so that every product is exact in binary floating
# point: the PNG is exactly (1 + k) · 160 by 60 + N · 200 pixels, and a thumbnail is drawn 1:1.
DPI = 80
CELL_W, CELL_H = 2.0, 2.5  # one image with its caption
IMG = 1.6  # the image square (128 px)
TOP = 0.125  # gap above the image inside its cell
HEADER = 0.75  # title and legend
THUMB = int(IMG * DPI)

GREEN, RED, NEUTRAL = "#1a9850", "#d73027", "#808080"
CORRECT = {"color": GREEN, "style": "solid", "mark": "✓"}
WRONG = {"color": RED, "style": "dashed", "mark": "✗"}
LETTERBOX = (236, 236, 236)  # the bars around an image that is not square


@dataclass(frozen=True)
class QueryRow:
    """One drawn row: the query's split row and label, then per neighbour (nearest first) its row,
    label, Euclidean distance and whether its label is the query's; ``first_hit`` is the rank of
    the query's first correct result (G + 1: none in the gallery). ``frames``, ``styles`` and
    ``marks`` are the frame colour (hex), line style and symbol of each neighbour as drawn."""

    query: int
    label: int
    first_hit: int
    neighbours: tuple[int, ...]
    labels: tuple[int, ...]
    distances: tuple[float, ...]
    correct: tuple[bool, ...]
    frames: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    marks: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrievalGrid:
    """What :func:`show_retrievals` drew: the PNG, its (width, height) in pixels, and its rows."""

    path: Path
    size: tuple[int, int]
    k: int
    order: str
    rows: tuple[QueryRow, ...]


def grid_pixels(n_queries: int, k: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of ``n_queries`` rows of ``k`` neighbours."""
    return round((1 + k) * CELL_W * DPI), round((HEADER + n_queries * CELL_H) * DPI)


# ---- writing: the row identifiers of a split ---------------------------------------------------------


def row_paths(dataset: Any, name: str | None) -> np.ndarray | None:
    """The image path of every row of a split (``SplitDataset.samples``) as a string array, for the
    ``.npz`` of ``--save_embeddings``; a dataset whose samples are row numbers into an in-memory
    array (``digits``) gets ``<name>:<row>``. None when the split lists no samples of either kind."""
    samples = getattr(dataset, "samples", None)
    if samples is None or len(samples) == 0:
        return None
    out = []
    for sample in samples:
        if isinstance(sample, (str, os.PathLike)):
            out.append(os.fspath(sample))
        elif isinstance(sample, (int, np.integer)) and not isinstance(sample, bool):
            out.append(f"{name or 'rows'}:{int(sample)}")
        else:
            return None
    return np.asarray(out, dtype=str)


# ---- neighbours and the choice of queries -------------------------------------------------------


def nearest(
    embeddings: torch.Tensor,
    query_rows: torch.Tensor,
    gallery_rows: torch.Tensor,
    k: int,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(query_rows), k) split rows of each query's k nearest gallery items, nearest first, and
    their Euclidean distances: the ranking pass's distances and keys (ties to the lower row), the
    query itself excluded by index. ``k`` must not exceed the candidates (:func:`candidates`)."""
    x = embeddings.float()
    g = x[gallery_rows]
    g_sq = g.pow(2).sum(1)
    pos = torch.full((len(x),), -1, dtype=torch.long)
    pos[gallery_rows] = torch.arange(len(gallery_rows))
    self_pos = pos[query_rows]
    cols = torch.arange(len(gallery_rows))
    rows = torch.empty(len(query_rows), k, dtype=torch.long)
    dist = torch.empty(len(query_rows), k, dtype=torch.float32)
    step = ranking.auto_chunk(len(gallery_rows), chunk)
    for s in range(0, len(query_rows), step):
        e = min(s + step, len(query_rows))
        d = ranking._distances(x[query_rows[s:e]], g, g_sq)
        keys = ranking._keys(d, cols[None, :])
        own = torch.nonzero(self_pos[s:e] >= 0).flatten()
        keys[own, self_pos[s:e][own]] = torch.iinfo(torch.int64).max  # never its own neighbour
        top = torch.topk(keys, k, dim=1, largest=False, sorted=True).indices
        rows[s:e] = gallery_rows[top]
        dist[s:e] = d.gather(1, top).sqrt()
    return rows, dist


def candidates(query_rows: torch.Tensor, gallery_rows: torch.Tensor) -> int:
    """Gallery items every query can retrieve: the gallery, less one when a query is in it."""
    in_gallery = torch.isin(query_rows, gallery_rows).any()
    return len(gallery_rows) - int(bool(in_gallery))


def first_hit_ranks(
    embeddings: torch.Tensor, labels: torch.Tensor, query_rows: torch.Tensor, gallery_rows: torch.Tensor
) -> np.ndarray:
    """(len(query_rows),) the rank of each query's first correct result in its ranking of the
    gallery, from the exact ranking pass (:meth:`metrics.context.EvalContext.ranks`); G + 1 for a
    query without a same-label gallery item."""
    n = len(labels)
    q_mask = torch.zeros(n, dtype=torch.bool)
    q_mask[query_rows] = True
    g_mask = torch.zeros(n, dtype=torch.bool)
    g_mask[gallery_rows] = True
    ctx = EvalContext(embeddings, labels, query_mask=q_mask, gallery_mask=g_mask)
    ctx.request_ranks(1)
    never = len(gallery_rows) + 1
    ranks = ctx.ranks()
    if ranks.shape[1] == 0:  # no query has a same-label gallery item
        return np.full(len(query_rows), never, dtype=np.int64)
    first = ranks[:, 0].cpu().numpy()
    # EvalContext orders its queries by row; map back to the order of query_rows
    by_row = np.empty(n, dtype=np.int64)
    by_row[ctx.query_idx.cpu().numpy()] = np.where(first == ranking.PAD, never, first)
    return by_row[query_rows.numpy()]


def choose_queries(
    query_rows: torch.Tensor,
    n: int,
    order: str,
    seed: int,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    gallery_rows: torch.Tensor,
) -> tuple[torch.Tensor, np.ndarray]:
    """The ``n`` query rows to draw (fewer if there are fewer queries) and their first-hit ranks."""
    if order not in ORDERS:
        raise ConfigError(f"--retrieval_order {order}: choose from {', '.join(ORDERS)}")
    n = min(n, len(query_rows))
    if order == "worst":  # the measure of every query, then the n largest
        hits = first_hit_ranks(embeddings, labels, query_rows, gallery_rows)
        pick = np.lexsort((np.arange(len(hits)), -hits))[:n]  # largest rank, then lower row
        return query_rows[torch.from_numpy(pick)], hits[pick]
    if order == "first":
        pick = np.arange(n)
    else:
        pick = np.sort(np.random.default_rng(seed).choice(len(query_rows), size=n, replace=False))
    chosen = query_rows[torch.from_numpy(pick)]
    return chosen, first_hit_ranks(embeddings, labels, chosen, gallery_rows)


# ---- images ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits_ink() -> np.ndarray:
    """(1797, 8, 8) uint8 pictures of scikit-learn's digits, dark ink on white."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn pulls scipy; only digits rows need it

    return (255 - np.round(load_digits().images * (255 / 16))).astype(np.uint8)


def resolve(path: str, image_root: Path | None, row: int) -> Path:
    """The file of ``path``: as given, or under ``image_root`` (relative paths; absolute ones whose
    dataset moved: the longest tail of the path that exists under the root). A one-line
    ConfigError naming the path and ``--image_root`` when there is none."""
    p = Path(path)
    tried = [image_root / p, p] if image_root is not None and not p.is_absolute() else [p]
    if image_root is not None and p.is_absolute():
        tried += [image_root.joinpath(*p.parts[i:]) for i in range(1, len(p.parts))]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    where = (
        f"nor under --image_root {image_root}"
        if image_root is not None
        else "if the images moved, give --image_root DIR (the folder that now holds them)"
    )
    raise ConfigError(f"image of row {row} not found: {path}; {where}")


def load_image(path: str, image_root: Path | None, row: int) -> Image.Image:
    """Row ``row``'s picture as an RGB PIL image (``digits:<i>`` from scikit-learn's array)."""
    if path.startswith(DIGITS_PREFIX):
        index = int(path[len(DIGITS_PREFIX) :])
        return Image.fromarray(_digits_ink()[index], mode="L").convert("RGB")
    file = resolve(path, image_root, row)
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:  # not an image, truncated, unreadable
        raise ConfigError(f"cannot read image {file} (row {row}): {' '.join(str(err).split())}") from None


def letterbox(image: Image.Image, size: int = THUMB) -> np.ndarray:
    """``image`` scaled to fit a ``size`` square (pixels kept sharp when enlarged twice or more)
    and centred on grey bars: a (size, size, 3) uint8 array."""
    small = max(image.size) * 2 <= size
    method = Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC
    fitted = ImageOps.contain(image, (size, size), method=method)
    canvas = Image.new("RGB", (size, size), LETTERBOX)
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return np.asarray(canvas)


# ---- the grid ----------------------------------------------------------------------------------------


def require_paths(data: dict[str, np.ndarray], source: Path | str) -> np.ndarray:
    """The file's ``paths``, or the one-line ConfigError saying that it has none and how to write
    a file that has them."""
    if "paths" in data:
        return data["paths"]
    source = Path(source)
    checkpoint = source.parent / "checkpoint_best.pt"
    run = checkpoint if checkpoint.is_file() else Path("<run>") / "checkpoint_best.pt"
    raise ConfigError(
        f"--show_retrievals: {source} has no image paths (written before they were recorded); "
        f"regenerate it with: python main.py --evaluate_only --checkpoint {run} --save_embeddings"
    )


def show_retrievals(
    data: dict[str, np.ndarray],
    *,
    n: int,
    out: str | Path,
    k: int = 5,
    order: str = "random",
    seed: int = 1,
    image_root: str | Path | None = None,
    source: str | Path = "",
) -> RetrievalGrid:
    """Draw ``n`` queries of the loaded ``.npz`` ``data`` (arrays as ``python -m evaluation``
    loads them) with their ``k`` nearest gallery items into the PNG ``out``; see the module
    docstring for the neighbours, the ``order`` of queries and the frames. ``source``: the file's
    name, for messages and the title."""
    if n < 1 or k < 1:
        raise ConfigError(f"--show_retrievals {n} --retrieval_k {k}: both must be at least 1")
    paths = require_paths(data, source)
    root = None if image_root is None else Path(image_root)
    if root is not None and not root.is_dir():
        raise ConfigError(f"--image_root {root}: no such folder")
    emb = torch.as_tensor(data["embeddings"]).float()
    labels = torch.as_tensor(data["labels"]).long()
    every = torch.arange(len(labels))
    query_rows = every[torch.as_tensor(data["is_query"])] if "is_query" in data else every
    gallery_rows = every[torch.as_tensor(data["is_gallery"])] if "is_gallery" in data else every
    if len(query_rows) == 0:
        raise ConfigError(f"--show_retrievals: {source} has no query row")
    k_max = candidates(query_rows, gallery_rows)
    if k_max < 1:
        raise ConfigError(f"--show_retrievals: {source} has no gallery item a query could retrieve")
    k = min(k, k_max)
    try:
        chosen, hits = choose_queries(query_rows, n, order, seed, emb, labels, gallery_rows)
    except ConfigError:
        raise
    except ValueError as err:  # non-finite embeddings
        raise ConfigError(f"--show_retrievals {source}: {err}") from None
    nb_rows, nb_dist = nearest(emb, chosen, gallery_rows, k)
    lab = labels.numpy()
    rows = [
        QueryRow(
            query=int(q),
            label=int(lab[q]),
            first_hit=int(h),
            neighbours=tuple(int(r) for r in nb),
            labels=tuple(int(lab[r]) for r in nb),
            distances=tuple(float(d) for d in dist),
            correct=tuple(bool(lab[r] == lab[q]) for r in nb),
        )
        for q, h, nb, dist in zip(chosen.tolist(), hits, nb_rows, nb_dist, strict=True)
    ]
    title = _title(data, source, len(rows), k, order, seed)
    return _draw(rows, paths, root, k, order, title, Path(out), never=len(gallery_rows) + 1)


def _title(data: dict[str, np.ndarray], source: str | Path, n: int, k: int, order: str, seed: int) -> str:
    what = " ".join(str(data[key]) for key in ("dataset", "split") if key in data) or Path(source).name
    chosen = {
        "random": f"{n} random queries (seed {seed})",
        "first": f"the first {n} queries",
        "worst": f"the {n} worst queries by rank of the first correct result",
    }[order]
    return f"{what}: {chosen} and their {k} nearest gallery items"


def _draw(
    rows: list[QueryRow],
    paths: np.ndarray,
    root: Path | None,
    k: int,
    order: str,
    title: str,
    out: Path,
    never: int,
) -> RetrievalGrid:
    # every picture first: a missing or unreadable image stops before anything is drawn
    thumbs = {
        r: letterbox(load_image(str(paths[r]), root, r)) for row in rows for r in (row.query, *row.neighbours)
    }
    import matplotlib  # lazy, and the Agg backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = (1 + k) * CELL_W, HEADER + len(rows) * CELL_H
    fig = plt.figure(figsize=(width, height), dpi=DPI, facecolor="white")
    drawn = []
    try:
        fig.text(0.5, 1 - 0.12 / height, title, ha="center", va="top", fontsize=10, weight="bold")
        fig.text(
            0.5,
            1 - 0.42 / height,
            "✓ thick solid green frame: same label as the query   ✗ thick dashed red frame: another "
            "label   d: Euclidean distance",
            ha="center",
            va="top",
            fontsize=8,
        )
        for i, row in enumerate(rows):
            bottom = height - HEADER - i * CELL_H - TOP - IMG  # inches from the figure's bottom
            ax = _image_axes(fig, 0, bottom, thumbs[row.query])
            for spine in ax.spines.values():
                spine.set(edgecolor=NEUTRAL, linewidth=1.5, linestyle="solid")
            hit = "none in gallery" if row.first_hit >= never else f"@{row.first_hit}"
            _caption(ax, f"query · row {row.query}\nlabel {row.label} · 1st correct {hit}")
            frames, styles, marks = [], [], []
            for j, (r, d, lab, ok) in enumerate(
                zip(row.neighbours, row.distances, row.labels, row.correct, strict=True), 1
            ):
                ax = _image_axes(fig, j, bottom, thumbs[r])
                look = CORRECT if ok else WRONG
                for spine in ax.spines.values():
                    spine.set(edgecolor=look["color"], linewidth=4.0, linestyle=look["style"])
                badge = ax.text(
                    0.95,
                    0.95,
                    look["mark"],
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=12,
                    weight="bold",
                    color="white",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": look["color"], "edgecolor": "none"},
                )
                _caption(ax, f"{look['mark']} {j} · d {d:.3f}\nlabel {lab} · row {r}")
                spine = ax.spines["left"]  # read back what was drawn
                frames.append(matplotlib.colors.to_hex(spine.get_edgecolor()))
                styles.append(str(spine.get_linestyle()))
                marks.append(badge.get_text())
            drawn.append(replace(row, frames=tuple(frames), styles=tuple(styles), marks=tuple(marks)))
        tmp = out.with_name(out.name + ".tmp.png")
        with writing(out):  # a full disk or an unwritable folder is one line naming the file
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
            tmp.replace(out)
    finally:
        plt.close(fig)
    with Image.open(out) as png:
        size = png.size
    return RetrievalGrid(path=out, size=size, k=k, order=order, rows=tuple(drawn))


def _image_axes(fig, column: int, bottom: float, thumb: np.ndarray):
    """Axes showing ``thumb`` 1:1 in ``column`` of the row whose images start ``bottom`` inches up."""
    width, height = fig.get_size_inches()
    left = column * CELL_W + (CELL_W - IMG) / 2
    ax = fig.add_axes((left / width, bottom / height, IMG / width, IMG / height))
    ax.imshow(thumb, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _caption(ax, text: str) -> None:
    ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=8, linespacing=1.3)
