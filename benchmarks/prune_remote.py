"""prune30 for a board edgekit cannot reach: the MACs cost vs the latency cost ranked by the
board's PREDICTED per-layer profile (``edgekit.prune.profile.profile_predicted``).

Both pruned copies are scored by the same latency model's whole-network prediction for the
board's first fp32 runtime (the only latency there is for a board that is not connected): a
model-consistent comparison, NOT a measurement on the board. Seeded zoo weights at their
published sizes; no accuracy (structure only).

    .venv/bin/python benchmarks/prune_remote.py --target rpi4     # ~1 min
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import torch

from _common import environment, write_results
from edgekit.bench.predict import kernels, predict_route, target_latency_model
from edgekit.errors import ConfigError
from edgekit.prune import PruneSettings, count, prune
from edgekit.prune.profile import profile_predicted
from edgekit.sources import load_model
from edgekit.targets import load_target
from edgekit.zoo import list_models, model_config

GOALS = (0.7, 0.75, 0.8)  # the latency cost's time target, the next one up when unreachable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="rpi4")
    ap.add_argument("--target-macs", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=None, help="default: the board's cores")
    args = ap.parse_args()
    tgt = load_target(args.target)
    tm = target_latency_model(tgt)
    if tm.error:
        sys.exit(f"prune_remote: {tm.error}")
    threads = args.threads or tm.hardware.cores
    rows: dict[str, Any] = {}
    for name in list_models():
        size = model_config(name).input_size
        torch.manual_seed(0)
        m0 = load_model(name, input_size=size).module.eval()
        x = torch.zeros(1, 3, size, size)
        macs0, _ = count(m0, x)
        prof, why = profile_predicted(m0, x, tgt, threads=threads)
        if prof is None:
            sys.exit(f"prune_remote: {why}")
        backend = prof.backend

        def predicted(m: torch.nn.Module, x: torch.Tensor = x, backend: str = backend) -> float:
            return predict_route(tm, kernels(m, tuple(x.shape)), backend, "fp32",
                                 threads)["p50_ms"]

        t0 = predicted(m0)
        row: dict[str, Any] = {"input_size": size, "profile": prof.label,
                               "predicted_ms_before": round(t0, 3)}
        macs = copy.deepcopy(m0).eval()
        prune(macs, x, PruneSettings(target_macs=args.target_macs))
        row["macs_cost"] = {"macs_kept": count(macs, x)[0] / macs0,
                            "time_kept": predicted(macs) / t0}
        for goal in GOALS:
            lat = copy.deepcopy(m0).eval()
            try:
                prune(lat, x, PruneSettings(cost="latency", target_time=goal, profile=prof))
            except ConfigError as exc:
                row.setdefault("latency_cost_unreachable", []).append(f"{goal}: {exc}")
                continue
            row["latency_cost"] = {"target_time": goal, "macs_kept": count(lat, x)[0] / macs0,
                                   "time_kept": predicted(lat) / t0,
                                   "profile_time_kept": prof.predict_ms(lat) / prof.total_ms}
            break
        rows[name] = row
        print(f"[prune_remote] {name}: done", file=sys.stderr, flush=True)
    res = {"environment": environment(), "target": tgt.name, "threads": threads,
           "target_macs": args.target_macs, "models": rows}
    lines = [f"# prune{round(100 - 100 * args.target_macs)} on {tgt.name} (predicted, not measured)",
             "", f"`benchmarks/prune_remote.py --target {tgt.name}`: seeded zoo weights at their "
             f"published sizes, {threads} threads. MACs cost = `PruneSettings(target_macs="
             f"{args.target_macs})`; latency cost = `PruneSettings(cost='latency', target_time="
             f"{args.target_macs})` with the profile `profile_predicted` makes from {tgt.name}'s "
             "latency model. Time kept = the same latency model's whole-network prediction of "
             "the pruned copy ÷ the unpruned one: a model-consistent comparison (the latency "
             "cost optimises the quantity it is scored on), not a measurement on the board.", "",
             "| model | px | MACs cost: MACs kept | predicted time kept | latency cost: MACs "
             "kept | predicted time kept |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lat = r.get("latency_cost")
        lc = ("unreachable", "") if lat is None else (f"{lat['macs_kept']:.1%}",
                                                       f"{lat['time_kept']:.1%}")
        lines.append(f"| {name} | {r['input_size']} | {r['macs_cost']['macs_kept']:.1%} | "
                     f"{r['macs_cost']['time_kept']:.1%} | {lc[0]} | {lc[1]} |")
    write_results(f"prune_remote_{tgt.name}", res, "\n".join(lines))


if __name__ == "__main__":
    main()
