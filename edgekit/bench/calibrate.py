"""Fit the latency model on this machine (``edgekit targets calibrate x86-local``).

Exports a set of calibration networks (reference ImageNet architectures of
:mod:`edgekit.bench.refnets` at a few widths and input sizes, plus edgekit zoo models) to each
runtime, times every (network, runtime, precision, threads) with the bench protocol in a fresh
subprocess (``LocalExecutor.time_file``; several interleaved rounds, the median of the rounds'
p50), then fits one group of latency-model coefficients per ``runtime/precision/threads``
(:func:`edgekit.bench.predict.fit`) against this CPU's detected peaks and a measured copy
bandwidth, plus an Amdahl thread scaling from the 1- vs N-thread pairs. The result is written
to ``~/.config/edgekit/calibration/x86-local.json`` (``$EDGEKIT_CONFIG_DIR``/calibration/…),
keyed by CPU model, core count and edgekit version, so another machine never uses it; the bench
then labels x86-local rows "predicted" with the fit's leave-one-out error.

The command itself is :mod:`edgekit.cli.calibrate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.backends import (
    ExportRequest,
    all_backends,
    backend_names,
    get_backend,
    require_backend,
)
from edgekit.bench.executor import Executor, RunFailed
from edgekit.bench.hostinfo import logical_cores, normalize_arch
from edgekit.bench.local import LocalExecutor
from edgekit.bench.predict import (
    MIN_REL_ERR,
    Hardware,
    Kernel,
    Point,
    ThreadScaling,
    detect_hardware,
    fit,
    fit_thread_scaling,
    group_points,
    machine_identity,
    predict,
    thread_prior,
    write_calibration,
)
from edgekit.bench.protocol import Protocol, runtime_version
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError
from edgekit.sources import TorchSource
from edgekit.targets import Target, load_target
from edgekit.ui import progress_bar, status
from edgekit.zoo import create_model, model_config


@dataclass(frozen=True)
class CalibrationNet:
    """One calibration network: a builder, its input size and a label."""

    label: str
    build: Callable[[], Any]
    size: int
    classes: int = 1000


def _refnet(name: str, width: float, size: int) -> CalibrationNet:
    from edgekit.bench.predict.refnets import create_refnet  # torch-bound

    label = f"{name}{'' if width == 1.0 else f'@w{width:g}'}@{size}"
    return CalibrationNet(label, lambda: create_refnet(name, width=width), size)


def _zoo(name: str, size: int) -> CalibrationNet:
    classes = model_config(name).num_classes
    return CalibrationNet(f"zoo:{name}@{size}",
                          lambda: create_model(name, input_size=size).eval(), size, classes)


# (refnet, width, input size): depthwise-heavy, SE-gated and dense-conv networks, small to large
REFNET_SET = (("mobilenet_v1", 1.0, 160), ("mobilenet_v1", 0.5, 224), ("mobilenet_v1", 1.0, 224),
              ("mobilenet_v3_large", 1.0, 224), ("mobilenet_v3_small", 1.0, 224),
              ("mobilenet_v3_small", 1.0, 128), ("efficientnet_b0", 1.0, 160),
              ("resnet18", 0.5, 160), ("resnet18", 1.0, 128), ("resnet18", 1.0, 224),
              ("resnet50", 0.5, 128))
ZOO_SET = (("dsconv_cbam_gap", 128), ("prudensnet", 128), ("ich_mrf", 128), ("mobilenetv2", 160))
QUICK_SET = (("mobilenet_v1", 0.5, 96), ("resnet18", 0.5, 64), ("mobilenet_v3_small", 1.0, 96))
INT8_EVERY = 2  # INT8 exports are slow (NNCF, ORT and PT2E calibration): every 2nd network


def calibration_networks(*, quick: bool = False, include_zoo: bool = True,
                         exclude: Sequence[str] = ()) -> list[CalibrationNet]:
    """The networks ``edgekit targets calibrate`` measures (``exclude``: refnet or zoo names to
    leave out, e.g. to validate on a disjoint set)."""
    if quick:
        return [_refnet(*c) for c in QUICK_SET if c[0] not in exclude]
    nets = [_refnet(*c) for c in REFNET_SET if c[0] not in exclude]
    if include_zoo:
        nets += [_zoo(*c) for c in ZOO_SET if c[0] not in exclude]
    return nets


class _RandomImages:
    """Calibration data for INT8 exports: a few uniform [0, 1) images (shapes matter, not
    accuracy)."""

    def __init__(self, shape: tuple[int, ...], n: int = 8) -> None:
        self.shape, self.n = shape, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for _ in range(self.n):
            yield rng.random(self.shape, dtype=np.float32)


def export_net(module: Any, label: str, size: int, classes: int, backend: str, precision: str,
               out_dir: Path) -> Path:
    """Export ``module`` (input ``3×size×size``) with edgekit's ``backend`` plugin; the
    artifact's main file."""
    loaded = TorchSource(module=module.eval(), name=label, task="multiclass",
                         class_names=tuple(f"class_{i}" for i in range(classes)),
                         spec=PreprocessSpec(input_size=size), source=label)
    plugin = require_backend(backend)
    calib = _RandomImages(tuple(loaded.spec.input_shape(1))) if precision == "int8" else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        art = plugin.export(ExportRequest(model=loaded, precision=precision, out_dir=out_dir,
                                          stem="model", calibration=calib))
    return Path(art.path)


