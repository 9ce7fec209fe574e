"""What structured pruning to 70 % of the MACs (the ``prune30`` target) does to the zoo models and
to their OpenVINO fp32 latency on x86-local.

    # the real measurement (~15-20 min on 2 cores; rounds are interleaved against drift)
    .venv/bin/python benchmarks/prune_speed.py
    # smoke run: quick protocol, writes results/prune_speed_quick.*
    .venv/bin/python benchmarks/prune_speed.py --quick --models dsconv_cbam_gap
    # latency cost (edgekit.prune.profile + PruneSettings(cost="latency", target_time=0.7))
    # next to the MACs cost in the same interleaved rounds: results/prune_speed_latency.*
    .venv/bin/python benchmarks/prune_speed.py --cost latency

Per model (fresh seeded weights, published input size): MACs and parameters before/after as
``edgekit inspect`` counts them, the channels each narrowed layer kept, the unpruned and the
pruned model exported to OpenVINO fp32 and timed with edgekit's bench protocol in fresh
subprocesses (x86-local runtime options, 2 threads) in interleaved rounds (round r: both models
once, one trial each, the order alternating per round), and an OpenVINO per-node profile
(PERF_COUNT, minimum per node over many inferences) that says where the time goes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from _common import environment as host_environment
from _common import release_work_folder, work_folder, write_results
from edgekit.backends import ExportRequest, require_backend
from edgekit.backends.openvino import disable_telemetry
from edgekit.bench.local import LocalExecutor, RunFailed
from edgekit.bench.protocol import SPREAD_LIMIT, Protocol, environment, merge_trials
from edgekit.inspect import layer_table
from edgekit.prune import PruneSettings, count, layer_widths, prune
from edgekit.prune.profile import match_ir, ov_module, profile_openvino
from edgekit.sources import load_model
from edgekit.targets import load_target
from edgekit.zoo.blocks import CBAM, ChannelGate, SpatialGate, SqueezeExcite

MODELS = {"prudensnet": 256, "dsconv_cbam": 224, "dsconv_cbam_gap": 224, "ich_mrf": 256,
          "mobilenetv2": 224}
VARIANTS: tuple[str, ...] = ("unpruned", "pruned")  # + "pruned_latency" with --cost latency
GOAL_FASTER = 0.20  # "at least 20 % faster": 1 - pruned/unpruned >= 0.20
BACKEND = "openvino"


def say(msg: str) -> None:
    print(f"[prune_speed] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- model facts
GATE_TYPES = (SqueezeExcite, ChannelGate, SpatialGate, CBAM)
GATE_CONV = "attention gate conv/fc"
GATE_OPS = "attention gate ops (pool, mul, concat)"


def in_gate(mods: dict[str, nn.Module], name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(mods.get(".".join(parts[:i])), GATE_TYPES)
               for i in range(1, len(parts) + 1))


def layer_kind(name: str, m: nn.Module, protect: list[str], gate: bool) -> str:
    """Category of a conv/linear leaf: protected, attention gate, depthwise, pointwise (1×1),
    k×k conv, linear."""
    if name in protect:
        return "protected stem/input conv" if isinstance(m, nn.Conv2d) else "protected classifier"
    if gate:
        return GATE_CONV
    if isinstance(m, nn.Linear):
        return "linear"
    if m.groups > 1 and m.groups == m.in_channels:
        return "depthwise conv"
    if tuple(m.kernel_size) == (1, 1):
        return "pointwise conv (1x1)"
    return "conv kxk"


def signature(m: nn.Module, out_shape: list[int]) -> tuple:
    """What identifies a conv/linear call in the OpenVINO IR (names are lost when BatchNorm is
    folded into the convolution): weight shape, groups and output size."""
    if isinstance(m, nn.Linear):
        return ("linear", m.out_features, m.in_features)
    return ("conv", m.out_channels, m.in_channels // m.groups, *m.kernel_size, m.groups,
            *out_shape[1:])


def layer_rows(module: nn.Module, shape: tuple[int, ...], protect: list[str]
               ) -> dict[str, dict[str, Any]]:
    """name -> {kind, macs, params, output_shape, signature} of every conv/linear leaf, in
    execution order (MACs of a layer called twice counted once, as ``edgekit inspect`` does);
    ``calls``: the signature of every call in order."""
    mods = dict(module.named_modules())
    rows: dict[str, dict[str, Any]] = {}
    for r in layer_table(module, shape):
        m = mods[r.name]
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        sig = signature(m, r.output_shape)
        kind = layer_kind(r.name, m, protect, in_gate(mods, r.name))
        row = rows.setdefault(r.name, {"kind": kind, "macs": r.macs, "params": r.params,
                                       "output_shape": r.output_shape, "signature": list(sig),
                                       "calls": 0})
        row["calls"] += 1
    return rows


def macs_by_kind(rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows.values():
        out[r["kind"]] = out.get(r["kind"], 0) + r["macs"]
    return out


# --------------------------------------------------------------------------- OpenVINO profile
_OV_KIND = {"MaxPool": "pool / reduce", "AvgPool": "pool / reduce", "ReduceMean": "pool / reduce",
            "ReduceMax": "pool / reduce", "Concatenation": "concat", "Concat": "concat",
            "Reorder": "reorder (layout copies)", "Input": "io", "Output": "io",
            "Parameter": "io", "Result": "io"}
_OV_CONV = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul")


def ir_to_torch(ir: Any, rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """IR node name -> torch layer (edgekit.prune.profile's matching, over these rows)."""
    return match_ir(ir, [(name, tuple(r["signature"])) for name, r in rows.items()])


def ov_profile(xmls: dict[str, Path], shape: list[int], threads: int, options: dict[str, Any],
               iters: int, leaves: dict[str, dict[str, dict[str, Any]]],
               gates: dict[str, set[str]]) -> dict[str, Any]:
    """Per-node time (PERF_COUNT) of every variant over ``iters`` inferences, the variants'
    inferences alternating (so load on the shared machine hits them alike); the minimum per node
    (the least-disturbed estimate on a loaded machine; the median is kept too), summed per
    category and per torch layer. Executed nodes are traced to torch layers through the runtime
    graph's ``originalLayersNames`` and :func:`ir_to_torch`. Diagnostic only (profiling adds
    overhead); the latency is the timed p50."""
    disable_telemetry()
    import openvino as ov

    cfg = {**options, "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
    core = ov.Core()
    compiled = {v: core.compile_model(str(x), "CPU", cfg) for v, x in xmls.items()}
    reqs = {v: c.create_infer_request() for v, c in compiled.items()}
    origin: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for v, c in compiled.items():  # exec node -> (torch conv/linear layer, torch module)
        to_torch = ir_to_torch(core.read_model(str(xmls[v])), leaves[v])
        origin[v] = {}
        for op in c.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            names = [n for n in info["originalLayersNames"].astype(str).split(",") if n] \
                if "originalLayersNames" in info else []
            layer = next((to_torch[n] for n in names if n in to_torch), None)
            origin[v][op.get_friendly_name()] = (layer, layer or ov_module(
                [op.get_friendly_name(), *names]))
    x = np.zeros(shape, np.float32)
    for _ in range(5):
        for req in reqs.values():
            req.infer({0: x})
    per_node: dict[str, dict[str, list[float]]] = {v: {} for v in reqs}
    info_of: dict[str, dict[str, Any]] = {v: {} for v in reqs}
    for _ in range(iters):
        for v, req in reqs.items():
            req.infer({0: x})
            for p in req.profiling_info:
                if p.status.name == "NOT_RUN":
                    continue
                per_node[v].setdefault(p.node_name, []).append(p.real_time.total_seconds() * 1e3)
                info_of[v][p.node_name] = p
    out: dict[str, Any] = {}
    for v in reqs:
        stats: dict[str, dict[str, float]] = {"kind_min": {}, "kind_median": {},
                                              "module_min": {}, "module_median": {}}
        nodes = []
        for name, ts in per_node[v].items():
            p = info_of[v][name]
            layer, mod = origin[v].get(name, (None, ov_module([name])))
            if layer is not None:
                k = leaves[v][layer]["kind"]
            elif p.node_type in _OV_CONV:  # not traced: by the kernel the runtime chose
                k = ("depthwise conv" if "dw" in p.exec_type else "linear"
                     if p.node_type in ("FullyConnected", "MatMul") else "pointwise conv (1x1)"
                     if "1x1" in p.exec_type else "conv kxk") + " (untraced)"
            elif mod is not None and any(mod == g or mod.startswith(g + ".") for g in gates[v]):
                k = GATE_OPS
            else:
                k = _OV_KIND.get(p.node_type, "elementwise (activations, adds)")
            mod = mod or "(no torch module)"
            for stat, val in (("min", min(ts)), ("median", statistics.median(ts))):
                for what, key in (("kind", k), ("module", mod)):
                    d = stats[f"{what}_{stat}"]
                    d[key] = d.get(key, 0.0) + val
            nodes.append({"name": name, "type": p.node_type, "exec_type": p.exec_type,
                          "torch_layer": layer, "torch_module": mod, "kind": k,
                          "min_ms": round(min(ts), 4),  # OpenVINO counts whole µs
                          "median_ms": round(statistics.median(ts), 4)})
        ordered = {k: dict(sorted(d.items(), key=lambda kv: -kv[1])) for k, d in stats.items()}
        out[v] = {"iters": iters, "nodes": nodes,
                  "traced_conv_nodes": sum(n["torch_layer"] is not None for n in nodes),
                  "total_ms": sum(ordered["kind_min"].values()),
                  "total_median_ms": sum(ordered["kind_median"].values()),
                  "by_kind_ms": ordered["kind_min"], "by_kind_median_ms": ordered["kind_median"],
                  "by_module_ms": ordered["module_min"],
                  "by_module_median_ms": ordered["module_median"]}
    return out


# --------------------------------------------------------------------------- one model
def build(model: str, size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Load, prune a copy, count, export both to OpenVINO fp32."""
    torch.manual_seed(args.seed)
    loaded = load_model(model, input_size=size)
    shape = tuple(loaded.spec.input_shape(1))
    example = torch.zeros(shape)
    module0 = loaded.module.eval()
    macs0, params0 = count(module0, example)
    widths0 = layer_widths(module0)
    b: dict[str, Any] = {"input_size": size, "input_shape": list(shape),
                         "macs_before": macs0, "params_before": params0}
    say(f"{model}: pruning a copy to {args.target_macs:.0%} of the MACs ({args.importance})")
    pruned = copy.deepcopy(module0).eval()
    t0 = time.perf_counter()
    try:
        outcome = prune(pruned, example, PruneSettings(target_macs=args.target_macs,
                                                       importance=args.importance))
    except Exception as exc:  # a model the pruner cannot handle is a result, not a crash
        b["prune_error"] = f"{type(exc).__name__}: {exc}"
        say(f"{model}: prune FAILED: {b['prune_error']}")
        return b
    b["prune_seconds"] = round(time.perf_counter() - t0, 1)
    macs1, params1 = count(pruned, example)
    widths1 = layer_widths(pruned)
    protect = list(outcome.protect)
    rows0 = layer_rows(module0, shape, protect)
    rows1 = layer_rows(pruned, shape, protect)
    b.update({
        "macs_after": macs1, "params_after": params1, "macs_fraction": macs1 / macs0,
        "params_fraction": params1 / params0, "channel_ratio": outcome.ratio,
        "bisection": outcome.searched, "protected": protect,
        "layers_total": len(widths0),
        "widths_changed": {k: [widths0[k], v] for k, v in widths1.items() if widths0.get(k) != v},
        "macs_by_kind_before": macs_by_kind(rows0), "macs_by_kind_after": macs_by_kind(rows1),
        "layers": {n: {"kind": r["kind"], "macs_before": r["macs"],
                       "macs_after": rows1.get(n, {}).get("macs"),
                       "width_before": widths0.get(n), "width_after": widths1.get(n)}
                   for n, r in rows0.items()},
    })
    say(f"{model}: MACs {macs0 / 1e6:.1f} M -> {macs1 / 1e6:.1f} M ({macs1 / macs0:.1%}), "
        f"params {params0} -> {params1}, {len(b['widths_changed'])} of {len(widths0)} layers "
        f"narrowed, {b['prune_seconds']} s")
    backend = require_backend(BACKEND)
    gates = {n for n, m in module0.named_modules() if isinstance(m, GATE_TYPES)}
    b["artifacts"], b["_leaves"] = {}, {"unpruned": rows0, "pruned": rows1}
    b["_gates"] = {"unpruned": gates, "pruned": gates, "pruned_latency": gates}
    variants = [("unpruned", module0), ("pruned", pruned)]
    if args.cost == "latency":
        lat = build_latency(module0, example, args, b, protect, widths0)
        if lat is None:
            return b
        b["_leaves"]["pruned_latency"] = layer_rows(lat, shape, protect)
        variants.append(("pruned_latency", lat))
    for variant, mod in variants:
        cand = dataclasses.replace(loaded, module=mod)
        try:
            art = backend.export(ExportRequest(model=cand, precision="fp32",
                                               out_dir=work / model / variant, stem="model"))
            b["artifacts"][variant] = art.path
        except Exception as exc:
            b["export_error"] = f"{variant}: {type(exc).__name__}: {exc}"
            say(f"{model}: export FAILED: {b['export_error']}")
            return b
    return b


def build_latency(module0: nn.Module, example: torch.Tensor, args: argparse.Namespace,
                  b: dict[str, Any], protect: list[str], widths0: dict[str, int]
                  ) -> nn.Module | None:
    """The latency-cost variant: profile the unpruned model (edgekit.prune.profile, OpenVINO
    fp32, the benchmark's threads and options), prune a copy to ``target_macs`` of the PROFILED
    time (the same fraction as the MACs variant's MACs target)."""
    options = dict(load_target("x86-local").runtime_options.get(BACKEND) or {})
    t0 = time.perf_counter()
    prof = profile_openvino(module0, example, threads=args.threads, options=options,
                            iters=args.profile_iters or 30)
    b["latency_profile"] = {**prof.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    say(f"profile: {prof.total_ms:.2f} ms profiled; pruning a copy to {args.target_macs:.0%} "
        "of the profiled time (latency cost)")
    lat = copy.deepcopy(module0).eval()
    t0 = time.perf_counter()
    errors = []
    for goal in (args.target_macs, args.target_macs + 0.05, args.target_macs + 0.1):
        try:  # a target the protected layers' time makes unreachable: the next one up
            o = prune(lat, example, PruneSettings(target_time=goal, cost="latency",
                                                  profile=prof, importance=args.importance))
            break
        except Exception as exc:
            errors.append(f"target_time {goal:.2f}: {type(exc).__name__}: {exc}")
            say(f"latency cost: {errors[-1]}")
    else:
        b["prune_error"] = "latency cost: " + "; ".join(errors)
        return None
    b["latency_target_time"] = goal
    b["latency_target_errors"] = errors
    macs0 = b["macs_before"]
    macs1, params1 = count(lat, example)
    widths1 = layer_widths(lat)
    b["latency_cost"] = {
        "prune_seconds": round(time.perf_counter() - t0, 1), "channel_ratio": o.ratio,
        "bisection": o.searched, "predicted_ms_before": o.time_before_ms,
        "predicted_ms_after": o.time_after_ms, "predicted_time_fraction": o.time_fraction,
        "macs_after": macs1, "macs_fraction": macs1 / macs0, "params_after": params1,
        "params_fraction": params1 / b["params_before"],
        "widths_changed": {k: [widths0[k], v] for k, v in widths1.items()
                           if widths0.get(k) != v}}
    say(f"latency cost: predicted time {o.time_fraction:.1%}, MACs {macs1 / macs0:.1%}, "
        f"{len(b['latency_cost']['widths_changed'])} layers narrowed")
    return lat


def time_model(model: str, b: dict[str, Any], ex: LocalExecutor, single: Protocol, rounds: int,
               threads: int, options: dict[str, Any], step: list[int]) -> dict[str, Any]:
    """``rounds`` interleaved rounds: round r times both variants once (fresh process, one
    trial each); unpruned first in even rounds, pruned first in odd ones."""
    trials: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    loads: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    errors: dict[str, str] = {}
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            step[0] += 1
            if variant in errors:
                continue
            say(f"[{step[0]}/{step[1]}] {model}: timing {variant} (round {r + 1}/{rounds})")
            loads[variant].append([round(x, 2) for x in os.getloadavg()])
            try:
                raw = ex.time_file(b["artifacts"][variant], BACKEND, b["input_shape"], threads,
                                   single, options)
                trials[variant].append(raw)
                say(f"    p50 {raw['latency_ms']['p50']:.3f} ms")
            except RunFailed as exc:
                errors[variant] = str(exc)
                say(f"    error: {exc}")
    out: dict[str, Any] = {}
    for v in VARIANTS:
        if v in errors:
            out[v] = {"error": errors[v]}
            continue
        m = merge_trials(trials[v])
        out[v] = {"p50_ms": m["latency_ms"]["p50"], "p90_ms": m["latency_ms"]["p90"],
                  "min_ms": m["latency_ms"]["min"],
                  "rounds_p50_ms": m["trials_p50_ms"], "spread": m["spread"],
                  "latency_ms": m["latency_ms"], "load_ms": m["load_ms"],
                  "peak_rss_mb": m["peak_rss_mb"], "runtime": m["runtime"],
                  "loadavg_before_round": loads[v],
                  "raw_rounds": [{k: t.get(k) for k in ("latency_ms", "trials_p50_ms",
                                                        "load_ms", "peak_rss_mb")}
                                 for t in trials[v]],
                  "environment": m.get("environment")}
    if not errors:
        u, p = out["unpruned"]["p50_ms"], out["pruned"]["p50_ms"]
        out["speedup"] = u / p
        out["faster_by"] = 1 - p / u
        out["goal_met"] = out["faster_by"] >= GOAL_FASTER
        # the fastest single call of each: least disturbed by the other jobs (a cross-check)
        out["speedup_min"] = out["unpruned"]["min_ms"] / out["pruned"]["min_ms"]
        # per round, the pair timed back to back (same machine state)
        out["round_speedups"] = [a / c for a, c in zip(out["unpruned"]["rounds_p50_ms"],
                                                       out["pruned"]["rounds_p50_ms"],
                                                       strict=False)]
        if "pruned_latency" in out:
            q = out["pruned_latency"]
            out["latency_cost"] = {
                "speedup": u / q["p50_ms"], "faster_by": 1 - q["p50_ms"] / u,
                "goal_met": 1 - q["p50_ms"] / u >= GOAL_FASTER,
                "speedup_min": out["unpruned"]["min_ms"] / q["min_ms"],
                "round_speedups": [a / c for a, c in zip(out["unpruned"]["rounds_p50_ms"],
                                                         q["rounds_p50_ms"], strict=False)]}
    return out


# --------------------------------------------------------------------------- report
def fmt_m(x: float) -> str:
    if x >= 1e9:
        return f"{x / 1e9:.2f} G"
    return f"{x / 1e6:.1f} M" if x >= 1e5 else f"{x / 1e3:.1f} k"


def fmt_p(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k"


def why_lines(name: str, m: dict[str, Any]) -> list[str]:
    """Where the time goes, unpruned -> pruned, per category, with the MACs of the category."""
    prof = m.get("profile") or {}
    if "unpruned" not in prof or "pruned" not in prof:
        return []
    u, p = prof["unpruned"], prof["pruned"]
    kinds = list(dict.fromkeys([*u["by_kind_ms"], *p["by_kind_ms"]]))
    mb, ma = m["macs_by_kind_before"], m["macs_by_kind_after"]
    lines = [f"| {name}: category | MACs before → after | profiled ms unpruned → pruned | "
             "share of time unpruned → pruned |", "|---|---|---|---|"]
    for k in kinds:
        tu, tp = u["by_kind_ms"].get(k, 0.0), p["by_kind_ms"].get(k, 0.0)
        if max(tu / u["total_ms"], tp / p["total_ms"]) < 0.02:
            continue
        macs = (f"{fmt_m(mb.get(k, 0))} → {fmt_m(ma.get(k, 0))} "
                f"({ma.get(k, 0) / mb[k]:.0%})" if mb.get(k) else "0")
        lines.append(f"| {k} | {macs} | {tu:.2f} → {tp:.2f} | "
                     f"{tu / u['total_ms']:.0%} → {tp / p['total_ms']:.0%} |")
    lines.append(f"| total (profiled) | {fmt_m(m['macs_before'])} → {fmt_m(m['macs_after'])} | "
                 f"{u['total_ms']:.2f} → {p['total_ms']:.2f} | |")
    return lines


def top_layers(m: dict[str, Any], n: int = 6) -> list[str]:
    prof = m.get("profile") or {}
    if "unpruned" not in prof or "pruned" not in prof:
        return []
    u, p = prof["unpruned"], prof["pruned"]
    out = []
    for mod, t in list(u["by_module_ms"].items())[:n]:
        layer = m["layers"].get(mod)
        desc = ""
        if layer:
            desc = (f" ({layer['kind']}, width {layer['width_before']}→{layer['width_after']}, "
                    f"MACs {fmt_m(layer['macs_before'])}→{fmt_m(layer['macs_after'] or 0)})")
        out.append(f"`{mod}` {t:.2f}→{p['by_module_ms'].get(mod, 0.0):.2f} ms{desc}")
    return out


def markdown(res: dict[str, Any]) -> str:
    env, host, quick = res["environment"], res["host"], res["quick"]
    cpu = env["cpu"].get("model") if isinstance(env.get("cpu"), dict) else host["cpu"]
    title = "QUICK SMOKE RUN (quick protocol: not a measurement): " if quick else ""
    md = [f"# {title}prune30 (structured pruning to {res['target_macs']:.0%} of the MACs) vs "
          "OpenVINO fp32 latency", "",
          f"- {cpu}, {host['cores']} vCPUs (shared VM), load average {res['loadavg_at_start']} "
          f"at start, {res['loadavg_at_end']} at end, {host['date']}; target x86-local, "
          f"{res['threads']} threads, OpenVINO {env['packages'].get('openvino')}, options "
          f"{res['runtime_options']}; total run {res['seconds'] / 60:.1f} min",
          f"- fresh seeded zoo weights (seed {res['seed']}) at the published input size; "
          f"`prune(copy, zeros, PruneSettings(target_macs={res['target_macs']}, "
          f"importance={res['importance']!r}))` (defaults: max_layer_ratio 0.75, round_to 8, "
          "edgekit's default protected layers, listed under Pruning); MACs / parameters "
          "counted as `edgekit inspect` does",
          f"- latency: {res['rounds']} interleaved rounds, each round times the unpruned and "
          "the pruned IR once (one trial per fresh process, order alternating per round); "
          f"protocol per trial {res['protocol']}; p50 = median of the rounds' p50 (rounds in "
          "brackets); spread = max/min of the rounds' p50; faster by = 1 − pruned/unpruned; "
          "per-round speed-up = the two p50s timed back to back in one round; fastest call = "
          "the minimum single-inference latency over all rounds (least disturbed by the other "
          "jobs on the machine; a cross-check, not the headline)",
          "", "| model | input | MACs before → after (kept) | params before → after (kept) | "
          "narrowed layers | unpruned p50 ms [rounds] | pruned p50 ms [rounds] | speed-up | "
          "faster by | spread unpruned / pruned | ≥ 20 % faster | per-round speed-ups | "
          "fastest call ms unpruned / pruned (speed-up) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        head = f"| {name} | {m['input_size']}² | "
        if "prune_error" in m or "export_error" in m:
            md.append(head + f"{fmt_m(m['macs_before'])} → error |" + " |" * 7 + " error |"
                      + " |" * 2)
            continue
        t = m["timing"]
        cells = [f"{fmt_m(m['macs_before'])} → {fmt_m(m['macs_after'])} "
                 f"({m['macs_fraction']:.1%})",
                 f"{fmt_p(m['params_before'])} → {fmt_p(m['params_after'])} "
                 f"({m['params_fraction']:.1%})",
                 f"{len(m['widths_changed'])}/{m['layers_total']}"]
        for v in VARIANTS:
            r = t[v]
            cells.append("error" if "error" in r else f"{r['p50_ms']:.2f} [" + ", ".join(
                f"{x:.2f}" for x in r["rounds_p50_ms"]) + "]")
        if "speedup" in t:
            cells += [f"{t['speedup']:.2f}×", f"{t['faster_by']:.1%}",
                      f"{t['unpruned']['spread']:.3f} / {t['pruned']['spread']:.3f}",
                      ("yes" if t["goal_met"] else "**no**")
                      + (" (rounds straddle 1.25×)" if straddles(t) else ""),
                      ", ".join(f"{x:.2f}×" for x in t["round_speedups"]),
                      f"{t['unpruned']['min_ms']:.2f} / {t['pruned']['min_ms']:.2f} "
                      f"({t['speedup_min']:.2f}×)"]
        else:
            cells += ["-"] * 6
        md.append(head + " | ".join(cells) + " |")
    md.append("")
    errors = [f"- {n}: prune raised `{m['prune_error']}`" for n, m in res["models"].items()
              if "prune_error" in m]
    errors += [f"- {n}: export failed: `{m['export_error']}`" for n, m in res["models"].items()
               if "export_error" in m]
    errors += [f"- {n} {v}: timing failed: `{m['timing'][v]['error']}`"
               for n, m in res["models"].items() for v in VARIANTS
               if "error" in m.get("timing", {}).get(v, {})]
    errors += [f"- {n}: profile failed: `{m['profile']['error']}`"
               for n, m in res["models"].items() if "error" in (m.get("profile") or {})]
    md += errors + ([""] if errors else [])
    md += ["## Reading", "", summary_paragraph(res), ""]
    md += ["## Pruning", "", "Channel ratio found by bisection and the MACs fraction it gives "
           "(widths are rounded to multiples of 8, so the fraction moves in steps: the next "
           "step above the target is shown), and the narrowed layers that lost the largest "
           "share of their channels (every layer's widths are in the JSON, `widths_changed`).",
           ""]
    md += [pruning_line(n, m, res["target_macs"]) for n, m in res["models"].items()
           if "bisection" in m] + [""]
    md += ["## Where the time goes", "",
           "OpenVINO per-node profile (`PERF_COUNT`, same threads and options; per node the "
           "minimum (least disturbed by the other jobs; medians are in the JSON) over "
           f"{res['profile_iters']} inferences of each model in this process, the two "
           "models' inferences alternating; profiling adds overhead, so "
           "use it for shares, the timed p50 above for latency). Nodes are attributed to the "
           "torch layer they were converted from; BatchNorm/activations fused into a convolution "
           "count as that convolution. Categories under 2 % of the time in both models are "
           "left out.", ""]
    for name, m in res["models"].items():
        lines = why_lines(name, m)
        if not lines:
            continue
        md += lines + ["", f"- slowest layers of the unpruned {name} (ms unpruned→pruned): "
                       + "; ".join(top_layers(m)), ""]
    return "\n".join(md)


def why_facts(m: dict[str, Any]) -> list[str]:
    """Profile facts: the share of time in what pruning cannot shrink, the top categories."""
    prof = m.get("profile") or {}
    if "unpruned" not in prof or "pruned" not in prof:
        return []
    u, p = prof["unpruned"], prof["pruned"]
    mb, ma = m["macs_by_kind_before"], m["macs_by_kind_after"]
    fixed = [k for k in u["by_kind_ms"] if not mb.get(k) or ma.get(k, 0) >= mb[k]]
    fixed_ms = sum(u["by_kind_ms"][k] for k in fixed)
    out = [f"profiled time {u['total_ms']:.2f}→{p['total_ms']:.2f} ms "
           f"({u['total_ms'] / p['total_ms']:.2f}×); {fixed_ms / u['total_ms']:.0%} of the "
           "unpruned model's profiled time is in ops whose MACs pruning did not reduce (no MACs, "
           "or all kept: " + ", ".join(k for k in fixed if u["by_kind_ms"][k] >= 0.02
                                       * u["total_ms"]) + ")"]
    tops = []
    for k in list(u["by_kind_ms"])[:3]:
        tu, tp = u["by_kind_ms"].get(k, 0.0), p["by_kind_ms"].get(k, 0.0)
        macs = f"MACs {ma.get(k, 0) / mb[k]:.0%} kept" if mb.get(k) else "no MACs"
        tops.append(f"{k} {tu / u['total_ms']:.0%} → {tp / p['total_ms']:.0%} of the time "
                    f"({tu:.2f}→{tp:.2f} ms, {macs})")
    return out + ["largest: " + ", ".join(tops)]


def pruning_line(name: str, m: dict[str, Any], goal: float) -> str:
    above = [x for x in m["bisection"] if x["macs_fraction"] > goal]
    if above:
        a = min(above, key=lambda x: x["macs_fraction"])
        step = f"next step up: {a['macs_fraction']:.1%} at ratio {a['ratio']:.4f}"
    else:
        low = min(x["ratio"] for x in m["bisection"])
        step = (f"every ratio tried, down to {low:.4f}, gives ≤ "
                f"{max(x['macs_fraction'] for x in m['bisection']):.1%}: even the smallest "
                f"narrows {len(m['widths_changed'])} of {m['layers_total']} layers by a "
                "rounding step")
    cuts = sorted(m["widths_changed"].items(), key=lambda kv: kv[1][1] / kv[1][0])[:3]
    return (f"- {name}: ratio {m['channel_ratio']:.4f} → {m['macs_fraction']:.1%} of the MACs "
            f"({step}); protected {', '.join(m['protected'])}; largest cuts "
            + ", ".join(f"`{k}` {a}→{b}" for k, (a, b) in cuts))


def straddles(t: dict[str, Any]) -> bool:
    """The rounds disagree on the verdict: some ≥ 1.25× (20 % faster), some below."""
    rs = t.get("round_speedups") or []
    return bool(rs) and min(rs) < 1 / (1 - GOAL_FASTER) <= max(rs)


def summary_paragraph(res: dict[str, Any]) -> str:
    """A short factual reading of the numbers (generated, so it matches the table)."""
    done = {n: m for n, m in res["models"].items() if "speedup" in m.get("timing", {})}
    spreads = [m["timing"][v]["spread"] for m in done.values() for v in VARIANTS]
    rs = [s for m in done.values() for s in m["timing"]["round_speedups"]]
    parts = [f"The machine is a shared {res['host']['cores']}-vCPU VM with other jobs running "
             f"(load average {res['loadavg_at_start'][0]} at start, {res['loadavg_at_end'][0]} "
             "at end), so absolute latencies drift; interleaving makes both variants see the "
             "same drift."]
    if spreads:
        noisy = res["noisy_rows"]
        parts.append(f"Round-p50 spreads are {min(spreads):.3f}–{max(spreads):.3f} "
                     + (f"(above the protocol's {SPREAD_LIMIT}× limit in: {', '.join(noisy)}; "
                        "read those rows with care)" if noisy else
                        f"(all within the protocol's {SPREAD_LIMIT}× limit)")
                     + f"; the back-to-back per-round speed-ups range {min(rs):.2f}–"
                     f"{max(rs):.2f}×.")
        ratio = [m["timing"]["unpruned"]["p50_ms"] / m["timing"]["unpruned"]["min_ms"]
                 for m in done.values()]
        parts.append(f"The unpruned p50s are {min(ratio):.1f}–{max(ratio):.1f}× the fastest "
                     "single call of the same model: much of a median inference here is spent "
                     "waiting for a core (2 threads on 2 shared vCPUs), so the p50 ratios mix "
                     "what pruning saves in compute with scheduling delays and move from run to "
                     "run; the fastest-call and profiled ratios are less disturbed cross-checks.")
        loose = [n for n, m in done.items() if straddles(m["timing"])]
        if loose:
            parts.append(f"Verdicts not firm (per-round speed-ups on both sides of 1.25×, i.e. "
                         f"of 20 % faster): {', '.join(loose)}.")
    yes = [f"{n} ({m['timing']['faster_by']:.0%})" for n, m in done.items()
           if m["timing"]["goal_met"]]
    no = [n for n, m in done.items() if not m["timing"]["goal_met"]]
    yes_names = [n for n, m in done.items() if m["timing"]["goal_met"]]
    parts.append(f"At ~{res['target_macs']:.0%} of the MACs, ≥ 20 % faster: "
                 f"{', '.join(yes) or 'none'}; not: "
                 + (", ".join(f"{n} ({done[n]['timing']['faster_by']:.0%})" for n in no)
                    or "none") + ".")
    bullets: list[str] = []
    for n in no:
        m, t = done[n], done[n]["timing"]
        bits = [f"{n}: MACs to {m['macs_fraction']:.0%}, p50 latency to {1 - t['faster_by']:.0%} "
                f"(fastest call {t['speedup_min']:.2f}×, per-round "
                + "/".join(f"{x:.2f}" for x in t["round_speedups"]) + "×)"]
        bullets.append("- " + "; ".join(bits + why_facts(m)) + ".")
    for n in yes_names:
        m, t = done[n], done[n]["timing"]
        bullets.append(f"- {n}: MACs to {m['macs_fraction']:.0%}, p50 latency to "
                       f"{1 - t['faster_by']:.0%} (fastest call {t['speedup_min']:.2f}×, "
                       "per-round " + "/".join(f"{x:.2f}" for x in t["round_speedups"]) + "×); "
                       + "; ".join(why_facts(m)) + ".")
    return " ".join(parts) + "\n\n" + "\n".join(bullets)


# --------------------------------------------------------------------------- main
def markdown_latency(res: dict[str, Any]) -> str:
    """The latency-cost run: MACs cost vs latency cost, same rounds."""
    env, host, quick = res["environment"], res["host"], res["quick"]
    cpu = env["cpu"].get("model") if isinstance(env.get("cpu"), dict) else host["cpu"]
    goal = res["target_macs"]
    title = "QUICK SMOKE RUN (quick protocol: not a measurement): " if quick else ""
    md = [f"# {title}prune30 by MACs cost vs latency cost: OpenVINO fp32 latency", "",
          f"- {cpu}, {host['cores']} vCPUs (shared VM), load average {res['loadavg_at_start']} "
          f"at start, {res['loadavg_at_end']} at end, {host['date']}; target x86-local, "
          f"{res['threads']} threads, OpenVINO {env['packages'].get('openvino')}, options "
          f"{res['runtime_options']}; total run {res['seconds'] / 60:.1f} min; code "
          f"{res['edgekit_code']['git_head'][:10]}"
          + (f" + uncommitted {res['edgekit_code']['edgekit_uncommitted']}"
             if res['edgekit_code']['edgekit_uncommitted'] else ""),
          f"- fresh seeded zoo weights (seed {res['seed']}), published input size, importance "
          f"{res['importance']!r}. **MACs cost** = `PruneSettings(target_macs={goal})` (as "
          "prune_speed.md). **Latency cost** = `profile_openvino(unpruned, threads, x86-local "
          f"options)` then `PruneSettings(cost='latency', target_time={goal}, profile=...)`: "
          "channels ranked globally by importance / predicted ms saved per channel, bisection "
          f"until the PREDICTED time ≤ {goal:.0%} of the profiled time (max_layer_ratio 0.75, "
          "round_to 8, default protected layers)",
          f"- latency: {res['rounds']} interleaved rounds, each round times all three IRs once "
          "(one trial per fresh process, order reversed every other round); protocol per trial "
          f"{res['protocol']}; p50 = median of the rounds' p50; speed-up = unpruned p50 / "
          "pruned p50; faster by = 1 − pruned/unpruned; per-round = the p50s of one round",
          "", "| model | MACs kept: MACs cost / latency cost | predicted time kept (latency "
          "cost) | unpruned p50 ms | MACs cost p50 ms (faster by) | latency cost p50 ms "
          "(faster by) | ≥ 20 % faster: MACs / latency | per-round speed-ups MACs cost | "
          "per-round speed-ups latency cost | fastest call speed-up MACs / latency |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        if "timing" not in m or "latency_cost" not in m.get("timing", {}):
            md.append(f"| {name} | error: {m.get('prune_error') or m.get('export_error')} |"
                      + " |" * 8)
            continue
        t, lc, lt = m["timing"], m["latency_cost"], m["timing"]["latency_cost"]
        md.append(
            f"| {name} | {m['macs_fraction']:.1%} / {lc['macs_fraction']:.1%} | "
            f"{lc['predicted_time_fraction']:.1%}"
            + (f" (target {m['latency_target_time']:.0%}: {res['target_macs']:.0%} "
               "unreachable)" if m["latency_target_time"] != res["target_macs"] else "")
            + f" | {t['unpruned']['p50_ms']:.2f} | "
            f"{t['pruned']['p50_ms']:.2f} ({t['faster_by']:.1%}) | "
            f"{t['pruned_latency']['p50_ms']:.2f} ({lt['faster_by']:.1%}) | "
            f"{'yes' if t['goal_met'] else '**no**'} / "
            f"{'yes' if lt['goal_met'] else '**no**'} | "
            + ", ".join(f"{x:.2f}×" for x in t["round_speedups"]) + " | "
            + ", ".join(f"{x:.2f}×" for x in lt["round_speedups"]) + " | "
            f"{t['speedup_min']:.2f}× / {lt['speedup_min']:.2f}× |")
    md += ["", "## Profiled time vs prediction", "",
           "Per-node OpenVINO profile (PERF_COUNT, minimum per node, all variants "
           "alternating) of the three IRs: the measured profiled-time fraction of the "
           "latency-cost model next to the fraction the engine predicted.", "",
           "| model | profiled ms unpruned | MACs cost: profiled ms (kept) | latency cost: "
           "profiled ms (kept) | latency cost: predicted kept | profile used (ms, threads) | "
           "largest layers by profiled time (own + side ms) |", "|---|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        prof, lc = m.get("profile", {}), m.get("latency_cost")
        if not lc or "unpruned" not in prof:
            continue
        u = prof["unpruned"]["total_ms"]
        p = prof.get("pruned", {}).get("total_ms", float("nan"))
        q = prof.get("pruned_latency", {}).get("total_ms", float("nan"))
        lp = m["latency_profile"]
        top = list(lp["layers"].items())
        top.sort(key=lambda kv: -(kv[1]["ms"] + kv[1]["side_ms"]))
        md.append(f"| {name} | {u:.2f} | {p:.2f} ({p / u:.1%}) | {q:.2f} ({q / u:.1%}) | "
                  f"{lc['predicted_time_fraction']:.1%} | {lp['total_ms']:.2f}, "
                  f"{lp['threads']} | " + "; ".join(
                      f"`{n}` {t['ms']:.2f}+{t['side_ms']:.2f}" for n, t in top[:3]) + " |")
    md += ["", "## Widths (latency cost)", ""]
    for name, m in res["models"].items():
        lc = m.get("latency_cost")
        if lc:
            ch = lc["widths_changed"]
            md.append(f"- {name}: ratio {lc['channel_ratio']:.4f}, {len(ch)} layers narrowed: "
                      + ", ".join(f"`{k}` {a}→{b}" for k, (a, b) in list(ch.items())[:12])
                      + (" …" if len(ch) > 12 else ""))
    return "\n".join(md) + "\n"


def code_state() -> dict[str, Any]:
    """The commit and the pruning code measured (edgekit/*.py is edited while these run)."""
    import hashlib
    import subprocess

    from _common import REPO

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "edgekit"],
                           capture_output=True, text=True).stdout.split("\n")
    code = hashlib.sha256()
    for f in sorted((REPO / "edgekit" / "prune").glob("*.py")):  # the pruning package
        code.update(f.name.encode() + b"\0" + f.read_bytes())
    return {"git_head": head, "edgekit_uncommitted": [ln[3:] for ln in dirty if ln.strip()],
            "prune_code_sha256": code.hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds (default: the protocol's trials, 3; quick 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="quick protocol (smoke run)")
    ap.add_argument("--target-macs", type=float, default=0.7)
    ap.add_argument("--importance", default="l2", choices=["l2"],
                    help="l2 only: fresh weights, no data for Taylor")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost", default="macs", choices=["macs", "latency"],
                    help="latency: also prune with the latency cost (profiled time kept = "
                         "--target-macs) and time it in the same rounds; writes "
                         "prune_speed_latency.*")
    ap.add_argument("--profile-iters", type=int, default=None,
                    help="inferences of the OpenVINO per-node profile (default 50; quick 10)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--render-only", action="store_true",
                    help="re-write the Markdown from the existing results JSON, measure nothing")
    args = ap.parse_args()
    global VARIANTS
    name = ("prune_speed_quick" if args.quick else "prune_speed") + (
        "_latency" if args.cost == "latency" else "") + (
        "" if set(args.models) == set(MODELS) else "_" + "_".join(args.models))  # a partial run
    render = markdown_latency if args.cost == "latency" else markdown
    if args.cost == "latency":
        VARIANTS = ("unpruned", "pruned", "pruned_latency")
    if args.render_only:
        from _common import RESULTS

        res = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, res, render(res))
        return
    proto = Protocol.quick_protocol() if args.quick else Protocol()
    rounds = args.rounds or proto.trials
    single = Protocol.from_dict({**proto.to_dict(), "trials": 1})
    profile_iters = args.profile_iters or (10 if args.quick else 50)
    options = dict(load_target("x86-local").runtime_options.get(BACKEND) or {})
    work = work_folder(args.workdir, "prune-speed-")
    ex, t0 = LocalExecutor(), time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    if load[0] > 0.5:
        say(f"WARNING: load average {load} at start: the machine is not quiet")
    res: dict[str, Any] = {"environment": environment(), "host": host_environment(),
                           "loadavg_at_start": load, "protocol": single.to_dict(),
                           "rounds": rounds, "threads": args.threads, "target": "x86-local",
                           "backend": BACKEND, "precision": "fp32", "runtime_options": options,
                           "target_macs": args.target_macs, "importance": args.importance,
                           "seed": args.seed, "profile_iters": profile_iters,
                           "cost": args.cost, "variants": list(VARIANTS),
                           "quick": args.quick, "edgekit_code": code_state(), "models": {}}
    try:
        built = {}
        for model in args.models:  # all pruning/exports first: timing then runs back to back
            built[model] = build(model, MODELS[model], args, work)
        step = [0, 2 * rounds * sum("artifacts" in b and "export_error" not in b
                                    for b in built.values())]
        for model, b in built.items():
            leaves, gates = b.pop("_leaves", None), b.pop("_gates", None)
            arts = b.pop("artifacts", None)
            if "prune_error" in b or "export_error" in b:
                res["models"][model] = b
                continue
            b["artifacts"] = arts
            b["timing"] = time_model(model, b, ex, single, rounds, args.threads, options, step)
            for v in VARIANTS:
                res["runtime_environment"] = (res.get("runtime_environment")
                                              or b["timing"][v].pop("environment", None))
                b["timing"][v].pop("environment", None)
            t = b["timing"]
            if "speedup" in t:
                say(f"{model}: unpruned {t['unpruned']['p50_ms']:.3f} ms, pruned "
                    f"{t['pruned']['p50_ms']:.3f} ms: {t['speedup']:.3f}× "
                    f"(faster by {t['faster_by']:.1%})")
            say(f"{model}: OpenVINO per-node profile ({profile_iters} inferences each)")
            try:
                b["profile"] = ov_profile(arts, b["input_shape"], args.threads, options,
                                          profile_iters, leaves, gates)
            except Exception as exc:  # diagnostics only
                b["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
            b["artifacts"] = {k: str(Path(p).relative_to(work)) for k, p in arts.items()}
            res["models"][model] = b
    finally:
        release_work_folder(work, args.workdir, args.keep, say)
    noisy = [f"{n}/{v} ({m['timing'][v]['spread']:.3f})" for n, m in res["models"].items()
             for v in VARIANTS if m.get("timing", {}).get(v, {}).get("spread", 0) > SPREAD_LIMIT]
    res.update(seconds=round(time.perf_counter() - t0, 1), noisy_rows=noisy,
               loadavg_at_end=[round(x, 2) for x in os.getloadavg()])
    write_results(name, res, render(res))
    if noisy:
        say(f"NOISY: round-p50 spread > {SPREAD_LIMIT}× in {', '.join(noisy)}")


if __name__ == "__main__":
    main()
