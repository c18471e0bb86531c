"""--embedding_distribution heads (architectures/heads.py): packing of [μ | log σ²] / [μ | log κ],
finite parameters for extreme head outputs, unchanged dirac checkpoints, the frozen mean of PFE,
last_linear from a project checkpoint (--pretrained_path), infer/confidence on hand-set weights,
and the resolution of the flag from --loss (parameters.py)."""

from __future__ import annotations

import argparse
import logging
import math

import pytest
import torch
from torch import nn

import architectures
import criteria
import parameters
from architectures.base import build_weights, parse_arch
from architectures.heads import INIT_VAR, KAPPA_MIN, LOG_VAR_MIN, inverse_softplus
from architectures.smallcnn import SmallCNN
from utilities.errors import ConfigError
from utilities.training import build_optimizer

D = 8


def opt(**kw) -> argparse.Namespace:
    base = {
        "embed_dim": D,
        "not_pretrained": True,
        "pretrained_path": "",
        "amp": "off",
        "channels_last": False,
        "embedding_distribution": "dirac",
    }
    return argparse.Namespace(**{**base, **kw})


def images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8)


# ---- packing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "width", "n_params"), [("dirac", D, 1), ("gaussian", 2 * D, D), ("vmf", D + 1, 1)]
)
@pytest.mark.parametrize("arch", ["smallcnn", "smallcnn_normalize"])
def test_packed_output_and_infer(distribution, width, n_params, arch):
    model = architectures.select(arch, opt(embedding_distribution=distribution))
    x = images()
    for training in (True, False):
        model.train(training)
        out = model(x)
        assert out.shape == (4, width) and out.dtype == torch.float32
    with torch.no_grad():
        out = model(x)
        mean, params = model.infer(x)
    assert mean.shape == (4, D) and params.shape == (4, n_params)
    assert mean.dtype == params.dtype == torch.float32
    torch.testing.assert_close(out[:, :D], mean)
    if distribution != "dirac":
        torch.testing.assert_close(out[:, D:], params)
    unit = arch.endswith("normalize") or distribution == "vmf"  # vMF: μ always on the sphere
    norms = mean.norm(dim=1)
    if unit:
        torch.testing.assert_close(norms, torch.ones(4))
    else:
        assert (norms - 1).abs().max() > 1e-2
    # the mean path is the dirac network's: same weights, same mean
    dirac = architectures.select(arch, opt())
    dirac.load_state_dict(model.state_dict(), strict=False)
    dirac.eval()
    with torch.no_grad():
        point = dirac(x)
    torch.testing.assert_close(
        point if distribution != "vmf" else nn.functional.normalize(point, dim=1), mean
    )


def test_initial_parameters_and_extreme_head_outputs():
    """The bias alone gives the documented initial σ² and κ; ±1e4 head outputs stay finite,
    with finite gradients, at the documented bounds."""
    gaussian = architectures.select("smallcnn_normalize", opt(embedding_distribution="gaussian"))
    vmf = architectures.select("smallcnn", opt(embedding_distribution="vmf"))
    x = images(2)
    for model, init in ((gaussian, INIT_VAR), (vmf, float(D))):
        nn.init.zeros_(model.uncertainty_head.linear.weight)
        torch.testing.assert_close(model(x)[:, D:], torch.full_like(model(x)[:, D:], math.log(init)))
    head = gaussian.uncertainty_head
    raw = torch.tensor([[-1e4, 1e4, 0.0, -80.0]], requires_grad=True)
    log_var = head.log_parameter(raw)
    expected = [LOG_VAR_MIN, math.log(1e4), math.log(math.log(2) + math.exp(LOG_VAR_MIN)), LOG_VAR_MIN]
    torch.testing.assert_close(log_var, torch.tensor([expected]), rtol=1e-6, atol=1e-6)
    log_var.sum().backward()
    assert torch.isfinite(raw.grad).all()
    torch.testing.assert_close(raw.grad[0, :2], torch.tensor([0.0, 1e-4]))
    raw = torch.tensor([[-1e4], [1e4], [0.0]], requires_grad=True)
    log_kappa = vmf.uncertainty_head.log_parameter(raw)
    kappa = log_kappa.exp()
    assert torch.isfinite(log_kappa).all() and (kappa > 0).all()
    torch.testing.assert_close(
        log_kappa[:, 0], torch.tensor([math.log(KAPPA_MIN), math.log(1e4), math.log(math.log(2) + KAPPA_MIN)])
    )
    log_kappa.sum().backward()
    assert torch.isfinite(raw.grad).all()
    # the whole network under extreme weights: still finite
    with torch.no_grad():
        for model in (gaussian, vmf):
            model.uncertainty_head.linear.weight.fill_(1e4)
            assert torch.isfinite(model(x)).all()
            model.uncertainty_head.linear.weight.fill_(-1e4)
            assert torch.isfinite(model(x)).all()
    assert inverse_softplus(5000.0) == 5000.0  # no overflow in the bias initialisation


