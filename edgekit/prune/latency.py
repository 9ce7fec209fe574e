"""Prune to a latency target: candidates pruned step by step are exported and timed on the
target with the bench protocol until one is fast enough."""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.backends import LATENCY_BACKEND, ExportRequest, require_backend
from edgekit.bench.executor import Executor
from edgekit.bench.local import LocalExecutor
from edgekit.bench.protocol import Protocol
from edgekit.errors import ConfigError, UnreachableTarget
from edgekit.prune.engine import count, prune, step_settings
from edgekit.prune.graph import editable
from edgekit.prune.profile import PROFILE_BACKEND, profile_openvino
from edgekit.recipes import pruning_recipe
from edgekit.targets import Target, load_target
from edgekit.ui import progress_bar, status

LATENCY_FRACTIONS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def latency_search(loaded: Any, cfg: Any, target_ms: float, target: Any, *,
                   threads: int | None = None, protocol: Any = None,
                   fractions: Sequence[float] = LATENCY_FRACTIONS,
                   executor: Executor | None = None) -> tuple[float, list[dict]]:
    """Prune copies of ``loaded`` step by step (MACs 100 %, 90 %, 80 % … of the original; L2
    importance: only the widths matter for speed), export each to the target's preferred fp32
    runtime and time it with the bench protocol, until the p50 is at most ``target_ms``.

    With ``cfg.cost == "latency"`` the walk is guided instead: the unpruned model is profiled
    (OpenVINO fp32, per layer) and timed; the first candidate keeps ``target_ms / p50`` of the
    profiled time (latency cost), and each next one corrects that fraction by the measured
    ``target_ms / p50`` — usually one or two candidates instead of a walk of 10 % steps.

    Returns (MACs fraction — the profiled-time fraction with the latency cost — to prune to,
    one row per measured step). Raises ConfigError when the target is not local (latency must
    be measured where the model will run) or not reachable. ``executor`` (tests) replaces the
    local executor that times each candidate.
    """
    import torch

    if target.access.kind != "local":
        raise ConfigError(f"--target-latency-ms measures every candidate on the target; "
                          f"{target.name} is reached by {target.access.kind!r}, and only local "
                          "targets can be measured here. Use --target-macs, or run edgekit "
                          "prune on the device.")
    names = [b for b in target.preferred.get("fp32", []) or [LATENCY_BACKEND]]
    backend = require_backend(names[0])
    threads = threads or max(target.thread_counts(os.cpu_count() or 1))
    protocol = protocol or Protocol(warmup_iters=10, warmup_seconds=1.0, iters=50,
                                    min_seconds=3.0, trials=1)
    options = target.runtime_options.get(backend.name)
    executor = executor or LocalExecutor()
    example = torch.zeros(loaded.spec.input_shape(1))
    base = editable(loaded.module, example)  # a .pt2's graph with real layers; else a copy
    macs0 = count(base, example)[0]
    guided = getattr(cfg, "cost", "macs") == "latency"
    profile = (profile_openvino(base, example, threads=threads, options={
        k: v for k, v in (target.runtime_options.get(PROFILE_BACKEND) or {}).items()
        if k != "INFERENCE_PRECISION_HINT"}) if guided else None)
    ms0 = profile.predict_ms(base) if profile is not None else None
    rows: list[dict] = []
    steps = [1.0, *fractions]
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-latency-") as tmp, \
            progress_bar(f"Latency search on {target.name} ({backend.name} fp32, "
                         f"{threads} threads)", len(steps)) as bar:
        for i in range(len(steps)):
            frac = steps[i]
            module = copy.deepcopy(base).eval()
            if frac < 1.0:
                s = step_settings(cfg, 1, profile)
                s.importance, s.ratio = "l2", None
                if guided:
                    s.target_macs, s.target_time = None, frac
                else:
                    s.target_macs, s.target_time = frac, None
                try:
                    prune(module, example, s, reference_macs=macs0)
                except UnreachableTarget as e:
                    # below the protected layers' time: measure the floor itself, once (the
                    # prediction may be pessimistic), then stop
                    if not guided:
                        raise
                    frac = min(0.999, e.reachable * 1.005)
                    if frac >= rows[-1]["time_fraction"]:  # the floor was measured already
                        break
                    module = copy.deepcopy(base).eval()
                    s.target_time = frac
                    prune(module, example, s, reference_macs=macs0)
            candidate = dataclasses.replace(loaded, module=module)
            out_dir = Path(tmp) / f"step{i}"
            out_dir.mkdir()
            artifact = backend.export(ExportRequest(model=candidate, precision="fp32",
                                                    out_dir=out_dir, stem="model"))
            timing = executor.time_file(artifact.path, backend.name, list(example.shape),
                                        threads, protocol, options)
            p50 = float(timing["latency_ms"]["p50"])
            rows.append({"macs_fraction": count(module, example)[0] / macs0, "p50_ms": p50,
                         "backend": backend.name, "threads": threads})
            if guided:
                rows[-1]["cost"] = "latency"
                rows[-1]["time_fraction"] = frac
                rows[-1]["predicted_time_fraction"] = profile.predict_ms(module) / ms0
            bar.advance()
            bar.update(note=f"{rows[-1]['macs_fraction']:.0%} MACs: {p50:.2f} ms")
            if p50 <= target_ms:
                if frac < 1.0:
                    status(f"Latency target {target_ms:g} ms met at "
                           f"{rows[-1]['macs_fraction']:.0%} of the MACs ({p50:.2f} ms p50 on "
                           f"{backend.name}, {threads} threads)")
                return frac, rows
            if guided and i + 1 < len(steps):  # correct the fraction by what was measured
                nxt = frac * target_ms / p50 * 0.97
                steps[i + 1] = min(max(nxt, 0.05), 0.98 * frac)
    best = min(rows, key=lambda r: r["p50_ms"])
    raise ConfigError(
        f"latency target {target_ms:g} ms not reachable: the fastest candidate "
        f"({best['macs_fraction']:.0%} of the MACs) runs in {best['p50_ms']:.2f} ms on "
        f"{backend.name} with {threads} threads. Steps measured: "
        + ", ".join(f"{r['macs_fraction']:.0%} → {r['p50_ms']:.2f} ms" for r in rows))


def for_latency(loaded: Any, rec: Any, target_latency_ms: float | None, target: str | Any,
                threads: int | None = None) -> tuple[Any, list[dict]]:
    """``rec`` with its MACs target replaced by the one :func:`latency_search` finds for
    ``target_latency_ms`` on ``target`` (unchanged when no latency target is given)."""
    if target_latency_ms is None:
        return rec, []

    if target_latency_ms <= 0:
        raise ConfigError(f"--target-latency-ms must be > 0, got {target_latency_ms}")
    tgt = target if isinstance(target, Target) else load_target(target)
    frac, rows = latency_search(loaded, rec.pruning, target_latency_ms, tgt, threads=threads)
    if frac >= 1.0:
        raise ConfigError(
            f"the unpruned model already runs in {rows[0]['p50_ms']:.2f} ms (p50, "
            f"{rows[0]['backend']}, {rows[0]['threads']} threads) ≤ {target_latency_ms:g} ms: "
            "nothing to prune. Compress it with the int8 or fp32 recipe instead.")
    if getattr(rec.pruning, "cost", "macs") == "latency":
        status(f"Pruning to {frac:.0%} of the profiled time for the latency target")
        return pruning_recipe(rec, **{"pruning.target_time": frac}), rows
    status(f"Pruning to {frac:.0%} of the MACs for the latency target")
    return pruning_recipe(rec, **{"pruning.target_macs": frac}), rows
