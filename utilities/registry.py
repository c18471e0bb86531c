"""Name -> plugin registries, and the command-line flags that plugins declare.

Every plugin kind (criteria, batch miners, samplers, backbones, datasets) has one
:class:`Registry`. A plugin is a class with

* ``name``: its registry key (what ``--loss`` / ``--batch_mining`` / ... select);
* ``Hparams``: an optional dataclass of its hyperparameters. Each field becomes one flag,
  ``--<prefix>_<name>_<field>`` (e.g. ``--loss_margin_beta``), unless the field's metadata says
  otherwise:

  - ``metadata={"flag": "data_batchmatch_bigbs"}``: an explicit flag name (flags shared by several
    plugins are added once; their defaults must agree);
  - ``metadata={"global": "n_classes"}``: no flag; the value is read from the namespace attribute
    of that name (a global flag such as ``embed_dim``, or a value ``main.py`` fills in such as
    ``n_classes``);
  - ``metadata={"help": "..."}``: the ``--help`` text; ``metadata={"nargs": "+"}`` for lists.

Plugins never read the namespace themselves: :meth:`Registry.build` pulls exactly their fields
from it and calls the constructor with plain keyword arguments, so every plugin can also be
built by hand (``TripletLoss(margin=0.1)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterator
from typing import Any

from utilities.errors import ConfigError


def _field_flag(prefix: str, plugin: str, field: dataclasses.Field) -> str | None:
    if "global" in field.metadata:
        return None
    return field.metadata.get("flag", f"{prefix}_{plugin}_{field.name}")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"hyperparameter '{field.name}' needs a default")


class Registry:
    """A typed dict of plugin classes with readable errors and flag generation."""

    def __init__(self, kind: str, flag_prefix: str) -> None:
        self.kind = kind
        self.flag_prefix = flag_prefix
        self._entries: dict[str, type] = {}

    # -- registration and lookup -------------------------------------------------------------
    def add(self, cls: type) -> type:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} has no string attribute 'name'")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = cls
        return cls

    def register(self, cls: type) -> type:
        """Decorator form of :meth:`add`."""
        return self.add(cls)

    def get(self, name: str) -> type:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; choose from: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[tuple[str, type]]:
        return iter(sorted(self._entries.items()))

    # -- flags ------------------------------------------------------------------------------
    def hparam_fields(self, name: str) -> tuple[dataclasses.Field, ...]:
        hp = getattr(self.get(name), "Hparams", None)
        return dataclasses.fields(hp) if hp is not None else ()

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """Add one argument group per plugin holding that plugin's flags."""
        seen: dict[str, Any] = {a.dest: a.default for a in parser._actions if a.dest != "help"}
        for name, cls in self:
            hp = getattr(cls, "Hparams", None)
            if hp is None:
                continue
            hints = typing.get_type_hints(hp)
            group = None
            for field in dataclasses.fields(hp):
                flag = _field_flag(self.flag_prefix, name, field)
                if flag is None:
                    continue
                default = _field_default(field)
                if flag in seen:
                    if seen[flag] != default:
                        raise ValueError(
                            f"flag --{flag} declared twice with different defaults "
                            f"({seen[flag]!r} vs {default!r} in {self.kind} '{name}')"
                        )
                    continue
                seen[flag] = default
                if group is None:
                    doc = (cls.__doc__ or "").strip().splitlines()
                    group = parser.add_argument_group(f"{self.kind} '{name}'", doc[0] if doc else None)
                group.add_argument(f"--{flag}", **_argparse_kwargs(field, hints[field.name], default))

    def build(self, name: str, opt: argparse.Namespace, **deps: Any) -> Any:
        """Instantiate plugin ``name`` with its hyperparameters taken from ``opt``."""
        cls = self.get(name)
        return cls(**deps, **self.hparams_from(name, opt))

    def hparams_from(self, name: str, opt: argparse.Namespace) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for field in self.hparam_fields(name):
            attr = field.metadata.get("global") or _field_flag(self.flag_prefix, name, field)
            if hasattr(opt, attr):
                kwargs[field.name] = getattr(opt, attr)
        return kwargs


def _argparse_kwargs(field: dataclasses.Field, hint: Any, default: Any) -> dict[str, Any]:
    help_text = field.metadata.get("help", "")
    help_text = f"{help_text} (default: %(default)s)".strip()
    if hint is bool:
        action = "store_true" if default is False else argparse.BooleanOptionalAction
        return {"action": action, "default": default, "help": help_text}
    kwargs: dict[str, Any] = {"default": default, "help": help_text}
    origin = typing.get_origin(hint)
    if origin in (list, tuple) or "nargs" in field.metadata:
        (elem,) = set(typing.get_args(hint)) or {str}
        kwargs.update(nargs=field.metadata.get("nargs", "+"), type=elem)
    elif typing.get_origin(hint) is typing.Union or isinstance(hint, type(int | None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kwargs["type"] = args[0]
    else:
        kwargs["type"] = hint
    if "choices" in field.metadata:
        kwargs["choices"] = field.metadata["choices"]
    return kwargs


def make_selector(registry: Registry) -> Callable[..., Any]:
    """``select(name, opt, **deps)`` for a registry (the reference study's entry points)."""

    def select(name: str, opt: argparse.Namespace, **deps: Any) -> Any:
        return registry.build(name, opt, **deps)

    select.__doc__ = f"Build the {registry.kind} called ``name`` from the namespace ``opt``."
    return select
