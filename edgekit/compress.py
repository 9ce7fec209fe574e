"""``compress``: source model → (quantize/export per backend) → verify → bundle.

One function over the pieces: recipes (what), calibrate (which images), backends (how), verify
(does it still agree) and bundle (atomic folder + manifest). The CLI calls only this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__, metrics
from edgekit.backends import Artifact, ExportRequest, QuantOptions, require_backend
from edgekit.backends.base import check_supported, first_line
from edgekit.bench.cluster import ClusterEvaluator
from edgekit.bundle import BundleWriter, load_manifest, package_versions, sha256_path
from edgekit.calibrate import DataPlan, StreamedImages, plan_data, stratified_sample
from edgekit.data.folder import scan
from edgekit.errors import ConfigError, VerificationFailed
from edgekit.evaluate import (
    as_logits,
    load_arrays,
    metrics_task,
    score,
    source_warnings,
    threshold_of,
)
from edgekit.manifest import (
    ArtifactEntry,
    ArtifactInput,
    ArtifactOutput,
    DataRecord,
    EnvironmentRecord,
    FastPath,
    FileEntry,
    Head,
    Manifest,
    SourceRecord,
)
from edgekit.outputs import refuse_inside_data
from edgekit.prune.latency import for_latency
from edgekit.prune.recover import prune_and_verify, save_pruned
from edgekit.quantize.rescue import METHOD as RESCUE_METHOD
from edgekit.quantize.rescue import MapTrials, Score, mean_kl, remedy_text, run_rescue
from edgekit.quantize.sensitivity import LayerError
from edgekit.recipes import Recipe, load_recipe, pruning_recipe
from edgekit.sources import Source, load_model, reference_outputs
from edgekit.sources.declared import DeclaredPreprocess
from edgekit.ui import progress_bar, status
from edgekit.verify import Verification, compare


@dataclass(frozen=True)
class CompressOptions:
    """Everything ``compress`` can be told besides the source, the data and the bundle folder.

    ``None`` keeps the recipe's value (backends, calibration/verification images, calibration
    method, integer I/O, seed). ``target_macs`` / ``target_latency_ms`` (measured on the local
    ``target`` with ``threads``) replace a pruning recipe's target. ``preprocess`` (a
    ``--preprocess`` YAML file or a ``DeclaredPreprocess`` of file and flags), ``input_size``,
    ``trust_source`` and ``input_range`` are how the source is loaded; ``threshold`` sets a sigmoid
    head's decision threshold; ``classes`` names the model's outputs in order (when they are not
    the data folders' alphabetical order). ``strict_gate`` treats an inconclusive gate (too few images to
    decide) as a failure."""

    recipe: str | Path | Recipe = "int8"
    backends: list[str] | None = None
    calibration_images: int | None = None
    calibration_method: str | None = None
    activation_ranges: str | None = None  # calibration.activation_ranges: global | mean
    verification_images: int | None = None
    int8_io: bool | None = None
    seed: int | None = None
    input_size: int | None = None
    preprocess: str | Path | DeclaredPreprocess | None = None
    allow_accuracy_drop: bool = False
    overwrite: bool = False
    on_error: str = "skip"
    target_macs: float | None = None
    target_latency_ms: float | None = None
    cost: str | None = None  # pruning.cost: macs | latency (None: the recipe's)
    target_time: float | None = None  # fraction of the profiled time (implies cost latency)
    target: str = "x86-local"
    threads: int | None = None
    threshold: float | None = None
    trust_source: bool = False
    input_range: str | None = None
    strict_gate: bool = False
    classes: tuple[str, ...] | None = None
    rescue: bool | None = None  # None: the recipe's rescue.enabled (int8: on)
    explain: bool = False  # rank every INT8 artifact's layers by sensitivity, even when it passes
    cluster: str | None = None  # a Ray address ("auto": local): the rescue's trials as Ray tasks
    # a model a pruning recipe already pruned and recovered (``CompressResult.pruned`` of an
    # earlier call with the same data, seed and verification images): reused instead of pruning
    # again, still gated against the unpruned ``source`` (``edgekit.auto`` shares one pruned
    # model between its fp32 and INT8 candidates: recovery training is the dominant cost)
    pruned: PrunedModel | None = None
    # the loaded source and its data of an earlier call on the same source (the same path, or
    # the same Source object) and data folder with the same seed, verification images and split
    # (``CompressResult.prepared``; anything else is a ConfigError): the folder is
    # not scanned and hashed again, the verification images not decoded again, the source not
    # run on them again (``edgekit.auto`` makes up to six bundles from one source and folder)
    prepared: PreparedData | None = None
    # verify on the same held-out images whether the recipe prunes or not (the split of a
    # pruning recipe), so artifacts of different recipes are compared on the same images
    shared_split: bool = False


@dataclass(frozen=True)
class PrunedModel:
    """A pruned and recovered model with its pruning record (plan, MACs, verification) and, when
    known, its outputs on the verification images it was gated on (``reference``) and the key of
    those images (``reference_key``: ``PreparedData.key``); a later call reuses the outputs only
    for the same key, never on other images that merely have the same count."""

    model: Source
    record: dict[str, Any]
    reference: np.ndarray | None = field(default=None, compare=False, repr=False)
    reference_key: tuple[Any, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PreparedData:
    """What a compress call loads before any export, kept for later calls on the same source and
    data: the loaded source, the split (``plan``), the decoded verification images ``x, y``, the
    source's outputs on them (``ref``) and its scores (``source_metrics``). ``key`` says which
    calls may reuse it (data folder, seed, verification images, split, error policy);
    ``calibration_images`` is how many calibration images ``plan`` holds."""

    source: Source
    plan: DataPlan
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    ref: np.ndarray = field(repr=False)
    source_metrics: dict[str, Any] = field(repr=False)
    key: tuple[Any, ...]
    calibration_images: int
    # the rescue's tuning images and each exported model's outputs on them, filled by the
    # first INT8 artifact that needs them: every later backend and candidate reuses them
    tuning: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def tuning_arrays(self, model: Source, samples: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """The decoded ``samples`` (cached by file list) and ``model``'s outputs on them (cached
        per model object, which the cache keeps alive so its id is not reused)."""
        paths = tuple(s.path for s in samples)
        if ("x", paths) not in self.tuning:
            x_t, _ = load_arrays(self.plan.dataset.subset(samples), model.spec, on_error="skip",
                                 description="Loading tuning images")
            self.tuning["x", paths] = x_t
        x_t = self.tuning["x", paths]
        if ("ref", paths, id(model)) not in self.tuning:
            self.tuning["ref", paths, id(model)] = (model, reference_outputs(model, x_t))
        return x_t, self.tuning["ref", paths, id(model)][1]

    def plan_for(self, calibration_images: int, seed: int, on_error: str) -> DataPlan:
        """The split with ``calibration_images`` calibration images (re-drawn only when that
        differs from the prepared count); a copy, so a call's changes stay its own."""
        if calibration_images != self.calibration_images:
            return self.plan.with_calibration(calibration_images, seed, self.source.spec,
                                              on_error)
        return dataclasses.replace(self.plan, calibration=list(self.plan.calibration),
                                   verification=list(self.plan.verification),
                                   skipped=list(self.plan.skipped),
                                   train_pool=list(self.plan.train_pool))


