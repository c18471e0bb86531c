"""The run folder: writability checked at start, write failures as one line, one writer at a time
(lock), racing runs of one --savename, one file mode for every file, a bounded W&B start."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import main
import parameters
from tests.lifecycle._runs import tiny_args
from tests.lifecycle.test_resume_errors import assert_one_error_line, run_cli, snapshot
from utilities import checkpoint, logger
from utilities.errors import ConfigError
from utilities.logger import RunLogger, check_writable, run_folder

NOBODY = 65534


def _opt(save: Path, *extra: str):
    return parameters.parse(["--dataset", "digits", "--save_path", str(save), *extra])


# ---- writability ----------------------------------------------------------------------------------------


def test_save_path_below_a_file_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    code, err = run_cli(monkeypatch, capsys, tiny_args(blocker / "sub", "run"))
    assert code == 2
    assert_one_error_line(err, f"error: --save_path {blocker}/sub/digits: {blocker} is not a folder")
    assert blocker.read_text() == "a file, not a folder"


def _cli_as_nobody(argv: list[str], err_file: Path) -> int:
    """main.cli(argv) in a forked child running as an unprivileged user (root may write anywhere);
    returns its exit code, its stderr goes to ``err_file``."""
    err = err_file.open("w")
    pid = os.fork()
    if pid == 0:  # child: no torch work happens before the parse-time check
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sys.stderr = err
            sys.argv = ["main.py", *argv]
            main.cli()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            err.flush()
            os._exit(code)
    err.close()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_unwritable_save_path_is_refused_before_any_data_is_loaded(tmp_path):
    readonly = Path(tempfile.mkdtemp(prefix="dml_readonly_"))  # outside pytest's 0700 tmp folders
    try:
        readonly.chmod(0o555)
        argv = tiny_args(readonly / "results", "run")
        if os.geteuid() == 0:
            code = _cli_as_nobody(argv, tmp_path / "stderr")
            err = (tmp_path / "stderr").read_text()
        else:
            proc = subprocess.run([sys.executable, "main.py", *argv], cwd=Path(main.__file__).parent,
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            code, err = proc.returncode, proc.stderr
        assert code == 2
        assert_one_error_line(
            err,
            f"error: --save_path {readonly}/results/digits: cannot create files in {readonly}: permission denied",
        )
        assert list(readonly.iterdir()) == []
    finally:
        shutil.rmtree(readonly)


def test_check_writable_names_the_reason(tmp_path, monkeypatch):
    check_writable(tmp_path / "not" / "yet" / "there")  # created later by the run: its parent is probed
    assert list(tmp_path.iterdir()) == []  # the probe file is gone

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ConfigError) as exc:
        check_writable(tmp_path, "--resume")
    mount = logger._mount_point(tmp_path)
    assert (
        str(exc.value)
        == f"--resume {tmp_path}: cannot create files in {tmp_path}: the file system at {mount} is read-only"
    )


# ---- write failures ---------------------------------------------------------------------------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)
    mount = logger._mount_point(tmp_path)
    real_save = torch.save

    def into_dev_full(obj, f, *args, **kwargs):  # torch's own zip writer meeting ENOSPC
        with open("/dev/full", "wb") as full:
            real_save(obj, full, *args, **kwargs)

    for failing in (_no_space, into_dev_full):
        monkeypatch.setattr(torch, "save", failing)
        with pytest.raises(ConfigError) as exc:
            checkpoint.save_atomic({"epoch": 2, "w": torch.ones(10_000)}, path)
        assert str(exc.value) == f"cannot write {path}: no space left on the file system at {mount}"
        monkeypatch.undo()
        assert checkpoint.load(path) == {"epoch": 1}
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # the temporary file is gone


def test_a_full_disk_while_writing_csv_or_json_is_one_line(tmp_path, monkeypatch):
    log = RunLogger(_opt(tmp_path, "--savename", "full"))
    mount = logger._mount_point(tmp_path)
    monkeypatch.setattr(pathlib.Path, "write_text", _no_space)
    with pytest.raises(ConfigError) as exc:
        log.summary({"selected_epoch": 0})
    assert (
        str(exc.value)
        == f"cannot write {log.folder / 'summary.json'}: no space left on the file system at {mount}"
    )
    monkeypatch.undo()
    monkeypatch.setattr(logger.csv.DictWriter, "writerows", _no_space)
    with pytest.raises(ConfigError) as exc:
        log.log(0, "training", {"loss": 1.0})
    assert (
        str(exc.value)
        == f"cannot write {log.folder / 'metrics.csv'}: no space left on the file system at {mount}"
    )
    assert sorted(p.name for p in log.folder.iterdir()) == [".run.lock", "args.json"]  # no temporaries
    log.close()


def test_a_full_disk_during_a_run_ends_it_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "save", _no_space)
    code, err = run_cli(monkeypatch, capsys, tiny_args(tmp_path, "run", epochs=1))
    folder = tmp_path / "digits" / "run"
    assert code == 2
    assert_one_error_line(
        err,
        f"error: cannot write {folder / 'checkpoint_best.pt'}: no space left on the file system at {logger._mount_point(tmp_path)}",
    )
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---- one writer per folder, racing names ---------------------------------------------------------------

HOLD = "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"
TRY = "import fcntl, sys; fcntl.flock(open(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)"


def test_a_folder_in_use_by_another_process_is_not_resumed(reference, tmp_path):
    run = tmp_path / "digits" / "ref"
    shutil.copytree(reference, run)
    before = snapshot(run)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run / ".run.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"^run folder {run} is in use by another process"):
            main.main(["--resume", str(run)])
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(run) == before


def test_the_logger_holds_the_folder_lock_until_closed(tmp_path):
    log = RunLogger(_opt(tmp_path, "--savename", "held"))
    lock = log.folder / ".run.lock"
    assert subprocess.run([sys.executable, "-c", TRY, str(lock)], capture_output=True).returncode != 0
    log.close()
    assert subprocess.run([sys.executable, "-c", TRY, str(lock)], capture_output=True).returncode == 0


def test_a_name_taken_between_check_and_create_gets_the_next_suffix(tmp_path, monkeypatch):
    """Another run creates ``digits/run`` at the very moment this one does: no FileExistsError."""
    opt = _opt(tmp_path, "--savename", "run")
    base = tmp_path / "digits" / "run"
    real_mkdir = pathlib.Path.mkdir

    def racing_mkdir(self, *args, **kwargs):
        if self == base and not base.exists():
            real_mkdir(base, parents=True)  # the competitor wins the race
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", racing_mkdir)
    assert run_folder(opt) == tmp_path / "digits" / "run_1"


def test_concurrent_runs_of_one_savename_get_distinct_folders(tmp_path):
    opt = _opt(tmp_path, "--savename", "same")
    start = time.time() + 1.0
    pids = []
    for i in range(6):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                time.sleep(max(0.0, start - time.time()))
                folder = run_folder(opt)
                (folder / f"by_{i}").touch()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == [0] * 6
    folders = sorted(p.name for p in (tmp_path / "digits").iterdir())
    assert folders == ["same", "same_1", "same_2", "same_3", "same_4", "same_5"]
    assert all(
        len([f for f in (tmp_path / "digits" / d).iterdir() if f.name.startswith("by_")]) == 1
        for d in folders
    )


# ---- file modes ---------------------------------------------------------------------------------------------


def test_every_file_of_a_run_gets_the_same_mode(tmp_path):
    old = os.umask(0o002)
    try:
        main.main(tiny_args(tmp_path, "run", "--save_embeddings", epochs=1))
    finally:
        os.umask(old)
    folder = tmp_path / "digits" / "run"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}
    assert {
        "checkpoint_last.pt",
        "checkpoint_best.pt",
        "args.json",
        "metrics.csv",
        "embeddings_testing.npz",
    } <= set(modes)
    assert modes == dict.fromkeys(modes, 0o664), modes  # 0666 & ~umask; mkstemp alone gives 0600


# ---- W&B ------------------------------------------------------------------------------------------------------


def test_wandb_init_gets_the_timeout(tmp_path, monkeypatch):
    import wandb

    seen = []

    def fake_init(**kwargs):
        seen.append(kwargs["settings"].init_timeout)
        raise wandb.errors.CommError("timed out")  # what an unreachable server gives after the timeout

    monkeypatch.setattr(wandb, "init", fake_init)
    log = RunLogger(_opt(tmp_path, "--log_online", "--wandb_timeout", "3", "--savename", "a"))
    assert log.wandb is None  # local logging only
    log.log(0, "training", {"loss": 1.0})
    assert (log.folder / "metrics.csv").read_text().splitlines() == ["epoch,split,loss", "0,training,1.0"]
    log.close()
    RunLogger(_opt(tmp_path, "--log_online", "--savename", "b")).close()
    assert seen == [3.0, 10.0]
