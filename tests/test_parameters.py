"""The command line: reference flag names and defaults, grouping, the --source abbreviation."""

from __future__ import annotations

import argparse
import sys

import pytest

import main
import parameters


def test_reference_defaults():
    opt = parameters.parse([])
    expected = {
        "dataset": "cub200",
        "lr": 1e-5,
        "fc_lr": -1,
        "decay": 4e-4,
        "n_epochs": 150,
        "kernels": 6,
        "bs": 112,
        "seed": 1,
        "scheduler": "step",
        "gamma": 0.3,
        "tau": [1000],
        "optim": "adam",
        "loss": "margin",
        "batch_mining": "distance",
        "data_sampler": "class_random",
        "samples_per_class": 2,
        "embed_dim": 128,
        "not_pretrained": False,
        "arch": "resnet50_frozen_normalize",
        "storage_metrics": ["e_recall@1"],
        "evaluate_on_gpu": False,
        "no_train_metrics": False,
        "use_tv_split": False,
        "tv_split_by_samples": False,
        "tv_split_perc": 0.8,
        "augmentation": "base",
        "gpu": [0],
        "savename": "group_plus_seed",
        "log_online": False,
        "project": "Sample_Project",
        "group": "Sample_Group",
        "device": "auto",
        # plugin flags contributed by the registries
        "loss_triplet_margin": 0.2,
        "loss_margin_margin": 0.2,
        "loss_margin_beta": 1.2,
        "loss_margin_beta_lr": 5e-4,
        "loss_margin_nu": 0.0,
        "loss_margin_beta_constant": False,
        "loss_contrastive_pos_margin": 0.0,
        "loss_contrastive_neg_margin": 1.0,
        "loss_multisimilarity_pos_weight": 2.0,
        "loss_multisimilarity_neg_weight": 40.0,
        "loss_multisimilarity_margin": 0.1,
        "loss_multisimilarity_thresh": 0.5,
        "miner_distance_lower_cutoff": 0.5,
        "miner_distance_upper_cutoff": 1.4,
    }
    for key, value in expected.items():
        assert getattr(opt, key) == value, key


def test_source_abbreviation_sets_source_path():
    assert parameters.parse(["--source", "/data/x"]).source_path == "/data/x"


def test_help_lists_plugin_flags_grouped():
    text = parameters.build_parser().format_help()
    for heading in ("loss 'margin'", "batch miner 'distance'", "optimisation", "evaluation", "wandb"):
        assert heading in text
    assert "--loss_margin_beta_lr" in text and "--miner_distance_lower_cutoff" in text
    assert "one of: " in text  # valid plugin names are listed next to --loss etc.


def test_no_flag_for_the_api_key():
    text = parameters.build_parser().format_help()
    assert "wandb_key" not in text and "api_key" not in text


# ---- bad values are refused at parse time: a short usage pointer plus argparse's one error line ----

BAD_VALUES = [
    (["--lr", "-1"], "argument --lr: must be >= 0, got '-1'"),
    (["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--decay=-1e-4"], "argument --decay: must be >= 0, got '-1e-4'"),
    (["--fc_lr", "-0.5"], "argument --fc_lr: must be >= 0, or -1 for no separate rate; got '-0.5'"),
    (["--fc_lr=-inf"], "argument --fc_lr: must be a finite number, got '-inf'"),
    (["--gamma", "nan"], "argument --gamma: must be a finite number, got 'nan'"),
    (["--tv_split_perc", "inf"], "argument --tv_split_perc: must be a finite number, got 'inf'"),
    (["--loss_margin_beta", "nan"], "argument --loss_margin_beta: must be a finite number, got 'nan'"),
    (["--miner_distance_upper_cutoff", "inf"], "argument --miner_distance_upper_cutoff: must be a finite"),
    (["--n_epochs", "0"], "argument --n_epochs: must be >= 1, got '0'"),
    (["--embed_dim", "0"], "argument --embed_dim: must be >= 1, got '0'"),
    (["--embed_dim", "-8"], "argument --embed_dim: must be >= 1, got '-8'"),
    (["--kernels", "-1"], "argument --kernels: must be >= 0, got '-1'"),
    (["--bs", "0"], "argument --bs: must be >= 1, got '0'"),
    (["--samples_per_class", "0"], "argument --samples_per_class: must be >= 1, got '0'"),
    (["--n_epochs", "2.5"], "argument --n_epochs: invalid int value: '2.5'"),
    (["--wandb_timeout", "0"], "argument --wandb_timeout: must be > 0, got '0'"),
    (["--savename", "../../escape"], "argument --savename: must be a single folder name"),
    (["--savename", "/tmp/abs"], "argument --savename: must be a single folder name"),
    (["--savename", "a/b"], "argument --savename: must be a single folder name"),
    (["--savename", "a\\b"], "argument --savename: must be a single folder name"),
    (["--savename", ".."], "argument --savename: must be a single folder name"),
    (["--savename", ""], "argument --savename: must be a single folder name"),
    (["--group", "x/../../y"], "argument --group: must be a single folder name"),
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
]


