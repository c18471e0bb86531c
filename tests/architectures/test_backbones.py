"""Backbones: arch parsing, output shape and normalisation, frozen BatchNorm, pooling, input
normalisation (ImageNet, BN-Inception BGR 0-255), weights (--not_pretrained, --pretrained_path,
unreachable downloads), mixed precision and channels_last."""

from __future__ import annotations

import argparse
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

import architectures
from architectures.base import ArchSpec, EmbeddingNet, GlobalPool, autocast_dtype, parse_arch
from architectures.smallcnn import SmallCNN
from tests.conftest import requires_cuda
from utilities.errors import ConfigError
from utilities.training import train_one_epoch


def opt(**kw) -> argparse.Namespace:
    base = {
        "embed_dim": 16,
        "not_pretrained": True,
        "pretrained_path": "",
        "amp": "off",
        "channels_last": False,
    }
    return argparse.Namespace(**{**base, **kw})


# ---- arch names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "spec"),
    [
        ("resnet50_frozen_normalize", ArchSpec("resnet50", freeze_bn=True, normalize=True)),
        (
            "bninception_normalize_frozen_double",
            ArchSpec("bninception", freeze_bn=True, normalize=True, pooling="double"),
        ),
        ("googlenet", ArchSpec("googlenet")),
        ("smallcnn_he", ArchSpec("smallcnn", head_init="kaiming")),
        (
            "timm:vit_small_patch16_224.dino_normalize",
            ArchSpec("timm", model="vit_small_patch16_224.dino", normalize=True),
        ),
        ("timm:resnet50_frozen", ArchSpec("timm", model="resnet50", freeze_bn=True)),
    ],
)
def test_parse_arch(arch, spec):
    assert parse_arch(arch) == spec


@pytest.mark.parametrize("arch", ["resnet50_frozen_mix", "resnet50_fozen", "timm:_normalize"])
def test_bad_arch_names(arch):
    with pytest.raises(ConfigError):
        parse_arch(arch)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError, match=r"resnet101.*smallcnn"):
        architectures.select("vgg16_normalize", opt())


# ---- the plugin contract ---------------------------------------------------------------------------

CONTEXT = ["spec", "embed_dim", "pretrained", "pretrained_path"]


@pytest.mark.parametrize("name", architectures.REGISTRY.names())
def test_backbones_take_only_explicit_context(name):
    cls = architectures.REGISTRY.get(name)
    assert issubclass(cls, EmbeddingNet)
    assert architectures.REGISTRY.context(name) == CONTEXT
    assert architectures.REGISTRY.hyperparameters(name) == []  # no --arch_* flags
    spec = parse_arch("timm:resnet18" if name == "timm" else name)
    assert cls.input_config_for(spec) == architectures.input_config(
        "timm:resnet18" if name == "timm" else name
    )


def test_a_backbone_built_by_hand_equals_the_selected_one():
    torch.manual_seed(4)
    by_hand = SmallCNN(
        spec=parse_arch("smallcnn_normalize"), embed_dim=16, pretrained=True, pretrained_path=""
    )
    torch.manual_seed(4)
    selected = architectures.select("smallcnn_normalize", opt())
    assert list(by_hand.state_dict()) == list(selected.state_dict())
    for key, value in by_hand.state_dict().items():
        assert torch.equal(value, selected.state_dict()[key]), key
    with pytest.raises(TypeError):
        SmallCNN(parse_arch("smallcnn"), 16, True, "")  # keyword-only


def test_checkpoint_keys_are_backbone_and_head_only():
    model = architectures.select("smallcnn_he", opt())
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"backbone", "last_linear"}
    assert model.state_dict()["last_linear.weight"].shape == (16, 128)


# ---- every backbone ------------------------------------------------------------------------------

BACKBONES = {  # arch -> input size (small where the network allows it, to keep CPU tests fast)
    "resnet18_frozen_normalize": 32,
    "resnet50_frozen_normalize_double": 32,
    "googlenet_frozen_normalize": 48,
    "bninception_frozen_normalize": 64,
    "timm:resnet18_frozen_normalize": 32,
    "smallcnn_frozen_normalize": 16,
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def built(request):
    torch.manual_seed(0)
    return request.param, architectures.select(request.param, opt())


def test_output_shape_and_normalisation(built):
    arch, model = built
    model.eval()
    x = torch.randint(0, 256, (3, 3, BACKBONES[arch], BACKBONES[arch]), dtype=torch.uint8)
    with torch.no_grad():
        z = model(x)
    assert z.shape == (3, 16) and z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)


