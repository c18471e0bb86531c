"""--resume and --evaluate_only on damaged or mismatching input: one line, exit code 2, and the run
folder byte-identical afterwards; plus the resume hygiene (array metrics of a redone epoch, temporary
files of a killed write, a finished run asked for fewer epochs)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

import main
import parameters
from tests.lifecycle._runs import assert_killed, read_rows, run_subprocess, tiny_args
from utilities import checkpoint
from utilities.errors import ConfigError
from utilities.logger import RunLogger


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def run_cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    with pytest.raises(SystemExit) as exc:
        main.cli()
    return exc.value.code, capsys.readouterr().err


def assert_one_error_line(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture
def run_copy(reference, tmp_path) -> Path:
    """A copy of the finished reference run that a test may damage."""
    dst = tmp_path / "runs" / "digits" / "ref"
    shutil.copytree(reference, dst)
    return dst


# ---- flags on --resume -----------------------------------------------------------------------------


def test_resume_accepts_the_original_command_line(reference):
    """Re-running the original command with --resume is not a change of the experiment."""
    save = reference.parent.parent
    before = snapshot(reference)
    opt, state = parameters.parse_run([*tiny_args(save, "ref"), "--resume", str(reference)])
    assert opt.resume == str(reference) and state["epoch"] == 2
    assert (opt.lr, opt.embed_dim, opt.savename, opt.evaluation_metrics) == (
        1e-3,
        16,
        "ref",
        ["e_recall@1", "e_recall@2", "mAP@R"],
    )
    assert snapshot(reference) == before


def test_resume_names_each_changed_flag_with_both_values(reference, monkeypatch, capsys):
    before = snapshot(reference)
    code, err = run_cli(
        monkeypatch,
        capsys,
        [
            "--resume",
            str(reference),
            "--arch",
            "smallcnn",
            "--lr",
            "1e-3",
            "--embed_dim",
            "32",
            "--kernels",
            "1",
        ],
    )
    assert code == 2
    assert_one_error_line(
        err,
        "these flags differ from it: --arch: stored smallcnn_normalize, given smallcnn; "
        "--embed_dim: stored 16, given 32 (changeable: ",
    )
    assert "--lr" not in err.split("(changeable")[0] and "--kernels:" not in err  # equal / runtime flags pass
    assert snapshot(reference) == before


def test_resume_of_a_finished_run_with_fewer_epochs_is_refused(reference):
    """Today's bug: summary.json rewritten with a selected epoch beyond --n_epochs."""
    before = snapshot(reference)
    with pytest.raises(
        ConfigError, match=r"run already has 3 epochs; --n_epochs must be larger to extend it \(given 2\)"
    ):
        main.main(["--resume", str(reference), "--n_epochs", "2"])
    assert snapshot(reference) == before


# ---- damaged files on --resume ----------------------------------------------------------------------


