"""Run cards (utilities/run_card.py): what main.py records about a run in args.json and summary.json,
the hashes behind them, and the guard of Result_Evaluations.py that keeps runs with differing cards
out of one table (or marks the table with --allow_mixed)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess

import numpy as np
import pytest

import architectures
import datasets
import parameters
import Result_Evaluations as RE
from datasets.base import SplitDataset
from tests.lifecycle._runs import tiny_args
from tests.lifecycle.test_result_tables import latex_problems, make_run
from utilities import run_card
from utilities.logger import public_args


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- what a run records -----------------------------------------------------------------------


def test_a_digits_run_records_its_card_at_start_and_at_the_end(reference):
    info = json.loads((reference / "args.json").read_text())
    card = info["run_card"]
    assert json.loads((reference / "summary.json").read_text())["run_card"] == card
    cfg = architectures.input_config("smallcnn_normalize")
    hashes = ("class_split_hash", "git_commit", "git_dirty", "config_hash")
    assert {k: v for k, v in card.items() if k not in hashes} == {
        "card_version": 1, "arch": "smallcnn_normalize", "backbone": "smallcnn", "weights": "random",
        "input_crop": cfg.crop, "input_resize": cfg.resize, "embed_dim": 16, "augmentation": "base",
        "data_sampler": "class_random", "samples_per_class": 4, "bs": 60, "n_epochs": 3,
        "selection_split": "testing", "selection_metrics": ["e_recall@1"],
    }  # fmt: skip
    # the class split, derived independently: digits 0-4 train (and evaluate), 5-9 test; a class is
    # the SHA-256 of its sorted sample names (here the image indices)
    from sklearn.datasets import load_digits

    target = load_digits().target
    named = {d: _sha("\n".join(sorted(str(i) for i in np.flatnonzero(target == d)))) for d in range(10)}
    train, test = sorted(named[d] for d in range(5)), sorted(named[d] for d in range(5, 10))
    canonical = {"evaluation": train, "testing": test, "training": train}
    assert card["class_split_hash"] == _sha(json.dumps(canonical, sort_keys=True, separators=(",", ":")))
    assert card["config_hash"] == run_card.config_hash(info["args"])
    assert re.fullmatch(r"[0-9a-f]{40}", card["git_commit"]) and isinstance(card["git_dirty"], bool)


# ---- the hashes ---------------------------------------------------------------------------------


def test_class_split_hash_ignores_order_but_not_membership():
    base = run_card.class_split_hash({"training": ["a", "b", "c"], "testing": ["d", "e"]})
    assert base == run_card.class_split_hash({"testing": ["e", "d"], "training": ["c", "a", "b"]})
    assert base != run_card.class_split_hash({"training": ["a", "b"], "testing": ["c", "d", "e"]})
    assert base != run_card.class_split_hash({"validation": ["a", "b", "c"], "testing": ["d", "e"]})

    def split(samples: list[str], labels: list[int]) -> SplitDataset:
        return SplitDataset(samples, labels, load=lambda s: s)

    images = [f"cls{c}/img{i}.jpg" for c in range(4) for i in range(3)]
    labels = [c for c in range(4) for _ in range(3)]
    found = {"training": split(images[:6], labels[:6]), "testing": split(images[6:], labels[6:])}
    # the same classes found in another order, with other raw ids (re-indexed differently)
    order = np.random.default_rng(0).permutation(6)
    shuffled = {
        "testing": split([images[6 + i] for i in order], [90 - labels[6 + i] for i in order]),
        "training": split([images[i] for i in order], [7 * labels[i] + 3 for i in order]),
    }
    assert datasets.class_split_hash(found) == datasets.class_split_hash(shuffled)
    moved = {"training": split(images[:3], labels[:3]), "testing": split(images[3:], labels[3:])}
    swapped = [0, 1, 2, 3, 4, 5]
    swapped[2], swapped[3] = 1, 0  # one image changes class, the class lists' sizes do not
    relabelled = {"training": split(images[:6], swapped), "testing": found["testing"]}
    hashes = {datasets.class_split_hash(x) for x in (found, moved, relabelled)}
    assert len(hashes) == 3


def test_weights_identity_is_the_sha256_of_the_pretrained_file_or_the_library_tag(tmp_path):
    data = np.random.default_rng(1).bytes(3 * run_card.CHUNK + 5)  # crosses chunk boundaries
    path = tmp_path / "weights.pth"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert run_card.file_sha256(path) == run_card.file_sha256(path, chunk_size=1000) == want
    assert architectures.weights_identity("resnet50_frozen", True, str(path)) == f"sha256:{want}"
    path.write_bytes(data[:-1])  # replaced under the same name: a new hash, nothing cached
    assert architectures.weights_identity("resnet50_frozen", True, str(path)) != f"sha256:{want}"

    assert architectures.weights_identity("resnet50_frozen_normalize", False, "") == "random"
    assert architectures.weights_identity("smallcnn", True, "") == "random"  # has no pretrained weights
    assert (
        architectures.weights_identity("resnet50", True, "") == "torchvision:ResNet50_Weights.IMAGENET1K_V1"
    )
    assert (
        architectures.weights_identity("resnet18_frozen", True, "")
        == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    )
    assert (
        architectures.weights_identity("googlenet", True, "") == "torchvision:GoogLeNet_Weights.IMAGENET1K_V1"
    )
    assert architectures.weights_identity("bninception", True, "") == "pretrainedmodels:bninception/imagenet"
    assert (
        architectures.weights_identity("timm:resnet50_frozen", True, "") == "timm:resnet50.a1_in1k"
    )  # default tag
    assert architectures.weights_identity("timm:vit_small_patch16_224.dino", True, "") == (
        "timm:vit_small_patch16_224.dino"
    )
    import torchvision.models

    assert str(torchvision.models.ResNet50_Weights.IMAGENET1K_V1) == "ResNet50_Weights.IMAGENET1K_V1"
    for name in architectures.REGISTRY.names():  # every backbone with weights names them
        cls = architectures.REGISTRY.get(name)
        assert not cls.has_pretrained_weights or cls.pretrained_weights_for(architectures.parse_arch("x")), (
            name
        )
    assert architectures.backbone_name("resnet50_normalize_frozen") == "resnet50_frozen"
    assert architectures.backbone_name("timm:vit_small_patch16_224.dino_normalize_double") == (
        "timm:vit_small_patch16_224.dino_double"
    )


def test_config_hash_ignores_bookkeeping_but_not_the_experiment(tmp_path):
    def hashed(*extra: str) -> str:
        return run_card.config_hash(public_args(parameters.parse(tiny_args(tmp_path, "a", *extra))))

    base = hashed()
    same = [
        ("--seed", "9"),
        ("--savename", "b"),
        ("--save_path", str(tmp_path / "x")),
        ("--group", "G"),
        ("--kernels", "3"),
        ("--log_online",),
        ("--no_progress",),
        ("--wandb_timeout", "3"),
        ("--evaluation_metrics", "e_recall@1"),
        ("--pretrained_path", str(tmp_path / "w.pt")),
    ]  # fmt: skip  (the weights identity hashes its content)
    for extra in same:
        assert hashed(*extra) == base, extra
    for extra in [("--lr", "2e-3"), ("--loss_margin_beta", "0.6"), ("--n_epochs", "4"), ("--amp", "bf16")]:
        assert hashed(*extra) != base, extra
    args = public_args(parameters.parse(tiny_args(tmp_path, "a")))
    assert run_card.config_hash(dict(reversed(list(args.items())))) == base  # canonical: key order ignored
    assert not any(run_card.is_bookkeeping(k) for k in run_card.hashed_config(args))
    assert {"seed", "savename", "group", "wandb_timeout"} & run_card.hashed_config(args).keys() == set()


def test_git_state_of_a_checkout_and_outside_one(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)  # fmt: skip

    git("init", "-q")
    (repo / "a.txt").write_text("a")
    git("add", "a.txt")
    git("commit", "-q", "-m", "a")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    assert run_card.git_state(repo) == (head, False)
    (repo / "new.txt").write_text("untracked")
    assert run_card.git_state(repo) == (head, True)
    outside = tmp_path / "plain"
    outside.mkdir()
    assert run_card.git_state(outside) == (None, None)


# ---- the comparability guard of Result_Evaluations.py --------------------------------------------


def card(**over) -> dict:
    base = {
        "card_version": 1, "arch": "smallcnn_normalize", "backbone": "smallcnn", "weights": "random",
        "embed_dim": 128, "input_crop": 32, "input_resize": 36, "augmentation": "base",
        "data_sampler": "class_random", "samples_per_class": 4, "bs": 100, "n_epochs": 15,
        "selection_split": "validation", "selection_metrics": ["e_recall@1"], "class_split_hash": "c" * 64,
        "git_commit": "abcdef1234" + "0" * 30, "git_dirty": True, "config_hash": "9f8e" * 16,
    }  # fmt: skip
    return base | over


def two_methods(root, ms: dict, margin: dict, seeds=(0, 1)) -> None:
    for seed in seeds:
        make_run(root, "digits", f"DIG_MS_s{seed}", seed, "DIG_MS", 0.5, card=card(**ms))
        make_run(root, "digits", f"DIG_Margin_s{seed}", seed, "DIG_Margin", 0.6, card=card(**margin))


def test_differing_cards_are_refused_in_one_line_or_marked_with_allow_mixed(tmp_path, capsys):
    root, out = tmp_path / "runs", tmp_path / "tables"
    two_methods(root, {"bs": 60, "config_hash": "1" * 64}, {"weights": "sha256:" + "e" * 64})
    with pytest.raises(SystemExit) as exc:
        RE.main(["--runs", str(root), "--out", str(out), "--no_figures"])
    assert exc.value.code == 2 and not out.exists()  # nothing written
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "digits: the run cards of its table differ in weights, bs (" in line
    assert (
        "(weights: random: DIG_MS; sha256:eeeeeeeeeeee: DIG_Margin | bs: 60: DIG_MS; 100: DIG_Margin)" in line
    )
    assert "--allow_mixed" in line

    rows = RE.main(["--runs", str(root), "--out", str(out), "--no_figures", "--allow_mixed"])
    assert {r["mixed_cards"] for r in rows} == {"weights, bs"}
    with (out / "results.csv").open() as f:
        assert {r["mixed_cards"] for r in csv.DictReader(f)} == {"weights, bs"}
    text = (out / "table_digits.tex").read_text()
    assert latex_problems(text) == []
    assert "\\textbf{Mixed run cards}: the runs differ in weights and bs, not only in the method" in text


def test_the_class_split_is_compared_between_runs_of_one_seed(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1):  # a validation split drawn with --seed: one class split per seed, any method
        for group in ("DIG_MS", "DIG_Margin"):
            make_run(
                root,
                "digits",
                f"{group}_s{seed}",
                seed,
                group,
                0.5,
                card=card(class_split_hash=f"{seed}" * 64),
            )
    assert RE.check_cards(RE.load_local_runs(root)) == {}
    make_run(root, "digits", "DIG_Other_s1", 1, "DIG_Other", 0.5, card=card(class_split_hash="f" * 64))
    with pytest.raises(RE.MixedRunsError, match=r"differ in class_split_hash \(class_split_hash: seed 1: "
                       r"111111111111: DIG_MS, DIG_Margin; ffffffffffff: DIG_Other\)"):  # fmt: skip
        RE.check_cards(RE.load_local_runs(root))
    assert RE.check_cards(RE.load_local_runs(root), allow_mixed=True) == {"digits": ["class_split_hash"]}


def test_the_seeds_of_a_group_must_share_the_config_hash(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "digits", "DIG_MS_s0", 0, "DIG_MS", 0.5, card=card())
    make_run(root, "digits", "DIG_MS_s1", 1, "DIG_MS", 0.5, card=card(config_hash="7" * 64), decay=0.1)
    with pytest.raises(RE.MixedRunsError) as exc:
        RE.aggregate(RE.load_local_runs(root))
    message = str(exc.value)
    assert message.startswith("digits/DIG_MS: its runs differ in the run card's config_hash (config_hash=")
    assert "9f8e9f8e9f8e: DIG_MS_s0; config_hash=777777777777: DIG_MS_s1; differing flags: decay" in message
    rows = RE.aggregate(RE.load_local_runs(root), allow_mixed=True, warn=False)
    assert sorted(r["setting"] for r in rows) == ["config_hash=777777777777", "config_hash=9f8e9f8e9f8e"]


def test_commit_and_config_in_results_csv_and_tex_comments_runs_without_a_card_pass(tmp_path, capsys):
    root, out = tmp_path / "runs", tmp_path / "tables"
    two_methods(root, {}, {"git_commit": "1234567abc" + "0" * 30, "git_dirty": False})
    make_run(
        root, "digits", "DIG_MS_s2", 2, "DIG_MS", 0.5, card=card(git_dirty=False)
    )  # another commit state
    for seed in (0, 1):  # an older group without cards, in another protocol: reported, not refused
        make_run(root, "digits", f"DIG_Old_s{seed}", seed, "DIG_Old", 0.4, bs=32)
    rows = RE.main(["--runs", str(root), "--out", str(out), "--no_figures"])
    assert "note: 2 runs have no run card" in capsys.readouterr().err
    with (out / "results.csv").open() as f:
        got = {(r["group"], r["protocol"]): (r["commit"], r["config_hash"]) for r in csv.DictReader(f)}
    assert got[("DIG_MS", RE.SELECTED)] == ("abcdef1 (dirty) / abcdef1", "9f8e9f8e9f8e")
    assert got[("DIG_Margin", RE.SELECTED)] == ("1234567", "9f8e9f8e9f8e")
    assert got[("DIG_Old", RE.MAX_OVER_EPOCHS)] == ("no run card", "no run card")
    assert all(r["mixed_cards"] == "" for r in rows)
    for name in ("table_digits.tex", "table_digits_max_over_epochs.tex"):
        lines = (out / name).read_text().splitlines()
        assert lines[0].startswith("% Written by Result_Evaluations.py")
        assert lines[1:4] == [
            "% run cards: DIG_Margin: commit 1234567, config 9f8e9f8e9f8e",
            "% run cards: DIG_MS: commit abcdef1 (dirty) / abcdef1, config 9f8e9f8e9f8e",
            "% run cards: DIG_Old: no run card",
        ]
        assert latex_problems("\n".join(lines)) == []


def test_wandb_runs_read_the_card_from_their_config():
    class Run:
        def __init__(self, seed: int, config_hash: str) -> None:
            self.name = f"DIG_MS_s{seed}"
            self.config = {"dataset": "digits", "seed": seed, "group": "DIG_MS", "decay": 1e-3 * (seed + 1),
                           "run_card": card(config_hash=config_hash)}  # fmt: skip
            self.summary = {"selected_epoch": 0, "metrics/testing/e_recall@1": 0.5}

        def scan_history(self):
            return iter([])

    class Api:
        def runs(self, project):
            return [Run(0, "a" * 64), Run(1, "b" * 64)]

    runs = RE.load_wandb_runs("me/p", api=Api())
    assert runs[0].card == card(config_hash="a" * 64) and "run_card" not in runs[0].config
    with pytest.raises(
        RE.MixedRunsError, match=r"config_hash=aaaaaaaaaaaa: DIG_MS_s0; .*differing flags: decay\)"
    ):
        RE.aggregate(runs)
