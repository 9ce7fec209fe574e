"""The bundle manifest, typed: what ``manifest.json`` says, read strictly.

One ``Manifest`` for every reader and writer of a bundle: compress writes it, ``verify_bundle``,
the device runner and bench read it. The runner runs on boards that have only numpy, Pillow and
one runtime, so the Manifest is standard-library dataclasses and its validator is written out
here (no pydantic); this module imports nothing but the standard library, the errors and the
preprocessing spec.

Strict: a missing key, an unknown key at a level this module owns, a wrong type, a non-finite
number, an empty list of artifacts or class names, ... is a DataError that names the file and
the key path (``artifacts[0].files[0].path``), every problem at once. Sections whose content
belongs to other stages (the recipe dump, the source metrics, each artifact's quantization and
verification, the pruning record, the Keras facts, the package versions) stay JSON objects
inside the typed one: only their outer type is checked here.

Every path in a manifest is a plain relative POSIX path inside the bundle (not absolute, no
``..``); ``edgekit.bundle.bundle_file`` also refuses one that a symlink leads out of the bundle.
``Manifest.from_json(data).to_json()`` reproduces ``data`` exactly, key order included, so a
bundle read and written again is byte-identical.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from edgekit.data.preprocess import PREPROCESS_KEYS, PreprocessSpec
from edgekit.errors import ConfigError, DataError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
STATUSES = ("passed", "failed-gate", "inconclusive-gate")
TASKS = ("multiclass", "multilabel")
SCORES = ("logits", "probs")
HEAD_TYPES = ("binary-sigmoid",)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOP = "(top level)"

Check = Callable[[Any, str], list[str]]


def _key(*, optional: bool = False, check: Check | None = None, **kw: Any) -> Any:
    """A dataclass field with its JSON rules. An ``optional`` key may be absent from the JSON
    (it is None then, and left out again on writing); ``check(value, key)`` returns problems
    with a value that has the right type."""
    return field(metadata={"optional": optional, "check": check}, **kw)


# ------------------------------------------------------------------------------ value checks
def path_problem(rel: str) -> str | None:
    """Why ``rel`` is not a plain relative POSIX path inside a bundle folder; None if it is."""
    p = PurePosixPath(rel)
    if p.is_absolute():
        return f"{rel!r} is an absolute path; paths in a bundle are relative to its folder"
    if ".." in p.parts:
        return f"{rel!r} leaves the bundle folder ('..')"
    if not rel or "\\" in rel or "\0" in rel or p.as_posix() != rel or "." in rel.split("/"):
        return f"{rel!r} is not a plain relative POSIX path"
    return None


def _path(value: str, key: str) -> list[str]:
    problem = path_problem(value)
    return [f"{key}: {problem}"] if problem else []


def _sha256(value: str, key: str) -> list[str]:
    return [] if _SHA256.fullmatch(value) else [
        f"{key}: expected 64 lowercase hex digits, got {value!r}"]


def _not_negative(value: float, key: str) -> list[str]:
    return [] if value >= 0 else [f"{key}: must be >= 0, got {value}"]


def _positive(value: float, key: str) -> list[str]:
    return [] if value > 0 else [f"{key}: must be > 0, got {value}"]


def _probability(value: float, key: str) -> list[str]:
    return [] if 0 <= value <= 1 else [f"{key}: must be in [0, 1], got {value}"]


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: str, key: str) -> list[str]:
        return [] if value in choices else [f"{key}: must be one of {choices}, got {value!r}"]
    return check


def _not_blank(value: str, key: str) -> list[str]:
    return [] if value.strip() else [f"{key}: must not be blank"]


def _unique(names: list[str], key: str) -> list[str]:
    dupes = sorted({n for n in names if names.count(n) > 1})
    return [f"{key}: duplicate name(s) {', '.join(map(repr, dupes))}"] if dupes else []


def _nonempty(value: tuple[Any, ...], key: str) -> list[str]:
    return [] if value else [f"{key}: must not be empty"]


def _shape(value: tuple[int, ...], key: str) -> list[str]:
    return [] if value and min(value) > 0 else [
        f"{key}: must be positive sizes, got {list(value)}"]


def _class_names(value: tuple[str, ...], key: str) -> list[str]:
    if not value:
        return [f"{key}: must not be empty"]
    blank = [f"{key}[{i}]: must not be blank" for i, n in enumerate(value) if not n.strip()]
    return blank + _unique(list(value), key)


def _artifact_list(value: tuple[ArtifactEntry, ...], key: str) -> list[str]:
    if not value:
        return [f"{key}: must list at least one artifact"]
    return _unique([a.name for a in value], key)


def _preprocess_sources(value: dict[str, Any], key: str) -> list[str]:
    """Where each preprocessing value came from: a known key → a non-blank string."""
    problems = [f"{key}: unknown key {k!r} (known: {', '.join(PREPROCESS_KEYS)})"
                for k in value if k not in PREPROCESS_KEYS]
    return problems + [f"{key}.{k}: expected a non-blank string, got {_kind(v)}"
                       for k, v in value.items() if not (isinstance(v, str) and v.strip())]


def _pruning(record: dict[str, Any], key: str) -> list[str]:
    """The pruning record is the pruning stage's; only the path of its checkpoint is ours."""
    ckpt = record.get("checkpoint")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("path"), str):
        return _path(ckpt["path"], f"{key}.checkpoint.path")
    return []


