"""Bad data found at start, each as one ConfigError line naming the file: CSV labels and encodings,
unreadable images in any split (header pass, and the --data_cache builder), empty class folders,
and an image that breaks only when a DataLoader worker decodes it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import architectures
import datasets
import main
import parameters
from datasets.images import check_images_readable, image_problem
from datasets.transforms import UnreadableImageError
from tests.datasets import fixtures as fx
from utilities.errors import ConfigError
from utilities.training import make_loader

EXTENSIONS = ".jpg .jpeg .png .bmp .webp"


def make_opt(name: str, source: Path, *extra: str) -> argparse.Namespace:
    return parameters.parse(
        ["--dataset", name, "--source_path", str(source), "--arch", "smallcnn", "--kernels", "0", *extra]
    )


def load(name: str, source: Path, *extra: str) -> dict:
    opt = make_opt(name, source, *extra)
    return datasets.select(name, opt, architectures.input_config(opt.arch))


def raises_line(match: str, *args, **kwargs) -> str:
    """Call ``load(*args)``; it must raise a one-line ConfigError matching ``match`` in full."""
    with pytest.raises(ConfigError) as err:
        load(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert re.fullmatch(match, message), message
    return message


# ---- CSV -----------------------------------------------------------------------------------------


def csv_file(tmp_path: Path, edit) -> Path:
    fx.make_csv(tmp_path)
    file = tmp_path / "csv" / "dataset.csv"
    file.write_text(edit(file.read_text()))
    return file


@pytest.mark.parametrize("label", ["", "   "])
def test_csv_empty_or_blank_label_names_the_row(tmp_path, label):
    # the 4th image (line 5 of the file) loses its label "10"
    file = csv_file(tmp_path, lambda t: t.replace("imgs/1_0.jpg,10,", f"imgs/1_0.jpg,{label},"))
    raises_line(
        re.escape(f"csv: {file} row 5: empty label; every image needs a path, a label and a split"),
        "csv",
        tmp_path,
    )


def test_csv_row_numbers_are_file_lines_even_after_blank_lines(tmp_path):
    def edit(text: str) -> str:
        lines = text.splitlines()
        return "\n".join([lines[0], "", "", *lines[1:]]).replace("imgs/0_2.jpg,0,train", ",0,train") + "\n"

    file = csv_file(tmp_path, edit)  # the 3rd image, now on line 6
    raises_line(
        re.escape(f"csv: {file} row 6: empty path; every image needs a path, a label and a split"),
        "csv",
        tmp_path,
    )


def test_csv_with_a_utf8_bom_and_crlf_lines_is_read(tmp_path):
    expected = fx.make_csv(tmp_path)
    file = tmp_path / "csv" / "dataset.csv"
    text = file.read_text()
    # Excel's "CSV UTF-8": a byte-order mark before the first header name, CRLF line ends
    file.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    splits = load("csv", tmp_path)
    assert len(splits["training"]) == expected["train_images"] == 9
    assert splits["testing"].n_classes == expected["test_classes"] == 3
    assert splits["testing"].is_query.sum().item() == expected["queries"] == 3
    assert splits["training"].samples[0] == str(tmp_path / "csv" / "imgs" / "0_0.jpg")


def test_csv_header_names_with_spaces_are_read(tmp_path):
    csv_file(tmp_path, lambda t: t.replace("path,label,split", " path , label,split "))
    assert len(load("csv", tmp_path)["training"]) == 9


def test_csv_not_utf8(tmp_path):
    file = csv_file(tmp_path, lambda t: t)
    file.write_bytes(file.read_bytes().replace(b",10,", ",caf\xe9,".encode("latin-1")))
    message = raises_line(
        re.escape(f"csv: {file} is not UTF-8 text (byte 0xe9 at offset ")
        + r"\d+"
        + re.escape("); save it as CSV UTF-8"),
        "csv",
        tmp_path,
    )
    assert "UnicodeDecodeError" not in message


def test_csv_semicolon_separated_gets_a_hint(tmp_path):
    file = csv_file(tmp_path, lambda t: t.replace(",", ";"))
    raises_line(
        re.escape(
            f"csv: {file} lacks the column(s) ['label', 'path', 'split'] (needs path,label,split); "
            "the header is one field: save the file comma-separated"
        ),
        "csv",
        tmp_path,
    )


def test_csv_with_only_a_header(tmp_path):
    file = csv_file(tmp_path, lambda t: t.splitlines()[0] + "\n")
    raises_line(re.escape(f"csv: {file} lists no images (only a header)"), "csv", tmp_path)


# ---- unreadable images, found at start -----------------------------------------------------------

DAMAGES = {  # how a file is damaged -> the reason in the message
    "truncated": (lambda data: data[: len(data) // 2], re.escape("truncated file")),
    "zero-byte": (lambda data: b"", re.escape("empty file")),
    "text": (
        lambda data: b"<html>404 Not Found</html>\n",
        re.escape("not an image file of a format PIL reads"),
    ),
}


def damage(path: Path, how: str) -> None:
    path.write_bytes(DAMAGES[how][0](path.read_bytes()))


def bad_image_line(dataset: str, path: Path, how: str, more: str = "") -> str:
    """The expected message as a regular expression."""
    return (
        re.escape(f"{dataset}: cannot read image {path} (")
        + DAMAGES[how][1]
        + re.escape(f"); remove or replace it{more}")
    )


CUB_VICTIMS = {  # split -> an image of that split (study layout: classes 1-100 train, 101-200 test)
    "training": "001.Black_footed_Albatross/img_0001_2.jpg",
    "testing": "101.White_Pelican/img_0101_3.jpg",
}


@pytest.mark.parametrize("how", list(DAMAGES))
@pytest.mark.parametrize("split", list(CUB_VICTIMS))
def test_unreadable_image_in_any_split_is_found_at_start(tmp_path, split, how):
    fx.make_cub_study(tmp_path)
    victim = tmp_path / "cub200" / "images" / CUB_VICTIMS[split]
    damage(victim, how)
    raises_line(bad_image_line("cub200", victim, how), "cub200", tmp_path)


@pytest.mark.parametrize("how", ["truncated", "text"])
def test_unreadable_validation_image_is_found_at_start(tmp_path, how):
    fx.make_folder(tmp_path)
    victim = tmp_path / "folder" / "val" / "fox" / "b.jpg"
    fx.write_jpeg(tmp_path / "folder" / "val" / "fox" / "a.jpg", 1)
    fx.write_jpeg(victim, 2)
    damage(victim, how)
    raises_line(bad_image_line("folder", victim, how), "folder", tmp_path)


def test_several_unreadable_images_name_the_first_and_the_count(tmp_path):
    fx.make_sop(tmp_path)
    images = tmp_path / "online_products" / "images"
    first = images / "bicycle_final" / "111001_1.JPG"  # listed first (Ebay_train.txt)
    damage(first, "zero-byte")
    damage(images / "chair_final" / "111002_0.JPG", "text")
    damage(images / "bicycle_final" / "111007_2.JPG", "truncated")  # a test image
    raises_line(
        bad_image_line(
            "online_products",
            first,
            "zero-byte",
            " (3 of 24 listed images are unreadable; all are checked at start)",
        ),
        "online_products",
        tmp_path,
    )


def test_bad_test_image_stops_main_before_the_run_folder_exists(tmp_path):
    fx.make_folder(tmp_path)
    victim = tmp_path / "folder" / "test" / "eel" / "img_0008_1.jpg"
    damage(victim, "truncated")
    argv = [
        *("--dataset", "folder", "--source_path", str(tmp_path), "--arch", "smallcnn_normalize"),
        *("--kernels", "0", "--n_epochs", "1", "--lr", "1e-3", "--bs", "4", "--samples_per_class", "2"),
        *("--device", "cpu", "--no_progress", "--save_path", str(tmp_path / "runs"), "--savename", "run"),
    ]
    with pytest.raises(ConfigError) as err:
        main.main(argv)
    assert re.fullmatch(bad_image_line("folder", victim, "truncated"), str(err.value)), str(err.value)
    assert not (tmp_path / "runs" / "folder" / "run").exists()  # no epoch trained, nothing written


def test_complete_images_are_checked_without_decoding(tmp_path, monkeypatch):
    """The fast path: header and last bytes only. A JPEG with bytes after its end marker (camera
    trailers) is decoded (at 1/8 size) and accepted."""
    fx.make_cub_study(tmp_path)
    paths = sorted(str(p) for p in (tmp_path / "cub200" / "images").glob("*/img_*.jpg"))
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(png)
    trailer = Path(paths[0])
    trailer.write_bytes(trailer.read_bytes() + b"SAMSUNG trailer metadata\x01\x02")
    loads: list[str] = []

    def counting_load(self):
        loads.append(getattr(self, "fp", None) and self.fp.name)
        return original(self)

    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    check_images_readable([*paths, str(png)], "cub200")
    assert loads == [str(trailer)]
    assert image_problem(str(trailer)) is None


def test_data_cache_gives_the_same_line(tmp_path):
    fx.make_cub_study(tmp_path, size=(80, 60))
    victim = tmp_path / "cub200" / "images" / CUB_VICTIMS["testing"]
    damage(victim, "truncated")
    cache = ("--data_cache", str(tmp_path / "cache"), "--data_cache_size", "36")
    raises_line(bad_image_line("cub200", victim, "truncated"), "cub200", tmp_path, *cache)
    assert not (tmp_path / "cache").exists()  # found by the start check, before the build began


def corrupt_inside(path: Path) -> None:
    """Garble a JPEG's entropy-coded data, keeping its header and end marker: only a decode finds it."""
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xda") + 20  # past the start-of-scan header
    n = (len(data) - 2 - start) // 2  # the first half of the scan data; the end marker stays
    data[start : start + n] = b"\xff" * n
    path.write_bytes(bytes(data))
    assert image_problem(str(path)) is None  # the start check cannot see it