MIN_FRESH_TUNING = 64  # the rescue judges on non-calibration images when at least this many


@dataclass
class ArtifactResult:
    """One exported artifact with its verification and what it cost to make."""

    name: str
    artifact: Artifact
    verification: Verification
    export_seconds: float
    bytes: int
    sensitivity: list[LayerError] = field(default_factory=list)  # ranked, when measured
    fast_path: FastPath | None = None  # the backend's fast_path of the final artifact

    @property
    def passed(self) -> bool:
        return self.verification.passed

    @property
    def status(self) -> str:
        """The manifest status: passed, failed-gate or inconclusive-gate."""
        return _STATUS[self.verification.decision]


@dataclass
class CompressResult:
    bundle: Path
    recipe: Recipe
    source_metrics: dict[str, Any]
    artifacts: list[ArtifactResult]
    manifest: Manifest  # as written to the bundle
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)
    pruned: PrunedModel | None = None  # the pruned model, when the recipe prunes
    prepared: PreparedData | None = None  # the loaded source and data, for a later call

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    @property
    def status(self) -> str:
        return _bundle_status(self.artifacts)


_STATUS = {"pass": "passed", "fail": "failed-gate", "inconclusive": "inconclusive-gate"}


def _bundle_status(results: list[ArtifactResult]) -> str:
    """failed-gate when any artifact failed, else inconclusive-gate when any is, else passed."""
    found = {r.status for r in results}
    return next((s for s in ("failed-gate", "inconclusive-gate") if s in found), "passed")