def test_amp_and_channels_last_leave_float32():
    model = architectures.select(
        "smallcnn_normalize", opt(embedding_distribution="gaussian", amp="bf16", channels_last=True)
    )
    out = model(images())
    mean, params = model.infer(images())
    assert out.dtype == mean.dtype == params.dtype == torch.float32
    assert torch.isfinite(out).all()


# ---- checkpoints ---------------------------------------------------------------------------------


def test_dirac_keeps_the_checkpoint_keys_and_heads_add_only_their_own():
    by_hand = SmallCNN(
        spec=parse_arch("smallcnn_normalize"), embed_dim=D, pretrained=False, pretrained_path=""
    )
    old_keys = {f"backbone.{k}" for k in by_hand.backbone.state_dict()} | {
        "last_linear.weight",
        "last_linear.bias",
    }
    assert set(by_hand.state_dict()) == old_keys
    dirac = architectures.select("smallcnn_normalize", opt())
    assert set(dirac.state_dict()) == old_keys
    no_flag = argparse.Namespace(**{k: v for k, v in vars(opt()).items() if k != "embedding_distribution"})
    assert set(architectures.select("smallcnn_normalize", no_flag).state_dict()) == old_keys
    dirac.load_state_dict(by_hand.state_dict())  # strict: an old checkpoint loads
    new = {"uncertainty_head.linear.weight", "uncertainty_head.linear.bias"}
    for distribution, rows in (("gaussian", D), ("vmf", 1)):
        model = architectures.select("smallcnn_normalize", opt(embedding_distribution=distribution))
        assert set(model.state_dict()) == old_keys | new
        assert model.state_dict()["uncertainty_head.linear.weight"].shape == (rows, 128)


def test_select_refuses_an_unresolved_distribution():
    with pytest.raises(ValueError, match="not resolved"):
        architectures.select("smallcnn", opt(embedding_distribution="auto"))


class _LoadableCNN(SmallCNN):
    """smallcnn with --pretrained_path (through build_weights, as the real backbones): a
    checkpoint of it is kilobytes, so the test runs in milliseconds instead of ResNet's seconds."""

    name = "loadablecnn"
    has_pretrained_weights = True

    def make_backbone(self, spec, *, pretrained, pretrained_path):
        def random_init() -> nn.Module:
            return SmallCNN.make_backbone(self, spec, pretrained=False, pretrained_path="")[0]

        net = build_weights(
            self.name, random_init, None, pretrained=pretrained, pretrained_path=pretrained_path
        )
        return net, 128


@pytest.fixture
def loadable(monkeypatch):
    monkeypatch.setitem(architectures.REGISTRY._entries, _LoadableCNN.name, _LoadableCNN)
    return _LoadableCNN.name


def _checkpoint(tmp_path, name, **kw):
    model = architectures.select("loadablecnn", opt(**kw))
    with torch.no_grad():
        for value in model.state_dict().values():
            value.add_(torch.rand_like(value, dtype=torch.float).to(value.dtype))  # no init reproduces these
    path = tmp_path / name
    torch.save({"model": model.state_dict(), "args": {"arch": "loadablecnn"}, "epoch": 3}, path)
    return model, path


