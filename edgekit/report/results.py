"""The results of a bench run, typed: what ``edgekit bench`` writes to ``results.json`` (schema
``edgekit.bench/1``, see docs/bench-results.md) and what every report is made from.

``BenchResults`` and its records are strict pydantic models of that file: the keys edgekit reads
have checked types, any other key is kept as it came, and each object writes back exactly the
keys it was given, in their order (a key set later comes after them). So a run loaded and
written again is the same JSON, and runs written by earlier versions stay readable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidatorFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from edgekit import config
from edgekit.backends import backend_names, get_backend, runtime
from edgekit.errors import ConfigError
from edgekit.manifest import recorded_decision as check_decision
from edgekit.metrics import metric_ci, metric_value

RESULTS_SCHEMA = "edgekit.bench/1"

Json = dict[str, Any]
Number = int | float  # a JSON number as written: an int is not turned into a float


# ------------------------------------------------------------------------------- the records
class Record(BaseModel):
    """One JSON object of results.json (see the module docstring)."""

    model_config = ConfigDict(strict=True, extra="allow", serialize_by_alias=True)
    _keys: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_keys(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        record = handler(data)
        if isinstance(data, dict):
            record._keys = list(data)
        return record

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        field = type(self).model_fields.get(name)
        key = (field.alias if field is not None else None) or name
        if not name.startswith("_") and key not in self._keys:
            self._keys.append(key)

    @model_serializer(mode="wrap")
    def _given_keys(self, handler: SerializerFunctionWrapHandler) -> Json:
        data = handler(self)
        return {k: data[k] for k in self._keys if k in data}

    def given(self, key: str) -> bool:
        """Whether the object has ``key`` at all (``null`` counts; a default does not)."""
        return key in self._keys

    @property
    def empty(self) -> bool:
        """``{}``: an object with no key, which reads like null."""
        return not self._keys

    def to_dict(self) -> Json:
        """The JSON object: the given keys, in their order."""
        return self.model_dump()


class Latency(Record):
    """``latency_ms`` of a measured row: percentiles, mean, spread (ms) over ``n`` calls."""

    p50: Number | None = None
    p90: Number | None = None
    p99: Number | None = None
    mean: Number | None = None
    std: Number | None = None
    min: Number | None = None
    max: Number | None = None
    n: int | None = None


class Runtime(Record):
    """What the runtime reported about how it ran (name, version, threads, precision)."""

    inference_precision: str | None = None


class Thermal(Record):
    """Temperature and clock samples taken while a row was timed (boards)."""

    temp_c_min: Number | None = None
    temp_c_max: Number | None = None
    freq_mhz_min: Number | None = None
    freq_mhz_max: Number | None = None
    samples: int | None = None
    throttled_before: str | int | bool | None = None
    throttled_after: str | int | bool | None = None


class Row(Record):
    """One measured artifact × thread count: its latency, or the error that stopped it."""

    artifact: str
    threads: int | None = None
    latency_ms: Latency | None = None
    spread: Number | None = None
    load_ms: Number | None = None
    peak_rss_mb: Number | None = None
    runtime: Runtime | None = None
    error: str | None = None
    thermal: Thermal | None = None
    valid: bool | None = None
    invalid_reason: str | None = None
    pin: list[int] | None = None

    @property
    def ok(self) -> bool:
        """Measured without error: it has a p50."""
        return not self.error and self.latency_ms is not None and self.latency_ms.p50 is not None

    @property
    def p50(self) -> float:
        """The p50 latency (ms) of a row that is ``ok``."""
        if self.latency_ms is None or self.latency_ms.p50 is None:
            raise ValueError(f"{self.artifact}: no p50 latency")
        return float(self.latency_ms.p50)


def valid_row(row: Row) -> bool:
    """False for a measured row the bench marked invalid (e.g. the board throttled)."""
    return row.valid is not False


class ArtifactRecord(Record):
    """An artifact (or the source model) of a benched bundle, with its accuracy."""

    id: str
    bundle: str | None = None
    bundle_name: str | None = None
    name: str | None = None
    backend: str | None = None
    precision: str | None = None
    kind: str | None = None  # "artifact" | "source"
    status: str | None = None
    recipe: str | None = None
    bytes: int | None = None
    notes: list[str] = Field(default_factory=list)
    # the manifest's fast_path record (edgekit.manifest.FastPath as JSON): ops off the runtime's
    # fast path; null for sources and bundles made before it was recorded
    fast_path: Json | None = None
    accuracy: Json | None = None  # edgekit.verify.compare()'s record, or null
    accuracy_source: str | None = None  # "bench" | "bundle"
    reference: str | None = None
    timed: bool | None = None


class PredictedRow(Record):
    """The latency model's prediction for one artifact × thread count, or why there is none."""

    artifact: str
    backend: str | None = None
    precision: str | None = None
    threads: int | None = None
    p50_ms: Number | None = None
    low_ms: Number | None = None
    high_ms: Number | None = None
    rel_err: Number | None = None
    group: str | None = None
    basis: str | None = None
    error: str | None = None
    # ops the artifact runs off its runtime's fast path (its manifest): the p50 is a lower bound
    off_fast_path: int | None = None

    @property
    def ok(self) -> bool:
        """A prediction (a p50), not an error."""
        return not self.error and self.p50_ms is not None

    @property
    def p50(self) -> float:
        """The predicted p50 (ms) of a row that is ``ok``."""
        if self.p50_ms is None:
            raise ValueError(f"{self.artifact}: no predicted p50")
        return float(self.p50_ms)

    @property
    def rel_error(self) -> float:
        """The expected relative error: ``rel_err``, else from ``high_ms``, else 0."""
        if self.rel_err is not None:
            return float(self.rel_err)
        hi, p50 = self.high_ms, self.p50_ms
        return float(hi) / float(p50) - 1 if hi is not None and p50 else 0.0

    @property
    def bounds(self) -> tuple[float, float]:
        """The predicted interval (low, high) in ms; ±rel_err around p50 when not recorded."""
        p50, rel = self.p50, self.rel_error
        return (float(self.low_ms) if self.low_ms is not None else p50 * (1 - rel),
                float(self.high_ms) if self.high_ms is not None else p50 * (1 + rel))


