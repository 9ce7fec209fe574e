"""ONNX Runtime's spinning intra-op threads on a quiet and on a busy 2-core machine (issue 18
item 3): should edgekit's x86 targets run ORT with ``session.intra_op.allow_spinning=0``?

    .venv/bin/python benchmarks/ort_spinning.py                       # ~20 min on 2 cores
    .venv/bin/python benchmarks/ort_spinning.py --models dsconv_cbam --size 64 --quick  # smoke

``results/ort_int8_vs_openvino.md`` found every ORT row 1.5-2x faster with spinning off, but on
a machine loaded by other jobs, and in one process: the default was not changed because it was
not judged on a quiet machine. Here, for each seed model (seeded weights, published size):
edgekit's ORT fp32 and INT8 artifacts with ORT's default (spinning) and with spinning off, and
edgekit's OpenVINO INT8 (the 1.5x goal's reference), each trial in a fresh process (as
``edgekit bench``), rows interleaved per round, under two conditions:

* **quiet**: nothing else runs;
* **busy**: one other process keeps one of the two cores busy (a second job on a shared
  workstation: a viewer, an indexer, another inference), started before the round and stopped
  after it.

p50 ms = median of the rounds' p50; spread = max/min of the rounds' p50. Only ratios within one
condition of one run are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _common import environment, release_work_folder, work_folder, write_results
from edgekit.bench.local import LocalExecutor
from edgekit.bench.protocol import SPREAD_LIMIT, Protocol, merge_trials
from edgekit.compress import compress
from edgekit.data.phantoms import generate_ct_dataset, generate_mri_dataset
from edgekit.sources import load_model
from edgekit.targets import load_target
from edgekit.zoo import create_model, model_config

NOSPIN = {"session.intra_op.allow_spinning": "0"}
ROWS = ("ort-fp32", "ort-fp32-nospin", "ort-int8", "ort-int8-nospin", "ov-int8")
MODELS = {"prudensnet": 256, "dsconv_cbam": 224, "ich_mrf": 256}


def say(msg: str) -> None:
    print(f"[ort_spinning] {msg}", file=sys.stderr, flush=True)


def _burn(stop: Any) -> None:  # one core's worth of other work
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


@contextlib.contextmanager
def condition(name: str):
    if name != "busy":
        yield
        return
    stop = mp.Event()
    proc = mp.Process(target=_burn, args=(stop,), daemon=True)
    proc.start()
    try:
        time.sleep(0.5)
        yield
    finally:
        stop.set()
        proc.join(5)


def build(model: str, size: int, work: Path) -> dict[str, Any]:
    """edgekit's INT8 (ORT + OpenVINO) and fp32 (ORT) bundles of seeded weights, on phantoms."""
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = work / f"{model}_{size}.pt"
    torch.save(create_model(model, input_size=size).state_dict(), weights)
    loaded = load_model(f"{model}:{weights}", input_size=size)
    data = work / f"data{size}"
    if model_config(model).task == "multilabel":
        generate_ct_dataset(data, 48, size=size)
    else:
        generate_mri_dataset(data, math.ceil(48 / 4), size=size)
    rows: dict[str, tuple[Path, str]] = {}
    for recipe, backends in (("int8", ["onnxruntime", "openvino"]), ("fp32", ["onnxruntime"])):
        say(f"{model}: edgekit compress {recipe} {backends}")
        res = compress(loaded, data=data, out=work / f"{model}_{recipe}", recipe=recipe,
                       backends=backends, calibration_images=32, verification_images=16,
                       allow_accuracy_drop=True, rescue=False)  # seeded weights: time the plain
        # INT8 graph (a rescue on random weights is driven by noise and adds float layers)
        for a in res.artifacts:
            rows[a.name] = (res.bundle, a.name)
    return {"shape": list(loaded.spec.input_shape(1)), "artifacts": {
        "ort-fp32": rows["onnxruntime-fp32"], "ort-fp32-nospin": rows["onnxruntime-fp32"],
        "ort-int8": rows["onnxruntime-int8"], "ort-int8-nospin": rows["onnxruntime-int8"],
        "ov-int8": rows["openvino-int8"]}}


