"""Name -> plugin registries, and the command-line flags that plugins declare.

One contract for every plugin kind (losses, batch miners, batch samplers, datasets, backbones,
loss wrappers): a plugin is a class with a string ``name`` (its registry key) and a
**keyword-only constructor whose signature is the whole story**:

* a parameter *with* a default is a hyperparameter and becomes one flag,
  ``--<prefix>_<name>_<parameter>`` (e.g. ``--loss_triplet_margin``);
* a parameter *without* a default is context (``n_classes``, ``embed_dim``, ``seed``, the batch
  miner, the training labels, ...): required, never read from the namespace by the plugin, and
  handed over explicitly by the package's ``select`` function.

Help text and special cases go into the type annotation with :data:`typing.Annotated`: a plain
string is the ``--help`` text; a :class:`Flag` (or, in files that import nothing of this project,
a dict ``{"help": ..., "flag": ...}``) may also give an explicit flag name: one flag shared by
several plugins (their defaults must agree), or a parameter whose flag name is a Python keyword. ``typing.Literal`` types become
``choices``, ``list[...]`` types ``nargs="+"``, ``bool`` a switch. Example::

    class TripletLoss(nn.Module):
        name = "triplet"

        def __init__(self, *, batchminer, margin: Annotated[float, "margin m"] = 0.2) -> None: ...

:meth:`Registry.build` pulls exactly the hyperparameters from the namespace and passes the
context the constructor declares, so building by hand (``TripletLoss(batchminer=m, margin=0.1)``)
and building from flags run the same constructor.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from collections.abc import Iterator
from typing import Any

from utilities.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Flag:
    """Flag metadata for a hyperparameter: ``Annotated[int, Flag("help", name="data_bigbs")]``."""

    help: str = ""
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a plugin: constructor parameter, flag, default, type and help."""

    param: str
    flag: str
    default: Any
    type: Any
    help: str


def _unwrap(hint: Any) -> tuple[Any, str, str | None]:
    """``Annotated[T, "help"]`` / ``Annotated[T, Flag(...)]`` -> (T, help, explicit flag name)."""
    help_text, flag_name = "", None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        for extra in extras:
            if isinstance(extra, str):
                help_text = extra
            elif isinstance(extra, Flag):
                help_text, flag_name = extra.help, extra.name
            elif isinstance(extra, dict):
                help_text, flag_name = extra.get("help", ""), extra.get("flag")
    return hint, help_text, flag_name


class Registry:
    """A typed dict of plugin classes with readable errors, flag generation and building."""

    def __init__(self, kind: str, flag_prefix: str) -> None:
        self.kind = kind
        self.flag_prefix = flag_prefix
        self._entries: dict[str, type] = {}

    # -- registration and lookup -------------------------------------------------------------
    def add(self, cls: type) -> type:
        """Register ``cls`` (checks its name and that its constructor is keyword-only)."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} has no string attribute 'name'")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        for p in _parameters(cls):
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(
                    f"{cls.__qualname__}.__init__: parameter '{p.name}' must be keyword-only "
                    "(plugin constructors take `*, context..., hyperparameter=default...`)"
                )
        self._entries[name] = cls
        return cls

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

    # -- the constructor contract ------------------------------------------------------------
    def hyperparameters(self, name: str) -> list[Hyperparameter]:
        """The flag-backed parameters of plugin ``name`` (constructor parameters with defaults)."""
        cls = self.get(name)
        hints = typing.get_type_hints(cls.__init__, include_extras=True)
        out = []
        for p in _parameters(cls):
            if p.default is inspect.Parameter.empty:
                continue
            hint, help_text, flag_name = _unwrap(hints.get(p.name, type(p.default)))
            flag = flag_name or "_".join(s for s in (self.flag_prefix, name, p.name) if s)
            out.append(Hyperparameter(p.name, flag, p.default, hint, help_text))
        return out

    def context(self, name: str) -> list[str]:
        """The required (context) parameters of plugin ``name``'s constructor."""
        return [p.name for p in _parameters(self.get(name)) if p.default is inspect.Parameter.empty]

    # -- flags ------------------------------------------------------------------------------
    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """Add one argument group per plugin holding that plugin's flags."""
        seen: dict[str, Any] = {a.dest: a.default for a in parser._actions if a.dest != "help"}
        for name, cls in self:
            group = None
            for hp in self.hyperparameters(name):
                if hp.flag in seen:
                    if seen[hp.flag] != hp.default:
                        raise ValueError(
                            f"flag --{hp.flag} declared twice with different defaults "
                            f"({seen[hp.flag]!r} vs {hp.default!r} in {self.kind} '{name}')"
                        )
                    continue
                seen[hp.flag] = hp.default
                if group is None:
                    doc = (cls.__doc__ or "").strip().splitlines()
                    group = parser.add_argument_group(f"{self.kind} '{name}'", doc[0] if doc else None)
                group.add_argument(f"--{hp.flag}", **_argparse_kwargs(hp))

    # -- building ------------------------------------------------------------------------------
    def hparams_from(self, name: str, opt: argparse.Namespace) -> dict[str, Any]:
        """Plugin ``name``'s hyperparameters as set in ``opt`` (flags absent from ``opt`` are left
        to the constructor's default, so there is one default per hyperparameter)."""
        return {hp.param: getattr(opt, hp.flag) for hp in self.hyperparameters(name) if hasattr(opt, hp.flag)}

    def build(self, name: str, opt: argparse.Namespace, **context: Any) -> Any:
        """Instantiate plugin ``name``: hyperparameters from ``opt``, and of ``context`` the
        entries its constructor declares (a declared one that is missing is a TypeError: a bug in
        the caller, not in the user's flags)."""
        cls = self.get(name)
        needed = self.context(name)
        missing = [k for k in needed if k not in context]
        if missing:
            raise TypeError(
                f"{self.kind} '{name}' needs context {missing}; the caller gave {sorted(context)}"
            )
        return cls(**{k: context[k] for k in needed}, **self.hparams_from(name, opt))


def _parameters(cls: type) -> list[inspect.Parameter]:
    """The constructor's parameters after ``self`` (none for a class without its own ``__init__``)."""
    if cls.__init__ is object.__init__:
        return []
    return list(inspect.signature(cls.__init__).parameters.values())[1:]


def _argparse_kwargs(hp: Hyperparameter) -> dict[str, Any]:
    help_text = f"{hp.help} (default: %(default)s)".strip()
    hint, default = hp.type, hp.default
    if hint is bool:
        action = "store_true" if default is False else argparse.BooleanOptionalAction
        return {"action": action, "default": default, "help": help_text}
    kwargs: dict[str, Any] = {"default": default, "help": help_text}
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        (elem,) = set(typing.get_args(hint) or (str,)) - {Ellipsis}
        kwargs.update(nargs="+", type=elem)
    elif origin is typing.Literal:
        choices = typing.get_args(hint)
        kwargs.update(choices=list(choices), type=type(choices[0]))
    elif origin is typing.Union or isinstance(hint, type(int | None)):
        kwargs["type"] = next(a for a in typing.get_args(hint) if a is not type(None))
    else:
        kwargs["type"] = hint
    return kwargs
