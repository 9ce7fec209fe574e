"""Issue 18 item 5's goal: ``compress --recipe auto``'s recommended artifact (gate passed) is
>= 1.3x faster than NNCF's default INT8 of the UNPRUNED model, same machine, same run.

    # the real measurement: the seed model trained on the real data (train_real.py), 96 px
    .venv/bin/python benchmarks/train_real.py --model dsconv_cbam_gap --input-size 96 --epochs 6
    .venv/bin/python benchmarks/auto_vs_nncf.py --threads 2
    # smoke run: 64 px phantoms, a 2-epoch model, 1 recovery epoch, quick protocol
    .venv/bin/python benchmarks/auto_vs_nncf.py --smoke

Both sides are gated on the same held-out images (the checkpoint's recorded validation split,
never trained on) with the int8 recipe's gate; NNCF's artifact is ``nncf.quantize`` with its
defaults on the same static-shape IR edgekit converts, calibrated on the same images. The two
(plus edgekit's unpruned OpenVINO INT8) are timed in interleaved rounds, one fresh process per
trial, as ``edgekit bench`` does. Writes results/auto_vs_nncf[_smoke].{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_peers import peer_nncf, summarize

from _common import environment, real_data_dir, release_work_folder, work_folder, write_results
from edgekit.auto import AutoOptions, search
from edgekit.backends import require_backend
from edgekit.bench.local import LocalExecutor
from edgekit.bench.protocol import SPREAD_LIMIT, Protocol, merge_trials
from edgekit.calibrate import StreamedImages, plan_data
from edgekit.compress import CompressOptions
from edgekit.evaluate import load_arrays, score
from edgekit.recipes import load_recipe
from edgekit.sources import load_model, reference_outputs
from edgekit.targets import load_target
from edgekit.verify import compare

GOAL = 1.3
CKPT = Path(__file__).resolve().parent / "checkpoints" / "dsconv_cbam_gap_96.pt"


def say(msg: str) -> None:
    print(f"[auto_vs_nncf] {msg}", file=sys.stderr, flush=True)


def smoke_inputs(work: Path) -> tuple[Path, Path]:
    from edgekit.data.phantoms import generate_mri_dataset
    from edgekit.train import TrainConfig, train

    data = generate_mri_dataset(work / "mri64", n_per_class=60, size=64, seed=1)
    ckpt = work / "model.pt"
    train(TrainConfig(model="dsconv_cbam_gap", data=str(data), out=str(ckpt), epochs=2,
                      input_size=64, batch_size=16, lr=3e-3))
    return data, ckpt


def nncf_default(ckpt: Path, data: Path, calib: int, verify: int, work: Path
                 ) -> dict[str, Any]:
    """NNCF defaults on the unpruned model, gated like edgekit's candidates."""
    loaded = load_model(ckpt)
    rec = load_recipe("int8")
    plan = plan_data(loaded, data, calibration_images=calib, verification_images=verify,
                     seed=rec.seed)  # what compress --recipe auto picks (shared split)
    items = list(StreamedImages(plan.calibration, loaded.spec))
    shape = list(loaded.spec.input_shape(1))
    with contextlib.redirect_stdout(sys.stderr):
        xml = peer_nncf(loaded.module.eval(), shape, items, work)
    x, y = load_arrays(plan.dataset.subset(plan.verification), loaded.spec)
    ref = reference_outputs(loaded, x)
    src = score(y, ref, task=loaded.task, class_names=loaded.class_names, seed=rec.seed,
                head=loaded.head)
    session = require_backend("openvino").open(xml)
    out = np.concatenate([session.run(x[i:i + 16]) for i in range(0, len(x), 16)])
    v = compare(ref, out, y, task=loaded.task, class_names=loaded.class_names,
                precision="int8", recipe=rec, source_metrics=src, seed=rec.seed,
                head=loaded.head)
    d = v.accuracy_delta or {}
    return {"xml": xml, "shape": shape, "gate": v.decision, "images": v.n,
            "top1_delta": 100 * d.get("value", float("nan")),
            "top1_delta_ci": [100 * c for c in d.get("ci95", [])],
            "deciding_checks": [c.to_json() for c in v.checks if c.decision != "pass"]}


