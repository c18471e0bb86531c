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


SMALLCNN_REFUSED = (
    "--pretrained_path: smallcnn has no pretrained weights (it always starts from random weights); "
    "drop --pretrained_path or choose a backbone that has them"
)


def test_smallcnn_refuses_pretrained_path(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(architectures.select("smallcnn", opt()).backbone.state_dict(), weights)
    with pytest.raises(ConfigError) as err:
        architectures.select("smallcnn_normalize", opt(pretrained_path=str(weights)))
    assert str(err.value) == SMALLCNN_REFUSED
    with pytest.raises(ConfigError) as err:  # built by hand as well
        SmallCNN(spec=parse_arch("smallcnn"), embed_dim=8, pretrained=True, pretrained_path=str(weights))
    assert str(err.value) == SMALLCNN_REFUSED
    # the parse-time check needs only the flags (the file is not even looked at)
    with pytest.raises(ConfigError) as err:
        architectures.check_pretrained_path("smallcnn_he_normalize", "/nowhere/w.pt")
    assert str(err.value) == SMALLCNN_REFUSED
    architectures.check_pretrained_path("smallcnn", "")  # no --pretrained_path: fine
    architectures.check_pretrained_path("resnet50_frozen_normalize", "/nowhere/w.pt")
    architectures.check_pretrained_path("timm:resnet18", "/nowhere/w.pt")
    assert [
        n for n in architectures.REGISTRY.names() if not architectures.REGISTRY.get(n).has_pretrained_weights
    ] == ["smallcnn"]


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