class Predicted(Record):
    """``predicted``: the latency model's rows and notes."""

    label: str | None = None
    notes: list[str] | None = None
    rows: list[PredictedRow] = Field(default_factory=list)


class EmulatedRow(Record):
    """Output parity of one artifact under QEMU against the same artifact on this machine."""

    artifact: str
    status: str | None = None  # "passed" | "failed" | "error"
    reason: str | None = None
    max_abs_diff: Number | None = None
    max_rel_diff: Number | None = None
    top1_agreement: Number | None = None


class Emulated(Record):
    """``emulated``: the QEMU CPU, the images and every artifact's parity row."""

    qemu_cpu: str | None = None
    images: int | None = None
    note: str | None = None
    environment: Json | None = None
    rows: list[EmulatedRow] = Field(default_factory=list)


class TargetCpu(Record):
    """The target profile's declared CPU."""

    model: str | None = None
    features: list[str] | None = None


class TargetInfo(Record):
    """The target profile as loaded (``Target.model_dump()``) plus ``isa_notes``."""

    name: str | None = None
    description: str | None = None
    arch: str | None = None
    access: Json | None = None
    cpu: TargetCpu | None = None
    preferred: dict[str, list[str]] | None = None
    runtime_options: dict[str, Json] | None = None
    isa_notes: list[str] | None = None


class HostCpu(Record):
    """The CPU the rows were measured on (``hostinfo.cpu_info()``)."""

    model: str | None = None
    arch: str | None = None
    logical_cores: int | None = None
    governor: str | None = None
    freq_mhz: Json | None = None
    features: list[str] | None = None


class Environment(Record):
    """The machine and software of the measurements (``protocol.environment()``)."""

    cpu: HostCpu | None = None
    os: str | None = None
    python: str | None = None
    packages: Json | None = None
    temperature_c: Number | None = None
    throttled: str | None = None


class DataInfo(Record):
    """The evaluation images of the run."""

    path: str | None = None
    n: int | None = None
    task: str | None = None


class Reference(Record):
    """What the first bundle's artifacts were scored against."""

    artifact: str | None = None
    description: str | None = None


