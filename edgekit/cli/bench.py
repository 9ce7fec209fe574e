"""``edgekit bench BUNDLE... --target x86-local --data DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit import ui
from edgekit.backends import backend_names
from edgekit.bench.fleet import bench_fleet, is_fleet_file
from edgekit.bench.run import BenchOptions, bench
from edgekit.cli.display import print_summary, report_of
from edgekit.errors import EdgekitError
from edgekit.ui import status


def parse_runtime_options(values: tuple[str, ...]) -> dict[str, dict[str, str]] | None:
    """``BACKEND:KEY=VALUE`` strings as ``{backend: {key: value}}`` (None when there are none);
    a malformed one or an unknown backend is a usage error."""
    out: dict[str, dict[str, str]] = {}
    for value in values:
        backend, sep, setting = (part.strip() for part in value.partition(":"))
        key, eq, val = (part.strip() for part in setting.partition("="))
        if not (sep and eq and backend and key):
            raise click.BadParameter(f"{value!r} is not BACKEND:KEY=VALUE (e.g. "
                                     "onnxruntime:session.intra_op.allow_spinning=0)",
                                     param_hint="--runtime-option")
        if backend not in backend_names():
            raise click.BadParameter(f"unknown backend {backend!r} in {value!r}; "
                                     f"use one of {', '.join(backend_names())}",
                                     param_hint="--runtime-option")
        out.setdefault(backend, {})[key] = val
    return out or None


@click.command("bench")
@click.argument("bundles", nargs=-1, required=True,
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", default="x86-local", show_default=True,
              help="Built-in target (see `edgekit targets list`), a target YAML file, or a "
                   "fleet YAML file (boards: [...]) whose boards are all benched in parallel.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Labelled evaluation images (class folders; CT: DICOM + labels.csv) the "
                   "model never trained on. Without it, accuracy is the bundle's own "
                   "compress-time verification.")
@click.option("--held-out", is_flag=True,
              help="Evaluate on the validation split recorded in the source checkpoint by "
                   "`edgekit train` (images it never trained on); --data then only moves the "
                   "dataset root.")
@click.option("--threads", "threads", multiple=True, type=click.IntRange(1, 1024),
              help="Thread count to measure (repeatable) [default: the target's, on x86-local "
                   "1 and all cores].")
@click.option("--quick", is_flag=True,
              help="A few iterations instead of the full protocol (smoke tests; labelled).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to create the run folder in [default: BUNDLE/bench].")
@click.option("--no-source", is_flag=True,
              help="Do not time the PyTorch source model next to the artifacts.")
@click.option("--max-images", type=click.IntRange(1, 10_000_000), default=None,
              help="Evaluate on at most this many images (stratified, seeded).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for image sampling and bootstrap confidence intervals.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              show_default=True, help="Corrupt or non-image files: skip with a warning, or fail.")
@click.option("--pin", default=None, metavar="CPUS",
              help="Pin every measurement to these CPU ids, e.g. 0,1 [default: the target's].")
@click.option("--host", default=None, metavar="USER@HOST[:PORT]",
              help="Measure on this board over SSH (SSH targets such as rpi4), overriding the "
                   "profile's address. Uses your OpenSSH: ~/.ssh/config, agents and jump hosts "
                   "apply; host keys are always checked.")
@click.option("--emulate", is_flag=True,
              help="Also run every artifact under QEMU on the target's ARM CPU and check its "
                   "outputs against this machine's (aarch64 targets; needs `edgekit targets "
                   "prepare-emulation` once). Emulated timings are never reported.")
@click.option("--emulate-images", type=click.IntRange(1, 1000), default=16, show_default=True,
              help="Images for the emulated parity check (evaluation images, else phantoms).")
@click.option("--no-predict", is_flag=True,
              help="Do not add the latency model's predicted latencies to the report.")
@click.option("--cluster", default=None, metavar="auto|ray://HOST:PORT|HOST:PORT",
              help="Classify the --data images on a Ray cluster, in shards (needs "
                   "pip install 'edgekit[cluster]'): 'auto' starts a local Ray for the run. "
                   "Every node must see the bundle and the images under the same paths. "
                   "Metrics are computed once on the merged outputs: the same numbers as "
                   "without --cluster.")
@click.option("--shard-size", type=click.IntRange(1, 10_000_000), default=None,
              help="Images per Ray task with --cluster [default: about 4 shards per CPU, "
                   "8 to 2048 images each].")
@click.option("--runtime-option", "runtime_option", multiple=True,
              metavar="BACKEND:KEY=VALUE",
              help="A runtime setting added to the target's (repeatable), passed when each "
                   "artifact of that backend is opened, e.g. "
                   "onnxruntime:session.intra_op.allow_spinning=0 or "
                   "openvino:PERFORMANCE_HINT=THROUGHPUT. Recorded with the run's target.")
@click.option("--json", "as_json", is_flag=True,
              help="Print report.json (results + recommendation) on stdout.")
def command(bundles: tuple[Path, ...], target: str, data: Path | None,
            threads: tuple[int, ...], quick: bool, out: Path | None, no_source: bool,
            max_images: int | None, seed: int, on_error: str, pin: str | None,
            held_out: bool, host: str | None, emulate: bool, emulate_images: int,
            no_predict: bool, cluster: str | None, shard_size: int | None,
            runtime_option: tuple[str, ...], as_json: bool) -> None:
    """Measure latency (and, with --data, accuracy) of every artifact in BUNDLES on a target,
    then write a report and recommend the artifact to ship.

    Each (artifact, threads) is timed in a fresh runner process: warm-up >= 10 calls and 2 s,
    then 3 trials of >= 100 calls and 10 s around the inference call only (p50/p90/p99).
    On an SSH target (rpi4, rpi5, ...) the bundle and a one-file runner are copied to the board,
    checked by sha256 there, and timed with the same protocol (pinned with taskset; throttled
    runs are marked invalid). With no reachable board, the report gives the latency model's
    predictions, labelled "predicted" with their expected error.
    Results go to a new run folder (BUNDLE/bench/<time>-<target>/: results.json, report.json,
    report.csv, report.md, pareto.png, report.html); earlier runs are never overwritten.

    \b
    Examples:
      edgekit bench model-int8/ --data Testing/
      edgekit bench model-int8/ --held-out        # the split edgekit train held out
      edgekit bench model-int8/ model-fp32/ --threads 2 --quick
      edgekit bench model-int8/ --target rpi4                  # predicted (no board)
      edgekit bench model-int8/ --target rpi4 --host pi@10.0.0.7
      edgekit bench model-int8/ --target rpi4 --emulate        # + ARM output parity
      edgekit bench model-int8/ --data Testing/ --cluster auto # shards on a local Ray
      edgekit bench model-int8/ --target ward.yaml             # every board of a fleet
    """
    try:
        cpus = [int(c) for c in pin.split(",")] if pin else None
    except ValueError:
        raise click.BadParameter(f"{pin!r} is not a comma-separated list of CPU ids",
                                 param_hint="--pin") from None

    options = BenchOptions(target=target, data=data, threads=list(threads) or None,
                           quick=quick, out=out, source=not no_source, max_images=max_images,
                           seed=seed, on_error=on_error, pin=cpus, held_out=held_out,
                           host=host, emulate=emulate, emulate_images=emulate_images,
                           predict=not no_predict, cluster=cluster, shard_size=shard_size,
                           runtime_options=parse_runtime_options(runtime_option))
    if is_fleet_file(target):
        fleet = bench_fleet(list(bundles), target, options)
        if as_json:
            click.echo(json.dumps(fleet.summary, indent=1))
        else:
            ui.out.print((fleet.fleet_dir / "fleet.md").read_text(), markup=False)
            status(f"Fleet folder: {fleet.fleet_dir} (fleet.md; one run folder per board)")
        if not fleet.runs or all(b["status"] != "measured" for b in fleet.summary["boards"]):
            raise EdgekitError(f"no board of the fleet was measured (see {fleet.fleet_dir})")
        return
    run = bench(list(bundles), options)  # SIGTERM behaves like Ctrl-C (edgekit.interrupts)
    report = report_of(run)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    print_summary(report)
    status(f"Run folder: {run.run_dir} (open {run.run_dir / 'report.html'})")
