"""``edgekit bench``: accuracy and latency of every artifact of one or more bundles on a target.

For each bundle: the artifacts (and the PyTorch source, when it can be loaded) are timed with
the protocol at each thread count, each measurement in a fresh runner process; with ``data``,
each artifact classifies the evaluation images *in the runner* (the device's own preprocessing)
and is scored against the source model's outputs on the same images with the bundle's recipe
gate. The run is written atomically to a new run folder (``results.json`` + report files).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.bench import hostinfo
from edgekit.bench.cluster import ClusterEvaluator
from edgekit.bench.emulated import EmulatedExecutor, check_bundle
from edgekit.bench.executor import Executor
from edgekit.bench.local import LocalExecutor, RunFailed
from edgekit.bench.predict import predict_bundle
from edgekit.bench.protocol import Protocol, merge_trials
from edgekit.bench.ssh import DeviceError, SshExecutor
from edgekit.bundle import load_manifest, sha256_path, verify_bundle
from edgekit.calibrate import check_readable, stratified_sample
from edgekit.data.folder import scan
from edgekit.data.phantoms import generate_ct_dataset, generate_mri_dataset
from edgekit.errors import WRITE_ERRNOS, ConfigError, DataError, EdgekitError, write_failed
from edgekit.evaluate import held_out_dataset, score, targets_of
from edgekit.manifest import ArtifactEntry, Manifest
from edgekit.outputs import refuse_inside_data
from edgekit.recipes import Recipe
from edgekit.report import write_report
from edgekit.report.results import (
    RESULTS_SCHEMA,
    ArtifactRecord,
    BenchResults,
    DataInfo,
    Emulated,
    EmulatedRow,
    Json,
    Predicted,
    PredictedRow,
    Reference,
    Row,
    as_results,
)
from edgekit.sources import Source, load_model, reference_outputs, source_class
from edgekit.targets import isa_notes, load_target
from edgekit.ui import progress_bar, status
from edgekit.verify import compare
from edgekit.zoo import list_models

SCHEMA = RESULTS_SCHEMA


@dataclass
class BenchOptions:
    """What ``bench`` measures, where and how: one object the CLI builds once. Every field has
    the CLI's default."""

    target: str | Path = "x86-local"  # built-in target name or a target YAML file
    data: str | Path | None = None  # labelled evaluation images (else: bundle accuracy)
    threads: list[int] | None = None  # thread counts (else: the target's)
    quick: bool = False  # a few iterations instead of the full protocol (labelled)
    protocol: Protocol | None = None  # the timing protocol (overrides ``quick``)
    out: str | Path | None = None  # folder for the run folder (else: BUNDLE/bench)
    source: bool = True  # time the PyTorch source next to the artifacts (local targets)
    max_images: int | None = None  # at most this many evaluation images (stratified)
    seed: int = 0  # image sampling and bootstrap CIs
    on_error: str = "skip"  # unreadable images: "skip" (warn) or "fail"
    pin: list[int] | None = None  # CPU ids every measurement is pinned to
    held_out: bool = False  # evaluate on the source checkpoint's recorded validation split
    host: str | None = None  # user@host[:port] of an SSH target's board
    emulate: bool = False  # output parity of every artifact under QEMU (aarch64 targets)
    predict: bool = True  # add the latency model's predictions
    emulate_images: int = 16  # images for the emulated parity check
    cluster: str | None = None  # classify the evaluation images on Ray: auto | ray://H:P | H:P
    shard_size: int | None = None  # images per Ray task (else about 4 shards per cluster CPU)
    # per backend, runtime settings merged into the target's (``--runtime-option``), e.g.
    # {"onnxruntime": {"session.intra_op.allow_spinning": "0"}}
    runtime_options: dict[str, dict[str, Any]] | None = None


@dataclass
class EvalSet:
    """The evaluation images every artifact classifies (same files, same order) + labels."""

    root: Path
    paths: list[Path]
    y: np.ndarray
    task: str
    class_names: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)
    source_logits: dict[Any, Any] = field(default_factory=dict)  # per source model


@dataclass
class BundleInfo:
    path: Path
    manifest: Manifest
    source: Source | None = None  # when the source model could be loaded
    source_note: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def shape(self) -> list[int]:
        return list(self.manifest.preprocess.input_shape(1))

    @property
    def input_size(self) -> int:
        return self.manifest.preprocess.height

    @property
    def source_key(self) -> tuple[str, str | None]:
        return self.manifest.source.source, self.manifest.source.sha256


@dataclass
class BenchRun:
    """A written run folder: its results (as in its results.json) and report files."""

    run_dir: Path
    results: BenchResults
    report: dict[str, Path]