def measurement_protocol(quick: bool) -> Protocol:
    """One round's protocol: quick for tests; otherwise ≥ 30 calls and ≥ 1.5 s after a 0.5 s
    warm-up, one trial per process (the rounds are the trials, interleaved)."""
    if quick:
        return Protocol.quick_protocol()
    return Protocol(warmup_iters=5, warmup_seconds=0.5, iters=30, min_seconds=1.5, trials=1)


def measure_artifacts(jobs: list[dict[str, Any]], threads: Sequence[int], *, protocol: Protocol,
                      rounds: int, options: dict[str, dict[str, Any]] | None = None,
                      bar: Any = None, executor: Executor | None = None,
                      ) -> list[dict[str, Any]]:
    """Time every job (``{"path", "backend", "shape", ...}``) at every thread count, ``rounds``
    times in interleaved order (round 1 of everything, then round 2, …), each call a fresh
    subprocess. One row per (job, threads): the job's keys plus ``threads``, ``p50_ms`` (median
    of the rounds' p50) and ``round_p50_ms``; or ``error``."""
    executor = executor or LocalExecutor()
    cells = [(j, t) for j in jobs for t in threads]
    got: dict[int, list[float]] = {i: [] for i in range(len(cells))}
    errors: dict[int, str] = {}
    for r in range(rounds):
        order = list(range(len(cells)))
        if r % 2:  # alternate the order: slow drifts of the machine hit every cell alike
            order.reverse()
        for i in order:
            job, t = cells[i]
            if i in errors:
                if bar:
                    bar.advance()
                continue
            try:
                res = executor.time_file(Path(job["path"]), job["backend"], job["shape"], t,
                                         protocol, (options or {}).get(job["backend"]))
                got[i].append(float(res["latency_ms"]["p50"]))
            except (RunFailed, OSError, ValueError) as exc:
                errors[i] = str(exc)
            if bar:
                bar.advance()
    rows = []
    for i, (job, t) in enumerate(cells):
        row = {k: v for k, v in job.items() if k != "path"} | {"threads": int(t)}
        if got[i]:
            rows.append(row | {"p50_ms": statistics.median(got[i]),
                               "round_p50_ms": [round(v, 4) for v in got[i]]})
        else:
            rows.append(row | {"error": errors.get(i, "not measured")})
    return rows


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[int, float, int, float]]:
    """(fewest threads, ms, N threads, ms) of every artifact measured at several counts."""
    by_cell: dict[tuple, dict[int, float]] = {}
    for r in rows:
        by_cell.setdefault((r["net"], r["backend"], r["precision"]), {})[r["threads"]] = \
            r["p50_ms"]
    pairs = []
    for per_threads in by_cell.values():
        ts = sorted(per_threads)
        pairs += [(ts[0], per_threads[ts[0]], t, per_threads[t]) for t in ts[1:]]
    return pairs


