"""Name -> component registries with typed, validated options (losses, box losses, samplers).

A :class:`Registry` maps a config name (``"focal"``, ``"giou"``, ``"ohem"``, ...) to a component class, its
paper citation and fixed constructor arguments (``pfl_mean`` is ``ProgressiveFocalLoss`` with
``level_reduction="mean"``). The options a name accepts are the keyword arguments of the class's
constructor, with their defaults and type annotations; :meth:`Registry.build` checks option names (an
unknown one is a ``ValueError`` naming it and the nearest valid name, ``difflib``) and simple types
(bool / int / float / str) before constructing, so a typo in a config fails when it is loaded.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, TypeVar

__all__ = ["Registry", "RegistryEntry", "OptionSpec", "nearest_name"]

T = TypeVar("T")


def nearest_name(name: str, valid: typing.Iterable[str]) -> str | None:
    """The valid name closest to ``name`` (``difflib``), or ``None`` when nothing is close."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None


def _did_you_mean(name: str, valid: typing.Iterable[str]) -> str:
    near = nearest_name(name, valid)
    return f"; did you mean {near!r}?" if near else ""


@dataclass(frozen=True)
class OptionSpec:
    """One constructor option: its name, default (``inspect.Parameter.empty`` when required) and type."""

    name: str
    default: Any
    annotation: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


_SIMPLE_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _allowed_types(annotation: Any) -> tuple[type, ...] | None:
    """The Python types a simple annotation string ("float", "int | None", ...) allows; None = unchecked."""
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", None)
        if annotation is None:
            return None
    allowed: list[type] = []
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None":
            allowed.append(type(None))
        elif part in _SIMPLE_TYPES:
            allowed.extend(_SIMPLE_TYPES[part])
        else:
            return None          # a tensor, a sequence, a module...: not checked here
    return tuple(allowed)


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """A registered component: ``cls(**fixed, **options)``; ``citation`` names the paper."""

    name: str
    cls: type
    citation: str
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, OptionSpec]:
        """The options a config may set: the constructor's keyword arguments minus the fixed ones."""
        signature = inspect.signature(self.cls.__init__)
        specs = {}
        for param in list(signature.parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name in self.fixed:
                continue
            specs[param.name] = OptionSpec(param.name, param.default, param.annotation)
        return specs

    def check_options(self, options: Mapping[str, Any], where: str) -> None:
        """ValueError naming an unknown option (with the nearest valid one), a missing one or a wrong type."""
        specs = self.options
        for key, value in options.items():
            if key not in specs:
                raise ValueError(f"{where}: unknown option {key!r} for {self.name!r}"
                                 f"{_did_you_mean(key, specs)} (valid: {sorted(specs)})")
            allowed = _allowed_types(specs[key].annotation)
            if allowed is not None and (not isinstance(value, allowed)
                                        or (isinstance(value, bool) and bool not in allowed)):
                raise ValueError(f"{where}: option {key!r} of {self.name!r} must be "
                                 f"{specs[key].annotation}, got {value!r}")
        missing = [name for name, spec in specs.items() if spec.required and name not in options]
        if missing:
            raise ValueError(f"{where}: {self.name!r} needs option(s) {missing}")


class Registry(Generic[T]):
    """Name -> :class:`RegistryEntry`; ``build(name_or_instance, **options)`` validates and constructs."""

    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, RegistryEntry] = {}

    def register(self, name: str, cls: type, citation: str, **fixed: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a subclass of {self.base.__name__}")
        self._entries[name] = RegistryEntry(name, cls, citation, dict(fixed))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> RegistryEntry:
        return self.entry(name)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> RegistryEntry:
        """The entry of ``name``; ValueError with the nearest registered name otherwise."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}{_did_you_mean(str(name), self._entries)} "
                             f"(valid: {self.names()})")
        return self._entries[name]

    def check(self, name: str, options: Mapping[str, Any] | None = None, where: str | None = None) -> None:
        """Validate a name and its options without building (for config loading)."""
        self.entry(name).check_options(dict(options or {}), where or self.kind)

    def build(self, name_or_instance: str | T, **options: Any) -> T:
        """A new component from its name and options, or ``name_or_instance`` itself when it already is one
        (options are then an error: a built module is configured already)."""
        if isinstance(name_or_instance, self.base):
            if options:
                raise ValueError(f"{self.kind}: options {sorted(options)} given with an already built "
                                 f"{type(name_or_instance).__name__}; pass a name to build from options")
            return name_or_instance
        entry = self.entry(name_or_instance)
        entry.check_options(options, self.kind)
        return entry.cls(**entry.fixed, **options)

    def table(self) -> list[tuple[str, str, str]]:
        """``(name, class name, citation)`` rows, for the docs."""
        return [(e.name, e.cls.__name__, e.citation) for e in self._entries.values()]
