"""Recipes: what to produce (precision, backends), how to calibrate, how to verify.

Recipes are YAML files validated with pydantic; unknown keys and bad values are errors that name
the file and the key path. The built-in recipes live in ``recipes/`` at the repository root
(shipped inside the package as ``edgekit/resources/recipes``); users pass a name or a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgekit import config
from edgekit.backends import backend_names
from edgekit.backends.base import activation_ranges_error
from edgekit.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Calibration(BaseModel):
    model_config = _STRICT
    images: int = Field(300, ge=1, le=100_000, description="calibration images, stratified by class")
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True
    activation_ranges: Literal["global", "mean"] | None = Field(None, description=(
        "method minmax: an activation's range is the min/max over all calibration images "
        "(global) or the mean over images of each image's min/max (mean); null: each "
        "backend's default (openvino mean, as NNCF; onnxruntime and litert global)"))

    @model_validator(mode="after")
    def _ranges_of_minmax(self) -> Calibration:
        why = activation_ranges_error(self.method, self.activation_ranges)
        if why:
            raise ValueError(why)
        return self


class Verification(BaseModel):
    model_config = _STRICT
    images: int | None = Field(500, ge=1, le=1_000_000, description=(
        "held-out images (never calibration); null: every image calibration does not use "
        "(unpruned recipes) — the more images, the fewer inconclusive gates"))
    fp32_tolerance: float = Field(1e-4, gt=0, description="max |logit diff| of fp32 artifacts")


class Gate(BaseModel):
    """Accuracy an INT8/fp16 artifact may lose against its source, in percentage points."""

    model_config = _STRICT
    max_top1_drop: float = Field(1.0, ge=0)
    max_sensitivity_drop: float = Field(3.0, ge=0)
    max_auroc_drop: float = Field(0.01, ge=0)
    confidence: float = Field(0.95, ge=0.5, lt=1, description=(
        "two-sided confidence of the interval each check is decided on: pass when it lies "
        "within the limit, fail when beyond it, inconclusive otherwise"))


class Rescue(BaseModel):
    """What compress does when an INT8 artifact misses its gate: re-export it with its most
    sensitive layers kept in float (top 1, 2, 4 … of the per-layer sensitivity ranking), judge
    each candidate by its top-1 agreement with the source and the KL divergence of its outputs
    from the source's on ``tuning_images`` calibration-side images (never the verification
    images; rule: ``edgekit.quantize.rescue``), keep the fastest passing one and verify it once.
    Backends without a per-layer sensitivity analysis are left as they are."""

    model_config = _STRICT
    enabled: bool = True
    max_attempts: int = Field(5, ge=1, le=20, description="re-exports at most")
    tuning_images: int = Field(256, ge=8, le=10_000, description=(
        "calibration-side images candidates are judged on, at most (fewer when the "
        "calibration side has fewer; 32 of them also rank the layers)"))
    min_agreement: float = Field(0.99, gt=0, le=1, description=(
        "top-1 agreement with the source on the tuning images that ends the search"))


class Recovery(BaseModel):
    """Fine-tuning after pruning: knowledge distillation from the unpruned model (KL on logits
    at ``temperature``, weight ``kd_alpha``) plus the label loss, early-stopped on a validation
    part of the non-verification images."""

    model_config = _STRICT
    epochs: int = Field(8, ge=0, le=1000, description="0 turns recovery off")
    lr: float = Field(5e-4, gt=0, le=1)
    batch_size: int = Field(32, ge=2, le=4096)
    patience: int = Field(3, ge=1, le=1000)
    kd_alpha: float = Field(0.7, ge=0, le=1)
    temperature: float = Field(4.0, gt=0, le=100)
    max_images: int | None = Field(None, ge=10, description="cap on training images")
    validation_fraction: float = Field(0.15, gt=0, lt=1)
    bn_images: int = Field(1024, ge=0, le=100_000,
                           description="clean images to re-estimate BatchNorm statistics on "
                                       "after pruning and before each validation; 0: off")


class Pruning(BaseModel):
    """Structured (channel) pruning before export; see ``edgekit.prune``."""

    model_config = _STRICT
    target_macs: float | None = Field(None, gt=0, lt=1,
                                      description="fraction of the original MACs to keep")
    ratio: float | None = Field(None, gt=0, lt=1, description="fraction of channels to remove")
    target_time: float | None = Field(
        None, gt=0, lt=1, description="fraction of the profiled (unpruned) time to keep; "
                                      "needs cost: latency")
    cost: Literal["macs", "latency"] = Field(
        "macs", description="macs: channels ranked by importance alone; latency: by importance / "
                            "ms saved per channel, from a per-layer time profile of the "
                            "unpruned model on the target (OpenVINO fp32 on local targets)")
    importance: Literal["l2", "taylor"] = "taylor"
    global_pruning: bool = False
    max_layer_ratio: float = Field(0.75, gt=0, lt=1)
    round_to: int = Field(8, ge=1, le=256)
    protect: list[str] | None = Field(None, description="layer names; default stem + classifier")
    steps: int = Field(1, ge=1, le=20, description="prune → recover rounds (iterative pruning)")
    taylor_images: int = Field(256, ge=8, le=100_000)
    recovery: Recovery = Recovery()

    @model_validator(mode="after")
    def _one_target(self) -> Pruning:
        if sum(x is not None for x in (self.target_macs, self.ratio, self.target_time)) != 1:
            raise ValueError("give exactly one of target_macs, ratio and target_time")
        if self.target_time is not None and self.cost != "latency":
            raise ValueError("target_time (a fraction of the profiled time) needs cost: latency")
        return self


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
    pruning: Pruning | None = None
    rescue: Rescue = Rescue()

    @property
    def pruned(self) -> bool:
        return self.pruning is not None

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
            if key.startswith("pruning.") and data.get("pruning") is None:
                raise ConfigError(f"recipe {self.name!r} does not prune: {key} does not apply "
                                  "(use a prune recipe, e.g. prune30-int8)")
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
            for other in _EXCLUSIVE.get(key, ()):  # one target replaces the others
                data["pruning"][other] = None
        return _validate(data, f"recipe {self.name!r} with overrides")


_TARGETS = ("target_macs", "ratio", "target_time")
_EXCLUSIVE = {f"pruning.{t}": [o for o in _TARGETS if o != t] for t in _TARGETS}


def builtin_recipes() -> dict[str, Path]:
    """Names and files of the recipes shipped with edgekit."""
    return config.builtin_files("recipes")


def _validate(data: Any, where: str) -> Recipe:
    return config.validate(Recipe, data, where, "recipe")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name (``int8``) or a user's YAML file."""
    return config.load(Recipe, name_or_path, "recipes", "recipe")


def pruning_recipe(recipe: str | Path | Recipe = "prune30", **overrides: Any) -> Recipe:
    """A pruning recipe with ``pruning.*`` / top-level overrides (None = keep the recipe's).
    ``target_macs``, ``ratio`` and ``target_time`` replace each other."""
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if rec.pruning is None:
        raise ConfigError(f"recipe {rec.name!r} has no 'pruning' section; use prune30, "
                          "prune50, prune30-int8, prune50-int8 or a recipe of your own with one")
    return rec.with_overrides(**overrides)
