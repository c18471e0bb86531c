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
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from utilities.errors import ConfigError

KNOWN_MODIFIERS = ("frozen", "normalize", "double", "he")
AMP_MODES = ("off", "auto", "bf16", "fp16")
CLASSIFIER_KEYS = ("fc.", "last_linear.", "classifier.", "head.")
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
    (``backbone.*``, ``last_linear.*``) are those of every checkpoint this project writes."""

    name = ""
    default_input_config = InputConfig()
    has_pretrained_weights = True  # False: always random weights, --pretrained_path is refused

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

    def make_backbone(
        self, spec: ArchSpec, *, pretrained: bool, pretrained_path: str
    ) -> tuple[nn.Module, int]:
        """The feature extractor (B, 3, H, W) -> (B, F) with its weights, and F."""
        raise NotImplementedError

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
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (B, 3, H, W) -> the float input the backbone was trained on."""
        x = x.float().sub_(self._pixel_mean).div_(self._pixel_std)  # in place on the fresh float copy
        if self.input_config.bgr255:
            x = x.flip(1)  # normalised in RGB order, then flipped, as the study does
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = self.preprocess(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z = self.last_linear(self.backbone(x))
        z = z.float()
        return nn.functional.normalize(z, dim=-1) if self.normalize else z


# ---- weights ----------------------------------------------------------------------------------


def check_pretrained_path(cls: type[EmbeddingNet], pretrained_path: str) -> None:
    """``--pretrained_path`` only for a backbone that has pretrained weights (not ``smallcnn``,
    which would silently ignore them)."""
    if pretrained_path and not cls.has_pretrained_weights:
        raise ConfigError(
            f"--pretrained_path: {cls.name} has no pretrained weights (it always starts from random "
            f"weights); drop --pretrained_path or choose a backbone that has them"
        )


def load_local_weights(module: nn.Module, path: str, arch: str) -> None:
    """Load a local state dict (``--pretrained_path``) into ``module``.

    Accepts a bare state dict or one under ``state_dict``/``model``; strips ``module.`` (DDP) and
    ``backbone.`` (a checkpoint of this project's :class:`EmbeddingNet`) prefixes. Keys of the
    replaced classifier (``fc``, ``last_linear``, ``classifier``, ``head``) are ignored; any missing,
    unknown or differently shaped backbone weight is a :class:`ConfigError` (the weights of
    another architecture never load silently)."""
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
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
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