def _recipe(opts: CompressOptions) -> Recipe:
    """The recipe with the options' overrides, a pruning target checked against it."""
    rec = opts.recipe if isinstance(opts.recipe, Recipe) else load_recipe(opts.recipe)
    rec = rec.with_overrides(backends=opts.backends, seed=opts.seed, int8_io=opts.int8_io,
                             **{"calibration.images": opts.calibration_images,
                                "rescue.enabled": opts.rescue,
                                "calibration.method": opts.calibration_method,
                                "calibration.activation_ranges": opts.activation_ranges,
                                "verification.images": opts.verification_images})
    given = [f for f, v in (("--target-macs", opts.target_macs),
                            ("--target-latency-ms", opts.target_latency_ms),
                            ("--target-time", opts.target_time)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give one of {' and '.join(given)}, not "
                          + ("both" if len(given) == 2 else "several"))
    if (given or opts.cost is not None) and rec.pruning is None:
        raise ConfigError(f"--target-macs/--target-latency-ms/--target-time/--cost prune the "
                          f"model, but recipe {rec.name!r} does not; use prune30, prune50, "
                          "prune30-int8 or prune50-int8")
    if opts.target_macs is not None:
        rec = pruning_recipe(rec, **{"pruning.target_macs": opts.target_macs})
    if opts.cost is not None or opts.target_time is not None:
        rec = pruning_recipe(rec, **{"pruning.cost": "latency" if opts.target_time is not None
                                     else opts.cost, "pruning.target_time": opts.target_time})
    return rec


def _source(source: str | Path | Source, rec: Recipe, opts: CompressOptions,
            data: str | Path) -> Source:
    """The source model with its classes (from the data folder when the file has none) and its
    sigmoid threshold; a pruning recipe on a Keras model is a usage error."""
    loaded = _check_prunable(source if isinstance(source, Source) else load_model(
        source, input_size=opts.input_size, trust_source=opts.trust_source,
        input_range=opts.input_range, preprocess=opts.preprocess), rec)
    if opts.classes:
        loaded = loaded.with_class_order(opts.classes)
    elif not loaded.class_names:  # .onnx/.pt2/TorchScript/Keras: classes come from the folder
        loaded = loaded.with_classes(scan(data, on_error=opts.on_error).classes)
    if opts.threshold is not None:
        loaded = loaded.with_threshold(opts.threshold)
    return loaded


def _check_prunable(loaded: Source, rec: Recipe) -> Source:
    """``loaded``, unless the recipe prunes a Keras model (a usage error)."""
    if rec.pruning is not None and loaded.kind == "keras":
        raise ConfigError(f"{loaded.source}: structured pruning is not supported for Keras models "
                          f"(edgekit's pruning engine works on PyTorch graphs); recipe "
                          f"{rec.name!r} prunes. Use an unpruned recipe (fp32, fp16, int8) for "
                          "this model.")
    return loaded


def _prepare(loaded: Source, data: str | Path, rec: Recipe, on_error: str, n_calibration: int,
             calibration_only: bool, key: tuple[Any, ...]) -> PreparedData:
    """Split the data folder, decode the verification images, run and score the source on them."""
    plan = plan_data(loaded, data, seed=rec.seed, on_error=on_error,
                     calibration_images=n_calibration,
                     verification_images=rec.verification.images,
                     calibration_only=calibration_only)
    verify_set = plan.dataset.subset(plan.verification)
    x, y = load_arrays(verify_set, loaded.spec, on_error=on_error,
                       description="Loading verification images")
    plan.skipped += [str(p) for p, _ in verify_set.skipped]
    plan.verification = verify_set.samples  # minus any file that could not be decoded
    ref = reference_outputs(loaded, x)
    source_metrics = score(y, ref, task=loaded.task, class_names=loaded.class_names, seed=rec.seed,
                           head=loaded.head)
    return PreparedData(loaded, plan, x, y, ref, source_metrics, key, n_calibration)


def _check_plan(loaded: Source, recipe: Recipe) -> list[Any]:
    """Resolve every backend and refuse impossible combinations before any work starts."""
    backends = []
    for name in recipe.backends:
        backend = require_backend(name)
        check_supported(backend, recipe.precision, loaded.kind,
                        hint=f"({loaded.source}). {backend.source_hint(loaded.kind)}")
        backends.append(backend)
    return backends


def compress(source: str | Path | Source, *, data: str | Path, out: str | Path,
             options: CompressOptions | None = None, **settings: Any) -> CompressResult:
    """Quantize/export ``source`` per the recipe, verify every artifact, write the bundle.

    ``options`` (a ``CompressOptions``; keyword ``settings`` replace its fields, e.g.
    ``recipe="fp32", backends=["openvino"]``). Pruning recipes prune + recover first;
    ``target_macs`` (fraction of the original MACs) or ``target_latency_ms`` (measured on the local
    ``target`` with ``threads``) replace the recipe's pruning target.

    Raises VerificationFailed (after writing the bundle, marked as failing) when an artifact
    misses the recipe's accuracy gate, unless ``allow_accuracy_drop``.
    """
    opts = dataclasses.replace(options or CompressOptions(), **settings)
    on_error = opts.on_error
    refuse_inside_data(out, data)
    start = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    rec = _recipe(opts)
    loaded = (_source(source, rec, opts, data) if opts.prepared is None else
              _check_prunable(opts.prepared.source, rec))
    plugins = _check_plan(loaded, rec)
    latency_rows: list[dict] = []
    if opts.pruned is not None and rec.pruning is None:
        raise ConfigError(f"a pruned model was given but recipe {rec.name!r} does not prune")
    if opts.target_latency_ms is not None and opts.pruned is None:
        rec, latency_rows = for_latency(loaded, rec, opts.target_latency_ms, opts.target,
                                        opts.threads)
    if not loaded.pretrained:
        status("[yellow]Note:[/] compressing a zoo model with fresh (untrained) weights")

    n_calibration = rec.calibration.images if rec.needs_calibration else 1
    calibration_only = rec.pruning is None and not opts.shared_split
    key = (str(source) if isinstance(source, str | Path) else id(source),
           str(Path(data).resolve()), rec.seed, rec.verification.images, on_error,
           n_calibration if calibration_only else None)  # only then does it move the split
    if opts.prepared is None:
        prepared = _prepare(loaded, data, rec, on_error, n_calibration, calibration_only, key)
    elif opts.prepared.key != key:
        raise ConfigError(f"the prepared data was made for {opts.prepared.key} (source, data, "
                          f"seed, verification images, error policy, split); this call needs "
                          f"{key}")
    else:
        prepared = opts.prepared
        status("Data: reusing the loaded verification images and the source's outputs on them")
    plan = prepared.plan_for(n_calibration, rec.seed, on_error)
    x, y, ref, source_metrics = prepared.x, prepared.y, prepared.ref, prepared.source_metrics
    status(f"Data: {len(plan.verification)} verification images ({plan.origin})"
           + (f", {len(plan.calibration)} calibration images" if rec.needs_calibration else ""))
    _report_source(source_metrics, loaded, len(y))
    model, pruning, parity_ref = loaded, None, None
    if opts.pruned is not None:
        model, pruning = opts.pruned.model, dict(opts.pruned.record)
        known = opts.pruned.reference
        parity_ref = (known if known is not None and opts.pruned.reference_key == prepared.key
                      and len(known) == len(x) else reference_outputs(model, x))
        status(f"Reusing the pruned model (MACs {pruning['macs_fraction']:.1%} of the "
               "original): not pruned or recovered again")
    elif rec.pruning is not None:
        model, pruning, parity_ref = prune_and_verify(loaded, rec, plan, x, y, ref,
                                                      source_metrics, on_error,
                                                      target=opts.target, threads=opts.threads)
        pruning["latency_search"] = latency_rows

    results: list[ArtifactResult] = []
    with contextlib.ExitStack() as stack, BundleWriter(out, overwrite=opts.overwrite) as writer:
        map_trials = None
        if opts.cluster is not None and rec.precision == "int8" and rec.rescue.enabled:
            # connected up front: a wrong address is a usage error (exit 2), not a failed rescue
            map_trials = stack.enter_context(ClusterEvaluator(opts.cluster)).map
        for backend in plugins:
            results.append(_export_one(backend, model, rec, plan, writer, prepared, parity_ref,
                                       opts, map_trials))
        pruned = None if pruning is None else _save_pruned(model, pruning, writer)
        manifest = _manifest(loaded, rec, plan, source_metrics, results, writer, started,
                             time.perf_counter() - start, pruned)
        writer.commit(manifest, _readme(manifest.to_json()))
    manifest = load_manifest(writer.out)  # as written: the README's entry included
    for r in results:  # point the returned artifacts at their final place in the bundle
        r.artifact.path = writer.out / r.artifact.path.relative_to(writer.tmp)
        r.artifact.files = [writer.out / p.relative_to(writer.tmp) for p in r.artifact.files]
    result = CompressResult(Path(out), rec, source_metrics, results, manifest,
                            time.perf_counter() - start, plan.describe(),
                            None if pruning is None else PrunedModel(model, pruning, parity_ref,
                                                                     prepared.key),
                            prepared)
    failing = [a.name for a in results if a.verification.decision == "fail"]
    unsure = [a.name for a in results if a.verification.decision == "inconclusive"]
    if unsure:
        status(f"[yellow]Inconclusive:[/] {', '.join(unsure)}: {len(x)} verification images "
               "cannot show whether the drop is within the gate (each check says how many "
               "images would decide it). The bundle is marked inconclusive-gate; "
               + ("--strict-gate treats this as a failure." if not opts.strict_gate else
                  "--strict-gate: treated as a failure."))
    parts = [f"{', '.join(failing)} failed"] if failing else []
    if opts.strict_gate and unsure:
        parts.append(f"{', '.join(unsure)} could not be shown to pass (--strict-gate)")
    if parts and not opts.allow_accuracy_drop:
        exc = VerificationFailed(
            f"{' and '.join(parts)} the {rec.name!r} recipe's accuracy gate; the bundle was "
            f"written to {out} and marked as such. Pass --allow-accuracy-drop to accept it.")
        exc.result = result  # type: ignore[attr-defined]
        raise exc
    return result


def _report_source(source_metrics: dict[str, Any], loaded: Source, n: int) -> None:
    """The source model's own accuracy and per-class sensitivity on the verification images,
    first: every artifact is compared with it, so a broken source (wrong class order, wrong
    preprocessing) must be loud before anything is exported."""
    if loaded.task == "multilabel":
        return
    acc = source_metrics["accuracy"]
    lo, hi = acc.get("ci95") or (None, None)
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else ""
    sens = ", ".join(
        f"{name} {100 * v:.0f} %" for name in loaded.class_names
        if (v := (source_metrics.get("per_class", {}).get(name, {}).get("sensitivity") or {})
            .get("value")) is not None)
    status(f"Source model on {n} verification images: accuracy {100 * acc['value']:.1f} %{ci}"
           + (f"; sensitivity {sens}" if sens else ""))
    for line in source_warnings(source_metrics, loaded.class_names):
        warnings.warn(line, stacklevel=3)


def _save_pruned(model: Source, record: dict[str, Any], writer: BundleWriter
                 ) -> dict[str, Any]:
    """Put the pruned PyTorch model in the bundle: a checkpoint (plan + weights) for a zoo
    architecture, a ``torch.export`` program (``pruned.pt2``) for any other; the manifest's
    ``pruning`` section without the bulky plan (it lives in the checkpoint / program)."""
    path = writer.tmp / "source" / ("pruned.pt" if record.get("saved_as") != "torch.export"
                                    else "pruned.pt2")
    save_pruned(model, path)
    summary = {k: v for k, v in record.items() if k != "plan"}
    summary["plan_format"] = record["plan"]["format"]
    summary["checkpoint"] = writer.file_entry(path)
    return summary


def _export_one(backend: Any, loaded: Source, rec: Recipe, plan: DataPlan,
                writer: BundleWriter, prepared: PreparedData, parity_ref: np.ndarray | None,
                opts: CompressOptions, map_trials: MapTrials | None) -> ArtifactResult:
    x, y, ref, source_metrics = prepared.x, prepared.y, prepared.ref, prepared.source_metrics
    name = f"{backend.name}-{rec.precision}"
    out_dir = writer.artifacts_dir / backend.name
    out_dir.mkdir(parents=True, exist_ok=True)

    def request_for(keep_float: tuple[str, ...], where: Path,
                    overrides: dict[str, Any] | None = None, bar: Any = None) -> ExportRequest:
        calib = (StreamedImages(plan.calibration, loaded.spec,
                                progress=None if bar is None else bar.set)
                 if rec.needs_calibration else None)
        return ExportRequest(
            model=loaded, precision=rec.precision, out_dir=where, stem=f"model-{rec.precision}",
            calibration=calib, options=dataclasses.replace(QuantOptions(
                method=rec.calibration.method, per_channel=rec.calibration.per_channel,
                activation_ranges=rec.calibration.activation_ranges, int8_io=rec.int8_io,
                seed=rec.seed, keep_float=keep_float), **(overrides or {})))

    def verify(artifact: Artifact) -> Verification:
        session = backend.open(artifact.path)
        outs = []
        with progress_bar(f"{name}: verifying", len(x)) as bar:
            for i in range(0, len(x), 16):
                outs.append(session.run(x[i:i + 16]))
                bar.advance(len(x[i:i + 16]))
        return compare(ref, np.concatenate(outs), y, task=loaded.task,
                       class_names=loaded.class_names, precision=rec.precision, recipe=rec,
                       source_metrics=source_metrics, seed=rec.seed, parity_ref=parity_ref,
                       head=loaded.head)

    t0 = time.perf_counter()
    with progress_bar(f"{name}: calibrating + converting" if rec.needs_calibration
                      else f"{name}: converting", len(plan.calibration)
                      if rec.needs_calibration else None) as bar:
        # converters (NNCF, ORT calibrators) print progress on stdout: keep stdout for results
        with contextlib.redirect_stdout(sys.stderr):
            artifact = backend.export(request_for((), out_dir, bar=bar))
    seconds = time.perf_counter() - t0
    verification = verify(artifact)
    ranking: list[LayerError] = []
    missed = rec.rescue.enabled and _misses_gate(verification)
    explain = opts.explain
    if rec.precision == "int8" and hasattr(backend, "layer_sensitivity") and (
            rec.rescue.enabled or explain):
        _report(name, artifact, verification)
        # a missed gate always searches; a met one only when the tuning agreement says the
        # artifact is measurably off the source (decided in run_rescue)
        search = True if missed else (None if rec.rescue.enabled else False)
        artifact, verification, ranking = _rescue(backend, name, loaded, rec, plan, writer,
                                                  out_dir, request_for, verify, artifact,
                                                  verification, search, explain,
                                                  map_trials, prepared)
        seconds = time.perf_counter() - t0
    elif rec.precision == "int8" and missed:
        status(f"[yellow]{name}:[/] no per-layer rescue for {backend.name} yet; the fallback is "
               f"this backend's fp32 artifact (edgekit compress … --recipe fp32 --backend "
               f"{backend.name})")
    size = _report(name, artifact, verification, seconds)
    return ArtifactResult(name, artifact, verification, seconds, size, ranking,
                          fast_path_of(backend, name, artifact))


def fast_path_of(backend: Any, name: str, artifact: Artifact) -> FastPath:
    """The backend's ``fast_path`` of ``artifact`` (unknown, with why, when it fails); a yellow
    status line names the ops off the fast path."""
    try:
        found = backend.fast_path(artifact.path, artifact.precision)
    except Exception as exc:  # noqa: BLE001 - a check that fails must not fail the bundle
        return FastPath(status="unknown", checked=f"the check failed: {first_line(exc)}")
    if found.status == "off":
        status(f"[yellow]{name}:[/] {found.summary()}")
    return found


def _report(name: str, artifact: Artifact, verification: Verification,
            seconds: float | None = None) -> int:
    """The artifact's status line; its size in bytes."""
    size = sum(p.stat().st_size for p in artifact.files)
    verdict = {"pass": "[green]passed[/]", "fail": "[red]FAILED[/]",
               "inconclusive": "[yellow]inconclusive[/]"}[verification.decision]
    took = "" if seconds is None else f" in {seconds:.1f} s"
    status(f"{name}: {size / 1e6:.2f} MB{took} — {verdict} verification")
    return size


def _misses_gate(verification: Verification) -> bool:
    """A gate the rescue should try to mend: failed, or inconclusive with a point estimate
    beyond a limit (more images would most likely show a failure)."""
    return verification.decision == "fail" or any(
        c.value is not None and c.value > c.limit for c in verification.inconclusive_checks)


def _rescue(backend: Any, name: str, loaded: Source, rec: Recipe, plan: DataPlan,
            writer: BundleWriter, out_dir: Path, request_for: Any, verify: Any,
            artifact: Artifact, verification: Verification, search: bool | None,
            explain: bool, map_trials: MapTrials | None, prepared: PreparedData
            ) -> tuple[Artifact, Verification, list[LayerError]]:
    """Rank the INT8 artifact's layers and, when ``search``, look for a candidate with the most
    sensitive ones kept in float (``edgekit.quantize.rescue``), chosen on calibration-side
    tuning images; the chosen one is verified ONCE and replaces the artifact in the bundle.
    Every step is recorded in the artifact's ``quantization`` dict."""
    # judged on images calibration did not see where there are enough: a remedy that fits the
    # calibration statistics (bias correction) looks better on them than it is (a real
    # MobileNetV2 on OpenVINO: chosen on calibration images, -1.4 pt on unseen ones)
    calibrated = {s.path for s in plan.calibration}
    fresh = [s for s in plan.train_pool or [] if s.path not in calibrated]
    disjoint = len(fresh) >= MIN_FRESH_TUNING
    tuning = stratified_sample(fresh if disjoint else plan.train_pool or plan.calibration,
                               rec.rescue.tuning_images, rec.seed + 2)
    x_t, ref_t = prepared.tuning_arrays(loaded, tuning)
    kind = metrics_task(loaded.task, ref_t)

    def tuning_agreement(candidate: Artifact) -> Score:
        out = backend.open(candidate.path).run(x_t)
        diff = float(np.mean(np.abs(out.astype(np.float64) - ref_t)))
        logits, ref_logits = as_logits(out, loaded.head, kind), as_logits(ref_t, loaded.head, kind)
        agree = metrics.top1_agreement(logits, ref_logits, task=kind,
                                       threshold=threshold_of(loaded.head))
        return Score(float(agree), diff, mean_kl(ref_logits, logits, kind))

    work = writer.tmp / "rescue" / backend.name
    try:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                outcome = run_rescue(backend, request_for, artifact, work, x_t,
                                     tuning_agreement, name=name, settings=rec.rescue,
                                     search=search, rank=explain,
                                     map_trials=map_trials)
        except Exception as exc:  # noqa: BLE001 - best effort: the plain INT8 artifact stands
            why = first_line(exc, 300, typed=True)
            status(f"[red]{name}: the INT8 rescue failed ({why}); the plain INT8 artifact "
                   "is kept as verified")
            artifact.quantization = {**artifact.quantization, "rescue": {
                "method": RESCUE_METHOD, "first_decision": verification.decision,
                "outcome": f"rescue failed ({why}); plain INT8 kept", "keep_float": []}}
            return artifact, verification, []
        sens = {"sensitivity_images": min(32, len(x_t)),
                "sensitivity_top10": [r.to_json() for r in outcome.sensitivity[:10]]}
        if not outcome.searched:
            if explain:
                artifact.quantization = {**artifact.quantization, **sens}
            return artifact, verification, outcome.sensitivity
        record: dict[str, Any] = {
            "method": RESCUE_METHOD, "first_decision": verification.decision,
            "trigger": ("the verification gate" if search else
                        "tuning agreement below min_agreement (gate met)"),
            "first_top1_agreement": verification.top1_agreement,
            "tuning_images": len(x_t), "tuning_disjoint_from_calibration": disjoint,
            "first_tuning_agreement": outcome.baseline_agreement,
            "first_tuning_mean_abs_logit_diff": outcome.baseline_logit_diff,
            "first_tuning_mean_kl": _round_sig(outcome.baseline_kl),
            "first_p50_ms": _round_ms(outcome.baseline_p50_ms),
            "min_agreement": rec.rescue.min_agreement, "stopped": outcome.stopped,
            "attempts": [a.to_json() for a in outcome.attempts], "keep_float": []}
        chosen = outcome.artifact
        if chosen is None:
            unranked = not outcome.attempts  # nothing to try, e.g. a Keras source on litert
            record["outcome"] = ("no per-layer sensitivity for this source on this backend; "
                                 "plain INT8 kept" if unranked else
                                 "no candidate agreed better with the source; plain INT8 kept")
            why = ("no layers to keep in float for this source" if unranked else
                   f"no rescue candidate within {rec.rescue.max_attempts} re-exports beat the "
                   "plain INT8 artifact")
            status(f"[red]{name}: {why}; the fallback is this backend's fp32 artifact "
                   f"(edgekit compress … --recipe fp32 --backend {backend.name})")
            artifact.quantization = {**artifact.quantization, **sens, "rescue": record}
            return artifact, verification, outcome.sensitivity
        for path in artifact.files:  # the chosen candidate takes the plain artifact's place
            path.unlink()
        files = []
        for path in chosen.files:
            files.append(out_dir / path.name)
            path.replace(files[-1])
        chosen = dataclasses.replace(chosen, path=out_dir / chosen.path.name, files=files)
        rescued = verify(chosen)  # once, on the verification images: no selection on them
        picked = outcome.attempts[outcome.chosen]
        what = remedy_text(outcome.options, outcome.keep_float)
        latency = _latency_note(outcome.baseline_p50_ms, picked.p50_ms)
        if outcome.options:
            record["options"] = outcome.options
        record.update(keep_float=list(outcome.keep_float), chosen_attempt=outcome.chosen + 1,
                      p50_ms=_round_ms(picked.p50_ms), latency=latency,
                      outcome=f"{what}; "
                              f"verification {verification.decision} → {rescued.decision}")
        chosen.quantization = {**chosen.quantization, **sens, "rescue": record}
        status(f"{name}: rescued with {what} "
               f"({', '.join(outcome.keep_float)}): verification {verification.decision} → "
               f"{rescued.decision}; {latency}")
        if rescued.decision == "fail":
            status(f"[red]{name}: still failing after the rescue; the fallback is this "
                   f"backend's fp32 artifact (edgekit compress … --recipe fp32 --backend "
                   f"{backend.name})")
        return chosen, rescued, outcome.sensitivity
    finally:
        shutil.rmtree(writer.tmp / "rescue", ignore_errors=True)


def _round_ms(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)


def _round_sig(x: float) -> float | None:
    return None if x != x else float(f"{x:.4g}")  # NaN → null


def _latency_note(plain: float | None, rescued: float | None) -> str:
    """The rescued artifact's batch-1 p50 against the plain INT8 one (both timed here, briefly;
    against the fp32 artifact: ``edgekit bench`` on the target)."""
    if plain is None or rescued is None:
        return "latency not measured"
    return (f"p50 {rescued:.2f} ms vs {plain:.2f} ms for plain INT8 "
            f"({100 * (rescued / plain - 1):+.0f} %, batch 1 on this machine; compare with the "
            "fp32 artifact with edgekit bench on the target)")


def _manifest(loaded: Source, rec: Recipe, plan: DataPlan, source_metrics: dict[str, Any],
              results: list[ArtifactResult], writer: BundleWriter, started: str,
              seconds: float, pruning: dict[str, Any] | None = None) -> Manifest:
    src_path = Path(str(loaded.source).partition(":")[2] or loaded.source)
    source = SourceRecord(source=str(loaded.source), kind=loaded.kind, architecture=loaded.name,
                          sha256=sha256_path(src_path) if src_path.exists() else None,
                          trained=loaded.pretrained,
                          parameters=loaded.metadata.get("parameters"),
                          data_note=loaded.metadata.get("data_note"),
                          keras=loaded.metadata.get("keras"))
    artifacts = tuple(ArtifactEntry(
        name=r.name, backend=r.artifact.backend, precision=r.artifact.precision,
        status=r.status,
        files=tuple(writer.entry(p) for p in r.artifact.files), bytes=r.bytes,
        input=ArtifactInput(name=r.artifact.input_name, shape=tuple(r.artifact.input_shape),
                            dtype=r.artifact.input_dtype, layout=r.artifact.layout),
        output=ArtifactOutput(dtype=r.artifact.output_dtype),
        quantization=r.artifact.quantization, notes=tuple(r.artifact.notes),
        export_seconds=round(r.export_seconds, 2), verification=r.verification.to_json(),
        fast_path=r.fast_path)
        for r in results)
    return Manifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"), started=started,
        seconds=round(seconds, 1),
        status=_bundle_status(results),
        source=source, task=loaded.task, class_names=tuple(loaded.class_names),
        head=_head(loaded), preprocess=loaded.spec,
        preprocess_sources=dict(loaded.spec_sources) or None, recipe=rec.model_dump(),
        data=DataRecord.from_json(plan.describe()), source_metrics=source_metrics,
        artifacts=artifacts,
        environment=EnvironmentRecord(edgekit=__version__, python=platform.python_version(),
                                      machine=platform.machine(), packages=package_versions()),
        pruning=pruning,
        files=() if pruning is None else (FileEntry.from_json(pruning["checkpoint"]),))


