"""Lazy package exports (PEP 562): ``umop -h`` and ``import umop.data`` import no torch until a name is used."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, modules: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``. ``modules`` maps each submodule (relative,
    ``".coco"``) to the space-separated public names it defines; a name is imported on first use and then
    cached in the package's ``namespace`` (its globals())."""
    table = {name: package + module for module, names in modules.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return sorted(table), __getattr__, __dir__