class BenchResults(Record):
    """A whole bench run (``results.json``); built by ``edgekit.bench.run``, read by the report."""

    schema_name: str = Field(alias="schema")
    created: str | None = None
    edgekit: str | None = None
    seconds: Number | None = None
    target: TargetInfo
    measured_by: str | None = None  # "local" | "ssh" | null: nothing measured
    measured_host: str | None = None
    environment: Environment | None = None
    protocol: Json | None = None
    data: DataInfo | None = None
    reference: Reference | None = None
    notes: list[str] | None = None
    artifacts: list[ArtifactRecord]
    rows: list[Row]
    predicted: Predicted | None = None
    emulated: Emulated | None = None
    cluster: Json | None = None  # a sharded evaluation (--cluster): engine, nodes, shards

    def by_id(self) -> dict[str, ArtifactRecord]:
        return {a.id: a for a in self.artifacts}

    @property
    def target_name(self) -> str:
        return str(self.target.name or "this target")

    @property
    def quick(self) -> bool:
        """Timed with the --quick protocol."""
        return bool((self.protocol or {}).get("quick"))

    def eval_n(self, art: ArtifactRecord | None) -> int | None:
        """Evaluation images behind ``art``'s accuracy (else the run's largest count)."""
        n = self.data.n if self.data is not None else None
        if n is None and art is not None:
            n = (art.accuracy or {}).get("n")
        if n is None:
            ns = [a.accuracy["n"] for a in self.artifacts
                  if (a.accuracy or {}).get("n") is not None]
            n = max(ns) if ns else None
        return n

    def art_of(self, artifact: str, pred: PredictedRow | None = None) -> ArtifactRecord:
        """The artifact record; for a predicted row naming an artifact that is not in
        ``artifacts``, a stub that never passes the gate."""
        arts = self.by_id()
        if artifact in arts:
            return arts[artifact]
        return ArtifactRecord(id=artifact, name=artifact.split("/")[-1],
                              backend=pred.backend if pred else None,
                              precision=pred.precision if pred else None, kind="artifact",
                              status=None, accuracy=None)

    # ----------------------------------------------------------------- target and emulation
    @property
    def is_arm(self) -> bool:
        return str(self.target.arch or "") in ("aarch64", "arm64")

    @property
    def target_features(self) -> set[str]:
        return set((self.target.cpu.features if self.target.cpu else None) or [])

    @property
    def target_cpu_model(self) -> str:
        return str((self.target.cpu.model if self.target.cpu else None) or "its CPU")

    def preferred(self, precision: Any) -> list[str]:
        """The target's preferred runtimes for ``precision``, best first."""
        return list((self.target.preferred or {}).get(str(precision)) or [])

    def emulated_rows(self) -> dict[str, EmulatedRow]:
        return {r.artifact: r for r in (self.emulated.rows if self.emulated else [])}

    @property
    def qemu_cpu(self) -> str:
        return str((self.emulated.qemu_cpu if self.emulated else None) or "an ARM CPU")

    def parity_excluded(self) -> dict[str, EmulatedRow]:
        """Artifacts whose emulated output parity failed or could not be checked."""
        return {a: r for a, r in self.emulated_rows().items() if r.status != "passed"}


def predicted_rows(results: BenchResults | Mapping[str, Any]) -> list[PredictedRow]:
    """``results.predicted.rows`` (empty when nothing was predicted)."""
    pred = as_results(results).predicted
    return list(pred.rows) if pred is not None else []


def emulated(results: BenchResults | Mapping[str, Any]) -> Emulated | None:
    """``results.emulated`` (QEMU output parity) or None."""
    return as_results(results).emulated