def time_rows(b: dict[str, Any], cond: str, proto: Protocol, threads: int, rounds: int
              ) -> dict[str, Any]:
    ex = LocalExecutor()
    options = load_target("x86-local").runtime_options
    single = Protocol.from_dict({**proto.to_dict(), "trials": 1})
    trials: dict[str, list[dict[str, Any]]] = {r: [] for r in ROWS}
    for r in range(rounds):
        order = ROWS if r % 2 == 0 else ROWS[::-1]
        with condition(cond):
            for row in order:
                bundle, art = b["artifacts"][row]
                opts = dict(options.get("openvino" if row.startswith("ov") else "onnxruntime")
                            or {})
                if row.endswith("-nospin"):
                    opts.update(NOSPIN)
                raw = ex.time_artifact(bundle, art, threads, single, opts or None)
                trials[row].append(raw)
                say(f"  {cond} round {r + 1}/{rounds} {row}: p50 "
                    f"{raw['latency_ms']['p50']:.3f} ms")
    out = {}
    for row, t in trials.items():
        m = merge_trials(t)
        out[row] = {"p50_ms": statistics.median(m["trials_p50_ms"]),
                    "rounds_p50_ms": m["trials_p50_ms"], "spread": m["spread"],
                    "p90_ms": m["latency_ms"]["p90"]}
    return out


def markdown(res: dict[str, Any]) -> str:
    env = res["environment"]
    md = ["# ONNX Runtime spinning threads: quiet vs busy machine", "",
          f"- {env['cpu']}, {env['cores']} cores; {res['date']}; {res['threads']} threads; "
          f"{res['rounds']} interleaved rounds per condition, every trial in a fresh process "
          f"(`edgekit.runner --bench`); load average at start {res['load_start']}; total "
          f"{res['minutes']:.1f} min",
          "- ORT default = the x86-local target's options as they are (ORT spins its idle "
          "intra-op threads); nospin = the same plus `session.intra_op.allow_spinning=0`",
          "- busy: one other process keeps one core busy during the round", "",
          "| model | condition | ORT fp32 | ORT fp32 nospin | ORT INT8 | ORT INT8 nospin | OV INT8 "
          "| nospin ÷ spin (fp32 / INT8) | ORT INT8 ÷ OV INT8 (spin / nospin) | max spread |",
          "|---|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for model, conds in res["models"].items():
        for cond, t in conds.items():
            p = {k: v["p50_ms"] for k, v in t.items()}
            md.append(
                f"| {model} | {cond} | " + " | ".join(f"{p[r]:.3f}" for r in ROWS)
                + f" | {p['ort-fp32-nospin'] / p['ort-fp32']:.2f} / "
                f"{p['ort-int8-nospin'] / p['ort-int8']:.2f} | "
                f"{p['ort-int8'] / p['ov-int8']:.2f} / {p['ort-int8-nospin'] / p['ov-int8']:.2f}"
                f" | {max(v['spread'] for v in t.values()):.2f} |")
    md += ["", f"Valid (every spread ≤ {SPREAD_LIMIT}): " + ("yes" if res["valid"] else "**no**")]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=None, help="default: each model's published size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conditions", nargs="+", default=["quiet", "busy"],
                    choices=["quiet", "busy"])
    ap.add_argument("--quick", action="store_true", help="quick protocol (smoke run)")
    ap.add_argument("--name", default="ort_spinning")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    proto = Protocol.quick_protocol() if args.quick else Protocol(min_seconds=5.0)
    work = work_folder(args.workdir, "ort-spin-")
    t0, load0 = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    models: dict[str, Any] = {}
    try:
        for model in args.models:
            b = build(model, args.size or MODELS[model], work / model)
            models[model] = {c: time_rows(b, c, proto, args.threads, args.rounds)
                             for c in args.conditions}
    finally:
        release_work_folder(work, args.workdir, args.keep, say)
    res = {"environment": environment(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "threads": args.threads, "rounds": args.rounds, "protocol": proto.to_dict(),
           "load_start": load0, "minutes": (time.perf_counter() - t0) / 60, "models": models}
    res["valid"] = all(v["spread"] <= SPREAD_LIMIT for c in models.values()
                       for t in c.values() for v in t.values())
    say(f"wrote {write_results(args.name, res, markdown(res))}")


if __name__ == "__main__":
    main()
