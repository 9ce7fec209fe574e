"""Strict YAML configuration files (recipes, targets): one loader, one error format.

A built-in file is found by name in ``edgekit/resources/<kind>/``, anything else is a path.
Errors are ConfigError (exit 2) naming the file and every bad key path.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgekit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def builtin_files(kind: str) -> dict[str, Path]:
    """Names and files of the YAML files of ``kind`` ("recipes", "targets") shipped with edgekit."""
    folder = resources.files("edgekit") / "resources" / kind
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def _plain_loc(parts: tuple) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def validate(model: type[M], data: Any, where: str, what: str,
             loc: Callable[[tuple], str] = _plain_loc) -> M:
    """``model`` from a parsed mapping; ConfigError listing every problem by key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a {what} must be a YAML mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{loc(err['loc'])}: "
                    f"{'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}"
                    for err in exc.errors()]
        raise ConfigError(f"{where}: invalid {what} — " + "; ".join(problems)) from None


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently: a recipe's second ``gate:`` block would quietly replace the first)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)


def safe_load(text: str) -> Any:
    """YAML → Python like ``yaml.safe_load`` (no Python tags, nothing executed), but a key
    given twice in a mapping is an error."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load(model: type[M], name_or_path: str | Path, kind: str, what: str,
         loc: Callable[[tuple], str] = _plain_loc) -> M:
    """A built-in file by name or a user's YAML file, validated into ``model``."""
    text = str(name_or_path)
    builtin = builtin_files(kind)
    path = builtin.get(text) or Path(text)
    if not path.is_file():
        raise ConfigError(f"Unknown {what} {text!r}: not a file, and not one of the built-in "
                          f"{kind} ({', '.join(sorted(builtin))})")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return validate(model, data, str(path), what, loc)
