"""The criteria contract, for every registered loss (parametrised over criteria.REGISTRY.names()).

Built from the default flags of the criteria registries (as main.py does), each loss must give a
finite scalar and finite gradients in float32 and float64 on CPU, also for unnormalised input;
expose well-formed optimizer groups for its learnable parameters; survive a state_dict round
trip; and both the registry and the constructor must refuse incompatible miners with a clear
error.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import criteria
from criteria._common import LIFTED, NPAIR, PAIRS, TRIPLETS, SeededGenerators
from criteria.xbm import CrossBatchMemory
from tests.conftest import requires_cuda
from tests.criteria.helpers import STUB_MINERS, FixedMiner, packed
from utilities.errors import ConfigError
from utilities.training import build_optimizer

NAMES = criteria.REGISTRY.names()
EXPECTED = {  # the benchmark's list: the study's 14, the 12 beyond it (fastap as the AP surrogate)
    "angular", "arcface", "contrastive", "histogram", "lifted", "margin", "multisimilarity", "npair",
    "proxynca", "quadruplet", "snr", "softmax", "softtriplet", "triplet",
    "proxyanchor", "cosface", "sphereface", "subcenter_arcface", "adacos", "curricularface",
    "elasticface", "adaface", "circle", "supcon", "fastap",
    "hib", "pfe", "dul_cls", "dul_reg", "spe",  # probabilistic (Gaussian) embeddings, issue 14
    "scf", "vmf_fl", "vmf",  # probabilistic (von Mises-Fisher) embeddings, issue 14
    "dsml",  # vMF class distributions, point embeddings
}  # fmt: skip


CONTEXT = {"n_classes", "embed_dim", "lr", "batchminer", "seed"}  # what select() can hand to a loss


def parse(args: list[str]) -> argparse.Namespace:
    """The loss and loss-wrapper flags, parsed as main.py's parser would parse them."""
    parser = argparse.ArgumentParser()
    criteria.REGISTRY.add_args(parser)
    criteria.WRAPPERS.add_args(parser)
    return parser.parse_args(args)


@pytest.fixture
def opt() -> argparse.Namespace:
    """Default loss flags plus the global flags select() and build_optimizer read (their defaults);
    ``n_classes`` is kept on the namespace for the tests' ``build``."""
    namespace = parse([])
    namespace.embed_dim, namespace.lr, namespace.n_classes, namespace.seed = 16, 1e-5, 10, 0
    namespace.decay, namespace.optim, namespace.fc_lr = 4e-4, "adam", -1.0
    return namespace


def build(name: str, opt: argparse.Namespace, batchminer=None):
    cls = criteria.REGISTRY.get(name)
    if batchminer is None and cls.requires_miner:
        batchminer = STUB_MINERS[cls.tuple_kinds[0]]()
    return criteria.select(name, opt, n_classes=opt.n_classes, batchminer=batchminer)


def batch(dtype=torch.float32, scale: float = 1.0, seed: int = 0, name: str = "margin"):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(20, 16, generator=g, dtype=dtype), dim=1) * scale
    labels = torch.arange(5).repeat_interleave(4)[torch.randperm(20, generator=g)] + 3
    return packed(name, x, g, scale).requires_grad_(), labels


