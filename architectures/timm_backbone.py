"""Any timm model as a backbone: ``--arch timm:<model name>[_<modifier>...]``.

E.g. ``timm:vit_small_patch16_224.dino_normalize`` (DINO ViT-S/16), ``timm:convnext_tiny_frozen``.
The model is created with ``num_classes=0``, so it returns its pooled features
(``model.num_features``); ``_double`` asks timm for ``global_pool="avgmax"`` (½(avg + max), CNNs
only). Crop size and normalisation come from the model's pretrained config (``input_size``, mean,
std), so a DINO or CLIP model gets the statistics it was trained with. Weights come from the
Hugging Face hub unless ``--not_pretrained`` or ``--pretrained_path``; offline, put them in the hub
cache (``HF_HOME``) or pass ``--pretrained_path``. Without a network the hub client retries a few
times before the run stops with the "could not load pretrained weights" line; set
``HF_HUB_OFFLINE=1`` to fail (or read the cache) at once.
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from architectures.base import ArchSpec, EmbeddingNet, InputConfig, build_weights
from utilities.errors import ConfigError


def _timm() -> ModuleType:
    # lazy: timm is a heavy import (hundreds of model definitions) that only --arch timm:<name> needs
    import timm

    return timm


def timm_input_config(model: str) -> InputConfig:
    """Crop and normalisation from timm's pretrained config (ImageNet defaults if it has none)."""
    try:
        cfg = _timm().get_pretrained_cfg(model)
    except Exception:
        cfg = None
    if cfg is None:
        return InputConfig()
    crop = int(cfg.input_size[-1])
    resize = round(crop / cfg.crop_pct) if getattr(cfg, "crop_pct", None) else round(crop * 256 / 224)
    return InputConfig(crop=crop, resize=resize, mean=tuple(cfg.mean), std=tuple(cfg.std))


class Timm(EmbeddingNet):
    """Any timm model (``timm:<name>``), pooled features, its own input statistics."""

    name = "timm"

    @classmethod
    def input_config_for(cls, spec: ArchSpec) -> InputConfig:
        return timm_input_config(spec.model)

    @classmethod
    def pretrained_weights_for(cls, spec: ArchSpec) -> str:
        """``timm:<architecture>.<tag>``: the tag the name resolves to (its default when it names
        none), read from timm's pretrained config without downloading anything."""
        try:
            cfg = _timm().get_pretrained_cfg(spec.model)
        except Exception:
            cfg = None
        return f"timm:{cfg.architecture}.{cfg.tag}" if cfg is not None and cfg.tag else f"timm:{spec.model}"

    def make_backbone(
        self, spec: ArchSpec, *, pretrained: bool, pretrained_path: str
    ) -> tuple[nn.Module, int]:
        timm = _timm()
        if not timm.list_models(spec.model.split(".")[0]) and not timm.is_model(spec.model):
            raise ConfigError(f"--arch timm:{spec.model}: timm has no model called '{spec.model}'")
        kwargs = {"num_classes": 0}
        if spec.pooling == "double":
            kwargs["global_pool"] = "avgmax"

        def create(download: bool) -> nn.Module:
            try:
                return timm.create_model(spec.model, pretrained=download, **kwargs)
            except (TypeError, ValueError, AssertionError, NotImplementedError) as err:
                if download:
                    raise
                raise ConfigError(f"--arch timm:{spec.model}: {err}") from None

        net = build_weights(
            f"timm:{spec.model}",
            lambda: create(False),
            lambda: create(True),
            pretrained=pretrained,
            pretrained_path=pretrained_path,
        )
        return net, net.num_features