def test_frozen_batchnorm_stays_frozen_after_a_training_step(built):
    arch, model = built
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    before = [(m.running_mean.clone(), m.running_var.clone(), m.weight.detach().clone()) for m in bns]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    assert not any(m.training for m in bns)
    x = torch.randint(0, 256, (4, 3, BACKBONES[arch], BACKBONES[arch]), dtype=torch.uint8)
    optimizer.zero_grad()
    model(x)[:, 0].sum().backward()
    optimizer.step()
    for m, (mean, var, _) in zip(bns, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    # the affine parameters still learn (GoogLeNet's tiny init gives ~1e-10 gradients: check grads)
    assert all(m.weight.grad is not None for m in bns) and any(m.weight.grad.abs().sum() > 0 for m in bns)


def test_unfrozen_batchnorm_updates():
    model = architectures.select("smallcnn_normalize", opt())
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 16, 16))
    assert not torch.equal(bn.running_mean, before)


def test_double_pooling_is_average_plus_max():
    x = torch.randn(2, 5, 3, 4)
    assert torch.allclose(GlobalPool("double")(x), x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))
    assert GlobalPool("avg", keepdim=True)(x).shape == (2, 5, 1, 1)
    plain = architectures.select("resnet18", opt())
    double = architectures.select("resnet18_double", opt())
    double.load_state_dict(plain.state_dict())
    plain.eval(), double.eval()
    x = torch.randn(1, 3, 64, 64)
    feats = plain.backbone.layer4(
        plain.backbone.layer3(
            plain.backbone.layer2(
                plain.backbone.layer1(
                    plain.backbone.maxpool(plain.backbone.relu(plain.backbone.bn1(plain.backbone.conv1(x))))
                )
            )
        )
    )
    with torch.no_grad():
        expected = double.last_linear(feats.mean(dim=(2, 3)) + feats.amax(dim=(2, 3)))
        assert torch.allclose(double(x), expected, atol=1e-5)


def test_he_head_init():
    torch.manual_seed(0)
    model = architectures.select("resnet50_he", opt(embed_dim=512))
    w = model.last_linear.weight
    assert torch.count_nonzero(model.last_linear.bias) == 0
    assert w.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.05)  # fan_out = embed_dim


# ---- input normalisation --------------------------------------------------------------------------


def pixel(r: int, g: int, b: int) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.uint8).view(1, 3, 1, 1)


def test_imagenet_normalisation_of_uint8_input():
    model = architectures.select("resnet18", opt())
    out = model.preprocess(pixel(200, 100, 50)).flatten()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (torch.tensor([200, 100, 50]) / 255.0 - mean) / std
    assert torch.allclose(out, expected, atol=1e-5)


def test_bninception_gets_bgr_0_255_caffe_input():
    model = architectures.select("bninception_normalize", opt())
    out = model.preprocess(pixel(200, 100, 50)).flatten()
    # BGR order, 0-255 range, Caffe means B 104, G 117, R 128
    assert torch.allclose(out, torch.tensor([50 - 104.0, 100 - 117.0, 200 - 128.0]), atol=1e-3)


def test_float_input_is_taken_as_normalised():
    model = architectures.select("smallcnn", opt()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), model.last_linear(model.backbone(x)), atol=1e-6)