BROKEN_STREAM = "broken data stream when reading image file"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_cache_builder_decode_error_is_the_same_line(tmp_path, workers):
    fx.make_cub_study(tmp_path, per_class=12, size=(80, 60))  # 72 images: two chunks for the workers
    victim = tmp_path / "cub200" / "images" / CUB_VICTIMS["training"]
    corrupt_inside(victim)
    cache = ("--data_cache", str(tmp_path / "cache"), "--data_cache_size", "36", "--kernels", workers)
    raises_line(
        re.escape(f"cub200: cannot read image {victim} ({BROKEN_STREAM}); remove or replace it"),
        "cub200",
        tmp_path,
        *cache,
    )
    assert [p for p in (tmp_path / "cache").iterdir()] == []  # the half-built cache is removed


# ---- empty class folders ---------------------------------------------------------------------------


def empty_folder_line(dataset: str, folder: Path, more: str = "") -> str:
    return re.escape(
        f"{dataset}: class folder {folder} holds no images ({EXTENSIONS}){more}; "
        "add its images or remove the folder"
    )


def test_empty_cub_class_folder(tmp_path):
    fx.make_cub_study(tmp_path)
    empty = tmp_path / "cub200" / "images" / "004.Groove_billed_Ani"
    empty.mkdir()
    raises_line(empty_folder_line("cub200", empty), "cub200", tmp_path)


