"""Declared preprocessing: what a user says about a model's inputs, merged with what the model
file fixes itself into the ONE ``PreprocessSpec`` — and where each value came from.

A model handed over by someone else (an ``.onnx``, a ``.pt2``, a TorchScript file) says its input
shape at most; how its images were read (greyscale or RGB, the resize filter, scale, mean and
std) is something its authors know. They say it in a YAML file with exactly the keys of a bundle
manifest's ``preprocess`` section (``--preprocess FILE.yaml``)::

    input_size: 64            # or [height, width]
    color: gray               # rgb | gray
    layout: NCHW              # NCHW | NHWC
    scale: 0.00392156862745098
    mean: [0.5]               # one value per channel (one number is used for every channel)
    std: [0.5]
    resize: lanczos           # bilinear (default) | bicubic | lanczos | nearest | area

or with the flags ``--input-size --color --layout --scale --mean --std --resize``, which override
the file. ``resolve_spec`` merges a ``DeclaredPreprocess`` with what the model fixes (its input
shape, layout, channel count): a value the model fixes and the user declares differently is a
ConfigError naming both; anything neither says takes edgekit's default ([0, 1] RGB NCHW,
bilinear, no normalisation). The result records, per key, "model", "--preprocess FILE",
"--FLAG" or "default" (the manifest's ``preprocess_sources``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, field_validator

from edgekit.config import safe_load, validate
from edgekit.data.preprocess import (
    PREPROCESS_KEYS,
    READABLE_VERSIONS,
    RESIZE_FILTERS,
    PreprocessSpec,
)
from edgekit.errors import ConfigError

DEFAULT = "default"
MODEL = "model"
_DEFAULTS = {"color": "rgb", "layout": "NCHW", "scale": 1.0 / 255.0, "resize": "bilinear"}


class PreprocessFile(BaseModel):
    """The YAML file's keys: those of a manifest's ``preprocess`` section (``version`` and a
    null ``ct_windows`` are accepted so that a manifest's section can be pasted as it is)."""

    model_config = ConfigDict(extra="forbid")

    input_size: PositiveInt | list[PositiveInt] | None = None
    color: Literal["rgb", "gray"] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    scale: PositiveFloat | None = None
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    resize: str | None = None
    version: int | None = None
    ct_windows: None = None

    @field_validator("resize")
    @classmethod
    def _known_filter(cls, value: str | None) -> str | None:
        if value is not None and value not in RESIZE_FILTERS:
            raise ValueError(f"must be one of {', '.join(RESIZE_FILTERS)}, got {value!r}")
        return value


def _size(value: Any, origin: str) -> tuple[int, int]:
    """``64`` or ``[64]`` → (64, 64); ``[h, w]`` → (h, w); anything else a ConfigError."""
    sizes = [value] if isinstance(value, int) else list(value)
    if len(sizes) not in (1, 2) or min(sizes) < 8:
        raise ConfigError(f"{origin}: input_size must be one size or [height, width], each "
                          f">= 8, got {value}")
    return (sizes[0], sizes[-1])


def _floats(value: Any) -> tuple[float, ...]:
    return (float(value),) if isinstance(value, int | float) else tuple(float(v) for v in value)


def _shown(key: str, value: Any) -> str:
    if key == "input_size":
        return f"{value[0]}×{value[1]}"
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class DeclaredPreprocess:
    """Preprocessing values a user declared, each with where it was declared."""

    values: Mapping[str, Any] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> DeclaredPreprocess:
        """The values of a ``--preprocess`` YAML file (strict: an unknown key is an error)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--preprocess {path}: file not found")
        try:
            data = safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        parsed = validate(PreprocessFile, data, str(path), "preprocessing file")
        if parsed.version is not None and parsed.version not in READABLE_VERSIONS:
            raise ConfigError(f"{path}: version {parsed.version} is not a preprocessing spec "
                              f"version this edgekit reads ({READABLE_VERSIONS})")
        given = parsed.model_dump(exclude_none=True, exclude={"version"})
        return cls().override(f"--preprocess {path.name}", **given)

    def override(self, origin: str | None = None, **values: Any) -> DeclaredPreprocess:
        """These values (None: not given) replace the declared ones; ``origin`` says where they
        come from [default: the flag of each key, ``--input-size`` ...]."""
        merged, origins = dict(self.values), dict(self.origins)
        for key, value in values.items():
            if key not in PREPROCESS_KEYS:
                raise ConfigError(f"unknown preprocessing key {key!r} (known: "
                                  f"{', '.join(PREPROCESS_KEYS)})")
            if value is None:
                continue
            where = origin or "--" + key.replace("_", "-")
            if key == "input_size":
                value = _size(value, where)
            elif key in ("mean", "std"):
                value = _floats(value)
            elif key == "scale":
                value = float(value)
            merged[key], origins[key] = value, where
        return DeclaredPreprocess(merged, origins)

    def __bool__(self) -> bool:
        return bool(self.values)


def declared(preprocess: str | Path | DeclaredPreprocess | None = None,
             **flags: Any) -> DeclaredPreprocess:
    """A ``--preprocess`` file (or an already declared set) with the flags' values on top."""
    if isinstance(preprocess, DeclaredPreprocess):
        base = preprocess
    elif preprocess is None:
        base = DeclaredPreprocess()
    else:
        base = DeclaredPreprocess.from_file(preprocess)
    return base.override(**flags)


def resolve_spec(what: str | Path, decl: DeclaredPreprocess | None, *,
                 fixed: Mapping[str, Any] | None = None, fixed_by: str = MODEL,
                 defaults: Mapping[str, Any] | None = None, default_by: str = DEFAULT,
                 size_hint: str = "pass --input-size (or input_size in --preprocess)",
                 evidence: str = "") -> tuple[PreprocessSpec, dict[str, str]]:
    """The spec of model ``what`` and, per key, where its value came from.

    ``fixed``: what the model itself fixes (a declared value that differs is a ConfigError
    naming both); ``defaults``: what the model suggests (a declared value replaces it; origin
    ``default_by``); then edgekit's defaults. ``size_hint`` ends the error when nothing gives
    the input size; ``evidence`` (e.g. "its input shape is [1, 1, 64, 64]") ends a
    contradiction's."""
    decl = decl or DeclaredPreprocess()
    fixed, defaults = dict(fixed or {}), dict(defaults or {})
    check_agrees(what, decl, fixed, fixed_by, evidence)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key in PREPROCESS_KEYS:
        if key in fixed:
            values[key], origins[key] = fixed[key], fixed_by
        elif key in decl.values:
            values[key], origins[key] = decl.values[key], decl.origins[key]
        elif key in defaults:
            values[key], origins[key] = defaults[key], default_by
        elif key in _DEFAULTS:
            values[key], origins[key] = _DEFAULTS[key], DEFAULT
    if "input_size" not in values:
        raise ConfigError(f"{what} does not fix its input size: {size_hint}")
    channels = 3 if values["color"] == "rgb" else 1
    for key, neutral in (("mean", 0.0), ("std", 1.0)):
        if key not in values:
            values[key], origins[key] = (neutral,) * channels, DEFAULT
        elif len(values[key]) == 1:  # one number for every channel
            values[key] = values[key] * channels
        elif len(values[key]) != channels:
            color_from = origins["color"]
            raise ConfigError(
                f"{what}: {origins[key]} gives {key} with {len(values[key])} values, but the "
                f"input has {channels} channel{'s' if channels > 1 else ''} "
                f"({values['color']}, from {color_from})")
    spec = PreprocessSpec(**values)
    return spec, {k: origins[k] for k in PREPROCESS_KEYS}


def check_agrees(what: str | Path, decl: DeclaredPreprocess, fixed: Mapping[str, Any],
                 fixed_by: str = MODEL, evidence: str = "") -> None:
    """A ConfigError naming both values for every declared value that differs from what the
    model (``fixed_by``) fixes (``evidence``: how it fixes them)."""
    problems = [f"{decl.origins[key]} says {key} {_shown(key, decl.values[key])}, but the "
                f"{fixed_by} fixes {key} {_shown(key, fixed[key])}"
                for key in PREPROCESS_KEYS
                if key in fixed and key in decl.values
                and not _same(key, decl.values[key], fixed[key])]
    if problems:
        raise ConfigError(f"{what}: " + "; ".join(problems)
                          + (f" ({evidence})" if evidence else ""))


def _same(key: str, a: Any, b: Any) -> bool:
    if key in ("mean", "std"):
        return len(a) == len(b) and all(abs(x - y) <= 1e-9 for x, y in zip(a, b, strict=True)) \
            or (len(a) == 1 and all(abs(a[0] - y) <= 1e-9 for y in b))
    if key == "scale":
        return abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return tuple(a) == tuple(b) if key == "input_size" else a == b


def shape_facts(shape: list[Any] | None, what: str | Path) -> dict[str, Any]:
    """What a 4-D input shape fixes: layout (NHWC when the last dim is 1 or 3 and dim 1 is
    not), color (from the channel count: 1 gray, 3 rgb) and input_size (fixed sizes only).
    Unknown dims are None or non-positive. A channel count edgekit cannot feed is an error."""
    if not shape or len(shape) != 4:
        return {}
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    facts: dict[str, Any] = {}
    if dims[1] in (1, 3):
        layout = "NCHW"
    elif dims[3] in (1, 3):
        layout = "NHWC"
    elif dims[1] is not None and dims[3] is not None:
        raise ConfigError(f"{what}: input shape {shape} has no channel axis of 1 (greyscale) or "
                          "3 (RGB) channels first or last; edgekit feeds images")
    else:
        layout = None
    if layout is not None:
        facts["layout"] = layout
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        facts["color"] = "gray" if c == 1 else "rgb"
    else:  # channels unknown: a size can still be fixed on both spatial axes of NCHW
        h, w = dims[2], dims[3]
        if dims[1] is None and dims[3] is None:
            h = w = None
    if h is not None and w is not None:
        facts["input_size"] = (h, w)
    return facts
