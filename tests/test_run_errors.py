"""Errors during a run: one line on stderr, the right exit code, and no finished work lost.

Divergence (non-finite embeddings or loss), an error raised inside a DataLoader worker, Ctrl-C and
a ``--gpu`` that cannot exist, each through ``main.cli()`` as a user would meet it.
"""

from __future__ import annotations

import sys

import pytest
import torch

import datasets
import main
from tests.test_main import digits_args, read_rows
from utilities.errors import ConfigError


def run_cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    with pytest.raises(SystemExit) as exc:
        main.cli()
    return exc.value.code, capsys.readouterr().err


def assert_one_error_line(err: str, fragment: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and fragment in err, err


class _Crop:
    crop, resize = 32, 36


def _poison_model(monkeypatch, at_call: int, where: str) -> None:
    """The ``at_call``-th training step gets NaN embeddings (``where="embeddings"``: the model's
    output) or a NaN loss (``where="loss"``: the criterion's output)."""
    package = main.architectures if where == "embeddings" else main.criteria
    build = package.select
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                return output * float("nan")
        return output

    def select(*args, **kwargs):
        module = build(*args, **kwargs)
        module.register_forward_hook(hook)
        return module

    monkeypatch.setattr(package, "select", select)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["embeddings", "loss"])
def test_divergence_is_one_line_naming_the_step_and_the_last_checkpoint(tmp_path, monkeypatch, capsys, where):
    opt = main.parameters.parse(digits_args(tmp_path))
    steps = len(main.datasets.select("digits", opt, _Crop)["training"]) // opt.bs  # class_random: N // bs
    _poison_model(monkeypatch, at_call=steps + 3, where=where)
    code, err = run_cli(monkeypatch, capsys, digits_args(tmp_path, "--n_epochs", "3"))
    folder = tmp_path / "digits" / "run"
    assert code == 2
    assert_one_error_line(err, "training diverged at epoch 1 step 2")
    assert "lower --lr" in err and f"the last good checkpoint is {folder / 'checkpoint_last.pt'}" in err
    assert ("non-finite embeddings" in err) == (where == "embeddings")
    assert {int(r["epoch"]) for r in read_rows(folder)} == {0}  # epoch 0 kept, nothing of epoch 1
    assert torch.load(folder / "checkpoint_last.pt", weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    _poison_model(monkeypatch, at_call=1, where="embeddings")
    code, err = run_cli(monkeypatch, capsys, digits_args(tmp_path))
    assert code == 2
    assert_one_error_line(err, "training diverged at epoch 0 step 0 (non-finite embeddings)")
    assert "no epoch finished, so there is no checkpoint yet" in err


@pytest.mark.slow
def test_an_error_in_a_dataloader_worker_is_one_line(tmp_path, monkeypatch, capsys):
    select = datasets.select

    def broken(name, opt, input_config):
        splits = select(name, opt, input_config)
        load = splits["training"].load

        def bad_load(sample):
            if torch.utils.data.get_worker_info() is not None:  # only inside a worker process
                raise ConfigError("digits: cannot read image 7.png (broken); remove or replace it")
            return load(sample)

        splits["training"].load = bad_load
        return splits

    monkeypatch.setattr(main.datasets, "select", broken)
    code, err = run_cli(monkeypatch, capsys, [*digits_args(tmp_path), "--kernels", "2"])
    assert code == 2
    assert err == "error: digits: cannot read image 7.png (broken); remove or replace it\n"


@pytest.mark.slow
def test_ctrl_c_is_one_line_saying_how_to_continue(tmp_path, monkeypatch, capsys):
    train = main.train_one_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return train(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(main, "train_one_epoch", interrupted)
    code, err = run_cli(monkeypatch, capsys, digits_args(tmp_path, "--n_epochs", "2"))
    folder = tmp_path / "digits" / "run"
    assert code == 130
    assert err == f"error: interrupted; continue with: python main.py --resume {folder}\n"
    assert (folder / "checkpoint_last.pt").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_index_on_a_machine_without_cuda_is_refused(tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, [*digits_args(tmp_path), "--device", "auto", "--gpu", "3"])
    assert code == 2
    assert_one_error_line(err, "--gpu 3: this machine has no CUDA device (use --device cpu)")
    assert not (tmp_path / "digits").exists()
