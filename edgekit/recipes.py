"""Recipes: what to produce (precision, backends), how to calibrate, how to verify.

Recipes are YAML files validated with pydantic; unknown keys and bad values are errors that name
the file and the key path. The built-in recipes live in ``recipes/`` at the repository root
(shipped inside the package as ``edgekit/resources/recipes``); users pass a name or a path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.backends import backend_names
from edgekit.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", frozen=True)


class Calibration(BaseModel):
    model_config = _STRICT
    images: int = Field(300, ge=1, le=100_000, description="calibration images, stratified by class")
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True


class Verification(BaseModel):
    model_config = _STRICT
    images: int = Field(500, ge=1, le=1_000_000, description="held-out images (never calibration)")
    fp32_tolerance: float = Field(1e-4, gt=0, description="max |logit diff| of fp32 artifacts")


class Gate(BaseModel):
    """Accuracy an INT8/fp16 artifact may lose against its source, in percentage points."""

    model_config = _STRICT
    max_top1_drop: float = Field(1.0, ge=0)
    max_sensitivity_drop: float = Field(3.0, ge=0)
    max_auroc_drop: float = Field(0.01, ge=0)


class Recipe(BaseModel):
    model_config = _STRICT
    name: str
    description: str = ""
    precision: Literal["fp32", "fp16", "int8"]
    backends: list[str] = Field(min_length=1)
    calibration: Calibration = Calibration()
    seed: int = 0
    verification: Verification = Verification()
    gate: Gate = Gate()
    int8_io: bool = False

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        unknown = [b for b in value if b not in backend_names()]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(backend_names())}")
        if len(set(value)) != len(value):
            raise ValueError("a backend is listed twice")
        return value

    @property
    def needs_calibration(self) -> bool:
        return self.precision == "int8"

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with top-level or dotted (``calibration.images``) fields replaced, re-validated."""
        data = self.model_dump()
        for key, value in changes.items():
            if value is None:
                continue
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return _validate(data, f"recipe {self.name!r} with overrides")


def builtin_recipes() -> dict[str, Path]:
    """Names and files of the recipes shipped with edgekit."""
    folder = resources.files("edgekit") / "resources" / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def _validate(data: Any, where: str) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{loc}: {msg}")
        raise ConfigError(f"{where}: invalid recipe — " + "; ".join(problems)) from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name (``int8``) or a user's YAML file."""
    text = str(name_or_path)
    builtin = builtin_recipes()
    path = builtin.get(text) or Path(text)
    if not path.is_file():
        raise ConfigError(f"Unknown recipe {text!r}: not a file, and not one of the built-in "
                          f"recipes ({', '.join(sorted(builtin))})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return _validate(data, str(path))