# ------------------------------------------------------------------------------------ inputs
def _load_bundles(bundles: list[str | Path]) -> list[BundleInfo]:
    if not bundles:
        raise ConfigError("give at least one bundle folder (written by `edgekit compress`)")
    infos = []
    for b in bundles:
        path = Path(b).resolve()
        manifest = load_manifest(path)
        verify_bundle(path, load=False)  # every file present and unmodified
        infos.append(BundleInfo(path, manifest))
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        raise ConfigError(f"bundle folder names must differ (they name the results): {names}")
    first = infos[0].manifest
    for info in infos[1:]:
        m = info.manifest
        if m.task != first.task or m.class_names != first.class_names:
            raise ConfigError(f"{info.path}: its classes ({', '.join(m.class_names)}) differ "
                              f"from {infos[0].path}'s; bench bundles of one model family together")
    return infos


def _load_source(info: BundleInfo) -> None:
    """Attach the PyTorch/ONNX source model if it is still where compress found it, unchanged."""
    src = info.manifest.source
    text = src.source
    path = _source_path(text)
    if src.sha256 is None:
        info.source_note = (f"source {text!r} is a zoo architecture with fresh weights: timed, but "
                            "accuracy is compared with the bundle's fp32 artifact instead")
        return
    if not path.exists():
        info.source_note = f"source {path} not found: accuracy reference is an fp32 artifact"
        return
    elif sha256_path(path) != src.sha256:
        info.source_note = f"source {path} changed since compress: not used as the reference"
        return
    try:
        keras = src.keras or {}
        loaded = load_model(text, input_size=info.input_size,
                            input_range=keras.get("input_range") if keras else None)
        # the bundle's classes, head and preprocessing are what its artifacts were held to
        head = info.manifest.head
        info.source = dataclasses.replace(
            loaded, class_names=info.manifest.class_names,
            head=head.to_json() if head is not None else dict(loaded.head),
            spec=info.manifest.preprocess)
    except (ImportError, EdgekitError) as exc:
        info.source_note = (f"source {path} not loadable here ({exc}); accuracy reference is "
                            "an fp32 artifact of the same source, if one is benched")


def _dataset(data: str | Path | None, info: BundleInfo, held_out: bool, on_error: str) -> Any:
    """Every image of ``data``, or (``held_out``) the validation split recorded in the source
    checkpoint by ``edgekit train`` — images the model never trained on (``data``: its root)."""
    if held_out:
        if info.source is None:
            raise ConfigError(f"--held-out needs {info.name}'s source checkpoint (written by "
                              f"edgekit train) where compress found it: {info.source_note}")
        return held_out_dataset(info.source, data)
    task, classes = info.manifest.task, info.manifest.class_names
    return scan(data, task=task, on_error=on_error,
                expected_classes=None if task == "multilabel" else classes)


def _source_path(text: str) -> Path:
    """The file of a manifest source: ``ARCH:weights.pt`` → weights.pt, else the path itself."""
    arch, sep, rest = text.partition(":")
    return Path(rest) if sep and arch in list_models() else Path(text)


def _eval_set(dataset: Any, info: BundleInfo, max_images: int | None, seed: int,
              on_error: str, check: Callable[..., Any] = check_readable) -> EvalSet:
    m = info.manifest
    task, classes = m.task, m.class_names
    samples = dataset.samples
    if max_images and len(samples) > max_images:
        samples = stratified_sample(samples, max_images, seed)
    spec = m.preprocess
    kept, unreadable = check(samples, spec, on_error, "evaluation")
    skipped = [str(p) for p, _ in dataset.skipped] + unreadable
    if not kept:
        raise DataError(f"{dataset.root}: none of the evaluation images could be read")
    subset = dataset.subset(kept)
    return EvalSet(Path(dataset.root), [s.path for s in kept], targets_of(subset), task, classes,
                   skipped)


def _source_logits(info: BundleInfo, ev: EvalSet, chunk: int = 64,
                   cluster: ClusterEvaluator | None = None) -> np.ndarray:
    """The source model's outputs on the evaluation images, ``chunk`` images a batch; with a
    cluster, groups of whole chunks as Ray tasks (the same batches, so the same outputs) —
    else, or when the workers cannot load the source, here."""
    if cluster is not None:
        try:
            return _sharded_source_logits(info, ev, chunk, cluster)
        except RunFailed as exc:
            status(f"[yellow]Note:[/] {info.name}: the source model could not run on the "
                   f"cluster ({exc}); computing its outputs here")
    spec = info.manifest.preprocess
    outs = []
    with progress_bar(f"{info.name}: source model on {len(ev.paths)} images",
                      len(ev.paths)) as bar:
        for i in range(0, len(ev.paths), chunk):
            x = np.stack([spec.load(p) for p in ev.paths[i:i + chunk]]).astype(np.float32)
            outs.append(reference_outputs(info.source, x))
            bar.advance(len(x))
    return np.concatenate(outs)


