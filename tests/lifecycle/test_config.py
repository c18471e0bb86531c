"""``main.py --config``: a stored configuration (a run's args.json, its folder, or a YAML/JSON
mapping of flags) re-runs the experiment; command-line flags override it; bad files are one line."""

from __future__ import annotations

import json

import pytest

import main
import parameters
from tests.lifecycle._runs import read_rows, read_summary
from utilities.errors import ConfigError


def test_config_of_a_run_reproduces_its_metrics(reference, tmp_path):
    """The shared reference run (3 digits epochs) re-run from its args.json, and from its folder
    with one flag overridden: identical metrics.csv (wall-clock columns aside)."""
    again = tmp_path / "again"
    main.main(["--config", str(reference / "args.json"), "--save_path", str(again), "--savename", "a"])
    assert read_rows(again / "digits" / "a") == read_rows(reference)
    assert read_summary(again / "digits" / "a")["metrics"] == read_summary(reference)["metrics"]
    stored = json.loads((again / "digits" / "a" / "args.json").read_text())["args"]
    assert stored["config"] == str(reference / "args.json")  # recorded, and never re-applied
    main.main(["--config", str(reference), "--save_path", str(again), "--savename", "b", "--n_epochs", "1"])
    first = [r for r in read_rows(reference) if r["epoch"] == "0"]
    assert read_rows(again / "digits" / "b") == first


def test_a_yaml_file_of_flags_sets_them_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "dataset: digits\n--arch: smallcnn_normalize\nn_epochs: 4\nlr: 1.0e-3\nno_progress: true\n"
        "use_tv_split: false\nevaluation_metrics: [e_recall@1, mAP@R]\ntau: [2, 3]\namp: bf16\n"
        f"save_path: {tmp_path}\n"
    )
    opt, _ = parameters.parse_run(["--config", str(cfg), "--n_epochs", "7"])
    assert (opt.dataset, opt.arch, opt.lr, opt.no_progress, opt.use_tv_split) == (
        "digits",
        "smallcnn_normalize",
        1e-3,
        True,
        False,
    )
    assert opt.n_epochs == 7 and opt.tau == [2, 3] and opt.amp == "bf16"
    assert opt.evaluation_metrics == ["e_recall@1", "mAP@R"]
    json_cfg = tmp_path / "cfg.json"
    json_cfg.write_text(json.dumps({"dataset": "online_products", "save_path": str(tmp_path)}))
    opt, _ = parameters.parse_run(["--config", str(json_cfg)])
    assert opt.dataset == "online_products" and opt.evaluation_metrics[1] == "e_recall@10"  # presets


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("dataset: digits\nlearning_rate: 0.1\n", ".yaml", "not flags of this main.py: learning_rate"),
        ("no_progress: 1\n", ".yaml", "no_progress is a switch; give true or false"),
        ("lr: [0.1\n", ".yaml", "cannot read it"),
        ('{"lr": ', ".json", "cannot read it"),
        ("- lr\n- 0.1\n", ".yaml", "expected a mapping of flag names to values"),
        ("lr: abc\n", ".yaml", "--lr"),  # the value goes through the flag's own type check
        ("lr: {a: 1}\n", ".yaml", "is not a value of --lr"),
    ],
)
def test_bad_config_files_are_one_clear_error(tmp_path, capsys, content, suffix, message):
    cfg = tmp_path / f"cfg{suffix}"
    cfg.write_text(content)
    try:
        parameters.parse_run(["--config", str(cfg), "--save_path", str(tmp_path)])
    except ConfigError as err:
        text = str(err)
    except SystemExit as err:  # argparse's own type errors: exit 2 with a short usage line
        assert err.code == 2
        text = capsys.readouterr().err
    else:
        pytest.fail("accepted")
    assert message in text


def test_config_needs_a_file_and_excludes_resume(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        parameters.parse_run(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="no such file"):  # a folder without args.json
        parameters.parse_run(["--config", str(tmp_path)])
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    with pytest.raises(ConfigError, match="exclude each other"):
        parameters.parse_run(["--config", str(cfg), "--resume", str(tmp_path)])