@pytest.mark.parametrize(
    ("flags", "message"), BAD_VALUES, ids=lambda x: " ".join(x) if isinstance(x, list) else ""
)
def test_bad_value_is_a_short_usage_and_one_error_line(tmp_path, monkeypatch, capsys, flags, message):
    save = tmp_path / "results"
    argv = ["--dataset", "digits", "--no_progress", "--save_path", str(save), *flags]
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    with pytest.raises(SystemExit) as exc:
        main.cli()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    usage, error = err.splitlines()  # exactly two lines, no traceback, no 113-line usage block
    assert usage == "usage: main.py [options]; see --help"
    assert error.startswith("error: ") and message in error, error
    assert not save.exists()


@pytest.mark.parametrize(
    ("flags", "key", "value"),
    [
        (["--fc_lr", "-1"], "fc_lr", -1.0),
        (["--fc_lr", "0"], "fc_lr", 0.0),
        (["--lr", "0"], "lr", 0.0),
        (["--kernels", "0"], "kernels", 0),
        (["--loss_margin_beta", "-0.5"], "loss_margin_beta", -0.5),  # finite: plugin flags keep their range
        (["--savename", "run.v2_a-b"], "savename", "run.v2_a-b"),
        (["--wandb_timeout", "2.5"], "wandb_timeout", 2.5),
    ],
)
def test_edge_values_that_are_valid(flags, key, value):
    assert getattr(parameters.parse(flags), key) == value


def test_every_float_flag_refuses_nan():
    """Every float-typed flag, plugin hyperparameters included, goes through the finite check."""
    parser = parameters.build_parser()
    float_flags = [a for a in parser._actions if a.type is parameters.finite_float]
    assert len(float_flags) > 40  # the global float flags and the registries' float hyperparameters
    assert not [a.dest for a in parser._actions if a.type is float]
    for action in float_flags:
        with pytest.raises(argparse.ArgumentTypeError, match="finite"):
            action.type("nan")


def test_help_keeps_the_full_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        parameters.parse(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith("usage: main.py [-h]") and "--loss_margin_beta_lr" in out.split("\n\n")[0]


def test_every_flag_explains_itself_and_shows_its_default_once():
    """``--help`` of main.py and of ``python -m evaluation``: a help text for every flag, no
    unresolved ``..`` path, and no default printed twice."""
    import importlib

    evaluation_cli = importlib.import_module("evaluation.__main__")
    for parser in (parameters.build_parser(), evaluation_cli.build_parser()):
        missing = [
            a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()
        ]
        assert missing == [], missing
        text = parser.format_help()
        assert all(line.count("(default:") <= 1 for line in text.splitlines()), text
        assert "/../" not in text and "\\..\\" not in text


@pytest.mark.parametrize(
    "dataset, ks",
    [
        ("cub200", [1, 2, 4, 8]),
        ("cars196", [1, 2, 4, 8]),
        ("online_products", [1, 10, 100, 1000]),
        ("inshop", [1, 10, 20, 30, 40]),
        ("digits", [1, 2, 4, 8]),
        ("folder", [1, 2, 4, 8]),
    ],
)
def test_the_default_metrics_follow_the_datasets_recall_ranks(dataset, ks):
    """SOP papers report R@1/10/100/1000, In-Shop R@1/10/20/30/40: a run of that dataset computes
    those by default, with the rest of the study's list unchanged."""
    from evaluation.options import DEFAULT_METRICS

    got = parameters.parse(["--dataset", dataset]).evaluation_metrics
    recalls = [int(m.split("@")[1]) for m in got if m.startswith("e_recall@")]
    assert recalls == ks
    assert [m for m in got if not m.startswith("e_recall@")] == [
        m for m in DEFAULT_METRICS if not m.startswith("e_recall@")
    ]
    explicit = parameters.parse(["--dataset", dataset, "--evaluation_metrics", "e_recall@3", "nmi"])
    assert explicit.evaluation_metrics == ["e_recall@3", "nmi"]


def test_the_resolved_metric_list_is_what_parse_run_returns(tmp_path):
    opt, state = parameters.parse_run(["--dataset", "online_products", "--save_path", str(tmp_path)])
    assert state is None and opt.evaluation_metrics[:4] == [f"e_recall@{k}" for k in (1, 10, 100, 1000)]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--loss", "nonexistent"], "unknown loss 'nonexistent'"),
        (["--batch_mining", "nope"], "unknown batch miner 'nope'"),
        (["--data_sampler", "nope"], "unknown"),
        (["--arch", "resnet51_normalize"], "resnet51"),
        (["--arch", "resnet50_froze"], "unknown modifier"),
    ],
)
def test_unknown_plugin_names_fail_when_parsed_before_any_data(tmp_path, flags, message):
    """The default dataset is absent here: the name error must come first (no data is read)."""
    from utilities.errors import ConfigError

    argv = ["--source_path", str(tmp_path / "none"), "--save_path", str(tmp_path), *flags]
    with pytest.raises(ConfigError, match=message):
        parameters.parse_run(argv)