# ----------------------------------------------------------------------------------- loading
def load_results(run_dir: str | Path) -> BenchResults:
    """The ``results.json`` of a run folder (or that file itself), validated.

    Raises ConfigError (exit 2) naming the path when it is missing, not JSON, not
    ``edgekit.bench/1`` or not a valid results file.
    """
    path = results_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (pass a run folder written by `edgekit bench`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from exc
    return parse_results(data, str(path))


def results_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/results.json``, or ``run_dir`` itself when it names a JSON file."""
    p = Path(run_dir)
    return p if p.suffix == ".json" and not p.is_dir() else p / "results.json"


def parse_results(data: Any, where: str) -> BenchResults:
    """``data`` (a parsed results.json) as BenchResults; ConfigError naming ``where`` and
    the first problem (every bad key path when types are wrong)."""
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != RESULTS_SCHEMA:
        raise ConfigError(f"{where}: schema {schema!r} is not {RESULTS_SCHEMA!r} "
                          "(not a results file of `edgekit bench`)")
    for key, kind in (("target", dict), ("artifacts", list), ("rows", list)):
        if not isinstance(data.get(key), kind):
            raise ConfigError(f"{where}: {key!r} is missing or not a {kind.__name__}")
    for key in ("artifacts", "rows"):
        bad = [i for i, x in enumerate(data[key]) if not isinstance(x, dict)]
        if bad:
            raise ConfigError(f"{where}: {key}[{bad[0]}] is not an object")
    ids = {a.get("id") for a in data["artifacts"]}
    for i, row in enumerate(data["rows"]):
        if row.get("artifact") not in ids:
            raise ConfigError(f"{where}: rows[{i}] names artifact {row.get('artifact')!r}, "
                              "which is not in 'artifacts'")
    return config.validate(BenchResults, data, where, "bench results file")


def as_results(results: BenchResults | Mapping[str, Any], where: str = "results") -> BenchResults:
    """``results`` typed: a results.json object (e.g. from ``json.load``) is validated first."""
    if isinstance(results, BenchResults):
        return results
    return parse_results(dict(results) if isinstance(results, Mapping) else results, where)


# --------------------------------------------------------------------------------- accuracy
@dataclass(frozen=True)
class Score:
    """An artifact's headline accuracy: multi-class top-1 (a fraction) or mean AUROC."""

    metric: str  # "accuracy" | "mean_auroc"
    value: float | None
    lo: float | None = None
    hi: float | None = None

    @property
    def label(self) -> str:
        return "mean AUROC" if self.metric == "mean_auroc" else "top-1 accuracy"

    def fmt(self, ci: bool = True) -> str:
        """``91.2 % [88.0, 94.1]`` or ``0.912 [0.885, 0.946]``."""
        if self.value is None:
            return "n/a"
        f = _fmt_score_value(self.metric)
        if ci and self.lo is not None and self.hi is not None:
            return f"{f(self.value)} [{f(self.lo, unit=False)}, {f(self.hi, unit=False)}]"
        return f(self.value)


def _fmt_score_value(metric: str) -> Callable[..., str]:
    if metric == "mean_auroc":
        return lambda x, unit=True: f"{x:.3f}"
    return lambda x, unit=True: f"{100 * x:.1f} %" if unit else f"{100 * x:.1f}"


def artifact_score(art: ArtifactRecord) -> Score | None:
    """The headline accuracy of an artifact, or None when it was not measured."""
    metrics = (art.accuracy or {}).get("metrics") or {}
    for key in ("accuracy", "mean_auroc"):
        if key in metrics:
            return Score(key, metric_value(metrics[key]), *metric_ci(metrics[key]))
    return None


def artifact_delta(art: ArtifactRecord) -> Score | None:
    """Change against the source: top-1 accuracy (fraction, with CI) or mean AUROC (point)."""
    acc = art.accuracy or {}
    d = acc.get("accuracy_delta")
    if isinstance(d, dict) and d.get("value") is not None:
        return Score("accuracy", d["value"], *metric_ci(d))
    for c in acc.get("checks") or []:
        if c.get("check") == "mean AUROC drop" and c.get("value") is not None:
            return Score("mean_auroc", -c["value"])
    return None


def passes_gate(art: ArtifactRecord) -> bool:
    """The artifact's own accuracy verdict, else its bundle status."""
    if art.accuracy is not None:
        return bool(art.accuracy.get("passed"))
    return art.status == "passed"


def failed_checks(art: ArtifactRecord) -> list[Json]:
    """The accuracy gate's checks that ``art`` failed."""
    return [c for c in (art.accuracy or {}).get("checks") or [] if check_decision(c) == "fail"]


def inconclusive_checks(art: ArtifactRecord) -> list[Json]:
    """The accuracy gate's checks too few images could decide."""
    return [c for c in (art.accuracy or {}).get("checks") or []
            if check_decision(c) == "inconclusive"]


def gate_limit(art: ArtifactRecord) -> float | None:
    """The top-1 drop limit (points) of ``art``'s gate, when it has one."""
    for c in (art.accuracy or {}).get("checks") or []:
        if c.get("check") == "top-1 accuracy drop (points)":
            return c.get("limit")
    return None


# ---------------------------------------------------------------------------- backend facts
# What the report needs to know about a runtime comes from the registry (edgekit.backends).
def backend_short_name(backend: str) -> str | None:
    """The short name chart labels use for ``backend`` (``ov``, ``ort``), None if it has none."""
    rt = runtime(backend)
    return rt.label if rt else None


def backend_colour(backend: str) -> str | None:
    """The chart colour of ``backend``, None when it has no colour of its own."""
    rt = runtime(backend)
    return rt.colour if rt else None


def int8_as_fp16_on_arm(backend: Any) -> bool:
    """Whether ``backend`` runs INT8 models as fp16 on ARM (little INT8 support there)."""
    return backend in backend_names() and get_backend(backend).int8_as_fp16_on_arm


def runtime_title(backend: str) -> str:
    """The human name of ``backend`` ("OpenVINO"), or the name itself when edgekit does not
    know it."""
    rt = runtime(backend)
    return rt.title if rt else str(backend)