# ---- weights --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch", ["resnet18", "googlenet", "bninception", "timm:resnet18", "timm:convnextv2_atto"]
)
def test_pretrained_path_round_trip(tmp_path, arch):
    torch.manual_seed(1)
    source = architectures.select(arch, opt())
    with torch.no_grad():  # every weight unlike a fresh init (norms start at 1, biases at 0)
        for p in source.backbone.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "weights.pt"
    torch.save(source.backbone.state_dict(), path)
    torch.manual_seed(2)
    loaded = architectures.select(arch, opt(pretrained_path=str(path), not_pretrained=False))
    for (name, a), b in zip(
        source.backbone.state_dict().items(), loaded.backbone.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # a whole checkpoint of this project (backbone.* keys, plus the head) loads as well
    torch.save({"model": source.state_dict()}, path)
    again = architectures.select(arch, opt(pretrained_path=str(path)))
    first = next(iter(source.backbone.state_dict()))
    assert torch.equal(again.backbone.state_dict()[first], source.backbone.state_dict()[first])


def test_torchvision_state_dict_with_classifier_loads(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = architectures.select("resnet18", opt(pretrained_path=str(path)))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_wrong_pretrained_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        architectures.select("resnet18", opt(pretrained_path=str(tmp_path / "nope.pt")))
    path = tmp_path / "r34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        architectures.select("resnet18", opt(pretrained_path=str(path)))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read"):
        architectures.select("resnet18", opt(pretrained_path=str(tmp_path / "junk.pt")))


def _offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "bninception"])
def test_unreachable_weights_are_one_clear_line(monkeypatch, arch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    monkeypatch.setattr(
        torchvision.models._api.WeightsEnum, "get_state_dict", lambda self, *a, **k: _offline()
    )
    with pytest.raises(ConfigError) as err:
        architectures.select(arch, opt(not_pretrained=False))
    message = str(err.value)
    assert "\n" not in message and "--not_pretrained" in message and "--pretrained_path" in message
    assert arch in message and "URLError" in message


@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "bninception", "timm:resnet18"])
def test_not_pretrained_never_downloads(monkeypatch, arch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    monkeypatch.setattr(
        torchvision.models._api.WeightsEnum, "get_state_dict", lambda self, *a, **k: _offline()
    )
    import timm.models._builder as timm_builder

    monkeypatch.setattr(timm_builder, "load_pretrained", _offline)
    assert isinstance(architectures.select(arch, opt(not_pretrained=True)), EmbeddingNet)


def test_timm_unknown_model():
    with pytest.raises(ConfigError, match="no model called"):
        architectures.select("timm:not_a_real_model_xyz", opt())


def test_timm_vit_dino_shape():
    model = architectures.select("timm:vit_tiny_patch16_224_normalize", opt()).eval()
    with torch.no_grad():
        z = model(torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8))
    assert z.shape == (1, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(1), atol=1e-5)  # _normalize


# ---- precision -------------------------------------------------------------------------------------


def test_autocast_dtype_resolution(monkeypatch):
    assert autocast_dtype("off", "cuda") is None and autocast_dtype("off", "cpu") is None
    assert autocast_dtype("fp16", "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert (
        autocast_dtype("auto", "cuda") == torch.bfloat16 and autocast_dtype("bf16", "cuda") == torch.bfloat16
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", "cuda") == torch.float16
    monkeypatch.setattr("architectures.base._cpu_has_bf16", lambda: False)
    assert autocast_dtype("auto", "cpu") is None  # no native bf16: float32
    monkeypatch.setattr("architectures.base._cpu_has_bf16", lambda: True)
    assert autocast_dtype("auto", "cpu") == torch.bfloat16 and autocast_dtype("fp16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError):
        autocast_dtype("fp8", "cpu")


def test_amp_runs_the_backbone_in_bf16_but_returns_float32(monkeypatch):
    monkeypatch.setattr("architectures.base._cpu_has_bf16", lambda: True)
    model = architectures.select("smallcnn_normalize", opt(amp="bf16")).eval()
    seen = []
    model.backbone[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        z = model(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert seen == [torch.bfloat16] and z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_channels_last_gives_the_same_embedding():
    torch.manual_seed(0)
    plain = architectures.select("resnet18_normalize", opt()).eval()
    nhwc = architectures.select("resnet18_normalize", opt(channels_last=True)).eval()
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(plain(x), nhwc(x), atol=1e-5)


@requires_cuda
def test_fp16_training_step_on_cuda():
    model = architectures.select("resnet18_normalize", opt(amp="fp16")).cuda()
    assert model.autocast_dtype("cuda") == torch.float16
    data = [
        (torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8), torch.arange(4).repeat(2), torch.arange(8))
    ]

    class Loss(nn.Module):
        def forward(self, z, y):
            assert z.dtype == torch.float32
            return (z[:4] - z[4:]).pow(2).sum()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_one_epoch(model, Loss(), data, optimizer, torch.device("cuda"), epoch=0, progress=False)
    assert stats["loss"] > 0
