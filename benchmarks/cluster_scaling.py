"""Sharded evaluation on Ray (issue 19): per-image costs, images/s vs Ray workers, overhead.

Model: the zoo's ``ich_mrf`` (head-CT haemorrhage, 6 labels) at its size (256²), fresh weights
(speed does not depend on them), exported fp32 to ONNX Runtime (``edgekit compress --recipe
fp32``). Images: synthetic head-CT DICOM slices at 512² int16 (the RSNA slice size), so decode
and resize cost what a real slice costs.

Measured, interleaved in rounds (the machine is shared with other work: medians reported):

- per image: DICOM decode + the bundle's preprocessing (window, resize, normalise), the same
  for a PNG of the slice, and batch-1 inference (1 runtime thread), in this process;
- ``plain``: ``LocalExecutor.logits`` — what ``edgekit bench --data`` does without
  ``--cluster`` (one runner subprocess, the runtime's default threads);
- ``plain-1t``: the shard's own work in this process (``Runner.outputs``, 1 thread);
- ``ray-1`` / ``ray-2``: ``ClusterEvaluator.logits`` on a local Ray with 1 or 2 CPUs (warm:
  the workers have opened the artifact once before the timed call);
- the overhead of one Ray task and of one Dask-distributed task (no-op tasks, round trip),
  when Dask is importable (``--dask-path`` adds a folder to the end of sys.path).

    .venv/bin/python benchmarks/cluster_scaling.py [--images 384] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import environment, write_results


def _per_image(bundle: Path, dicoms: list[Path], pngs: list[Path], reps: int = 1) -> dict:
    import numpy as np

    from edgekit.runner import Runner

    runner = Runner(bundle, "onnxruntime-fp32", threads=1)
    spec = runner.spec
    t = time.perf_counter()
    xs = [spec.load(p) for p in dicoms]
    dicom_ms = (time.perf_counter() - t) * 1e3 / len(dicoms)
    from PIL import Image

    t = time.perf_counter()
    for p in pngs:  # what an 8-bit export of the slice would cost instead (PIL, bilinear)
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize((spec.width, spec.height), Image.BILINEAR),
                           np.float32) / 255.0
        a.transpose(2, 0, 1)[None]
    png_ms = (time.perf_counter() - t) * 1e3 / len(pngs)
    for x in xs[:5]:
        runner.logits(x[None])
    t = time.perf_counter()
    for x in xs:
        runner.logits(np.asarray(x)[None])
    infer_ms = (time.perf_counter() - t) * 1e3 / len(xs)
    return {"dicom_decode_preprocess_ms": dicom_ms, "png_decode_preprocess_ms": png_ms,
            "inference_ms_1thread": infer_ms}


def _task_overhead_ray(n: int = 500) -> float:
    import ray

    @ray.remote(num_cpus=1)
    def noop(i: int) -> int:
        return i

    ray.get([noop.remote(i) for i in range(20)])  # warm workers
    t = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    return (time.perf_counter() - t) * 1e3 / n


def _task_overhead_dask(n: int = 500) -> float | None:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return None
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        client.gather(client.map(lambda i: i, range(20), pure=False))
        t = time.perf_counter()
        client.gather(client.map(lambda i: i, range(n), pure=False))
        return (time.perf_counter() - t) * 1e3 / n


def driver_costs() -> None:
    """What stays on the driver of a sharded run: the PyTorch source model's reference outputs
    (per image, 1 thread) and ``score()`` — metrics + bootstrap CIs — on n images (6 labels)."""
    import numpy as np
    import torch

    from edgekit.evaluate import score
    from edgekit.zoo import create_model

    torch.set_num_threads(1)
    model = create_model("ich_mrf").eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        t = time.perf_counter()
        for _ in range(50):
            model(x)
        torch_ms = (time.perf_counter() - t) * 1e3 / 50
    names = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural",
             "any")
    score_s = {}
    for n in (20_000, 80_000):
        rng = np.random.default_rng(0)
        y = (rng.random((n, 6)) < 0.15).astype(np.int64)
        logits = rng.normal(size=(n, 6)).astype(np.float32) + y
        t = time.perf_counter()
        score(y, logits, task="multilabel", class_names=names, seed=0)
        score_s[n] = time.perf_counter() - t
    env = environment()
    md = ["# What a sharded run leaves on the driver (issue 19)", "",
          f"Machine: {env['cpu']}, {os.cpu_count()} logical cores, shared with other jobs.", "",
          "| cost | measured |", "|---|---|",
          f"| ich_mrf PyTorch eager fp32, 256², batch 1, 1 thread (the source reference) | "
          f"{torch_ms:.1f} ms / image |"]
    md += [f"| `score()` multilabel (6 labels, 1000 bootstrap resamples), {n:,} images | "
           f"{v:.1f} s |" for n, v in score_s.items()]
    write_results("cluster_driver_costs", {"environment": env, "torch_ms_per_image": torch_ms,
                                           "score_seconds": score_s}, "\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dask-path", type=Path, default=None)
    ap.add_argument("--driver-costs", action="store_true",
                    help="only measure what stays on the driver (source reference, metrics)")
    args = ap.parse_args()
    if args.driver_costs:
        driver_costs()
        return
    if args.dask_path:
        sys.path.append(str(args.dask_path))

    import numpy as np
    import ray
    from PIL import Image

    from edgekit.bench.cluster import ClusterEvaluator
    from edgekit.bench.local import LocalExecutor
    from edgekit.compress import compress
    from edgekit.data.dicom import read_hu
    from edgekit.data.phantoms import generate_ct_dataset
    from edgekit.runner import Runner
    from edgekit.ui import set_quiet

    set_quiet(True)
    work = Path(tempfile.mkdtemp(prefix="edgekit-cluster-"))
    data = generate_ct_dataset(work / "ct", args.images, size=512, seed=3)
    dicoms = sorted(data.glob("*.dcm"))
    pngs = []
    (work / "png").mkdir()
    for p in dicoms[:64]:
        hu = read_hu(p)
        img = np.clip((hu + 1024) / 8, 0, 255).astype(np.uint8)
        q = work / "png" / (p.stem + ".png")
        Image.fromarray(img).save(q)
        pngs.append(q)
    bundle = work / "ich-fp32"
    compress("ich_mrf", data=data, out=bundle, recipe="fp32", backends=["onnxruntime"],
             verification_images=16, allow_accuracy_drop=True)
    dicom_bytes = statistics.mean(p.stat().st_size for p in dicoms)

    art = "onnxruntime-fp32"
    times: dict[str, list[float]] = {k: [] for k in ("plain", "plain-1t", "ray-1", "ray-2")}
    per_image: list[dict] = []
    ray_start: list[float] = []
    ray_task_ms: list[float] = []
    ref = None
    for r in range(args.rounds):
        per_image.append(_per_image(bundle, dicoms[:64], pngs))
        t = time.perf_counter()
        out = LocalExecutor().logits(bundle, art, dicoms)
        times["plain"].append(time.perf_counter() - t)
        ref = out if ref is None else ref
        runner = Runner(bundle, art, threads=1)
        t = time.perf_counter()
        out1 = runner.outputs([str(p) for p in dicoms])
        times["plain-1t"].append(time.perf_counter() - t)
        assert np.array_equal(out1, ref)
        for cpus in (1, 2):
            t = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            ray_start.append(time.perf_counter() - t)
            with ClusterEvaluator("auto") as ev:  # uses the Ray just started
                ev.logits(bundle, art, dicoms[: 8 * cpus], None)  # workers open the artifact
                t = time.perf_counter()
                out = ev.logits(bundle, art, dicoms)
                times[f"ray-{cpus}"].append(time.perf_counter() - t)
                shards = ev.info.shards
            assert np.array_equal(out, ref), "sharded logits differ from the plain path"
            if cpus == 2:
                ray_task_ms.append(_task_overhead_ray())
            ray.shutdown()
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              flush=True)
    dask_ms = _task_overhead_dask()

    n = len(dicoms)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: n / v for k, v in med.items()}
    pi = {k: statistics.median(d[k] for d in per_image) for k in per_image[0]}
    env = environment()
    cpu_model = env["cpu"]
    md = [
        "# Sharded evaluation on Ray: throughput vs workers (issue 19)", "",
        f"Machine: {cpu_model}, {os.cpu_count()} logical cores (lscpu), SHARED with two other "
        f"jobs during the run: {args.rounds} interleaved rounds, medians reported (every "
        "round's numbers in the JSON). ich_mrf at 256², fp32 ONNX Runtime, fresh weights; "
        f"{n} synthetic head-CT DICOM slices at 512² int16 ({dicom_bytes / 1e3:.0f} kB each). "
        "Every sharded run's logits were checked equal (np.array_equal) to the plain path's.",
        "",
        "## Per image (this process, 1 runtime thread)", "",
        "| step | ms / image |", "|---|---|",
        f"| DICOM read + window + resize 512→256 + normalise | {pi['dicom_decode_preprocess_ms']:.2f} |",
        f"| PNG (8-bit, 512²) read + RGB + resize + scale (PIL) | {pi['png_decode_preprocess_ms']:.2f} |",
        f"| inference, batch 1, 1 thread | {pi['inference_ms_1thread']:.2f} |",
        f"| total per image, DICOM | {pi['dicom_decode_preprocess_ms'] + pi['inference_ms_1thread']:.2f} |",
        "", f"## Evaluating {n} slices (wall, median of {args.rounds})", "",
        "| path | workers | s | images/s | vs plain-1t |", "|---|---|---|---|---|",
    ]
    for k, w in (("plain", "1 process, default threads"), ("plain-1t", "1 (in-process)"),
                 ("ray-1", "1 Ray CPU"), ("ray-2", "2 Ray CPUs")):
        md.append(f"| {k} | {w} | {med[k]:.2f} | {ips[k]:.1f} | {med[k] / med['plain-1t']:.2f}× |")
    md += [
        "", f"Shards per artifact at 2 CPUs (default size): {shards}.",
        f"Starting a local Ray (`ray.init`): median {statistics.median(ray_start):.1f} s "
        "(paid once per `--cluster auto` run, not included above).",
        f"Ray task round trip (no-op task, 2 workers, 500 tasks): "
        f"{statistics.median(ray_task_ms):.2f} ms per task.",
        "Dask-distributed task round trip (no-op, LocalCluster 2 processes × 1 thread, 500 "
        "tasks): " + (f"{dask_ms:.2f} ms per task." if dask_ms is not None
                      else "not measured (dask not importable)."),
    ]
    payload = {"environment": env, "images": n, "dicom_bytes": dicom_bytes,
               "rounds": times, "median_seconds": med, "images_per_second": ips,
               "per_image_ms": per_image, "per_image_median_ms": pi,
               "ray_init_seconds": ray_start, "ray_task_ms": ray_task_ms,
               "dask_task_ms": dask_ms, "shards": shards}
    write_results("cluster_scaling", payload, "\n".join(md))


if __name__ == "__main__":
    main()
