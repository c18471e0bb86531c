"""Bad input as a user types it, through ``main.cli()`` in this process (no import cost per case).

Every case must end with exit code 2, exactly one ``error:`` line on stderr (argparse errors add
one short ``usage:`` line before it), no traceback, no run folder left behind, and a run folder
that existed before byte-identical afterwards. The cases that need their own machinery
(divergence, worker errors, Ctrl-C, disk full, locks, W&B) are tested next to that machinery.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

import main
from tests.datasets.fixtures import make_csv, make_folder
from tests.test_main import digits_args

SMALL = ["--arch", "smallcnn_normalize", "--kernels", "0", "--n_epochs", "1", "--bs", "6"]
SMALL += ["--samples_per_class", "2", "--no_progress", "--evaluation_metrics", "e_recall@1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Datasets in the real layouts, each broken in one way."""
    root = tmp_path_factory.mktemp("data")
    make_folder(root)
    make_csv(root)
    shutil.copytree(root / "folder", root / "badimg" / "folder")
    first = sorted((root / "badimg" / "folder" / "test").rglob("*.jpg"))[0]
    first.write_bytes(first.read_bytes()[:60])
    shutil.copytree(root / "folder", root / "emptycls" / "folder")
    (root / "emptycls" / "folder" / "train" / "zzz").mkdir()
    shutil.copytree(root / "csv", root / "blank" / "csv")
    table = root / "blank" / "csv" / "dataset.csv"
    table.write_text(table.read_text().replace(",30,test", ",,test", 1))
    (root / "garbage.pt").write_bytes(os.urandom(2000))
    (root / "a_file").write_text("not a folder")
    return root


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def run_cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    with pytest.raises(SystemExit) as exc:
        main.cli()
    return exc.value.code, capsys.readouterr().err


def check(code: int, err: str, fragment: str) -> None:
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in err and sum(line.startswith("error: ") for line in lines) == 1, err
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("usage: ")), err
    assert fragment in lines[-1], err


FRESH = {  # flags appended to the digits command -> a fragment of the one error line
    "negative lr": (["--lr", "-1"], "argument --lr: must be >= 0"),
    "negative decay": (["--decay=-0.1"], "argument --decay: must be >= 0"),
    "nan lr": (["--lr", "nan"], "argument --lr"),
    "inf loss hyperparameter": (["--loss_margin_beta", "inf"], "argument --loss_margin_beta"),
    "zero epochs": (["--n_epochs", "0"], "argument --n_epochs"),
    "zero embedding": (["--embed_dim", "0"], "argument --embed_dim"),
    "negative workers": (["--kernels", "-1"], "argument --kernels"),
    "not a number": (["--bs", "abc"], "argument --bs: invalid"),
    "savename escapes": (["--savename", "../../escape"], "--savename"),
    "absolute savename": (["--savename", "{tmp}/abs_escape"], "--savename"),
    "group with a separator": (["--log_online", "--group", "a/b"], "--group"),
    "garbage pretrained path": (
        ["--pretrained_path", "{data}/garbage.pt"],
        "garbage.pt: not a readable torch state dict",
    ),
    "garbage evaluate_only checkpoint": (
        ["--evaluate_only", "--checkpoint", "{data}/garbage.pt"],
        "garbage.pt",
    ),
}


@pytest.mark.parametrize("case", list(FRESH))
def test_bad_flags_are_one_line_and_leave_nothing(case, data, tmp_path, monkeypatch, capsys):
    flags, fragment = FRESH[case]
    flags = [f.format(data=data, tmp=tmp_path) for f in flags]
    code, err = run_cli(monkeypatch, capsys, digits_args(tmp_path / "save", *flags))
    check(code, err, fragment)
    assert not (tmp_path / "save").exists() or not any((tmp_path / "save").rglob("*"))
    assert not (tmp_path / "abs_escape").exists()


DATA = {  # dataset flags -> fragment
    "unreadable image": (["--dataset", "folder", "--source_path", "{data}/badimg"], "cannot read image"),
    "empty class folder": (["--dataset", "folder", "--source_path", "{data}/emptycls"], "holds no images"),
    "blank csv label": (["--dataset", "csv", "--source_path", "{data}/blank"], "empty label"),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_data_is_found_before_anything_is_written(case, data, tmp_path, monkeypatch, capsys):
    flags, fragment = DATA[case]
    argv = [*[f.format(data=data) for f in flags], *SMALL, "--save_path", str(tmp_path / "save")]
    code, err = run_cli(monkeypatch, capsys, argv)
    check(code, err, fragment)
    assert not (tmp_path / "save").exists()


def test_a_save_path_that_is_a_file_is_refused_before_loading(data, monkeypatch, capsys):
    args = digits_args(data / "a_file")
    code, err = run_cli(monkeypatch, capsys, args)
    check(code, err, "a_file")
    assert (data / "a_file").read_text() == "not a folder"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("runs")
    main.main(digits_args(save, "--n_epochs", "2", "--evaluation_metrics", "e_recall@1"))
    return save / "digits" / "run"


RESUME = {  # how the finished run is damaged / which flags are given -> fragment
    "truncated checkpoint": ("truncate", [], "checkpoint_last.pt"),
    "garbage args.json": ("garbage_args", [], "args.json"),
    "changed flag": (None, ["--bs", "50"], "--bs: stored 60, given 50"),
    "fewer epochs": (None, ["--n_epochs", "1"], "--n_epochs must be larger"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RESUME))
def test_bad_resume_is_one_line_and_the_run_folder_is_untouched(
    case, finished_run, tmp_path, monkeypatch, capsys
):
    damage, flags, fragment = RESUME[case]
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    if damage == "truncate":
        (folder / "checkpoint_last.pt").write_bytes((folder / "checkpoint_last.pt").read_bytes()[:500])
    elif damage == "garbage_args":
        (folder / "checkpoint_last.pt").unlink()
        (folder / "args.json").write_text("{garbage")
    before = _digest(folder)
    code, err = run_cli(monkeypatch, capsys, ["--resume", str(folder), *flags])
    check(code, err, fragment)
    assert _digest(folder) == before


@pytest.mark.slow
def test_resume_with_the_original_flags_is_accepted(finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    same = ["--arch", "smallcnn_normalize", "--bs", "60", "--lr", "0.001", "--dataset", "digits"]
    summary = main.main(["--resume", str(folder), *same, "--n_epochs", "3", "--no_progress"])
    assert summary["n_epochs"] == 3