def _sharded_source_logits(info: BundleInfo, ev: EvalSet, chunk: int,
                           cluster: ClusterEvaluator) -> np.ndarray:
    paths = [str(p) for p in ev.paths]
    size = chunk * max(1, math.ceil(len(paths) / max(1, 4 * cluster.info.cpus) / chunk))
    groups = [paths[i:i + size] for i in range(0, len(paths), size)]
    fn = functools.partial(source_outputs, str(info.path),
                           sha256_path(info.path / "manifest.json"), chunk=chunk)
    parts = cluster.map(fn, groups, f"{info.name}: source model on {len(paths)} images, "
                                    f"{len(groups)} Ray tasks")
    cluster.info.shards[f"{info.name}/source"] = len(groups)
    return np.concatenate(parts)


_WORKER_SOURCES: dict[tuple[str, str], BundleInfo] = {}


def source_outputs(bundle: str, manifest_sha: str, paths: list[str], chunk: int) -> np.ndarray:
    """On a Ray worker: the bundle's source model (loaded once per worker process, checked
    like ``bench`` checks it) on ``paths``, ``chunk`` images a batch as on one machine."""
    key = (bundle, manifest_sha)
    info = _WORKER_SOURCES.get(key)
    if info is None:
        info = BundleInfo(Path(bundle), load_manifest(Path(bundle)))
        _load_source(info)
        if info.source is None:
            raise DataError(f"the source model is not loadable on this worker: "
                            f"{info.source_note}")
        _WORKER_SOURCES[key] = info
    spec = info.manifest.preprocess
    return np.concatenate([
        reference_outputs(info.source, np.stack([spec.load(p) for p in paths[i:i + chunk]])
                          .astype(np.float32)) for i in range(0, len(paths), chunk)])


# ------------------------------------------------------------------------------------ scoring
def _accuracy(info: BundleInfo, precision: str | None, logits: np.ndarray, ref: np.ndarray,
              ev: EvalSet, seed: int) -> Json:
    """``compare()`` of ``logits`` with the reference's on the evaluation images, held to the
    bundle's recipe gate for ``precision``."""
    recipe = Recipe.model_validate(info.manifest.recipe)
    head = None if info.manifest.head is None else info.manifest.head.to_json()
    source_metrics = score(ev.y, ref, task=ev.task, class_names=ev.class_names, seed=seed,
                           head=head)
    return compare(ref, logits, ev.y, task=ev.task, class_names=ev.class_names,
                   precision=precision, recipe=recipe, source_metrics=source_metrics,
                   seed=seed, head=head).to_json()


def _artifact_record(info: BundleInfo, art: ArtifactEntry) -> ArtifactRecord:
    return ArtifactRecord(
        id=f"{info.name}/{art.name}", bundle=str(info.path), bundle_name=info.name,
        name=art.name, backend=art.backend, precision=art.precision, kind="artifact",
        status=art.status, recipe=info.manifest.recipe["name"], bytes=art.bytes,
        notes=list(art.notes), accuracy=art.verification, accuracy_source="bundle",
        fast_path=None if art.fast_path is None else art.fast_path.to_json())


def _source_record(info: BundleInfo) -> ArtifactRecord:
    src = info.manifest.source
    path = _source_path(src.source)
    return ArtifactRecord(
        id=f"{info.name}/source", bundle=str(info.path), bundle_name=info.name, name="source",
        backend=source_class(src.kind).runtime, precision="fp32", kind="source",
        status="reference", recipe=info.manifest.recipe["name"],
        bytes=path.stat().st_size if path.is_file() else None,
        notes=[info.source_note] if info.source_note else [], accuracy=None,
        accuracy_source="bundle")


def _reference_logits(info: BundleInfo, ev: EvalSet, outputs: dict[str, np.ndarray],
                      infos: list[BundleInfo], cluster: ClusterEvaluator | None = None,
                      ) -> tuple[np.ndarray | None, str | None]:
    """(logits, id) of what ``info``'s artifacts are held to: its source model; else an fp32
    artifact of a bundle compressed from the same source file (same sha256), its own first."""
    if info.source is not None:
        if info.source_key not in ev.source_logits:
            ev.source_logits[info.source_key] = _source_logits(info, ev, cluster=cluster)
        return ev.source_logits[info.source_key], f"{info.name}/source"
    same = [i for i in infos if i is info] + [
        i for i in infos if i is not info and i.source_key == info.source_key
        and info.source_key[1] is not None]
    for other in same:
        for art in other.manifest.artifacts:
            key = f"{other.name}/{art.name}"
            if art.precision == "fp32" and key in outputs:
                return outputs[key], key
    return None, None