def test_cub_class_folder_with_only_hidden_files_is_empty(tmp_path):
    fx.make_cub_study(tmp_path)
    folder = tmp_path / "cub200" / "images" / "001.Black_footed_Albatross"
    for p in folder.glob("img_*"):
        p.unlink()  # what remains: macOS ._ resource forks and a hidden thumbnail
    assert sorted(p.name for p in folder.iterdir()) == ["._img_0001_0.jpg", ".thumb.jpg"]
    raises_line(empty_folder_line("cub200", folder), "cub200", tmp_path)


def test_empty_cars_class_folder(tmp_path):
    fx.make_cars_study(tmp_path)
    folder = tmp_path / "cars196" / "images" / "BMW M3 Coupe 2012"
    for p in folder.iterdir():
        p.unlink()
    raises_line(empty_folder_line("cars196", folder), "cars196", tmp_path)


def test_empty_folder_class_folders_split_and_flat(tmp_path):
    fx.make_folder(tmp_path)
    first, second = tmp_path / "folder" / "test" / "cow", tmp_path / "folder" / "train" / "yak"
    first.mkdir()
    second.mkdir()
    # train/ is read before test/: yak is the first one met
    raises_line(empty_folder_line("folder", second), "folder", tmp_path)
    flat = tmp_path / "flat"
    fx.make_folder(flat, "flat")
    (flat / "folder" / "emu").mkdir()
    (flat / "folder" / "bat").mkdir()
    raises_line(
        empty_folder_line("folder", flat / "folder" / "bat", " (2 empty class folders in all)"),
        "folder",
        flat,
    )