def test_pretrained_path_loads_last_linear_from_a_project_checkpoint(tmp_path, caplog, loadable):
    trained, path = _checkpoint(tmp_path, "checkpoint_best.pt")
    loaded = architectures.select(loadable, opt(pretrained_path=str(path), not_pretrained=False))
    assert loaded.head_loaded
    assert set(loaded.state_dict()) == set(trained.state_dict())
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    # PFE's frozen mean on it: the same mean network, no warning about an untrained head
    with caplog.at_level(logging.WARNING):
        pfe = architectures.select(
            loadable, opt(pretrained_path=str(path), embedding_distribution="gaussian"), freeze_mean=True
        )
    assert not caplog.records
    torch.testing.assert_close(pfe.last_linear.weight, trained.last_linear.weight, rtol=0, atol=0)
    # a probabilistic model's checkpoint: backbone and last_linear load, its uncertainty head is ignored
    prob, prob_path = _checkpoint(tmp_path, "gaussian.pt", embedding_distribution="gaussian")
    again = architectures.select(loadable, opt(pretrained_path=str(prob_path)))
    torch.testing.assert_close(again.last_linear.bias, prob.last_linear.bias, rtol=0, atol=0)
    torch.testing.assert_close(again.backbone[0].weight, prob.backbone[0].weight, rtol=0, atol=0)
    # another embedding size: the backbone loads, the head stays random, with a warning
    with caplog.at_level(logging.WARNING):
        wide = architectures.select(loadable, opt(pretrained_path=str(path), embed_dim=2 * D))
    assert not wide.head_loaded and "does not fit this network's (128 -> 16)" in caplog.text
    torch.testing.assert_close(wide.backbone[-3].bias, trained.backbone[-3].bias, rtol=0, atol=0)
    # a backbone-only state dict: last_linear untouched; a frozen mean on it is warned about
    torch.save(trained.backbone.state_dict(), tmp_path / "backbone.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        bare = architectures.select(
            loadable,
            opt(pretrained_path=str(tmp_path / "backbone.pt"), embedding_distribution="gaussian"),
            freeze_mean=True,
        )
    assert not bare.head_loaded and "last_linear is untrained" in caplog.text
    assert not torch.equal(bare.last_linear.weight, trained.last_linear.weight)
    torch.testing.assert_close(bare.backbone[0].weight, trained.backbone[0].weight, rtol=0, atol=0)
    # a project checkpoint of another backbone is still refused (the backbone stays strict)
    torch.save({"model": {"backbone.conv.weight": torch.zeros(1), **trained.state_dict()}}, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="1 unknown weights"):
        architectures.select(loadable, opt(pretrained_path=str(tmp_path / "x.pt")))


# ---- the frozen mean (PFE) -------------------------------------------------------------------------


def test_freeze_mean_trains_only_the_uncertainty_head():
    model = architectures.select("smallcnn", opt(embedding_distribution="gaussian"), freeze_mean=True)
    frozen = [p for n, p in model.named_parameters() if not n.startswith("uncertainty_head.")]
    assert frozen and not any(p.requires_grad for p in frozen)
    model.train()
    assert model.uncertainty_head.training
    assert not any(m.training for m in model.backbone.modules()) and not model.last_linear.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_opt = argparse.Namespace(lr=0.1, decay=0.0, fc_lr=0.05, optim="sgd")
    optimizer = build_optimizer(model, nn.Module(), train_opt)
    trained_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained_ids == {id(p) for p in model.uncertainty_head.parameters()}
    mean, params = model.infer(images(6))
    assert not mean.requires_grad and params.requires_grad  # no graph through the frozen mean
    out = model(images(6))
    (out[:, :D].sum() + out[:, D:].pow(2).sum()).backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("uncertainty_head."):
            assert not torch.equal(after[key], value), key
        else:
            assert torch.equal(after[key], value), key  # weights and BN running statistics alike
    # SyncBatchNorm conversion (--sync_bn) keeps the frozen parameters frozen
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert {n for n, p in synced.named_parameters() if p.requires_grad} == {
        "uncertainty_head.linear.weight",
        "uncertainty_head.linear.bias",
    }
    with pytest.raises(ConfigError, match="nothing to train"):
        architectures.select("smallcnn", opt(), freeze_mean=True)


# ---- infer and confidence on hand-set weights --------------------------------------------------------


def _linear_model(distribution: str, arch: str = "smallcnn") -> nn.Module:
    """features = the (B, 2) input itself; last_linear z = (3 x0, 4 x1)."""
    model = architectures.select(arch, opt(embed_dim=2, embedding_distribution=distribution)).eval()
    model.backbone = nn.Identity()
    model.last_linear = nn.Linear(2, 2)
    with torch.no_grad():
        model.last_linear.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        model.last_linear.bias.zero_()
        if model.uncertainty_head is not None:
            head = model.uncertainty_head.linear = nn.Linear(2, model.uncertainty_head.linear.out_features)
            head.weight.zero_()
            head.weight[0, 0] = 1.0  # r_0 = x0 + b_0
            head.bias.copy_(torch.tensor([0.0, -2.0][: head.out_features]))
    return model