class _Code:
    def __reduce__(self):
        return (os.getcwd, ())


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated last, best exists": (
        lambda run: _truncate(run / "checkpoint_last.pt"),
        ["cannot read checkpoint {run}/checkpoint_last.pt: truncated or not a checkpoint",
         "; checkpoint_best.pt exists: copy it to {run}/checkpoint_last.pt to resume from the best epoch"],
    ),
    "garbage last, no best": (
        lambda run: ((run / "checkpoint_last.pt").write_bytes(b"not a checkpoint" * 64), (run / "checkpoint_best.pt").unlink()),
        ["cannot read checkpoint {run}/checkpoint_last.pt: truncated or not a checkpoint",
         "; delete it to restart the run from epoch 0 (checkpoint_best.pt does not exist)"],
    ),
    "empty last": (
        lambda run: (run / "checkpoint_last.pt").write_bytes(b""),
        ["cannot read checkpoint {run}/checkpoint_last.pt: truncated or not a checkpoint (EOFError)"],
    ),
    "pickled code": (
        lambda run: torch.save({"model": _Code()}, run / "checkpoint_last.pt"),
        ["cannot read checkpoint {run}/checkpoint_last.pt: it holds a pickled Python object (posix.getcwd), "
         "not only tensors and plain Python; refused, as loading it could run code"],
    ),
    "foreign state dict": (
        lambda run: torch.save({"weight": torch.ones(2)}, run / "checkpoint_last.pt"),
        ["--resume: {run}/checkpoint_last.pt is not a checkpoint written by main.py (no args)"],
    ),
    "garbage args.json": (
        lambda run: (run / "args.json").write_text('{"args": {"lr": 0.1'),
        ["--resume: cannot read {run}/args.json: JSONDecodeError: Expecting"],
    ),
    "args.json without args": (
        lambda run: (run / "args.json").write_text("[1, 2]"),
        ["--resume: cannot read {run}/args.json: no 'args' object in it"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_run_folder_is_one_line_and_left_as_it_is(run_copy, monkeypatch, capsys, case):
    damage, fragments = DAMAGE[case]
    damage(run_copy)
    before = snapshot(run_copy)
    code, err = run_cli(monkeypatch, capsys, ["--resume", str(run_copy)])
    assert code == 2
    assert_one_error_line(err, *(f.format(run=run_copy) for f in fragments))
    assert "weights_only" not in err  # never torch's advice to unpickle an untrusted file
    assert snapshot(run_copy) == before


# ---- --evaluate_only ---------------------------------------------------------------------------------


def test_evaluate_only_garbage_checkpoint(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "checkpoint_best.pt"
    bad.write_bytes(pickle.dumps({"model": 1}) * 3)
    code, err = run_cli(
        monkeypatch,
        capsys,
        ["--evaluate_only", "--checkpoint", str(bad), "--save_path", str(tmp_path / "out")],
    )
    assert code == 2
    assert_one_error_line(err, f"error: cannot read checkpoint {bad}: ")
    assert not (tmp_path / "out").exists()


def test_evaluate_only_with_another_embed_dim_names_the_weights(reference, tmp_path, monkeypatch, capsys):
    best = reference / "checkpoint_best.pt"
    out = tmp_path / "out"
    argv = [
        "--evaluate_only",
        "--checkpoint",
        str(best),
        "--save_path",
        str(out),
        "--embed_dim",
        "32",
        "--no_progress",
    ]
    code, err = run_cli(monkeypatch, capsys, argv)
    assert code == 2
    assert_one_error_line(
        err,
        f"error: --checkpoint {best} (--arch smallcnn_normalize --embed_dim 32) does not fit the model: "
        "weights 'last_linear.weight' have shape [16, 128] in the checkpoint, [32, 128] in the model",
    )
    assert not out.exists()  # the evaluation's run folder is not left half-written


def test_weights_of_another_architecture_name_the_first_missing_tensor(reference):
    state = checkpoint.load(reference / "checkpoint_last.pt")
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError) as exc:
        checkpoint.load_weights(other, state["model"], "ckpt.pt")
    assert (
        str(exc.value)
        == "ckpt.pt does not fit the model: the model's weights '0.weight' are not in it (4 missing)"
    )
    with pytest.raises(
        ConfigError,
        match=r"^the checkpoint \('model'\) does not fit the model: the model's weights '0.weight'",
    ):
        checkpoint.restore(state, {"model": other})
    optimizer = torch.optim.Adam(other.parameters())
    with pytest.raises(
        ConfigError, match=r"^x.pt: the saved 'optimizer' does not fit this run: ValueError: "
    ):
        checkpoint.restore(state, {"optimizer": optimizer}, source="x.pt")
    with pytest.raises(ConfigError, match=r"^x.pt has no saved 'nope'"):
        checkpoint.restore(state, {"nope": optimizer}, source="x.pt")


# ---- resume hygiene -----------------------------------------------------------------------------------


def test_a_redone_epoch_has_one_line_of_arrays_and_killed_writes_leave_nothing(tmp_path):
    """Killed after epoch 1 was logged but before its checkpoint: the resumed run redoes epoch 1,
    and metrics_arrays.jsonl ends with one line per (epoch, split), equal to an uninterrupted run's;
    the temporary file of a checkpoint write killed midway is removed when the run reopens."""
    extra = ["--evaluation_metrics", "e_recall@1", "rho_spectrum@0", "--no_train_metrics"]
    folder = tmp_path / "digits" / "run"
    assert_killed(run_subprocess(tiny_args(tmp_path, "run", *extra, epochs=2), kill_at="logged:1"))
    arrays = (folder / "metrics_arrays.jsonl").read_text().splitlines()
    assert [(json.loads(x)["epoch"], json.loads(x)["split"]) for x in arrays] == [
        (0, "testing"),
        (1, "testing"),
    ]
    stale = folder / ".checkpoint_last.pt.k1ll3d.tmp"  # as save_atomic's mkstemp names it
    stale.write_bytes(b"\0" * 4096)

    main.main(["--resume", str(folder)])
    main.main(tiny_args(tmp_path, "full", *extra, epochs=2))
    full = tmp_path / "digits" / "full"
    assert (folder / "metrics_arrays.jsonl").read_text() == (full / "metrics_arrays.jsonl").read_text()
    assert len((full / "metrics_arrays.jsonl").read_text().splitlines()) == 2
    assert read_rows(folder) == read_rows(full)
    assert not stale.exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _logger(tmp_path: Path, folder: Path | None = None, resume: bool = False) -> RunLogger:
    opt = parameters.parse(["--dataset", "digits", "--save_path", str(tmp_path), "--savename", "u"])
    return RunLogger(opt, folder, resume=resume)


def _array_keys(folder: Path) -> list[tuple[int, str, list]]:
    lines = (folder / "metrics_arrays.jsonl").read_text().splitlines()
    return [(r["epoch"], r["split"], r["spec"]) for r in map(json.loads, lines)]


def test_restore_keeps_the_array_lines_of_the_restored_rows_only(tmp_path):
    first = _logger(tmp_path)
    for epoch in range(3):
        first.log(epoch, "testing", {"r": 0.5, "spec": [float(epoch)]})
    rows = [dict(r) for r in first.rows[:2]]  # the checkpoint holds epochs 0 and 1
    first.close()
    with (first.folder / "metrics_arrays.jsonl").open("a") as f:
        f.write('{"epoch": 2, "split": "test')  # a line cut short by a kill

    resumed = _logger(tmp_path, first.folder, resume=True)
    resumed.restore(rows)
    assert _array_keys(first.folder) == [(0, "testing", [0.0]), (1, "testing", [1.0])]
    resumed.log(2, "testing", {"r": 0.7, "spec": [9.0]})
    assert _array_keys(first.folder) == [(0, "testing", [0.0]), (1, "testing", [1.0]), (2, "testing", [9.0])]
    resumed.close()

    # a resume without a checkpoint (killed in epoch 0) restarts the arrays as well
    again = _logger(tmp_path, first.folder, resume=True)
    again.log(0, "testing", {"r": 0.1, "spec": [5.0]})
    assert _array_keys(first.folder) == [(0, "testing", [5.0])]
    again.close()
