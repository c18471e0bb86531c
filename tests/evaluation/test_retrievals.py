"""The retrieval picture (``python -m evaluation --show_retrievals``) from real runs: the neighbours
are a brute-force top-k, the frames follow the labels, ``worst`` is sorted by its measure, masks
restrict the gallery, image files are found (also after a move), and old files say what to do."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import main
from evaluation import retrievals
from evaluation.__main__ import load
from evaluation.__main__ import main as eval_main
from tests.datasets import fixtures as fx
from tests.datasets.test_main_runs import args as dataset_run_args
from tests.lifecycle._runs import tiny_args
from utilities.cli import run_entry_point
from utilities.errors import ConfigError

TOL = 1e-5  # float32 (the ranking pass) against float64 (here): only near-ties may differ


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """The testing split of a one-epoch digits run with --save_embeddings."""
    save = tmp_path_factory.mktemp("digits_run")
    main.main(tiny_args(save, "run", "--save_embeddings", "--no_train_metrics", epochs=1))
    return save / "digits" / "run" / "embeddings_testing.npz"


def squared_distances(x: np.ndarray, q_rows: np.ndarray, g_rows: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x[q_rows, None, :] - x[None, g_rows, :]) ** 2).sum(-1)


def brute_topk(x, q_rows, g_rows, k):
    """(len(q_rows), k) gallery rows by (distance, row), the query itself left out."""
    d = squared_distances(x, q_rows, g_rows)
    d[q_rows[:, None] == g_rows[None, :]] = np.inf
    order = np.lexsort((np.broadcast_to(g_rows, d.shape), d))
    return g_rows[order[:, :k]], d


def first_hit_bounds(x, y, q_rows, g_rows):
    """Per query, the range [lo, hi] of the rank of its first same-label gallery item that float
    rounding allows (lo = hi but at near-ties); G + 1 when it has none."""
    d = squared_distances(x, q_rows, g_rows)
    own = q_rows[:, None] == g_rows[None, :]
    rel = (y[q_rows][:, None] == y[g_rows][None, :]) & ~own
    d_first = np.where(rel, d, np.inf).min(1)
    other = ~rel & ~own
    lo = 1 + (other & (d < d_first[:, None] - TOL)).sum(1)
    hi = 1 + (other & (d < d_first[:, None] + TOL)).sum(1)
    never = ~rel.any(1)
    lo[never] = hi[never] = len(g_rows) + 1
    return lo, hi


def check_rows(grid, x, y, g_rows):
    """Neighbours = brute force, frames/styles/marks follow the labels, first_hit matches them."""
    x, y = np.asarray(x), np.asarray(y)
    q_rows = np.array([r.query for r in grid.rows])
    want, d = brute_topk(x, q_rows, g_rows, grid.k)
    pos = {int(g): i for i, g in enumerate(g_rows)}
    for i, row in enumerate(grid.rows):
        got = np.array(row.neighbours)
        if not np.array_equal(got, want[i]):  # only a float32 near-tie may swap two neighbours
            np.testing.assert_allclose(d[i, [pos[g] for g in got]], d[i, [pos[g] for g in want[i]]], atol=TOL)
        assert row.query not in row.neighbours
        assert set(row.neighbours) <= set(g_rows.tolist())
        np.testing.assert_allclose(row.distances, np.sqrt(d[i, [pos[g] for g in got]]), rtol=1e-4, atol=1e-4)
        correct = [bool(y[g] == y[row.query]) for g in got]
        assert list(row.correct) == correct and list(row.labels) == [int(y[g]) for g in got]
        assert list(row.frames) == [retrievals.GREEN if c else retrievals.RED for c in correct]
        assert list(row.styles) == ["solid" if c else "dashed" for c in correct]  # greyscale: dashes
        assert list(row.marks) == ["✓" if c else "✗" for c in correct]
        # the first correct result of the neighbour list sits at the ranking pass's rank
        first = correct.index(True) + 1 if any(correct) else None
        assert first == (row.first_hit if row.first_hit <= grid.k else None)
    lo, hi = first_hit_bounds(x, y, q_rows, g_rows)
    hits = np.array([r.first_hit for r in grid.rows])
    assert ((lo <= hits) & (hits <= hi)).all()


def test_grid_from_a_digits_run_matches_brute_force_and_labels(digits_npz):
    data = load(digits_npz)
    assert data["paths"].shape == (896,) and str(data["dataset"]) == "digits"
    assert str(data["split"]) == "testing" and all(p.startswith("digits:") for p in data["paths"])
    out = digits_npz.parent / "grid.png"
    grid = retrievals.show_retrievals(data, n=8, k=5, order="random", seed=3, out=out, source=digits_npz)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == grid.size == retrievals.grid_pixels(8, 5) == (960, 1660)
    assert len(grid.rows) == 8 and grid.k == 5
    check_rows(grid, data["embeddings"], data["labels"], np.arange(896))
    flags = [c for r in grid.rows for c in r.correct]
    assert any(flags) and not all(flags)  # both kinds of frame are on the picture
    # the same seed draws the same queries (in row order), another seed others
    again = retrievals.show_retrievals(data, n=8, k=5, seed=3, out=out)
    other = retrievals.show_retrievals(data, n=8, k=5, seed=4, out=out)
    rows = [r.query for r in grid.rows]
    assert [r.query for r in again.rows] == rows == sorted(rows) != [r.query for r in other.rows]
    first = retrievals.show_retrievals(data, n=3, k=2, order="first", out=out)
    assert [r.query for r in first.rows] == [0, 1, 2] and first.size == retrievals.grid_pixels(3, 2)


def test_worst_order_is_sorted_by_the_rank_of_the_first_correct_result(digits_npz):
    data = load(digits_npz)
    x, y = data["embeddings"], data["labels"]
    grid = retrievals.show_retrievals(data, n=6, k=5, order="worst", out=digits_npz.parent / "worst.png")
    every = torch.arange(len(y))
    measure = retrievals.first_hit_ranks(torch.from_numpy(x), torch.from_numpy(y), every, every)
    lo, hi = first_hit_bounds(x, y, every.numpy(), every.numpy())
    assert ((lo <= measure) & (measure <= hi)).all()  # the measure is the brute-force rank
    hits = [r.first_hit for r in grid.rows]
    assert hits == sorted(hits, reverse=True) and hits[0] == measure.max() > 1
    # the six largest of all queries, ties to the lower row
    want = sorted(range(len(y)), key=lambda q: (-measure[q], q))[:6]
    assert [r.query for r in grid.rows] == want
    check_rows(grid, x, y, np.arange(len(y)))


def test_query_gallery_masks_restrict_the_gallery(digits_npz, tmp_path):
    data = load(digits_npz)
    n = len(data["labels"])
    rows = np.arange(n)
    # In-Shop style: disjoint query and gallery sets
    masked = {**data, "is_query": rows % 3 == 0, "is_gallery": rows % 3 != 0}
    grid = retrievals.show_retrievals(masked, n=10, k=4, order="first", out=tmp_path / "m.png")
    assert [r.query for r in grid.rows] == list(range(0, 30, 3))
    check_rows(grid, data["embeddings"], data["labels"], rows[rows % 3 != 0])
    # queries inside a smaller gallery: never their own neighbour, and only gallery rows
    partial = {**data, "is_query": rows < 50, "is_gallery": rows < 200}
    grid = retrievals.show_retrievals(partial, n=5, k=5, order="worst", out=tmp_path / "p.png")
    check_rows(grid, data["embeddings"], data["labels"], rows[rows < 200])
    # k beyond the candidates is capped at them
    tiny = {**data, "is_query": rows == 0, "is_gallery": rows < 4}
    assert retrievals.show_retrievals(tiny, n=1, k=9, out=tmp_path / "t.png").k == 3


def test_cli_writes_the_png_next_to_the_file(digits_npz, tmp_path):
    copy = tmp_path / "emb.npz"
    shutil.copy(digits_npz, copy)
    eval_main(["--embeddings", str(copy), "--evaluation_metrics", "e_recall@1", "--show_retrievals", "3"])
    with Image.open(tmp_path / "emb.npz.retrievals.png") as png:
        assert png.format == "PNG" and png.size == retrievals.grid_pixels(3, 5)
    out = tmp_path / "sub" / "w.png"
    eval_main(
        ["--embeddings", str(copy), "--evaluation_metrics", "e_recall@1", "--show_retrievals", "2",
         "--retrieval_k", "3", "--retrieval_order", "worst", "--retrievals_out", str(out)]
    )  # fmt: skip
    with Image.open(out) as png:
        assert png.size == retrievals.grid_pixels(2, 3)


def test_a_file_without_paths_is_read_but_cannot_be_shown(digits_npz, tmp_path, capsys):
    old = tmp_path / "old.npz"
    data = dict(np.load(digits_npz))
    np.savez(old, **{k: v for k, v in data.items() if k not in ("paths", "dataset", "split")})
    got = eval_main(["--embeddings", str(old), "--evaluation_metrics", "e_recall@1"])
    assert 0.0 <= got["e_recall@1"] <= 1.0  # still evaluated
    (tmp_path / "old.npz.metrics.json").unlink()
    capsys.readouterr()
    argv = ["--embeddings", str(old), "--evaluation_metrics", "e_recall@1", "--show_retrievals", "4"]
    with pytest.raises(SystemExit) as err:
        run_entry_point(lambda: eval_main(argv))
    assert err.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --show_retrievals: ") and "has no image paths" in line
    assert "python main.py --evaluate_only --checkpoint" in line and "--save_embeddings" in line
    assert not (tmp_path / "old.npz.metrics.json").exists()  # refused before any metric
    for bad in (["--show_retrievals", "-1"], ["--show_retrievals", "2", "--retrieval_k", "0"]):
        with pytest.raises(ConfigError, match="--retrieval_k"):
            eval_main(["--embeddings", str(digits_npz), *bad])


def test_image_files_of_an_inshop_run_and_a_moved_dataset(tmp_path, capsys):
    """Real image files: the paths an In-Shop run saves, its query/gallery masks, --image_root
    after the dataset moved, and a missing image as one line naming it and --image_root."""
    fx.make_inshop(tmp_path)
    main.main(dataset_run_args("inshop", tmp_path, "--save_embeddings"))
    npz = tmp_path / "runs" / "inshop" / "run" / "embeddings_testing.npz"
    data = load(npz)
    assert str(data["dataset"]) == "inshop" and all(p.endswith(".jpg") for p in data["paths"])
    assert data["is_query"].sum() == 3 and data["is_gallery"].sum() == 6
    grid = retrievals.show_retrievals(data, n=3, k=5, out=tmp_path / "a.png")
    gallery = np.flatnonzero(data["is_gallery"])
    check_rows(grid, data["embeddings"], data["labels"], gallery)
    # the dataset moved: the longest tail of each path that exists under --image_root is used
    shutil.move(tmp_path / "inshop", tmp_path / "moved" / "inshop")
    with pytest.raises(ConfigError, match="if the images moved, give --image_root"):
        retrievals.show_retrievals(data, n=3, k=5, out=tmp_path / "b.png")
    grid = retrievals.show_retrievals(data, n=3, k=5, out=tmp_path / "b.png", image_root=tmp_path / "moved")
    assert grid.size == retrievals.grid_pixels(3, 5)
    query = int(np.flatnonzero(data["is_query"])[0])
    (tmp_path / "moved").joinpath(*str(data["paths"][query]).split("/")[-6:]).unlink()
    argv = ["--embeddings", str(npz), "--evaluation_metrics", "e_recall@1", "--show_retrievals", "3",
            "--image_root", str(tmp_path / "moved")]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        run_entry_point(lambda: eval_main(argv))
    assert err.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"not found: {data['paths'][query]}" in line and f"--image_root {tmp_path / 'moved'}" in line