# ------------------------------------------------------------------------------------ the run
def _run_folder(bundles: list[BundleInfo], out: str | Path | None, target: str) -> Path:
    return fresh_folder(Path(out) if out else bundles[0].path / "bench", target)


def fresh_folder(parent: Path, name: str) -> Path:
    """``parent/<UTC time>-<name>`` (``-2``, ``-3`` … appended when taken); not created."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = parent / f"{stamp}-{name}"
    n = 2
    while run.exists():
        run = parent / f"{stamp}-{name}-{n}"
        n += 1
    return run


def bench(bundles: list[str | Path], options: BenchOptions | None = None, *,
          executor: Executor | None = None, **settings: Any) -> BenchRun:
    """Measure every artifact of ``bundles`` on the target; write and return the run.

    ``options`` says what to measure and how (:class:`BenchOptions`); ``settings`` override
    its fields by name, e.g. ``bench(["bundle/"], target="x86-local", data="Testing",
    threads=[2])``. ``executor`` measures instead of the one the target calls for (it is
    not closed here).

    How the target is reached decides what is *measured*: a local target here; an SSH target
    (``host`` overrides the profile's ``user@host:port``) on the board, and when the profile's
    board cannot be reached (and no ``host`` was given) nothing is measured. ``emulate`` adds an
    output-parity check of every artifact under QEMU (aarch64 targets; never timed), and
    ``predict`` adds the latency model's predictions (labelled, with their expected error).
    ``pin`` restricts every measurement to these CPU ids (a local target with ``pin: true`` pins
    to the CPUs this process may use)."""
    opts = dataclasses.replace(options or BenchOptions(), **settings)
    tgt = load_target(opts.target)
    if opts.runtime_options:
        tgt = tgt.with_runtime_options(opts.runtime_options)
    if opts.threads and any(t < 1 for t in opts.threads):
        raise ConfigError(f"--threads must be >= 1, got {opts.threads}")
    if opts.cluster and opts.data is None and not opts.held_out:
        raise ConfigError("--cluster shards the evaluation images: give --data DIR (or "
                          "--held-out)")
    notes: list[str] = []
    given = executor
    t_start = time.perf_counter()
    cluster = ClusterEvaluator(opts.cluster, opts.shard_size) if opts.cluster else None
    executor = None
    try:
        if cluster is not None:
            status(f"Connecting to {cluster.label} ...")
            cluster.connect()  # a bad address fails here, before anything is measured
        executor, measured_by = _executor(tgt, opts.host, given, notes)
        return _bench(bundles, opts, tgt, executor, measured_by, notes, t_start, cluster)
    finally:  # the executors bench made (an SSH connection, its remote folder); not a caller's
        if executor is not None and executor is not given:
            executor.close()
        if cluster is not None:
            cluster.close()


def _executor(tgt: Any, host: str | None, executor: Executor | None,
              notes: list[str]) -> tuple[Executor | None, str | None]:
    """(executor, measured_by) for ``tgt``: None, None when nothing can be measured."""
    kind = tgt.access.kind
    if host and kind != "ssh":
        raise ConfigError(f"--host is for SSH targets; {tgt.name!r} is reached by {kind!r} "
                          "(try --target rpi4 --host pi@192.168.1.20)")
    if executor is not None:
        return executor, executor.kind
    if kind == "local":
        return LocalExecutor(), "local"
    if kind == "emulated":
        notes.append(f"{tgt.name} is an emulated target: outputs are checked under QEMU "
                     f"({tgt.access.qemu_cpu}); latencies are predicted, never measured")
        return None, None
    ssh = SshExecutor.for_target(tgt, host=host)
    status(f"Connecting to {ssh.label} ...")
    try:
        ssh.preflight()
    except DeviceError as exc:
        ssh.close()
        if host or not exc.unreachable:  # a refused key or a changed host key is never skipped
            raise
        msg = (f"no {tgt.name} board was reachable at {ssh.label} (the profile's address), so "
               f"nothing was measured: {exc}. Latencies below are predicted; measure with "
               f"--host user@address[:port].")
        notes.append(msg)
        status(f"[yellow]Note:[/] {msg}")
        return None, None
    except BaseException:
        ssh.close()
        raise
    return ssh, "ssh"


def _bench(bundles: list[str | Path], opts: BenchOptions, tgt: Any, executor: Executor | None,
           measured_by: str | None, notes: list[str], t_start: float,
           cluster: ClusterEvaluator | None = None) -> BenchRun:
    local = measured_by == "local"
    env0 = executor.environment() if executor is not None else None
    cores = (env0 or {}).get("cpu", {}).get("logical_cores") if executor is not None else None
    cores = cores or (hostinfo.cpu_info()["logical_cores"] if local or tgt.detect
                      else tgt.cpu.cores or 1)
    counts = sorted(set(opts.threads)) if opts.threads else tgt.thread_counts(cores)
    if executor is not None and max(counts) > cores:
        status(f"[yellow]Note:[/] measuring {max(counts)} threads on {cores} usable cores: "
               "threads will share cores")
    proto = opts.protocol or (Protocol.quick_protocol() if opts.quick else Protocol())
    pin = opts.pin
    if local and pin and not set(pin) <= os.sched_getaffinity(0):
        raise ConfigError(f"cannot pin to CPUs {sorted(set(pin) - os.sched_getaffinity(0))}: "
                          f"this process may use CPUs {sorted(os.sched_getaffinity(0))}")
    if pin or (local and tgt.pin and proto.pin is None):
        cpus = pin or sorted(os.sched_getaffinity(0))
        proto = Protocol.from_dict({**proto.to_dict(), "pin": list(cpus)})
    if opts.emulate and tgt.arch != "aarch64":
        raise ConfigError(f"--emulate checks aarch64 artifacts under QEMU; {tgt.name!r} is "
                          f"{tgt.arch} (try --target rpi4 --emulate)")
    emulate = opts.emulate or tgt.access.kind == "emulated"
    infos = _load_bundles(bundles)
    if len({i.source_key for i in infos}) > 1:
        if opts.held_out:
            raise ConfigError("--held-out uses one checkpoint's validation split, but these "
                              "bundles come from different source models; use --data with a "
                              "folder none of them trained on")
        notes.append("These bundles come from different source models: each is gated against "
                     "its own source, so compare their absolute accuracy, not only the deltas.")
    run_dir = _run_folder(infos, opts.out, tgt.name)
    refuse_inside_data(run_dir.parent, opts.data, what=(
        f"--out {opts.out}" if opts.out else
        f"the bench run folder {run_dir.parent} (BUNDLE/bench: pass --out to put it elsewhere)"))
    created = _check_writable(run_dir.parent)
    try:
        emu = _emulator(tgt) if emulate else None  # fail before measuring when not prepared

        scoring = opts.data is not None or opts.held_out
        if opts.source or scoring or opts.predict:
            for info in infos:
                _load_source(info)
                if info.source_note and (opts.source or scoring):
                    status(f"[yellow]Note:[/] {info.name}: {info.source_note}")
        ev = None
        if scoring:
            ev = _eval_set(_dataset(opts.data, infos[0], opts.held_out, opts.on_error), infos[0],
                           opts.max_images, opts.seed, opts.on_error,
                           cluster.check_readable if cluster is not None else check_readable)

        # the PyTorch source is timed only where it runs: on this machine
        per_bundle, source_ids = _records(infos, opts.source and local)
        artifacts = [rec for records in per_bundle for rec in records]
        reference = None
        scorer = cluster or executor or LocalExecutor()
        if ev is not None:
            if cluster is not None:
                notes.append(f"the artifacts classified the evaluation images on {cluster.label} "
                             "(shards of consecutive images, merged in order); metrics and "
                             "CIs were computed once on the merged outputs")
            elif executor is None:
                notes.append("accuracy was computed on this machine (no board was reached): the "
                             "artifacts are the ones the board would run, on this machine's runtimes")
            reference = _score_all(infos, per_bundle, artifacts, source_ids, ev, scorer,
                                   tgt.runtime_options, opts.seed)

        rows, env = _time_all(infos, artifacts, counts, proto, executor, tgt) if executor \
            else ([], None)
        emulated = (_emulate_all(infos, artifacts, emu, ev, tgt, opts.emulate_images, opts.seed)
                    if emu else None)
        predicted = _predict_all(infos, tgt, counts) if opts.predict else None
        env = env or env0 or LocalExecutor().environment()
        target_dict = tgt.model_dump(mode="json")
        target_dict["isa_notes"] = (isa_notes(tgt, env["cpu"])
                                    if executor is not None and not tgt.detect else [])
        results = BenchResults(
            schema=SCHEMA, created=datetime.now(UTC).isoformat(timespec="seconds"),
            edgekit=__version__, seconds=round(time.perf_counter() - t_start, 1),
            target=target_dict, measured_by=measured_by,
            measured_host=executor.label if measured_by == "ssh" else None,
            environment=env, protocol=proto.to_dict(),
            data=None if ev is None else DataInfo(
                path=str(ev.root.resolve()), n=len(ev.paths), task=ev.task,
                split="held-out split recorded in the source checkpoint" if opts.held_out
                else "every image of the folder" + (f" (at most {opts.max_images}, stratified)"
                                                    if opts.max_images else ""),
                class_names=list(ev.class_names), skipped=ev.skipped),
            reference=reference, notes=notes, artifacts=artifacts, rows=rows,
            predicted=predicted, emulated=emulated,
            **({} if cluster is None else {"cluster": cluster.info.to_json()}))
        data = _finite(results.to_dict())  # what results.json holds
        written = _write_run(run_dir, data, write_report)
        return BenchRun(run_dir, as_results(data), written)
    except BaseException:  # bad --data, Ctrl-C, a failed measurement: no empty BUNDLE/bench
        _remove_empty(created)
        raise


# ------------------------------------------------------------------ emulation and prediction
# CPU model text -> QEMU -cpu; Neoverse V1 (Graviton3) has no QEMU 7.2 model: N1 stands in
_QEMU_CPUS = {"a72": "cortex-a72", "a76": "cortex-a76", "a57": "cortex-a57",
              "a53": "cortex-a53", "neoverse": "neoverse-n1"}


def _qemu_cpu(tgt: Any) -> str:
    """The QEMU ``-cpu`` model standing for the target's CPU (its access, else its model)."""
    if tgt.access.kind == "emulated":
        return tgt.access.qemu_cpu
    model = (tgt.cpu.model or "").lower().replace("cortex-", "").replace(" ", "-")
    for key, cpu in _QEMU_CPUS.items():
        if key in model:
            return cpu
    return "cortex-a76" if "dotprod" in tgt.cpu.features else "cortex-a72"


def _emulator(tgt: Any) -> EmulatedExecutor:
    return EmulatedExecutor(_qemu_cpu(tgt))


def _parity_images(infos: list[BundleInfo], ev: EvalSet | None, n: int, seed: int,
                   folder: Path) -> list[Path]:
    """``n`` evaluation images (a seeded random sample), else ``n`` synthetic phantoms of the
    bundle's kind."""
    if ev is not None:
        rng = np.random.default_rng(seed)
        idx = sorted(rng.choice(len(ev.paths), size=min(n, len(ev.paths)), replace=False))
        return [ev.paths[i] for i in idx]
    size = max(infos[0].input_size, 64)
    if infos[0].manifest.preprocess.ct_windows:
        root = generate_ct_dataset(folder, n, size=size, seed=seed)
        return sorted(root.glob("*.dcm"))
    root = generate_mri_dataset(folder, max(1, -(-n // 4)), size=size, seed=seed, fmt="png")
    return sorted(root.glob("*/*.png"))[:n]


def _emulate_all(infos: list[BundleInfo], artifacts: list[ArtifactRecord],
                 emu: EmulatedExecutor, ev: EvalSet | None, tgt: Any, n: int,
                 seed: int) -> Emulated:
    """Every artifact's outputs under QEMU against the same artifact run here (x86)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-parity-") as tmp:
        images = _parity_images(infos, ev, n, seed, Path(tmp))
        with progress_bar(f"Emulated parity on {emu.qemu_cpu}", len(infos)) as bar:
            for info in infos:
                names = [a.name for a in artifacts
                         if a.kind == "artifact" and a.bundle_name == info.name]
                bar.update(note=info.name)
                for row in check_bundle(info.path, images, cpus=[emu.qemu_cpu], artifacts=names,
                                        options=tgt.runtime_options, cache=emu.cache):
                    row["artifact"] = f"{info.name}/{row['artifact']}"
                    if row["status"] == "error":
                        status(f"[red]{row['artifact']} under emulation:[/] {row['reason']}")
                    rows.append(EmulatedRow.model_validate(row))
                bar.advance()
    return Emulated(qemu_cpu=emu.qemu_cpu, images=len(images),
                    inputs="evaluation images" if ev is not None else "synthetic phantoms",
                    note="output parity under QEMU user-mode emulation against the same "
                         "artifact on this machine; emulated timings mean nothing and are "
                         "never reported",
                    environment=emu.environment(), rows=rows)


def _predict_all(infos: list[BundleInfo], tgt: Any, counts: list[int]) -> Predicted:
    """The latency model's prediction of every artifact at every thread count (labelled)."""

    rows: list[dict[str, Any]] = []
    for info in infos:
        module = getattr(info.source, "module", None)
        try:
            rows += predict_bundle(info.path, info.manifest.to_json(), tgt, counts,
                                   module=module)
        except (EdgekitError, ValueError, KeyError) as exc:
            rows += [{"artifact": f"{info.name}/{a.name}", "threads": t,
                      "error": f"no prediction: {exc}"}
                     for a in info.manifest.artifacts for t in counts]
    return Predicted(label="predicted",
                     notes=["predicted by edgekit's per-kernel roofline latency model (see "
                            "`edgekit targets show " + tgt.name + "`); each number carries the "
                            "model's expected relative error and is not a measurement"],
                     rows=[PredictedRow.model_validate(r) for r in rows])


def _records(infos: list[BundleInfo], source: bool,
             ) -> tuple[list[list[ArtifactRecord]], dict[tuple[str, str | None], str]]:
    """Each bundle's artifact records, led by its PyTorch source when that is timed (once per
    source model), and the id of each source model's record."""
    per_bundle, source_ids = [], {}
    for info in infos:
        records = [_artifact_record(info, a) for a in info.manifest.artifacts]
        src = info.manifest.source
        if (source and source_class(src.kind).timed_by_bench
                and info.source_key not in source_ids
                and (info.source is not None or src.sha256 is None)):
            records.insert(0, _source_record(info))
            source_ids[info.source_key] = records[0].id
        per_bundle.append(records)
    return per_bundle, source_ids


def _score_all(infos: list[BundleInfo], per_bundle: list[list[ArtifactRecord]],
               artifacts: list[ArtifactRecord], source_ids: dict[tuple[str, str | None], str],
               ev: EvalSet, executor: Executor | None, runtime_options: dict[str, Any],
               seed: int) -> Reference | None:
    """Classify the evaluation images with every artifact and score each bundle against its
    reference; a source used as reference but not timed gets an untimed record. Returns the
    first bundle's reference ({artifact, description}) or None."""
    outputs = _classify_all(infos, per_bundle, ev, executor, runtime_options)
    reference = None
    for info, records in zip(infos, per_bundle, strict=True):
        ref_id, ref = _score_bundle(info, records, ev, outputs, infos, seed,
                                    executor if isinstance(executor, ClusterEvaluator) else None)
        if ref_id is None:
            continue
        if ref_id == f"{info.name}/source":
            if info.source_key in source_ids:
                ref_id = source_ids[info.source_key]  # one record per source model
            else:
                untimed = _source_record(info)
                untimed.timed = False
                artifacts.insert(artifacts.index(records[0]), untimed)
                records.insert(0, untimed)
                source_ids[info.source_key] = ref_id
            for rec in records:
                if rec.reference:
                    rec.reference = ref_id
            ref_rec = next(a for a in artifacts if a.id == ref_id)
            ref_rec.accuracy = _accuracy(info, "fp32", ref, ref, ev, seed)
            ref_rec.accuracy_source = "bench"
        if reference is None:
            kind = info.manifest.source.kind
            reference = Reference(artifact=ref_id, description=(
                f"source model ({source_class(kind).runtime_label} fp32)"
                if ref_id.endswith("/source") else "fp32 artifact of the same source model"))
    return reference


def _classify_all(infos: list[BundleInfo], per_bundle: list[list[ArtifactRecord]],
                  ev: EvalSet, executor: Executor | None, runtime_options: dict[str, Any],
                  ) -> dict[str, np.ndarray]:
    """Every artifact's logits on the evaluation images, computed by the runner."""
    outputs: dict[str, np.ndarray] = {}
    for info, records in zip(infos, per_bundle, strict=True):
        arts = [r for r in records if r.kind == "artifact"]
        with progress_bar(f"{info.name}: classifying {len(ev.paths)} images", len(arts)) as bar:
            for rec in arts:
                try:
                    outputs[rec.id] = executor.logits(info.path, rec.name, ev.paths,
                                                      runtime_options.get(rec.backend))
                except RunFailed as exc:
                    rec.notes.append(f"could not classify the evaluation images: {exc}")
                    status(f"[red]{rec.id}:[/] could not classify the evaluation images: "
                           f"{exc}")
                bar.advance()
    return outputs


def _score_bundle(info: BundleInfo, records: list[ArtifactRecord], ev: EvalSet,
                  outputs: dict[str, np.ndarray], infos: list[BundleInfo],
                  seed: int, cluster: ClusterEvaluator | None = None,
                  ) -> tuple[str | None, np.ndarray | None]:
    """Score every artifact of one bundle against its reference: (reference id, logits)."""
    ref, ref_id = _reference_logits(info, ev, outputs, infos, cluster)
    if ref is None:
        status(f"[yellow]Note:[/] {info.name}: no fp32 reference (its source model or an fp32 "
               "artifact of the same source); accuracy is the bundle's own verification")
        return None, None
    for rec in records:
        logits = outputs.get(rec.id)
        if logits is None or rec.kind != "artifact":
            continue
        rec.accuracy = _accuracy(info, rec.precision, logits, ref, ev, seed)
        rec.accuracy_source = "bench"
        rec.reference = ref_id
    return ref_id, ref


def _time_all(infos: list[BundleInfo], artifacts: list[ArtifactRecord], counts: list[int],
              proto: Protocol, executor: Executor | None, tgt: Any) -> tuple[list[Row], Json | None]:
    """Time every (artifact, threads) in ``proto.trials`` interleaved rounds: each round runs
    every measurement once, one trial each, in a fresh process, so slow drift of a shared
    machine (other tenants, clocks) lands on every artifact alike instead of on whichever
    happened to run last. The rounds are merged with ``merge_trials``. Returns the rows and
    the environment the first measurement reported (None when every one failed)."""
    by_bundle = {i.name: i for i in infos}
    jobs = [(a, t) for a in artifacts if a.timed is not False for t in counts]
    single = Protocol.from_dict({**proto.to_dict(), "trials": 1})
    trials: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(jobs))}
    errors: dict[int, str] = {}
    with progress_bar("Timing", len(jobs) * proto.trials) as bar:
        for r in range(proto.trials):
            for i, (art, t) in enumerate(jobs):
                bar.advance()
                if i in errors:
                    continue
                info = by_bundle[str(art.bundle_name)]
                bar.update(note=f"{art.id} ×{t}")
                status(f"Timing {art.id} with {t} thread{'s' if t > 1 else ''} "
                       f"(round {r + 1}/{proto.trials})")
                try:
                    if art.kind == "source":
                        row = executor.time_source(info.manifest.source.source,
                                                   info.shape, t, single)
                    else:
                        row = executor.time_artifact(info.path, art.name, t, single,
                                                     tgt.runtime_options.get(art.backend))
                    trials[i].append(row)
                except (RunFailed, EdgekitError) as exc:  # incl. a dropped SSH connection
                    status(f"[red]{art.id} ×{t} failed:[/] {exc}")
                    errors[i] = str(exc)
    rows, env = [], None
    for i, (art, t) in enumerate(jobs):
        if i in errors:
            rows.append(Row(artifact=art.id, threads=t, error=errors[i]))
            continue
        merged = {"artifact": art.id, **merge_trials(trials[i])}
        row_env = merged.pop("environment", None)
        env = row_env if env is None else env
        pinned = (merged.pop("protocol", None) or {}).get("pin")
        if pinned:
            merged["pin"] = pinned
        rows.append(Row.model_validate(merged))
    return rows, env


def _check_writable(parent: Path) -> list[Path]:
    """Fail before measuring, not after, when the run folder cannot be created. Returns the
    folders it created (deepest first), for ``_remove_empty`` when the run fails."""
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".edgekit-probe-")
        probe.close()
    except OSError as exc:
        _remove_empty(created)
        raise ConfigError(f"cannot write the bench results under {parent}: {exc} "
                          "(choose another folder with --out)") from exc
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders (deepest first) while they are empty: the ones a failed run
    created, never one that holds anything."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _finite(x: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become null (strict JSON has no such numbers)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _write_run(run_dir: Path, results: Json,
               write_report: Callable[[Path, Json], dict[str, Path]]) -> dict[str, Path]:
    """``results`` (the JSON of the run) as results.json + the report files into a hidden
    temporary sibling, then one rename into place.

    A report that fails to render does not cost the measurements: results.json is kept (with a
    warning; ``edgekit report RUN_DIR`` rebuilds the rest)."""
    results.update(_finite(results))
    tmp = None
    written: dict[str, Path] = {}
    try:
        tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.",
                                    suffix=".tmp"))
        (tmp / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
        try:
            written = write_report(tmp, results)
        except Exception as exc:  # keep the measurements whatever the report does
            warnings.warn(f"the report could not be written ({type(exc).__name__}: {exc}); "
                          f"results.json is kept: run `edgekit report {run_dir}`", stacklevel=2)
        os.replace(tmp, run_dir)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_failed(f"the bench run under {run_dir.parent}", exc) from exc
        raise
    return {k: run_dir / Path(p).name for k, p in written.items()}
