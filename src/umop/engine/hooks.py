"""Training-log hooks: other parts of umop add entries to ``log.jsonl`` without the engine importing them.

A hook is a callable object with ``every`` (log every N iterations), ``enabled`` and ``name``::

    entries = hook(model, images, targets)     # {key: float}, merged into the iteration's log record

A part registers a *factory* ``config -> list[hook]`` under a name, either the callable itself or a
``"module:function"`` string imported only when a trainer is built (so that registering costs no import).
The analyses register ``"objective"`` (per-loss gradient norms at the FPN features, ``log.objective_every``,
survey Fig. 14) when ``umop.analysis`` is imported; the ``umop`` CLI imports it to list ``umop analyze``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol, Union

__all__ = ["LogHook", "register_log_hooks", "registered_log_hooks", "log_hooks_for"]


class LogHook(Protocol):
    """``hook(model, images, targets) -> {key: float}`` every ``every`` iterations while ``enabled``."""

    name: str
    every: int
    enabled: bool

    def __call__(self, model: Any, images: list, targets: list) -> dict[str, float]: ...


LogHookFactory = Callable[[Any], list]
_FACTORIES: dict[str, Union[LogHookFactory, str]] = {}


def register_log_hooks(name: str, factory: Union[LogHookFactory, str]) -> None:
    """Register (or replace) the hook factory ``name``: ``config -> list[LogHook]`` or ``"module:function"``."""
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(f"factory {factory!r}: a string factory must be 'module:function'")
    _FACTORIES[name] = factory


def registered_log_hooks() -> list[str]:
    """The names of the registered factories."""
    return sorted(_FACTORIES)


def log_hooks_for(config: Any) -> list:
    """The hooks every registered factory makes for ``config`` (lazy factories are imported here)."""
    hooks: list = []
    for name in sorted(_FACTORIES):
        factory = _FACTORIES[name]
        if isinstance(factory, str):
            module, _, function = factory.partition(":")
            factory = getattr(importlib.import_module(module), function)
            _FACTORIES[name] = factory
        hooks.extend(factory(config))
    return hooks