def fit_rows(rows: list[dict[str, Any]], kernels_by_net: dict[str, list[Kernel]],
             hardware: Hardware) -> tuple[dict[str, Any], ThreadScaling | None]:
    """Latency-model groups ``backend/precision/threads`` from measured rows, and the Amdahl
    thread scaling of all (fewest threads, N threads) pairs.

    The fewest-threads group of each runtime/precision is fitted (leave-one-out error). The
    groups at more threads are that fit moved by Amdahl's law with ``p`` fitted on the same
    runtime/precision's pairs (:func:`edgekit.bench.predict.thread_prior`); their ``rel_err``
    is the RMS error on their own measurements. Fitting each thread count freely let a busy
    machine's noisy multi-thread runs reshape kinds the calibration networks barely exercise
    (the gates of attention blocks): x86 validation median 21 % instead of 17 %."""
    good = [r for r in rows if "p50_ms" in r]
    pairs = _pairs(good)
    scaling = None
    if pairs:
        counts = sorted({p[2] for p in pairs})
        scaling = fit_thread_scaling(pairs, f"Amdahl fit to {len(pairs)} pairs measured here "
                                            f"(1 vs {', '.join(map(str, counts))} threads)")
    points = [Point(r["net"], kernels_by_net[r["net"]], r["p50_ms"], hardware, r["precision"],
                    r["threads"], hardware.clock_ghz, "local", r["backend"], "measured here")
              for r in good]
    families: dict[str, dict[int, list[Any]]] = {}
    for g, ps in group_points(points).items():
        _, runtime, precision, threads = g.split("/")
        families.setdefault(f"{runtime}/{precision}", {})[int(threads)] = ps
    groups: dict[str, Any] = {}
    for family, by_threads in families.items():
        t0 = min(by_threads)
        base = fit(by_threads[t0])
        groups[f"{family}/{t0}"] = base
        own = _pairs([r for r in good if f"{r['backend']}/{r['precision']}" == family])
        fam_scaling = fit_thread_scaling(own) if own else scaling
        for t, ps in sorted(by_threads.items()):
            if t == t0 or fam_scaling is None:
                continue
            c = thread_prior(base, t, fam_scaling)
            errs = [predict(p.kernels, c, hardware).ms / p.ms - 1 for p in ps]
            rms = float(np.sqrt(np.mean(np.square(errs))))
            groups[f"{family}/{t}"] = replace(
                c, n_points=len(ps), rel_err=max(MIN_REL_ERR, rms),
                basis=f"the {t0}-thread fit moved to {t} threads by Amdahl's law "
                      f"(p = {fam_scaling.parallel_fraction:.2f} from {len(own)} {family} "
                      f"pairs measured here); rel_err = RMS error on the {len(ps)} "
                      f"{t}-thread measurements")
    return dict(sorted(groups.items())), scaling



# ------------------------------------------------------------------------------ the command
FULL_BACKENDS = tuple(backend_names())
QUICK_BACKENDS = tuple(b.name for b in all_backends() if not b.slow_export)  # fast exports


@dataclass
class CalibrationOptions:
    """What ``calibrate`` measures and where it writes: one object the CLI builds once. Every
    field has the CLI's default."""

    quick: bool = False  # three tiny networks, fp32, one thread, quick protocol, one round
    out_file: str | Path | None = None  # calibration file (else calibration_path(target))
    backends: Sequence[str] | None = None  # runtimes (else QUICK_/FULL_BACKENDS, installed)
    threads: Sequence[int] | None = None  # thread counts (else the target's)
    rounds: int | None = None  # interleaved rounds (else 3; quick: 1)
    int8: bool | None = None  # also INT8 artifacts, every INT8_EVERY-th network (else not quick)
    include_zoo: bool = True  # the zoo models next to the reference networks
    nets: list[CalibrationNet] | None = None  # instead of calibration_networks()
    bandwidth_gbs: float | None = None  # DRAM bandwidth (else measured)
    executor: Executor | None = None  # times the artifacts (else a LocalExecutor)
    write: bool = True  # write the entry to the calibration file


def _calibration_target(target_name: str) -> tuple[Target, dict[str, Any]]:
    """The target (a detected, local-calibration one of this machine's arch) and this
    machine's identity."""
    target = load_target(target_name)
    if not target.detect or target.predict is None or \
            target.predict.groups_from != "local-calibration":
        raise ConfigError(f"calibrate measures THIS machine: it fits targets that are detected "
                          f"at run time and predicted from a local calibration (x86-local); "
                          f"{target.name} is not one")
    ident = machine_identity()
    if normalize_arch(ident["arch"]) != target.arch:
        raise ConfigError(f"{target.name} is {target.arch}; this machine is {ident['arch']}")
    return target, ident


def _installed(backends: Sequence[str]) -> list[str]:
    """The backends whose runtime is installed (the others skipped with a note)."""
    usable = []
    for b in backends:
        hint = get_backend(b).available()
        if hint:
            status(f"[yellow]Skipping {b}:[/] {hint}")
        else:
            usable.append(b)
    if not usable:
        raise ConfigError("no runtime to calibrate is installed")
    return usable


