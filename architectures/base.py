"""The embedding network: backbone features -> ``last_linear`` -> optional L2 norm, plus the shared
machinery of all backbones (arch-name parsing, input normalisation, weights, precision).

Architecture names keep the reference study's form ``<backbone>[_<modifier>...]``, e.g.
``resnet50_frozen_normalize`` or ``bninception_normalize_frozen_double`` (any order), and
``timm:<model name>[_<modifier>...]`` for any timm model (``timm:vit_small_patch16_224.dino``).
:func:`parse_arch` turns them into explicit fields instead of the reference's substring tests:

* ``frozen``: BatchNorm running statistics are frozen (BN layers stay in eval mode in training;
  their affine parameters still learn, as in the study);
* ``normalize``: the output embedding is L2-normalised;
* ``double``: global pooling is average + max pooling (summed, as in the study's BN-Inception;
  here available for every CNN backbone; timm uses its own ``avgmax`` = ½(avg + max));
* ``he``: Kaiming-normal (fan_out) initialisation of ``last_linear``, bias 0 (the study's ``_he``).

Unknown modifiers are an error (the reference silently ignored them).

**Input.** The data pipeline hands the network ``uint8`` images (B, 3, H, W) in RGB order, so the
workers do no float work and host->device copies are 4× smaller; :class:`EmbeddingNet` converts
them on the device with the backbone's :class:`InputConfig` (ImageNet mean/std, or BN-Inception's
BGR 0-255 "Caffe" normalisation). Float inputs are taken as already normalised (the embedded
``digits`` dataset, tests).

**Precision.** ``--amp`` runs the backbone and head under ``torch.autocast`` (bf16, or fp16 with a
gradient scaler, on CUDA; bf16 on a CPU that supports it natively, otherwise float32); the
embedding leaves the network as float32, so every loss is computed in float32. ``--channels_last``
puts weights and inputs in NHWC memory format (faster convolutions on tensor cores).

**Distributions.** ``--embedding_distribution gaussian|vmf`` (set by ``select`` through
:meth:`EmbeddingNet.set_distribution`) adds an ``uncertainty_head`` next to ``last_linear``
(architectures/heads.py) and ``forward`` returns the packed ``[μ | log σ²]`` (B, 2D) or
``[μ | log κ]`` (B, D + 1), in training and evaluation alike; ``dirac`` (the default) adds no module
and returns (B, D) as before, so older checkpoints load unchanged. :meth:`EmbeddingNet.infer` splits
the output into the mean that retrieval ranks and the per-image parameters: the norm of the
embedding before L2 normalisation (``dirac``), log σ² or log κ. With ``freeze_mean`` (a loss that
trains only the uncertainty of a fixed network, PFE) the backbone and ``last_linear`` stop
learning: no gradients, their BatchNorm and dropout layers in eval mode, the mean computed under
``no_grad``.

**Local weights.** ``--pretrained_path`` takes a backbone state dict (torchvision's, timm's, the
study's) or a checkpoint of this project (a state dict with ``backbone.*`` and ``last_linear.*``
keys, or a ``checkpoint_*.pt`` holding it under ``model``). The backbone must fit exactly; from a
project checkpoint ``last_linear`` is loaded too when its shape fits (else it stays random, with
a warning), e.g. the trained deterministic network whose mean PFE freezes. An ``uncertainty_head``
in the file is ignored: the head always starts fresh.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from architectures.heads import DIRAC, DISTRIBUTIONS, VMF, make_head
from utilities.errors import ConfigError

log = logging.getLogger(__name__)

KNOWN_MODIFIERS = ("frozen", "normalize", "double", "he")
AMP_MODES = ("off", "auto", "bf16", "fp16")
CLASSIFIER_KEYS = ("fc.", "last_linear.", "classifier.", "head.")
PROJECT_HEAD_KEYS = ("last_linear.", "uncertainty_head.")  # the heads of a checkpoint of this project
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    """The parsed ``--arch``: backbone name, timm model name and the modifiers as fields."""

    backbone: str
    model: str = ""  # the timm model name for ``timm:<name>``
    freeze_bn: bool = False
    normalize: bool = False
    pooling: str = "avg"  # "avg" or "double" (avg + max)
    head_init: str = "default"  # "default" (torch's Linear init) or "kaiming"


@dataclass(frozen=True)
class InputConfig:
    """What a backbone expects: crop size and pixel normalisation of RGB images in [0, 1].

    ``bgr255``: Caffe style, channels flipped to BGR and ``x·255 − mean·255`` (std 1/255), as
    BN-Inception was trained."""

    crop: int = 224
    resize: int = 256  # evaluation: resize the shorter side to this, then centre-crop ``crop``
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bgr255: bool = False


BNINCEPTION_INPUT = InputConfig(
    crop=227, mean=(128 / 255, 117 / 255, 104 / 255), std=(1 / 255,) * 3, bgr255=True
)


def parse_arch(arch: str, known_modifiers: tuple[str, ...] = KNOWN_MODIFIERS) -> ArchSpec:
    """``resnet50_frozen_normalize`` -> ArchSpec(backbone="resnet50", freeze_bn=True, normalize=True).

    Modifiers are the trailing ``_``-separated tokens; for ``timm:<name>`` everything before them
    is the timm model name (which may itself contain underscores)."""
    tokens = arch.split("_")
    mods: list[str] = []
    while len(tokens) > 1 and tokens[-1] in known_modifiers:
        mods.insert(0, tokens.pop())
    head = "_".join(tokens)
    model = ""
    if head.startswith("timm:"):
        backbone, model = "timm", head[len("timm:") :]
        if not model:
            raise ConfigError(f"--arch {arch}: give the timm model as timm:<name>, e.g. timm:resnet50")
    elif len(tokens) > 1:
        raise ConfigError(
            f"unknown modifier(s) {tokens[1:]} in --arch {arch}; modifiers are: {', '.join(known_modifiers)}"
        )
    else:
        backbone = head
    return ArchSpec(
        backbone=backbone,
        model=model,
        freeze_bn="frozen" in mods,
        normalize="normalize" in mods,
        pooling="double" if "double" in mods else "avg",
        head_init="kaiming" if "he" in mods else "default",
    )


class GlobalPool(nn.Module):
    """(B, C, H, W) -> (B, C): average pooling, or average + max pooling (``_double``)."""

    def __init__(self, mode: str = "avg", keepdim: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.keepdim = keepdim  # (B, C, 1, 1), for torchvision models that flatten after pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=self.keepdim)
        if self.mode == "double":
            pooled = pooled + x.amax(dim=(2, 3), keepdim=self.keepdim)
        return pooled


def autocast_dtype(mode: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype for ``--amp mode`` on ``device_type``; None means float32 (no autocast)."""
    if mode not in AMP_MODES:
        raise ConfigError(f"--amp {mode}: choose from {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if device_type == "cuda":
        if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if device_type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16  # fp16 autocast on CPU is emulated and slow: bf16 instead
    return None


def _cpu_has_bf16() -> bool:
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(c is not None and c() for c in checks)


class EmbeddingNet(nn.Module):
    """Base of every backbone plugin: ``backbone`` (B, F) features, then ``last_linear`` (F -> embed_dim).

    A plugin subclass sets ``name`` and ``default_input_config`` (or overrides
    :meth:`input_config_for`) and implements :meth:`make_backbone`. Its constructor is this one:
    all four arguments are context, handed over by ``architectures.select``; the module names
    (``backbone.*``, ``last_linear.*``, and ``uncertainty_head.*`` of a probabilistic model) are
    those of every checkpoint this project writes."""

    name = ""
    default_input_config = InputConfig()
    has_pretrained_weights = True  # False: no library weights (random, or a local --pretrained_path)
    accepts_local_weights = True  # False: --pretrained_path is refused (it would be ignored)
    # the downloaded weights as "<library>:<tag>", for the run card (architectures.weights_identity)
    pretrained_weights = ""

    def __init__(self, *, spec: ArchSpec, embed_dim: int, pretrained: bool, pretrained_path: str) -> None:
        super().__init__()
        check_pretrained_path(type(self), pretrained_path)
        self.backbone, feature_dim = self.make_backbone(
            spec, pretrained=pretrained, pretrained_path=pretrained_path
        )
        self.last_linear = nn.Linear(feature_dim, embed_dim)
        if spec.head_init == "kaiming":
            nn.init.kaiming_normal_(self.last_linear.weight, mode="fan_out")
            nn.init.zeros_(self.last_linear.bias)
        # whether last_linear came from --pretrained_path (a checkpoint of this project)
        self.head_loaded = bool(pretrained_path) and load_head_weights(self.last_linear, pretrained_path)
        self.distribution = DIRAC
        self.uncertainty_head: nn.Module | None = None  # set_distribution: gaussian / vmf only
        self.freeze_mean = False
        self.spec = spec
        self.normalize = spec.normalize
        self.embed_dim = embed_dim
        self.input_config = self.input_config_for(spec)
        cfg = self.input_config
        # uint8 x -> (x - 255·mean) / (255·std); non-persistent so checkpoints stay backbone-only
        self.register_buffer(
            "_pixel_mean", torch.tensor(cfg.mean).mul(255).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("_pixel_std", torch.tensor(cfg.std).mul(255).view(1, 3, 1, 1), persistent=False)
        self.amp = "off"
        self.channels_last = False

    @classmethod
    def input_config_for(cls, spec: ArchSpec) -> InputConfig:
        """Crop size and pixel normalisation this backbone expects for ``spec``."""
        return cls.default_input_config

    @classmethod
    def pretrained_weights_for(cls, spec: ArchSpec) -> str:
        """Which library weights ``pretrained=True`` loads for ``spec`` (:attr:`pretrained_weights`)."""
        return cls.pretrained_weights

    def make_backbone(
        self, spec: ArchSpec, *, pretrained: bool, pretrained_path: str
    ) -> tuple[nn.Module, int]:
        """The feature extractor (B, 3, H, W) -> (B, F) with its weights, and F."""
        raise NotImplementedError

    def set_distribution(self, distribution: str = DIRAC, *, freeze_mean: bool = False) -> EmbeddingNet:
        """Emit ``distribution`` (``dirac``, ``gaussian``, ``vmf``): adds the uncertainty head of a
        probabilistic one. ``freeze_mean``: only that head learns (backbone and ``last_linear``
        get ``requires_grad=False`` and stay in eval mode). Call before ``set_precision`` and
        before the optimiser is built."""
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(
                f"--embedding_distribution {distribution}: choose from {', '.join(DISTRIBUTIONS)}"
            )
        if freeze_mean and distribution == DIRAC:
            raise ConfigError(
                "a frozen mean leaves nothing to train for a dirac embedding (no uncertainty head)"
            )
        self.distribution = distribution
        self.uncertainty_head = make_head(distribution, self.last_linear.in_features, self.embed_dim)
        self.freeze_mean = freeze_mean
        if freeze_mean:
            self.backbone.requires_grad_(False)
            self.last_linear.requires_grad_(False)
        return self.train(self.training)

    def set_precision(self, amp: str = "off", channels_last: bool = False) -> EmbeddingNet:
        autocast_dtype(amp, "cpu")  # validates the mode
        self.amp = amp
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def autocast_dtype(self, device_type: str) -> torch.dtype | None:
        return autocast_dtype(self.amp, device_type)

    def train(self, mode: bool = True) -> EmbeddingNet:
        super().train(mode)
        if self.spec.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.freeze_mean:  # the fixed mean network: running statistics and dropout as trained
            self.backbone.eval()
            self.last_linear.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (B, 3, H, W) -> the float input the backbone was trained on."""
        x = x.float().sub_(self._pixel_mean).div_(self._pixel_std)  # in place on the fresh float copy
        if self.input_config.bgr255:
            x = x.flip(1)  # normalised in RGB order, then flipped, as the study does
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings (``dirac``); the packed ``[μ | log σ²]`` (B, 2D) or ``[μ | log κ]``
        (B, D + 1) of a probabilistic model, in training and in evaluation."""
        z, log_param = self._heads(x)
        mean = self._mean(z)
        return mean if log_param is None else torch.cat([mean, log_param], dim=1)

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (B, D), params (B, P)), both float32: the mean is what retrieval ranks (L2-normalised
        with ``_normalize``, always for ``vmf``); params are the embedding's norm before
        normalisation (``dirac``, P = 1), log σ² (``gaussian``, P = D) or log κ (``vmf``, P = 1).
        ``architectures.confidence(params, distribution)`` turns them into one score per image."""
        z, log_param = self._heads(x)
        params = z.norm(dim=1, keepdim=True) if log_param is None else log_param
        return self._mean(z), params

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The float32 output of ``last_linear`` (before any normalisation) and the float32
        log-parameters of the uncertainty head (None for ``dirac``)."""
        if x.dtype == torch.uint8:
            x = self.preprocess(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype(x.device.type)
        raw = None
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            # a frozen mean builds no graph: only the uncertainty head's backward pass is paid for
            with torch.no_grad() if self.freeze_mean else contextlib.nullcontext():
                features = self.backbone(x)
                z = self.last_linear(features)
            if self.uncertainty_head is not None:
                raw = self.uncertainty_head(features)
        log_param = None if raw is None else self.uncertainty_head.log_parameter(raw)
        return z.float(), log_param

    def _mean(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(z, dim=-1) if self.normalize or self.distribution == VMF else z


# ---- weights ----------------------------------------------------------------------------------


def check_pretrained_path(cls: type[EmbeddingNet], pretrained_path: str) -> None:
    """``--pretrained_path`` only for a backbone that loads local weights (a plugin that would
    silently ignore them sets ``accepts_local_weights = False``)."""
    if pretrained_path and not cls.accepts_local_weights:
        raise ConfigError(
            f"--pretrained_path: {cls.name} cannot load local weights (it always starts from random "
            f"weights); drop --pretrained_path or choose a backbone that loads them"
        )


def read_state_dict(path: str, arch: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (bare or under ``state_dict``/``model``), ``module.`` (DDP)
    prefixes stripped; an unreadable file is a one-line :class:`ConfigError`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--pretrained_path {path}: no such file (a torch state dict for {arch})")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a weights file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(
            f"--pretrained_path {path}: not a readable torch state dict (torch.load cannot read it: "
            f"{load_error_reason(err, file)})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"--pretrained_path {path}: expected a state dict, found {type(state).__name__}")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def is_project_checkpoint(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is an :class:`EmbeddingNet`'s state dict (``backbone.*`` and ``last_linear.*``)."""
    return any(k.startswith("backbone.") for k in state) and any(k.startswith("last_linear.") for k in state)


def load_local_weights(module: nn.Module, path: str, arch: str) -> None:
    """Load a local state dict (``--pretrained_path``) into the backbone ``module``.

    Accepts a bare state dict or one under ``state_dict``/``model``; strips ``module.`` (DDP) and
    ``backbone.`` (a checkpoint of this project's :class:`EmbeddingNet`) prefixes. Keys of the
    replaced classifier (``fc``, ``last_linear``, ``classifier``, ``head``) and a project
    checkpoint's ``uncertainty_head`` are ignored here (:func:`load_head_weights` reads
    ``last_linear``); any missing, unknown or differently shaped backbone weight is a
    :class:`ConfigError` (the weights of another architecture never load silently)."""
    state = read_state_dict(path, arch)
    if is_project_checkpoint(state):
        state = {k: v for k, v in state.items() if not k.startswith(PROJECT_HEAD_KEYS)}
    cleaned = {k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in state.items()}
    own = module.state_dict()
    # an ImageNet classifier is replaced by the embedding head anyway; but a head-prefixed weight
    # that the model has with the same shape (timm ConvNeXt's ``head.norm``) is a real weight
    cleaned = {
        k: v
        for k, v in cleaned.items()
        if not k.startswith(CLASSIFIER_KEYS) or (k in own and own[k].shape == v.shape)
    }
    bad = [k for k, v in cleaned.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ConfigError(f"--pretrained_path {path} does not fit {arch}: shape mismatch in {bad[:5]}")
    missing = [
        k
        for k in own
        if k not in cleaned and not k.endswith("num_batches_tracked") and not k.startswith(CLASSIFIER_KEYS)
    ]
    if missing:
        raise ConfigError(
            f"--pretrained_path {path} does not fit {arch}: {len(missing)} weights missing, e.g. {missing[:5]}"
        )
    extra = [k for k in cleaned if k not in own]
    if extra:
        raise ConfigError(
            f"--pretrained_path {path} does not fit {arch}: {len(extra)} unknown weights, e.g. {extra[:5]}"
        )
    module.load_state_dict({k: v for k, v in cleaned.items() if k in own}, strict=False)


def load_head_weights(linear: nn.Linear, path: str) -> bool:
    """Load ``last_linear.*`` of a project checkpoint in ``path`` into ``linear`` if the shapes fit;
    whether it was loaded. A backbone-only file (or an ImageNet classifier's ``last_linear``, as
    BN-Inception's, which comes without ``backbone.*`` keys) leaves ``linear`` as it is."""
    state = read_state_dict(path, "the embedding head")
    if not is_project_checkpoint(state):
        return False
    head = {k[len("last_linear.") :]: v for k, v in state.items() if k.startswith("last_linear.")}
    own = linear.state_dict()
    if set(head) != set(own) or any(head[k].shape != own[k].shape for k in own):
        shapes = {k: tuple(v.shape) for k, v in head.items()}
        log.warning(
            f"--pretrained_path {path}: its last_linear {shapes} does not fit this network's "
            f"({linear.in_features} -> {linear.out_features}); the embedding head starts from random weights"
        )
        return False
    linear.load_state_dict(head)
    log.info(f"--pretrained_path {path}: loaded last_linear (the embedding head) as well")
    return True


def load_error_reason(err: BaseException, file: Path) -> str:
    """A short one-line reason why ``torch.load(file, weights_only=True)`` failed.

    torch's own messages run over many lines and, for a file the safe unpickler refuses, advise
    re-running with ``weights_only=False``: the wrong advice for a file of unknown origin (that
    would execute whatever code the pickle holds), so only the unpickler's own finding is kept."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(512)
    except OSError:
        head = b"?"
    if not head:
        return "empty file"
    if _is_text(head):
        return "a text file, not a torch file"
    text = str(err)
    if "WeightsUnpickler error:" in text:  # the safe unpickler refused an object or an opcode
        finding = text.split("WeightsUnpickler error:", 1)[1]
        finding = finding.split("Check the documentation of torch.load", 1)[0]
        first = next((ln.strip() for ln in finding.splitlines() if ln.strip()), "")
        first = first.split(" Please use `torch.serialization.add_safe_globals")[0]
        return (
            f"the safe unpickler refuses its content: {first}" if first else "the safe unpickler refuses it"
        )
    text = " ".join(text.split())
    if "weights_only" in text:  # any other message quoting that advice: the type only
        return type(err).__name__
    first = text.split(". ", 1)[0].rstrip(".")  # "... central directory. This is an internal miniz error ..."
    if isinstance(err, KeyError | EOFError | struct.error) or not first:
        name = "struct.error" if isinstance(err, struct.error) else type(err).__name__
        return f"{name}: {first}" if first else f"{name} (a truncated file?)"
    return first[:300]


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are text (UTF-8, no control characters but whitespace)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # the 512 bytes may end inside a multi-byte character
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\n\r" for c in text)


def build_weights(
    arch: str,
    random_init: Callable[[], nn.Module],
    pretrained_init: Callable[[], nn.Module] | None,
    *,
    pretrained: bool,
    pretrained_path: str,
) -> nn.Module:
    """The backbone module: a local state dict (``pretrained_path``) if given, else the downloaded
    weights if ``pretrained`` (and the backbone has any), else random weights.

    ``random_init`` builds the module with random weights; ``pretrained_init`` downloads (or reads
    from the framework's cache) the ImageNet weights. Any failure there — no network, a broken
    cache — becomes one :class:`ConfigError` line instead of a traceback."""
    if pretrained_path:
        module = random_init()
        load_local_weights(module, pretrained_path, arch)
        return module
    if not pretrained or pretrained_init is None:
        return random_init()
    try:
        return pretrained_init()
    except Exception as err:  # urllib/SSL/OS/hub errors all mean "weights not reachable"
        msg = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"could not load pretrained weights for {arch} ({type(err).__name__}: {msg[:200]}); "
            f"use --not_pretrained, or --pretrained_path <local state dict> on offline machines"
        ) from None


def quiet_import(fn: Callable[[], object]) -> object:
    """Run an import, hiding the SyntaxWarnings of old packages (``pretrainedmodels``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn()
