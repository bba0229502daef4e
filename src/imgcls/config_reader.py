"""One reader for every configuration section (model, data, augment, optim, schedule, train) and for recipe files.

Each section is a dataclass that owns its defaults. A field declared with :func:`setting` carries its valid
choices and range, defined once: the same metadata drives validation here, the command line's ``choices=`` and
its help (:func:`choices_of`). A section's ``__post_init__`` calls :func:`check_settings`, which types every
field from its annotation (YAML reads ``1e-3`` as a string; ``2.0`` is fine where an integer goes), refuses
``null`` where a value is required, NaN and infinity wherever a number goes, and anything outside the declared
range, each as a one-line :class:`~imgcls.errors.UserError` naming ``section.key``. :func:`read_section` builds
a section from a mapping (a recipe's, ``--set``'s, a saved ``config.json``'s) and refuses unknown keys with one
wording: ``SECTION: unknown setting 'KEY' (known: ...)``.

Recipes (:func:`load_recipe`) are YAML with the top-level sections of :data:`SECTIONS`; ``--recipe NAME`` picks
one shipped in ``imgcls/recipes/``. A recipe is small text: a file over :data:`MAX_RECIPE_BYTES`, one that is not
UTF-8 text, or one whose YAML aliases expand past :data:`MAX_RECIPE_NODES` values (the "billion laughs") is
refused before anything uses it.

This module sits on the ground floor (it imports only :mod:`imgcls.errors`), so the data layer and the engine
both reach it downward.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import UserError

SECTIONS = ("model", "data", "augment", "optim", "schedule", "train")
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; 1 MiB is a thousand times that
MAX_RECIPE_NODES = 100_000  # values after YAML aliases are expanded


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with its valid ``choices`` or numeric range (``ge``/``gt``/``le``/``lt``).

    For a list, tuple or dict of numbers the range applies to each element (each value of a dict).
    """
    given = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    metadata = {k: v for k, v in given.items() if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def choices_of(cls: type, name: str) -> tuple:
    """The valid choices of ``cls.name`` (``None`` left out), for the command line's ``choices=``."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return tuple(c for c in field.metadata.get("choices", ()) if c is not None)


def read_section(cls: type, values: Mapping[str, Any] | None, section: str | None = None) -> Any:
    """``cls(**values)`` with ``-`` in keys read as ``_``; an unknown key or a non-mapping is a UserError."""
    section = section or getattr(cls, "SECTION", cls.__name__)
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise UserError(f"{section}: expected a mapping of settings, got {_show(values)}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UserError(f"{section}: unknown setting '{key}' (known: {', '.join(sorted(known))})")
        kwargs[name] = value
    return cls(**kwargs)


def check_settings(obj: Any, section: str | None = None) -> None:
    """Type and range-check every field of the dataclass ``obj`` in place (call it from ``__post_init__``)."""
    section = section or getattr(type(obj), "SECTION", type(obj).__name__)
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        where = f"{section}.{field.name}"
        value = coerce(getattr(obj, field.name), hints[field.name], where)
        _check_range(value, field.metadata, where)
        object.__setattr__(obj, field.name, value)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotation ``hint`` wants it (see the module docstring); a UserError names ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            return coerce(value, others[0], where)
        for option in others:  # e.g. int | str: the first that takes the value
            try:
                return coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: expected {_describe(hint)}, got {_show(value)}")
    if value is None:
        raise UserError(f"{where}: expected {_describe(hint)}, got null")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        number = _number(value)
        if number is not None and math.isfinite(number) and number == int(number):
            return int(number)
    elif hint is float:
        number = _number(value)
        if number is not None:
            if not math.isfinite(number):
                raise UserError(f"{where}: must be a finite number, got {_show(value)}")
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} values, got {_show(value)}")
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    elif origin is dict and isinstance(value, Mapping):
        item = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    elif hint in (list, dict) and isinstance(value, hint):
        return value
    raise UserError(f"{where}: expected {_describe(hint)}, got {_show(value)}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if not meta or value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            named = ", ".join("null" if c is None else str(c) for c in choices)
            raise UserError(f"{where}: must be one of {named}, got {_show(value)}")
        return
    if isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        bad = (
            ("ge" in meta and not item >= meta["ge"])
            or ("gt" in meta and not item > meta["gt"])
            or ("le" in meta and not item <= meta["le"])
            or ("lt" in meta and not item < meta["lt"])
        )
        if bad:
            raise UserError(f"{where}: must be {describe_range(meta)}, got {_show(value)}")


def describe_range(meta: Mapping[str, Any]) -> str:
    """``"in [0, 1)"``, ``"> 0"``, ``">= 1"``... for a field's metadata."""
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"in {low[0]}{_g(low[1])}, {_g(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_g(low[1])}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {_g(high[1])}"
    return "valid"


def _g(number: float) -> str:
    return f"{number:g}"


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"{len(args)} values"
    if origin in (list, tuple) or hint is list:
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- recipes ---------------------------------------------------------------------------------------------------


def recipe_names() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("imgcls") / "recipes"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a recipe: a shipped name (``digits``, ``cifar10``, ``imagenet``, ``finetune``...) or a YAML path.

    Returns:
        ``{section: {key: value}}`` with only the known sections.

    Raises:
        UserError: a missing or unknown recipe, a file that is not small UTF-8 text, invalid YAML, aliases that
            expand past :data:`MAX_RECIPE_NODES` values, an unknown section or a section that is not a mapping.
    """
    text_name = str(name_or_path)
    is_path = os.sep in text_name or text_name.endswith((".yaml", ".yml")) or Path(text_name).is_file()
    if is_path:
        path = Path(text_name)
        if not path.is_file():
            raise UserError(f"recipe file not found: {path} (check --recipe)")
        where = str(path)
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise UserError(f"{where}: {path.stat().st_size:,} bytes is not a recipe (at most {MAX_RECIPE_BYTES:,})")
        raw_bytes = path.read_bytes()
    else:
        resource = resources.files("imgcls") / "recipes" / f"{text_name}.yaml"
        if not resource.is_file():
            raise UserError(f"unknown recipe: {text_name} (shipped: {', '.join(recipe_names())}; or give a path)")
        raw_bytes, where = resource.read_bytes(), f"recipe {text_name}"
    try:
        text = raw_bytes.decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw_bytes, 0, 1, "NUL byte")
    except UnicodeDecodeError:
        raise UserError(f"{where}: not a text file (a recipe is UTF-8 YAML)") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise UserError(f"{where}: not valid YAML ({first})") from None
    if _count_nodes(raw, MAX_RECIPE_NODES) > MAX_RECIPE_NODES:
        raise UserError(f"{where}: expands to more than {MAX_RECIPE_NODES:,} values (YAML aliases?); not a recipe")
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected sections {', '.join(SECTIONS)} at the top level")
    unknown = sorted(str(k) for k in set(raw) - set(SECTIONS))
    if unknown:
        raise UserError(f"{where}: unknown section {unknown[0]} (sections: {', '.join(SECTIONS)})")
    for key, value in raw.items():
        if value is not None and not isinstance(value, dict):
            raise UserError(f"{where}: section {key} must be a mapping")
    return {key: dict(value or {}) for key, value in raw.items()}


def _count_nodes(value: Any, limit: int) -> int:
    """Values in ``value`` as if aliases were copies, counting no further than just past ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


__all__ = [
    "MAX_RECIPE_BYTES",
    "MAX_RECIPE_NODES",
    "SECTIONS",
    "check_settings",
    "choices_of",
    "coerce",
    "describe_range",
    "load_recipe",
    "read_section",
    "recipe_names",
    "setting",
]