def test_infer_and_confidence_by_hand():
    x = torch.tensor([[1.0, 1.0], [0.5, 0.0]])
    with torch.no_grad():
        mean, params = _linear_model("dirac").infer(x)
        torch.testing.assert_close(mean, torch.tensor([[3.0, 4.0], [1.5, 0.0]]))
        torch.testing.assert_close(params, torch.tensor([[5.0], [1.5]]))  # norm before normalisation
        mean, params = _linear_model("dirac", "smallcnn_normalize").infer(x)
        torch.testing.assert_close(mean, torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
        torch.testing.assert_close(architectures.confidence(params, "dirac"), torch.tensor([5.0, 1.5]))

        def log_softplus(r: float, floor: float) -> float:
            return math.log(math.log1p(math.exp(r)) + floor)

        floor = math.exp(LOG_VAR_MIN)
        mean, params = _linear_model("gaussian").infer(x)
        torch.testing.assert_close(mean, torch.tensor([[3.0, 4.0], [1.5, 0.0]]))
        expected = [
            [log_softplus(1.0, floor), log_softplus(-2.0, floor)],
            [log_softplus(0.5, floor), log_softplus(-2.0, floor)],
        ]
        torch.testing.assert_close(params, torch.tensor(expected))
        torch.testing.assert_close(
            architectures.confidence(params, "gaussian"), -torch.tensor(expected).mean(dim=1)
        )
        mean, params = _linear_model("vmf").infer(x)  # μ normalised without _normalize
        torch.testing.assert_close(mean, torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
        expected = [[log_softplus(1.0, KAPPA_MIN)], [log_softplus(0.5, KAPPA_MIN)]]
        torch.testing.assert_close(params, torch.tensor(expected))
        torch.testing.assert_close(architectures.confidence(params, "vmf"), torch.tensor(expected)[:, 0])
    with pytest.raises(ValueError):
        architectures.confidence(torch.zeros(2, 3), "vmf")
    with pytest.raises(ValueError):
        architectures.confidence(torch.zeros(2, 1), "point")


# ---- the flag: resolved from --loss ----------------------------------------------------------------


class _FakeGaussianLoss(nn.Module):
    name = "fake_gaussian"
    distribution = "gaussian"
    requires_miner = False
    supports_xbm = False
    tuple_kinds = ()


def test_the_flag_is_resolved_from_the_loss(tmp_path, monkeypatch):
    base = ["--dataset", "digits", "--save_path", str(tmp_path)]
    run, _ = parameters.parse_run([*base, "--loss", "margin"])
    assert run.embedding_distribution == "dirac"
    run, _ = parameters.parse_run([*base, "--loss", "margin", "--embedding_distribution", "dirac"])
    assert run.embedding_distribution == "dirac"
    with pytest.raises(ConfigError) as err:
        parameters.parse_run([*base, "--loss", "margin", "--embedding_distribution", "vmf"])
    assert str(err.value) == (
        "loss 'margin' trains a point (dirac) embedding; drop --embedding_distribution vmf "
        "or use --embedding_distribution dirac"
    )
    monkeypatch.setitem(criteria.REGISTRY._entries, "fake_gaussian", _FakeGaussianLoss)
    run, _ = parameters.parse_run([*base, "--loss", "fake_gaussian"])
    assert run.embedding_distribution == "gaussian"
    assert (
        parameters.parse(["--dataset", "digits", "--loss", "fake_gaussian"]).embedding_distribution
        == "gaussian"
    )
    with pytest.raises(ConfigError) as err:
        parameters.parse_run([*base, "--loss", "fake_gaussian", "--embedding_distribution", "dirac"])
    assert str(err.value) == (
        "loss 'fake_gaussian' trains a gaussian embedding; drop --embedding_distribution dirac "
        "or use --embedding_distribution gaussian"
    )
    # a checkpoint from before the flag existed: --evaluate_only resolves it from its loss
    path = tmp_path / "checkpoint_best.pt"
    torch.save({"model": {}, "args": {"loss": "margin", "dataset": "digits"}}, path)
    run, _ = parameters.parse_run(
        ["--evaluate_only", "--checkpoint", str(path), "--save_path", str(tmp_path)]
    )
    assert run.embedding_distribution == "dirac"


def test_a_stored_configuration_follows_a_new_loss(tmp_path, monkeypatch):
    """args.json records the resolved distribution; --config with another --loss re-resolves it."""
    monkeypatch.setitem(criteria.REGISTRY._entries, "fake_gaussian", _FakeGaussianLoss)
    stored = tmp_path / "args.json"
    stored.write_text('{"args": {"loss": "margin", "embedding_distribution": "dirac", "dataset": "digits"}}')
    base = ["--config", str(stored), "--save_path", str(tmp_path)]
    assert parameters.parse_run(base)[0].embedding_distribution == "dirac"
    assert parameters.parse_run([*base, "--loss", "fake_gaussian"])[0].embedding_distribution == "gaussian"