# ---------------------------------------------------------------------- the generic validator
_SCALARS: dict[Any, tuple[str, tuple[type, ...]]] = {
    str: ("a string", (str,)), int: ("an integer", (int,)), float: ("a number", (int, float)),
    bool: ("a boolean", (bool,))}


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    names = {type(None): "null", bool: "boolean", int: "integer", float: "number",
             str: "string", list: "list", tuple: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _unwrap(tp: Any) -> Any:
    """``X | None`` → ``X``; any other type unchanged."""
    if get_origin(tp) in (Union, UnionType):
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


def _expected(tp: Any) -> str:
    tp = _unwrap(tp)
    if tp is PreprocessSpec or is_dataclass(tp) or get_origin(tp) is dict:
        return "an object"
    if get_origin(tp) is tuple:
        return "a list"
    return _SCALARS[tp][0]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _load(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    """``value`` (parsed JSON) as type ``tp``; appends a problem naming ``key`` per mismatch."""
    if value is None and _unwrap(tp) is not tp:  # X | None: a key whose value may be null
        return None
    tp = _unwrap(tp)
    if tp is PreprocessSpec:
        return _load_spec(value, key, problems)
    if is_dataclass(tp):
        return _load_object(tp, value, key, problems)
    origin = get_origin(tp)
    if origin is tuple:  # tuple[X, ...]: a JSON list (code may pass tuples)
        if not isinstance(value, list | tuple):
            problems.append(f"{key}: expected a list, got {_kind(value)}")
            return None
        return tuple(_load(get_args(tp)[0], v, f"{key}[{i}]", problems)
                     for i, v in enumerate(value))
    if origin is dict:  # a section another stage owns: its outer type only
        if not isinstance(value, dict):
            problems.append(f"{key}: expected an object, got {_kind(value)}")
            return None
        return copy.deepcopy(value)
    what, types = _SCALARS[tp]
    if not isinstance(value, types) or (tp is not bool and isinstance(value, bool)):
        problems.append(f"{key}: expected {what}, got {_kind(value)}")
    elif tp is float and not math.isfinite(value):
        problems.append(f"{key}: must be a finite number, got {value}")
    return value


def _load_object(cls: type, value: Any, key: str, problems: list[str]) -> Any:
    """A JSON object as the dataclass ``cls``: every key known, every required key present,
    each value of its field's type and passing its field's check; then the object's own
    ``_cross_checks`` (rules between fields). None when anything in it is wrong."""
    where = key or _TOP
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object, got {_kind(value)}")
        return None
    before = len(problems)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in value if k not in names]
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    kw = {}
    for f in fields(cls):
        sub = f"{key}.{f.name}" if key else f.name
        if f.name not in value:
            if not f.metadata.get("optional"):
                problems.append(f"{sub}: missing")
            continue
        tp = _hints(cls)[f.name]
        if f.metadata.get("optional") and value[f.name] is None:  # absent, not null
            problems.append(f"{sub}: expected {_expected(tp)}, got null")
            continue
        n = len(problems)
        kw[f.name] = _load(tp, value[f.name], sub, problems)
        check = f.metadata.get("check")
        if check is not None and kw[f.name] is not None and len(problems) == n:
            problems += check(kw[f.name], sub)
    if len(problems) > before:
        return None
    obj = cls(**kw)
    cross = getattr(obj, "_cross_checks", None)
    if cross is not None:
        problems += cross(key)
    return obj


def _dump(value: Any) -> Any:
    """A record (or a value inside one) as JSON: fields in declaration order, optional keys
    that are None left out, tuples as lists, JSON sections copied."""
    if isinstance(value, PreprocessSpec):
        return value.to_dict()
    if is_dataclass(value):
        out = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if not (f.metadata.get("optional") and v is None):
                out[f.name] = _dump(v)
        return out
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return copy.deepcopy(value)
    return value


class _Record:
    """JSON in and out for the manifest's dataclasses (``from_json`` checks strictly)."""

    @classmethod
    def from_json(cls, data: Any, where: str | Path = MANIFEST) -> Any:
        problems: list[str] = []
        obj = _load_object(cls, data, "", problems)
        if problems:
            raise DataError(f"{where}: " + "; ".join(problems))
        return obj

    def to_json(self) -> dict[str, Any]:
        return _dump(self)


# ------------------------------------------------------------------- the preprocessing spec
@dataclass(frozen=True, kw_only=True)
class _Window:
    """The JSON shape of one CT window of a preprocessing spec (for the validator only)."""

    name: str
    level: float
    width: float = _key(check=_positive)


@dataclass(frozen=True, kw_only=True)
class _SpecJson:
    """The JSON shape of ``PreprocessSpec.to_dict`` (for the validator only): every key is
    required in a manifest, so reading and writing it again changes nothing — except
    ``resize``, which spec version 2 added: version 1 specs have none (they resize bilinearly),
    version 2 specs must have it."""

    version: int
    input_size: tuple[int, ...]
    color: str
    scale: float = _key(check=_positive)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str
    ct_windows: tuple[_Window, ...] | None
    resize: str | None = _key(optional=True, default=None)

    def _cross_checks(self, key: str) -> list[str]:
        if self.version >= 2 and self.resize is None:
            return [f"{key}.resize: missing (spec version {self.version} names its resize "
                    "filter)"]
        return []


def _load_spec(value: Any, key: str, problems: list[str]) -> PreprocessSpec | None:
    """Types and finite numbers here, then the spec's own rules (sizes, channels, ...)."""
    if _load_object(_SpecJson, value, key, problems) is None:
        return None
    try:
        return PreprocessSpec.from_dict(value)
    except ConfigError as exc:
        problems.append(f"{key}: {exc}")
        return None


# -------------------------------------------------------------------------------- sections
@dataclass(frozen=True, kw_only=True)
class FileEntry(_Record):
    """One file of the bundle: its path relative to the bundle folder, sha256 and size."""

    path: str = _key(check=_path)
    sha256: str = _key(check=_sha256)
    bytes: int = _key(check=_not_negative)


@dataclass(frozen=True, kw_only=True)
class SourceRecord(_Record):
    """The model the bundle was made from (its path and sha256 when it was made)."""

    source: str
    kind: str
    architecture: str
    sha256: str | None
    trained: bool
    parameters: int | None
    data_note: str | None
    keras: dict[str, Any] | None = _key(optional=True, default=None)  # Keras sources only


@dataclass(frozen=True, kw_only=True)
class Head(_Record):
    """How to read the outputs. ``Head()`` is what a bundle without a head means (bundles
    before heads were recorded): logits, threshold 0.5."""

    scores_are: str = _key(check=_one_of(SCORES), default="logits")
    threshold: float = _key(check=_probability, default=0.5)
    type: str | None = _key(optional=True, default=None, check=_one_of(HEAD_TYPES))
    positive_class: str | None = _key(optional=True, default=None)


@dataclass(frozen=True, kw_only=True)
class ArtifactInput(_Record):
    name: str
    shape: tuple[int, ...] = _key(check=_shape)
    dtype: str
    layout: str


@dataclass(frozen=True, kw_only=True)
class ArtifactOutput(_Record):
    dtype: str


FAST_PATH_STATUSES = ("clean", "off", "unknown")


@dataclass(frozen=True, kw_only=True)
class OffPathOp(_Record):
    """One op of an artifact that runs off its runtime's fast path: the op type (the runtime's
    name: ``DEPTHWISE_CONV_2D``, ``Convolution``), the node (the runtime's node or output tensor
    name) and why it is slow (not delegated, reference kernel, float in an INT8 model ...)."""

    op: str
    node: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class FastPath(_Record):
    """Whether an artifact's ops run on the runtime's fast kernels, as its backend's
    ``fast_path`` found on the machine that made it. ``status``: "clean" (checked, none off),
    "off" (``ops`` lists them) or "unknown" (the backend cannot tell; ``checked`` says why).
    ``checked``: how it was checked (runtime, version, method)."""

    status: str = _key(check=_one_of(FAST_PATH_STATUSES))
    ops: tuple[OffPathOp, ...] = ()
    checked: str = ""

    def _cross_checks(self, key: str) -> list[str]:
        if (self.status == "off") != bool(self.ops):
            return [f"{key}.status: {self.status!r} with {len(self.ops)} op(s) listed "
                    "(\"off\" if and only if ops are listed)"]
        return []

    def summary(self, limit: int = 4) -> str:
        """One line: "" when clean or unknown; else the op types and counts, first ``limit``."""
        if self.status != "off":
            return ""
        counts: dict[str, int] = {}
        for o in self.ops:
            counts[o.op] = counts.get(o.op, 0) + 1
        parts = [f"{n}× {op}" if n > 1 else op for op, n in counts.items()]
        more = f", +{len(parts) - limit} more" if len(parts) > limit else ""
        reasons = sorted({o.reason for o in self.ops})
        return (f"{len(self.ops)} op(s) off the fast path: {', '.join(parts[:limit])}{more} "
                f"({reasons[0]}{'; …' if len(reasons) > 1 else ''})")


UNKNOWN_FAST_PATH = FastPath(status="unknown", checked="this backend does not report it")


@dataclass(frozen=True, kw_only=True)
class ArtifactEntry(_Record):
    """One exported artifact: its files (main file first), how to call it, its verification."""

    name: str = _key(check=_not_blank)
    backend: str
    precision: str
    status: str = _key(check=_one_of(STATUSES))
    files: tuple[FileEntry, ...] = _key(check=_nonempty)
    bytes: int = _key(check=_not_negative)
    input: ArtifactInput
    output: ArtifactOutput
    quantization: dict[str, Any]
    notes: tuple[str, ...]
    export_seconds: float
    verification: dict[str, Any]
    # which ops run off the runtime's fast path (bundles before issue 18 have none)
    fast_path: FastPath | None = _key(optional=True, default=None)

    def _cross_checks(self, key: str) -> list[str]:
        total = sum(f.bytes for f in self.files)
        return [] if self.bytes == total else [
            f"{key}.bytes: {self.bytes} is not the sum of its files' bytes ({total})"]


@dataclass(frozen=True, kw_only=True)
class DataRecord(_Record):
    """Which images calibrated and verified the artifacts (``DataPlan.describe``)."""

    data_root: str
    origin: str
    calibration_images: int
    calibration_files_sha256: str
    verification_images: int
    verification_files_sha256: str
    skipped_files: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class EnvironmentRecord(_Record):
    edgekit: str
    python: str
    machine: str
    packages: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Manifest(_Record):
    """A bundle's ``manifest.json``, typed. Build one with keyword arguments (every section
    above; ``head``, ``pruning`` and ``source.keras`` may be None) or read one with
    ``from_json``; ``BundleWriter.commit`` adds the README's entry to ``files``."""

    schema_version: int = SCHEMA_VERSION
    created: str
    started: str
    seconds: float
    status: str = _key(check=_one_of(STATUSES))
    source: SourceRecord
    task: str = _key(check=_one_of(TASKS))
    class_names: tuple[str, ...] = _key(check=_class_names)
    head: Head | None = _key(optional=True, default=None)
    preprocess: PreprocessSpec
    # where each preprocessing value came from ("model", "--preprocess FILE", "--color",
    # "default", ...); bundles before declared preprocessing have none
    preprocess_sources: dict[str, Any] | None = _key(optional=True, default=None,
                                                     check=_preprocess_sources)
    recipe: dict[str, Any]
    data: DataRecord
    source_metrics: dict[str, Any]
    artifacts: tuple[ArtifactEntry, ...] = _key(check=_artifact_list)
    environment: EnvironmentRecord
    pruning: dict[str, Any] | None = _key(optional=True, default=None, check=_pruning)
    files: tuple[FileEntry, ...] = ()

    @classmethod
    def from_json(cls, data: Any, where: str | Path = MANIFEST) -> Manifest:
        """The manifest in ``data`` (parsed JSON), checked strictly; ``where`` (the file) is
        named in every error."""
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a JSON object, got {_kind(data)}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(f"{where}: manifest schema version {version!r}; this edgekit reads "
                            f"version {SCHEMA_VERSION}")
        return super().from_json(data, where)

    def artifact(self, name: str) -> ArtifactEntry | None:
        return next((a for a in self.artifacts if a.name == name), None)

    def output_widths(self) -> tuple[int, ...]:
        """The output widths the class names allow: one score per class, or one sigmoid unit
        for two classes (a binary head; a bundle without a recorded head may have either)."""
        n = len(self.class_names)
        if self.head is not None and self.head.type == "binary-sigmoid":
            return (1,)
        return (1, 2) if self.task == "multiclass" and n == 2 else (n,)

    def width_problem(self, width: int) -> str | None:
        """Why an artifact with ``width`` outputs does not fit these class names (or None)."""
        if width in self.output_widths():
            return None
        return (f"outputs {width} scores per image but the manifest has "
                f"{len(self.class_names)} class names")

    def _cross_checks(self, key: str) -> list[str]:
        problems, n = [], len(self.class_names)
        if self.task == "multiclass" and n < 2:
            problems.append(f"class_names: a multiclass model needs at least 2 class names, "
                            f"got {n}")
        head = self.head
        if head is not None and head.type == "binary-sigmoid":
            if n != 2 or self.task != "multiclass":
                problems.append(f"head.type: a binary-sigmoid head needs exactly 2 class names "
                                f"and task 'multiclass', the manifest has {n} ({self.task})")
            elif head.positive_class != self.class_names[1]:
                problems.append(f"head.positive_class: {head.positive_class!r} is not the "
                                f"second class name {self.class_names[1]!r}")
        outputs = (self.source.keras or {}).get("outputs")
        if isinstance(outputs, int) and self.width_problem(outputs):
            problems.append(f"class_names: {n} names, but source.keras.outputs says the model "
                            f"has {outputs} outputs")
        shape, layout = list(self.preprocess.input_shape(1)), self.preprocess.layout
        for i, a in enumerate(self.artifacts):
            if list(a.input.shape) != shape:
                problems.append(f"artifacts[{i}].input.shape: {list(a.input.shape)} is not the "
                                f"preprocessing spec's input shape {shape}")
            if a.input.layout != layout:
                problems.append(f"artifacts[{i}].input.layout: {a.input.layout!r} is not the "
                                f"preprocessing spec's layout {layout!r}")
        return problems

    def all_files(self) -> list[FileEntry]:
        """Every file the manifest lists: the bundle's own, then each artifact's."""
        return [*self.files, *(f for a in self.artifacts for f in a.files)]


def recorded_decision(record: dict[str, Any]) -> str:
    """pass, fail or inconclusive of a verification or gate-check record as written to disk
    (records written before gates had three outcomes carry only ``passed``)."""
    return record.get("decision") or ("pass" if record.get("passed") else "fail")
