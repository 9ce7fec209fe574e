"""prune30 by the MACs cost vs the latency cost on models trained on the real MRI data: the
accuracy evidence the latency cost needs before it can be prune30's default (issue 18).

    # train first (checkpoints go to benchmarks/checkpoints/, ignored by git)
    .venv/bin/python benchmarks/train_real.py --model dsconv_cbam_gap --input-size 96 --epochs 6
    .venv/bin/python benchmarks/train_real.py --model mobilenetv2 --input-size 96 --epochs 6
    .venv/bin/python benchmarks/prune_cost_real.py \\
        benchmarks/checkpoints/dsconv_cbam_gap_96.pt benchmarks/checkpoints/mobilenetv2_96.pt

For every checkpoint, three `edgekit compress` calls on the same data (one load, shared through
``CompressResult.prepared``), OpenVINO fp32 only:

* ``fp32``: the unpruned model (its artifact is the latency baseline);
* ``prune30`` as shipped: 70 % of the MACs (``cost: macs``), 8 recovery epochs;
* ``prune30`` with ``--cost latency --target-time 0.7``: 70 % of the time profiled on this machine
  (OpenVINO fp32), the same recovery.

Every call verifies on ALL of the checkpoint's held-out images (never used for training, pruning
or recovery). Reported: each pruned model's top-1 and per-class sensitivity vs the unpruned
model (paired, 95 % CI), the two pruned models against EACH OTHER (latency − MACs, paired: the
discordant images decide), MACs kept, and the three OpenVINO fp32 artifacts' p50 in interleaved
rounds (fresh process per trial, 2 threads, x86-local options).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from auto_vs_nncf import time_rows

from _common import (
    environment,
    paired,
    real_data_dir,
    release_work_folder,
    work_folder,
    write_results,
)
from edgekit.bench.protocol import SPREAD_LIMIT, Protocol
from edgekit.compress import compress
from edgekit.errors import UnreachableTarget
from edgekit.prune import pruning_recipe
from edgekit.sources import load_model


def say(msg: str) -> None:
    print(f"[prune_cost_real] {msg}", file=sys.stderr, flush=True)


VARIANTS = {"fp32": {"recipe": "fp32"},
            "macs": {"recipe": "prune30"},
            "latency": {"recipe": "prune30", "cost": "latency", "target_time": 0.7}}


def compare_models(y: np.ndarray, outs: dict[str, np.ndarray], classes: list[str]
                   ) -> dict[str, Any]:
    """Top-1 and per-class sensitivity of each model, and paired deltas vs the unpruned model
    and latency vs MACs."""
    ok = {k: np.argmax(v, axis=1) == y for k, v in outs.items()}
    res: dict[str, Any] = {"n": int(len(y)), "per_class_n": {c: int(np.sum(y == i))
                                                            for i, c in enumerate(classes)}}
    for k in outs:
        res[k] = {"top1": float(ok[k].mean()),
                  "sensitivity": {c: float(ok[k][y == i].mean()) for i, c in enumerate(classes)}}
    pairs = [("fp32", "macs"), ("fp32", "latency"), ("macs", "latency")]
    for a, b in pairs:
        if a in ok and b in ok:
            res[f"{b}_vs_{a}"] = {"top1": paired(ok[a], ok[b]),
                                  "classes": {c: paired(ok[a][y == i], ok[b][y == i])
                                              for i, c in enumerate(classes)}}
    return res


def run_checkpoint(ckpt: Path, data: Path, work: Path, args: argparse.Namespace
                   ) -> dict[str, Any]:
    loaded = load_model(ckpt)
    out: dict[str, Any] = {"checkpoint": str(ckpt), "model": loaded.name,
                           "input_size": loaded.spec.height, "variants": {}}
    prepared, outs, rows = None, {}, {}
    for key, settings in VARIANTS.items():
        say(f"{ckpt.name}: compress {key}")
        t0 = time.perf_counter()
        rec = settings["recipe"]
        if key != "fp32" and args.epochs is not None:
            rec = pruning_recipe(rec, **{"pruning.recovery.epochs": args.epochs})
        extra = {k: v for k, v in settings.items() if k != "recipe"}
        unreachable = []
        while True:
            try:
                res = compress(loaded, data=data, out=work / ckpt.stem / key, recipe=rec,
                               backends=["openvino"], prepared=prepared, threads=args.threads,
                               verification_images=args.verification_images, shared_split=True,
                               allow_accuracy_drop=True, overwrite=True, **extra)
                break
            except UnreachableTarget as exc:  # the protected layers' time: the nearest above
                if "target_time" not in extra or exc.reachable is None or unreachable:
                    raise
                unreachable.append(str(exc))
                extra["target_time"] = min(0.95, float(np.ceil(100 * exc.reachable + 1) / 100))
                say(f"{key}: {exc}: retrying at target_time {extra['target_time']:.2f}")
        prepared = res.prepared
        art = res.artifacts[0]
        v = art.verification.to_json()
        row: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1),
                               "decision": v["decision"], "artifact": art.name,
                               "target_time": extra.get("target_time"), "unreachable": unreachable}
        if res.pruned is not None:
            p = res.pruned.record
            row.update({k: p.get(k) for k in ("macs_fraction", "cost", "predicted_time_fraction",
                                               "widths_after", "steps", "recovery")})
            row["params_fraction"] = p["params_after"] / p["params_before"]
            prof = p.get("latency_profile")
            row["profiled_ms"] = prof.get("total_ms") if prof else None
            outs[key] = res.pruned.reference
        else:
            outs[key] = prepared.ref
        out["variants"][key] = row
        rows[key] = {"bundle": res.bundle, "artifact": art.name, "backend": "openvino"}
    classes = list(prepared.source.class_names)
    out["accuracy"] = compare_models(prepared.y, outs, classes)
    proto = Protocol.quick_protocol() if args.quick else Protocol()
    say(f"{ckpt.name}: timing the three OpenVINO fp32 artifacts in {proto.trials} rounds")
    out["timing"] = time_rows(rows, args.threads, proto)
    base = out["timing"]["fp32"]["p50_ms"]
    for key in ("macs", "latency"):
        t = out["timing"][key]
        t["faster_by"] = 1 - t["p50_ms"] / base
        t["round_speedups"] = [a / b for a, b in zip(out["timing"]["fp32"]["trials_p50_ms"],
                                                     t["trials_p50_ms"], strict=False)]
    return out


def fmt_pair(p: dict[str, Any]) -> str:
    lo, hi = p["ci95_points"]
    return f"{p['delta_points']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def worst(a: dict[str, Any], key: str) -> str:
    """The class whose sensitivity fell most under pruning ``key``, with its paired CI."""
    cls = a[f"{key}_vs_fp32"]["classes"]
    c = min(cls, key=lambda name: cls[name]["delta_points"])
    return f"{c} {fmt_pair(cls[c])} (n={a['per_class_n'][c]})"


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    md = ["# prune30: MACs cost vs latency cost on models trained on the real MRI data", "",
          f"- {env.get('cpu')}, {env.get('cores')} cores, load average {res['load_start']} at "
          f"start, {res['load_end']} at end; {res['date']}; total {res['minutes']:.1f} min",
          "- `edgekit compress` per checkpoint: `fp32`, `prune30` (70 % of the MACs) and "
          "`prune30 --cost latency --target-time 0.7` (70 % of the OpenVINO fp32 time profiled "
          f"here), OpenVINO only, {res['threads']} threads; recovery epochs: "
          f"{res['epochs'] or 'the recipe’s (8)'}; verification on every held-out image",
          "- Δ = paired difference in points with the 95 % CI (Tango score interval on the "
          "discordant images); *latency − MACs* compares the two pruned models on the same "
          "images", "- latency: p50 ms of the OpenVINO fp32 artifacts, median of "
          f"{res['rounds']} interleaved rounds (fresh process per trial); spread = max/min of "
          "the rounds' p50", ""]
    md += ["| model | n | MACs kept: MACs / latency cost | top-1 unpruned | Δ MACs cost | "
           "Δ latency cost | latency − MACs | worst class Δ, MACs cost | worst class Δ, "
           "latency cost | p50 ms unpruned / MACs / latency | faster by: MACs / latency | "
           "max spread |", "|---|---:|---|---:|---|---|---|---|---|---|---|---:|"]
    for m in res["models"]:
        a, v, t = m["accuracy"], m["variants"], m["timing"]
        spread = max(t[k].get("spread") or 0 for k in t)
        md.append(
            f"| {m['model']} {m['input_size']}² | {a['n']} | "
            f"{v['macs']['macs_fraction']:.1%} / {v['latency']['macs_fraction']:.1%} | "
            f"{a['fp32']['top1']:.2%} | {fmt_pair(a['macs_vs_fp32']['top1'])} | "
            f"{fmt_pair(a['latency_vs_fp32']['top1'])} | "
            f"{fmt_pair(a['latency_vs_macs']['top1'])} | {worst(a, 'macs')} | "
            f"{worst(a, 'latency')} | "
            f"{t['fp32']['p50_ms']:.3f} / {t['macs']['p50_ms']:.3f} / "
            f"{t['latency']['p50_ms']:.3f} | {t['macs']['faster_by']:.1%} / "
            f"{t['latency']['faster_by']:.1%} | {spread:.3f} |")
    md += ["", "Per-class sensitivity (held-out):", "",
           "| model | variant | " + " | ".join(res["models"][0]["accuracy"]["per_class_n"])
           + " | gate |", "|---|---|" + "---:|" * len(res["models"][0]["accuracy"]["per_class_n"])
           + "---|"]
    for m in res["models"]:
        for k in VARIANTS:
            s = m["accuracy"][k]["sensitivity"]
            md.append(f"| {m['model']} | {k} | " + " | ".join(f"{x:.1%}" for x in s.values())
                      + f" | {m['variants'][k]['decision']} |")
    md += ["", f"Valid timing: every spread ≤ {SPREAD_LIMIT}: "
           + ("yes" if res["valid"] else "**no** (read the latencies as indicative)")]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="edgekit checkpoints (train_real.py)")
    ap.add_argument("--epochs", type=int, default=None, help="recovery epochs (recipe's: 8)")
    ap.add_argument("--verification-images", type=int, default=100_000,
                    help="held-out images (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="quick timing protocol (a smoke run)")
    ap.add_argument("--name", default="prune_cost_real")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    missing = [str(c) for c in args.checkpoints if not c.is_file()]
    if missing:
        sys.exit(f"no such checkpoint: {', '.join(missing)} (train them with train_real.py)")
    work = work_folder(args.workdir, "prune-cost-")
    t0, load0 = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    try:
        models = [run_checkpoint(c, data, work, args) for c in args.checkpoints]
    finally:
        release_work_folder(work, args.workdir, args.keep, say)
    res = {"environment": environment(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "load_start": load0, "load_end": [round(x, 2) for x in os.getloadavg()],
           "minutes": (time.perf_counter() - t0) / 60, "threads": args.threads,
           "epochs": args.epochs, "rounds": (Protocol.quick_protocol() if args.quick
                                             else Protocol()).trials,
           "models": models}
    res["valid"] = all((t.get("spread") or 99) <= SPREAD_LIMIT
                       for m in models for t in m["timing"].values())
    path = write_results(args.name, res, markdown(res))
    say(f"wrote {path}")


if __name__ == "__main__":
    main()