def _head(loaded: Source) -> Head:
    """How to read the outputs: logits or probabilities; sigmoid heads' threshold and positive
    class."""
    binary = bool(loaded.head.get("binary"))
    return Head(scores_are=loaded.head.get("scores_are", "logits"),
                threshold=float(loaded.head.get("threshold", 0.5)),
                type="binary-sigmoid" if binary else None,
                positive_class=loaded.class_names[1] if binary else None)


def _readme_extras(m: dict[str, Any]) -> str:
    """Keras pixel range and binary head lines of the bundle README (empty otherwise)."""
    text = ""
    keras = m["source"].get("keras")
    if keras:
        text += (f"\nKeras source: the model takes {keras['input_range']} pixels "
                 f"({keras['input_range_reason']}); do not scale them again.")
    head = m.get("head") or {}
    if head.get("type") == "binary-sigmoid":
        text += (f"\nBinary head: one sigmoid output, the probability of "
                 f"**{head['positive_class']}**; predicted positive at ≥ {head['threshold']:g}.")
    return text


def _readme(m: dict[str, Any]) -> str:
    rows = []
    for a in m["artifacts"]:
        v = a["verification"]
        acc = v["metrics"].get("accuracy") or v["metrics"].get("mean_auroc")
        rows.append(f"| `{a['files'][0]['path']}` | {a['backend']} | {a['precision']} | "
                    f"{a['bytes'] / 1e6:.2f} MB | {100 * acc['value']:.1f} % | "
                    f"{v.get('top1_agreement', float('nan')):.3f} | {a['status']} |")
    spec = m["preprocess"]
    metric = "accuracy" if m["task"] != "multilabel" else "mean AUROC"
    note = m["source"].get("data_note") or ""
    warn = ("\n> The source model was trained on SYNTHETIC phantoms: these artifacts are for "
            "trying edgekit, not for clinical use.\n" if "synthetic" in note else "")
    extras = sorted({a["backend"] for a in m["artifacts"]})
    rescued = [f"\n`{a['name']}` was rescued: {len(r['keep_float'])} layer(s) kept in float "
               f"({', '.join(f'`{k}`' for k in r['keep_float'])}); gate {r['first_decision']} "
               f"before, see `quantization.rescue` in manifest.json."
               for a in m["artifacts"] if (r := a.get("quantization", {}).get("rescue"))
               and r.get("keep_float")]
    p = m.get("pruning")
    pruned = (f"\nStructured pruning kept **{100 * p['macs_fraction']:.1f} %** of the MACs "
              f"({p['macs_before']:,} → {p['macs_after']:,}) and {p['params_after']:,} of "
              f"{p['params_before']:,} parameters; the model was recovered by distillation. "
              "Accuracy columns and the gate compare with the UNPRUNED source model. The pruned "
              f"PyTorch model is `{p['checkpoint']['path']}` (`edgekit inspect "
              f"{p['checkpoint']['path']}`).\n"
              if p else "")
    return f"""# edgekit bundle: {m['source']['architecture']} ({m['recipe']['name']})
{warn}{pruned}
Made by edgekit {m['environment']['edgekit']} on {m['created']} from `{m['source']['source']}`.
Status: **{m['status']}**. Every file's sha256 is in `manifest.json`; check them with
`edgekit verify <this folder>`.

| artifact | runtime | precision | size | {metric} | top-1 agreement | gate |
|---|---|---|---:|---:|---:|---|
{chr(10).join(rows)}

Verified on {m['data']['verification_images']} held-out images ({m['data']['origin']}).
{''.join(rescued)}

## Inputs
Classes: {', '.join(m['class_names'])} ({m['task']}). One image per call, shape
{m['artifacts'][0]['input']['shape']} ({spec['layout']}, float32): {'CT DICOM → Hounsfield windows ' + ', '.join(w['name'] for w in spec['ct_windows']) if spec['ct_windows'] else ('RGB' if spec['color'] == 'rgb' else 'greyscale') + ', pixel values scaled by ' + format(spec['scale'], '.6g')},
resized ({spec.get('resize', 'bilinear')}) to {spec['input_size'][0]}×{spec['input_size'][1]}, then (x − mean) / std with mean
{spec['mean']} and std {spec['std']}. The runner below does all of this for you.{_readme_extras(m)}

## Run it on a device (no torch needed)
```bash
pip install 'edgekit[{extras[0]}]'        # or the extra of the runtime you ship: {', '.join(extras)}
python -m edgekit.runner . image.jpg --artifact {m['artifacts'][0]['name']}
```
"""