def time_rows(rows: dict[str, dict[str, Any]], threads: int, proto: Protocol
              ) -> dict[str, dict[str, Any]]:
    """Interleaved rounds: one trial of each row per round, each in a fresh process."""
    ex = LocalExecutor()
    options = dict(load_target("x86-local").runtime_options)
    single = Protocol.from_dict({**proto.to_dict(), "trials": 1})
    trials: dict[str, list[dict[str, Any]]] = {k: [] for k in rows}
    for r in range(proto.trials):
        for key, row in rows.items():
            opts = options.get(row["backend"])
            if key == "nncf-default":  # edgekit's OpenVINO session compiles its INT8 IRs with
                opts = {**(opts or {}), "SNIPPETS_MODE": "DISABLE"}  # this; the peer too
            say(f"timing {key} ({threads} threads, round {r + 1}/{proto.trials})")
            raw = (ex.time_file(row["xml"], "openvino", row["shape"], threads, single, opts)
                   if "xml" in row else
                   ex.time_artifact(row["bundle"], row["artifact"], threads, single, opts))
            trials[key].append(raw)
    return {k: summarize(merge_trials(v), None) for k, v in trials.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=CKPT)
    ap.add_argument("--smoke", action="store_true", help="phantoms, tiny model, quick protocol")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=["openvino", "onnxruntime"])
    ap.add_argument("--calibration-images", type=int, default=300)
    ap.add_argument("--verification-images", type=int, default=965)
    ap.add_argument("--recovery-epochs", type=int, default=None, help="default: the recipes'")
    ap.add_argument("--search-minutes", type=float, default=None)
    ap.add_argument("--cost", choices=["macs", "latency"], default=None,
                    help="how the pruned levels rank channels (default: the recipes')")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = ap.parse_args()
    work = work_folder(args.workdir, "auto-vs-nncf-")
    t0, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    try:
        if args.smoke:
            data, ckpt = smoke_inputs(work)
            args.calibration_images, args.verification_images = 32, 48
            args.recovery_epochs = args.recovery_epochs or 1
        else:
            data, ckpt = real_data_dir(), args.checkpoint
            if data is None or not ckpt.is_file():
                sys.exit(f"need the real data (EDGEKIT_DATA_DIR) and {ckpt} (train_real.py)")
        overrides = ({} if args.recovery_epochs is None else
                     {"pruning.recovery.epochs": args.recovery_epochs})
        say("edgekit compress --recipe auto")
        res = search(ckpt, data=data, out=work / "auto", options=AutoOptions(
            compress=CompressOptions(backends=args.backends, threads=args.threads,
                                     calibration_images=args.calibration_images,
                                     verification_images=args.verification_images,
                                     cost=args.cost),
            recipe_overrides=overrides, search_minutes=args.search_minutes, quick=args.smoke))
        auto_md = (work / "auto" / "auto.md").read_text(encoding="utf-8")
        say("NNCF defaults on the unpruned model")
        peer = nncf_default(ckpt, data, args.calibration_images, args.verification_images, work)
        best = res.recommended
        rows: dict[str, dict[str, Any]] = {"nncf-default": {**peer, "backend": "openvino"}}
        plain = next((c for c in res.candidates if c.level == "none"
                      and c.precision == "int8" and c.backend == "openvino"), None)
        for key, c in (("recommended", best), ("edgekit-int8-unpruned", plain)):
            if c is not None:
                rows[key] = {"bundle": work / "auto" / c.bundle, "artifact": c.artifact,
                             "backend": c.backend}
        proto = Protocol.quick_protocol() if args.smoke else Protocol()
        timed = time_rows(rows, args.threads, proto)
        ratio = (timed["nncf-default"]["p50_ms"] / timed["recommended"]["p50_ms"]
                 if "recommended" in timed else None)
        out = {"environment": environment(), "loadavg_at_start": load, "smoke": args.smoke,
               "threads": args.threads, "checkpoint": str(ckpt), "protocol": proto.to_dict(),
               "cost": args.cost, "recovery_epochs": args.recovery_epochs,
               "auto": res.to_json(),
               "nncf_default": {k: v for k, v in peer.items() if k not in ("xml", "shape")},
               "timings": {k: {kk: vv for kk, vv in v.items() if kk != "environment"}
                           for k, v in timed.items()},
               "speedup_vs_nncf_default": ratio, "goal": GOAL,
               "valid": all(v.get("spread", 0) <= SPREAD_LIMIT for v in timed.values()),
               "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        release_work_folder(work, args.workdir, args.keep, say)
    name = ("auto_vs_nncf_smoke" if args.smoke else "auto_vs_nncf"
            + ("" if Path(ckpt).resolve() == CKPT else f"_{ckpt.stem}") + (f"_{args.cost}" if args.cost else ""))
    lines = [f"# compress --recipe auto vs NNCF defaults INT8 (unpruned), {out['environment']['cpu']}",
             "", f"- checkpoint `{ckpt}`; {args.threads} threads; load average at start {load}; "
             f"pruning cost {args.cost or 'the recipes'}; recovery epochs "
             f"{args.recovery_epochs or 'the recipes'}; wall time {out['seconds'] / 60:.1f} min"
             + ("; SMOKE run (phantoms, quick protocol): not a result" if args.smoke else ""),
             f"- recommendation: `{best.id if best else None}`; NNCF default gate "
             f"{peer['gate']} (top-1 {peer['top1_delta']:+.2f} points on {peer['images']} images"
             + "".join(f"; {c['check']} {c['value']:+.2f} [{c['ci95'][0]:+.2f}, "
                       f"{c['ci95'][1]:+.2f}] on {c['n']} images: {c['decision']}"
                       for c in peer.get("deciding_checks", [])) + ")",
             f"- speed-up of the recommendation over NNCF defaults: "
             f"**{'n/a' if ratio is None else f'{ratio:.2f}x'}** (goal >= {GOAL}x)", "",
             "| row | p50 ms | spread |", "|---|---:|---:|",
             *[f"| {k} | {v['p50_ms']:.4g} | {v['spread']:.3f} |" for k, v in timed.items()],
             "", "## The search (its auto.md)", "",
             *[("#" + ln if ln.startswith("#") else ln) for ln in auto_md.splitlines()[1:]], ""]
    write_results(name, json.loads(json.dumps(out, default=str)), "\n".join(lines))


if __name__ == "__main__":
    main()
