"""Attributes of a package imported on first use (PEP 562), so that importing the package costs nothing."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(package: str, home: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: attribute ``name`` comes from submodule ``home[name]``."""

    def __getattr__(name: str):
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
