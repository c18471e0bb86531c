"""--pretrained_path: refused for a backbone without pretrained weights, and a file that is not a
torch state dict is one line saying so, never torch's advice to load it with weights_only=False."""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import architectures
from architectures.base import parse_arch
from architectures.smallcnn import SmallCNN
from utilities.errors import ConfigError


def opt(**kw) -> argparse.Namespace:
    base = {
        "embed_dim": 8,
        "not_pretrained": False,
        "pretrained_path": "",
        "amp": "off",
        "channels_last": False,
    }
    return argparse.Namespace(**{**base, **kw})


def test_smallcnn_loads_a_local_file_and_a_project_checkpoint(tmp_path):
    """smallcnn has no library weights, but takes a local file: its own backbone state dict, or a
    checkpoint of an earlier run (backbone and last_linear; e.g. the frozen mean of PFE/SCF)."""
    torch.manual_seed(0)
    trained = architectures.select("smallcnn_normalize", opt())
    weights = tmp_path / "w.pt"
    torch.save(trained.backbone.state_dict(), weights)
    torch.manual_seed(1)
    loaded = architectures.select("smallcnn_normalize", opt(pretrained_path=str(weights)))
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    assert not torch.equal(loaded.last_linear.weight, trained.last_linear.weight)  # a backbone file only
    run = tmp_path / "checkpoint_best.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, run)
    torch.manual_seed(2)
    loaded = SmallCNN(spec=parse_arch("smallcnn"), embed_dim=8, pretrained=False, pretrained_path=str(run))
    assert torch.equal(loaded.last_linear.weight, trained.last_linear.weight) and loaded.head_loaded
    architectures.check_pretrained_path("smallcnn_he_normalize", "/nowhere/w.pt")  # parse time: flags only
    architectures.check_pretrained_path("resnet50_frozen_normalize", "/nowhere/w.pt")
    assert [
        n for n in architectures.REGISTRY.names() if not architectures.REGISTRY.get(n).has_pretrained_weights
    ] == ["smallcnn"]
    assert all(architectures.REGISTRY.get(n).accepts_local_weights for n in architectures.REGISTRY.names())


def test_a_plugin_that_ignores_local_weights_refuses_them():
    class NoLocal(SmallCNN):
        name = "nolocal"
        accepts_local_weights = False

    with pytest.raises(ConfigError) as err:
        NoLocal(spec=parse_arch("smallcnn"), embed_dim=8, pretrained=False, pretrained_path="/nowhere/w.pt")
    assert str(err.value) == (
        "--pretrained_path: nolocal cannot load local weights (it always starts from random weights); "
        "drop --pretrained_path or choose a backbone that loads them"
    )


class Pickled:
    """A class the safe unpickler does not know (a checkpoint that would run code on load)."""


def _truncated_torch_file(path: Path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


GARBAGE = {  # how the file is made -> the reason in the message (a regular expression)
    "random bytes": (
        lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        r"the safe unpickler refuses its content: Unsupported operand \d+",
    ),
    "text": (
        lambda p: p.write_text("conv1.weight: [0.1, 0.2]\n"),
        re.escape("a text file, not a torch file"),
    ),
    "empty": (lambda p: p.write_bytes(b""), re.escape("empty file")),
    "truncated torch file": (
        _truncated_torch_file,
        re.escape("PytorchStreamReader failed reading zip archive: failed finding central directory"),
    ),
    "pickled code": (
        lambda p: torch.save(Pickled(), p),
        re.escape("the safe unpickler refuses its content: Unsupported global: GLOBAL ")
        + r"[\w.]+\.Pickled"
        + re.escape(" was not an allowed global by default."),
    ),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_pretrained_file_is_one_line_without_torchs_advice(tmp_path, kind):
    make, reason = GARBAGE[kind]
    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(ConfigError) as err:
        architectures.select("resnet18", opt(pretrained_path=str(path)))
    message = str(err.value)
    assert re.fullmatch(
        re.escape(f"--pretrained_path {path}: not a readable torch state dict (torch.load cannot read it: ")
        + reason
        + r"\)",
        message,
    ), message
    assert "\n" not in message and "weights_only" not in message and "trusted" not in message


def test_wrong_architecture_keeps_its_message(tmp_path):
    path = tmp_path / "r34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ConfigError) as err:
        architectures.select("resnet18", opt(pretrained_path=str(path)))
    assert str(err.value).startswith(f"--pretrained_path {path} does not fit resnet18: ")
    path = tmp_path / "counter.pt"  # a dict, but not of weights
    torch.save(collections.Counter(a=1), path)
    with pytest.raises(ConfigError, match=re.escape(f"--pretrained_path {path} does not fit resnet18: ")):
        architectures.select("resnet18", opt(pretrained_path=str(path)))