def test_every_issue_criterion_is_registered():
    assert set(NAMES) == EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_declares_the_contract(name):
    cls = criteria.REGISTRY.get(name)
    assert cls.name == name and isinstance(cls.requires_miner, bool)
    assert isinstance(cls.tuple_kinds, tuple) and set(cls.tuple_kinds) <= {TRIPLETS, PAIRS, NPAIR, LIFTED}
    assert cls.requires_miner == (len(cls.tuple_kinds) > 0)
    assert isinstance(cls.supports_xbm, bool) and not hasattr(cls, "tuple_kind")
    assert cls.__doc__ and cls.__doc__.strip()
    module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__
    assert "http" in module_doc, "the module docstring cites the paper"
    context = criteria.REGISTRY.context(name)
    assert set(context) <= CONTEXT and ("batchminer" in context) == cls.requires_miner
    for hp in criteria.REGISTRY.hyperparameters(name):
        assert hp.help, f"{name}.{hp.param} has no help"
        assert f"--{hp.flag}" in module_doc, f"the docstring of '{name}' does not document --{hp.flag}"
    # constructible from plain keyword arguments, without a namespace; hyperparameters are attributes
    values = {"n_classes": 4, "embed_dim": 8, "lr": 1e-3, "seed": 0}
    values["batchminer"] = STUB_MINERS[cls.tuple_kinds[0]]() if cls.requires_miner else None
    plain = cls(**{k: values[k] for k in context})
    assert isinstance(plain, torch.nn.Module) and not hasattr(plain, "hp")
    for hp in criteria.REGISTRY.hyperparameters(name):
        assert hasattr(plain, hp.param), f"{name} does not keep its hyperparameter {hp.param}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_finite(name, dtype, opt):
    criterion = build(name, opt).to(dtype)
    for scale in (1.0, 4.0):  # normalised and unnormalised input
        x, labels = batch(dtype, scale, name=name)
        value = criterion(x, labels)
        assert value.dim() == 0 and value.dtype == dtype and torch.isfinite(value)
        params = [x, *criterion.parameters()]
        grads = torch.autograd.grad(value, params, allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
        assert grads[0].abs().sum() > 0, "no gradient reaches the embeddings"


def _clone(value):
    """A state-dict entry copied: a tensor, or a Monte-Carlo loss's extra state (generator states
    by device, criteria._common.SeededGenerators)."""
    return {k: v.clone() for k, v in value.items()} if isinstance(value, dict) else value.clone()


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_and_state_dict_round_trip(name, opt):
    torch.manual_seed(1)
    criterion = build(name, opt)
    groups = criterion.param_groups() if hasattr(criterion, "param_groups") else []
    own = {id(p) for p in criterion.parameters()}
    grouped = [p for g in groups for p in g["params"]]
    assert {id(p) for p in grouped} == own, "every learnable parameter is in exactly one group"
    for g in groups:
        assert g["lr"] > 0 and g["weight_decay"] == 0.0 and g["name"].startswith(name)
    # one optimisation step + one training forward (moves parameters and stateful buffers)
    if groups:
        optim = torch.optim.SGD(groups)
        x, labels = batch(name=name)
        criterion(x, labels).backward()
        optim.step()
    criterion.train()
    criterion(*batch(seed=1, name=name))
    state = {k: _clone(v) for k, v in criterion.state_dict().items()}

    torch.manual_seed(2)
    restored = build(name, opt)
    restored.load_state_dict(state)
    for key, value in restored.state_dict().items():
        assert _equal(value, state[key]), key
    criterion.eval(), restored.eval()
    x, labels = batch(seed=3, name=name)
    assert torch.equal(criterion(x, labels), restored(x, labels))


MINED = [(n, k) for n in NAMES for k in criteria.REGISTRY.get(n).tuple_kinds]


@pytest.mark.parametrize("name,kind", MINED, ids=[f"{n}-{k}" for n, k in MINED])
def test_nothing_mined_is_a_differentiable_zero(name, kind, opt):
    e = torch.empty(0, dtype=torch.long)
    rows = torch.zeros(0, 20, dtype=torch.bool)
    empty = {TRIPLETS: (e, e, e), PAIRS: (e, e, e, e), NPAIR: (e, e, rows), LIFTED: (e, rows, rows)}[kind]
    criterion = build(name, opt, FixedMiner(kind, empty))
    x, labels = batch()
    value = criterion(x, labels)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", NAMES)
def test_registry_checks_the_tuple_kind(name, opt):
    cls = criteria.REGISTRY.get(name)
    assert criteria.requires_miner(name) == cls.requires_miner
    if not cls.requires_miner:
        assert criteria.select(name, opt, n_classes=opt.n_classes) is not None  # never needs a miner
        return
    with pytest.raises(ConfigError, match=f"loss '{name}' needs a batch miner"):
        criteria.select(name, opt, n_classes=opt.n_classes, batchminer=None)
    other = next(k for k in (TRIPLETS, NPAIR, LIFTED) if k not in cls.tuple_kinds)
    consumes = " or ".join(cls.tuple_kinds)
    with pytest.raises(ConfigError, match=f"consumes {consumes}, but miner 'fixed' produces {other}"):
        criteria.select(name, opt, n_classes=opt.n_classes, batchminer=FixedMiner(other, ()))


@pytest.mark.parametrize("name", [n for n in NAMES if criteria.REGISTRY.get(n).requires_miner])
def test_constructor_checks_the_miner(name):
    """Built by hand, a loss refuses a missing or incompatible miner at once (not at the first forward)."""
    cls = criteria.REGISTRY.get(name)
    context = {"n_classes": 4, "embed_dim": 8, "lr": 1e-3}
    context = {k: v for k, v in context.items() if k in criteria.REGISTRY.context(name)}
    with pytest.raises(ValueError, match=f"loss '{name}' needs a batch miner"):
        cls(batchminer=None, **context)
    other = next(k for k in (TRIPLETS, NPAIR, LIFTED) if k not in cls.tuple_kinds)
    with pytest.raises(ValueError, match=f"loss '{name}' consumes .*, but miner 'fixed' produces {other}"):
        cls(batchminer=FixedMiner(other, ()), **context)
    for kind in cls.tuple_kinds:
        assert cls(batchminer=STUB_MINERS[kind](), **context).batchminer.tuple_kind == kind


def test_reference_flag_names_and_defaults():
    opt = parse([])
    expected = {
        "loss_proxynca_lrmulti": 50.0, "loss_npair_l2": 0.005, "loss_angular_alpha": 45.0,
        "loss_angular_npair_ang_weight": 2.0, "loss_angular_npair_l2": 0.005, "loss_lifted_neg_margin": 1.0,
        "loss_lifted_l2": 0.005, "loss_quadruplet_margin_alpha_1": 0.2, "loss_quadruplet_margin_alpha_2": 0.2,
        "loss_softtriplet_n_centroids": 2, "loss_softtriplet_margin_delta": 0.01, "loss_softtriplet_gamma": 0.1,
        "loss_softtriplet_lambda": 8.0, "loss_softtriplet_reg_weight": 0.2, "loss_softtriplet_lrmulti": 1.0,
        "loss_softmax_lr": 1e-5, "loss_softmax_temperature": 0.05, "loss_histogram_nbins": 65,
        "loss_snr_margin": 0.2, "loss_snr_reg_lambda": 0.005, "loss_arcface_lr": 5e-4,
        "loss_arcface_angular_margin": 0.5, "loss_arcface_feature_scale": 16.0,
        "xbm_size": 0, "xbm_weight": 1.0, "xbm_start_iteration": 0,
    }  # fmt: skip
    for flag, value in expected.items():
        assert getattr(opt, flag) == value, flag
    opt = parse(["--loss_softtriplet_lambda", "20", "--xbm_size", "64"])
    assert opt.loss_softtriplet_lambda == 20.0 and opt.xbm_size == 64


def test_xbm_flag_wraps_supported_losses_and_refuses_others(opt):
    opt.xbm_size = 32
    wrapped = build("multisimilarity", opt)
    assert isinstance(wrapped, CrossBatchMemory) and wrapped.memory.shape == (32, 16)
    mined = build("margin", opt)
    assert isinstance(mined, CrossBatchMemory)
    assert mined.criterion.requires_miner and mined.criterion.tuple_kinds == (TRIPLETS,)
    assert not any(hasattr(mined, a) for a in ("hp", "batchminer", "requires_miner", "tuple_kind"))
    assert [g["name"] for g in mined.param_groups()] == ["margin_beta"]
    with pytest.raises(ConfigError, match="--xbm_size needs a pair- or tuple-based loss; 'arcface'"):
        build("arcface", opt)


@pytest.mark.parametrize("name,xbm", [("proxyanchor", 0), ("softtriplet", 0), ("margin", 0), ("margin", 16)])
def test_optimizer_groups_and_checkpoint_file_round_trip(name, xbm, opt, tmp_path):
    """The path main.py takes: build_optimizer adds the loss's groups; the checkpoint holds them."""
    opt.xbm_size = xbm
    model = torch.nn.Linear(16, 16)
    criterion = build(name, opt)
    optimizer = build_optimizer(model, criterion, opt)
    names = [g.get("name") for g in optimizer.param_groups]
    expected = {
        "proxyanchor": "proxyanchor_proxies",
        "softtriplet": "softtriplet_centroids",
        "margin": "margin_beta",
    }
    assert names[0] == "network" and expected[name] in names
    group = optimizer.param_groups[names.index(expected[name])]
    assert group["weight_decay"] == 0.0 and group["lr"] == criterion.param_groups()[0]["lr"]
    x, labels = batch()
    criterion(model(x), labels).backward()
    optimizer.step()
    torch.save(
        {"criterion": criterion.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt"
    )
    state = torch.load(tmp_path / "ckpt.pt")
    restored = build(name, opt)
    restored.load_state_dict(state["criterion"])
    for key, value in criterion.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


# Monte-Carlo losses draw from a per-device generator: CPU and CUDA streams differ by design
DETERMINISTIC = [n for n in NAMES if not issubclass(criteria.REGISTRY.get(n), SeededGenerators)]


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_cuda_matches_cpu(name, opt):
    """Same loss and gradient on CUDA (embeddings, labels and parameters on the GPU) as on CPU."""
    torch.manual_seed(0)
    cpu = build(name, opt).double().eval()
    gpu = build(name, opt).double().eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    x, labels = batch(torch.float64, name=name)
    xg = x.detach().cuda().requires_grad_()
    value_cpu, value_gpu = cpu(x, labels), gpu(xg, labels.cuda())
    (grad_cpu,), (grad_gpu,) = torch.autograd.grad(value_cpu, [x]), torch.autograd.grad(value_gpu, [xg])
    torch.testing.assert_close(value_gpu.cpu(), value_cpu)
    torch.testing.assert_close(grad_gpu.cpu(), grad_cpu)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


CLASS_LOSSES = [n for n in NAMES if "n_classes" in criteria.REGISTRY.context(n)]


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_class_losses_use_o_bc_memory(name, opt):
    """No (B, C, D) tensor, forward or backward: every intermediate is at most the size of the
    parameter table (C·K × D) or of the logits (B × C·K), far below B·C·D here."""
    B, C, D = 32, 300, 64
    opt.n_classes, opt.embed_dim = C, D
    criterion = build(name, opt)
    g = torch.Generator().manual_seed(0)
    x = packed(name, torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1), g)
    x.requires_grad_()
    labels = torch.randint(0, C, (B,), generator=g)
    with _LargestTensor() as probe:
        criterion(x, labels).backward()
    assert 0 < probe.largest <= 4 * C * D < B * C * D / 2