def _export_all(nets: list[CalibrationNet], backends: list[str], int8: bool, tmp: Path,
                ) -> tuple[list[dict[str, Any]], dict[str, list[Kernel]], list[str]]:
    """Every network to every backend (fp32; INT8 too for every INT8_EVERY-th network): the
    timing jobs, each network's kernels, and what could not be exported."""
    import torch

    from edgekit.bench.predict.torch_graph import kernels  # torch-bound

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    jobs, kernels_by_net, skipped = [], {}, []
    plan = [(n, b, p) for i, n in enumerate(nets) for b in backends
            for p in (["fp32", "int8"] if int8 and i % INT8_EVERY == 0 else ["fp32"])]
    with progress_bar("Exporting calibration networks", len(plan)) as bar:
        for k, (net, backend, precision) in enumerate(plan):
            bar.update(note=f"{net.label} {backend} {precision}")
            module = net.build()
            if net.label not in kernels_by_net:
                kernels_by_net[net.label] = kernels(module, (3, net.size, net.size))
            try:
                path = export_net(module, net.label, net.size, net.classes, backend,
                                  precision, tmp / f"{k}")
                jobs.append({"net": net.label, "backend": backend, "precision": precision,
                             "shape": [1, 3, net.size, net.size], "path": str(path),
                             "macs": sum(x.macs for x in kernels_by_net[net.label])})
            except Exception as exc:  # a converter failing on one network costs one row
                skipped.append(f"{net.label} {backend} {precision}: {exc}"[:300])
            bar.advance()
    torch.set_num_threads(torch_threads)
    return jobs, kernels_by_net, skipped


def calibrate(target_name: str = "x86-local", options: CalibrationOptions | None = None,
              **settings: Any) -> dict[str, Any]:
    """Measure this machine and fit the latency model of ``target_name`` (a detected,
    local-calibration target: x86-local). Returns the calibration entry (with ``path`` where it
    was written). ``options`` (:class:`CalibrationOptions`) say what to measure; ``settings``
    override its fields by name, e.g. ``calibrate("x86-local", quick=True)``. ``quick``: three
    tiny networks, fp32 ONNX Runtime + OpenVINO, one thread, the quick protocol, one round —
    for tests, not for predictions you rely on."""
    opts = dataclasses.replace(options or CalibrationOptions(), **settings)
    quick = opts.quick
    target, ident = _calibration_target(target_name)
    usable = _installed(list(opts.backends or (QUICK_BACKENDS if quick else FULL_BACKENDS)))
    threads = sorted(set(opts.threads or ([1] if quick
                                          else target.thread_counts(logical_cores()))))
    rounds = opts.rounds or (1 if quick else 3)
    int8 = (not quick) if opts.int8 is None else opts.int8
    nets = opts.nets if opts.nets is not None else calibration_networks(
        quick=quick, include_zoo=opts.include_zoo)
    protocol = measurement_protocol(quick)
    hardware, how = detect_hardware(opts.bandwidth_gbs)
    with tempfile.TemporaryDirectory(prefix="edgekit-calibrate-") as tmp:
        jobs, kernels_by_net, skipped = _export_all(nets, usable, int8, Path(tmp))
        total = len(jobs) * len(threads) * rounds
        with progress_bar(f"Timing ({rounds} interleaved rounds, threads "
                          f"{', '.join(map(str, threads))})", total) as bar:
            rows = measure_artifacts(jobs, threads, protocol=protocol, rounds=rounds,
                                     options=target.runtime_options, bar=bar,
                                     executor=opts.executor)
    good = [r for r in rows if "p50_ms" in r]
    if not good:
        raise ConfigError("no calibration measurement succeeded: "
                          + "; ".join(r.get("error", "") for r in rows[:3]))
    groups, scaling = fit_rows(good, kernels_by_net, hardware)
    entry = {
        "identity": ident,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": target.name,
        "edgekit": __version__,
        "hardware": asdict(hardware),
        "hardware_basis": how,
        "runtimes": {b: runtime_version(b) for b in usable},
        "protocol": {**protocol.to_dict(), "rounds": rounds,
                     "statistic": "median over rounds of each round's p50"},
        "quick": quick,
        "groups": {k: c.to_dict() for k, c in groups.items()},
        "thread_scaling": scaling.to_dict() if scaling else None,
        "networks": [{"net": n.label, "size": n.size,
                      "macs": sum(x.macs for x in kernels_by_net.get(n.label, []))}
                     for n in nets],
        "measurements": rows,
        "skipped": skipped,
    }
    if opts.write:
        entry["path"] = str(write_calibration(entry, opts.out_file, target.name))
    return entry