# ---- an image that breaks in a DataLoader worker ---------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("how", ["truncated after the start check", "decode error"])
def test_image_breaking_in_a_loader_is_one_line_naming_the_file(tmp_path, workers, how):
    fx.make_cub_study(tmp_path)
    opt = make_opt("cub200", tmp_path, "--kernels", str(workers), "--bs", "4")
    split = datasets.select("cub200", opt, architectures.input_config(opt.arch))["testing"]
    victim = tmp_path / "cub200" / "images" / "102.Western_Wood_Pewee" / "img_0102_1.jpg"
    assert split.samples.index(str(victim)) == 5  # in the second batch
    if how == "decode error":
        corrupt_inside(victim)
        expected = f"cub200: cannot read image {victim} ({BROKEN_STREAM}); remove or replace it"
    else:
        damage(victim, "truncated")
        expected = None
    err = loader_error(make_loader(split, opt))
    message = str(err)
    assert type(err) is UnreadableImageError and isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert "\n" not in message
    if expected is None:
        assert re.fullmatch(bad_image_line("cub200", victim, "truncated"), message), message
    else:
        assert message == expected
    # re-raised by torch from a worker: the original line, the worker's traceback kept aside
    assert ("Original Traceback" in err.worker_traceback) == (workers > 0)
    if workers:
        assert err.worker_traceback.startswith("Caught UnreadableImageError in DataLoader worker process ")
        assert err.worker_traceback.rstrip().endswith(f"datasets.transforms.UnreadableImageError: {message}")


def loader_error(loader) -> BaseException:
    """The error that iterating ``loader`` raises. Its traceback is dropped so that the loader's
    iterator (referenced by the traceback's frames) and its workers end at once: kept alive until
    a garbage collection, torch's shutdown waits 5 s for each worker to join."""
    try:
        for _ in loader:
            pass
    except Exception as err:
        err.__traceback__ = None
        return err
    raise AssertionError("the loader raised nothing")


def test_torch_rebuilt_message_is_reduced_to_the_original_line():
    line = "cub200: cannot read image /d/a.jpg (broken data stream); remove or replace it"
    rebuilt = (
        "Caught UnreadableImageError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\n    raise\n'
        f"datasets.transforms.UnreadableImageError: {line}\n"
    )
    err = UnreadableImageError(rebuilt)
    assert str(err) == line and err.worker_traceback == rebuilt
    assert str(UnreadableImageError(line)) == line and UnreadableImageError(line).worker_traceback == ""


def test_threaded_start_check_names_the_first_bad_image_in_listing_order(tmp_path):
    good, bad_a, bad_b = tmp_path / "good.jpg", tmp_path / "a.jpg", tmp_path / "b.jpg"
    for i, path in enumerate((good, bad_a, bad_b)):
        fx.write_jpeg(path, i)
    damage(bad_a, "text")
    damage(bad_b, "zero-byte")
    paths = [str(good)] * 900  # four chunks of 256 for the reader threads
    paths[700], paths[300] = str(bad_a), str(bad_b)
    for threads in (8, 1):
        with pytest.raises(ConfigError) as err:
            check_images_readable(paths, "folder", threads=threads)
        assert str(err.value) == (
            f"folder: cannot read image {bad_b} (empty file); remove or replace it "
            "(2 of 900 listed images are unreadable; all are checked at start)"
        )
    check_images_readable([str(good)] * 900, "folder")
