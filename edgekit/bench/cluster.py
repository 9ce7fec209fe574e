"""Sharded evaluation on a Ray cluster: ``edgekit bench BUNDLE --data DIR --cluster auto``.

The evaluation images are cut into shards (consecutive slices of the one ordered list every
artifact classifies); each shard is a Ray task that opens the artifact with the device runner
(:class:`edgekit.runner.Runner`, the same code ``python -m edgekit.runner --save-logits`` runs)
and returns ``(shard index, logits)``. The driver puts each answer in the slot of its shard
index and concatenates the slots in order, so the merged logits are the single-machine logits
row for row; metrics and bootstrap CIs are computed once, on the driver, from them
(``edgekit.bench.run``), hence equal bit for bit.

Faults: a task whose worker process or node dies is re-run by Ray (``max_retries``), and a
task that raised an ``OSError`` (a network file system hiccup) is retried too
(``retry_exceptions``); a bad image (``DataError``) is not retried — it fails the artifact, as
it does on one machine. A shard's answer is stored under its index exactly once (an object
reference resolves to one value), so a retried shard can neither be lost nor counted twice.

Ray is an optional extra (``pip install 'edgekit[cluster]'``) and is imported only inside the
functions below; the device runner never imports it. Every worker must see the bundle and the
images under the same paths as the driver (a shared file system: see ``docs/scale.md``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.executor import Executor, RunFailed
from edgekit.bundle import sha256_file
from edgekit.data.preprocess import PreprocessSpec, small_images_warning
from edgekit.errors import ConfigError, DataError, EdgekitError
from edgekit.runner import Runner
from edgekit.ui import progress_bar

__all__ = ["ClusterEvaluator", "parse_address", "plan_shards"]

INSTALL_HINT = "pip install 'edgekit[cluster]'"
MAX_RETRIES = 3  # re-runs of a shard whose worker died, or that raised an OSError
# test hooks (read on the driver, handed to every task): seconds each shard sleeps before it
# classifies, and a folder where each shard leaves "<index>.<pid>" when it starts
DELAY_ENV = "EDGEKIT_TEST_SHARD_DELAY"
MARKS_ENV = "EDGEKIT_TEST_SHARD_MARKS"


def parse_address(text: str) -> tuple[str, str | None]:
    """``--cluster`` → (kind, address): ``auto`` starts a local Ray for the run;
    ``ray://HOST:PORT`` is a Ray Client server (port 10001 by default on a head node);
    ``HOST:PORT`` is the head's GCS address (``ray start --head --port ...``)."""
    text = text.strip()
    if text == "auto":
        return "auto", None
    rest = text.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--cluster {text!r}: give 'auto' (a local Ray started for this run), "
                          "ray://HOST:PORT (a Ray Client server) or HOST:PORT (a head node's "
                          "GCS address)")
    return ("client" if text.startswith("ray://") else "gcs"), text


def plan_shards(n: int, cpus: int, shard_size: int | None = None) -> list[range]:
    """Consecutive index ranges covering ``range(n)``: ``shard_size`` images each, by default
    about four shards per CPU (so a slow or lost worker holds back a quarter of its share), at
    least 8 and at most 2048 images a shard."""
    if shard_size is None:
        shard_size = min(2048, max(8, math.ceil(n / max(1, 4 * cpus))))
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    return [range(i, min(n, i + shard_size)) for i in range(0, n, shard_size)]


# ------------------------------------------------------------------------------ on a worker
_RUNNERS: dict[tuple[str, str, str, str], Runner] = {}


def classify_shard(index: int, bundle: str, artifact: str, paths: list[str],
                   options: dict[str, Any] | None, manifest_sha: str,
                   hooks: dict[str, Any]) -> tuple[int, np.ndarray]:
    """One shard, on a Ray worker: (index, the runner's raw outputs for ``paths``).

    The opened artifact is kept per worker process (keyed by the manifest's sha256, so a
    changed bundle is opened afresh); one thread per task, as each task holds one CPU."""
    if hooks.get("marks"):
        Path(hooks["marks"], f"{index}.{os.getpid()}").touch()
    if hooks.get("delay"):
        time.sleep(float(hooks["delay"]))
    if not Path(bundle, "manifest.json").is_file():
        raise DataError(f"{bundle}: not found on the Ray worker {socket.gethostname()} (every "
                        "node must see the bundle and the images under the driver's paths)")
    key = (bundle, artifact, json.dumps(options, sort_keys=True), manifest_sha)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = _RUNNERS[key] = Runner(bundle, artifact, threads=1, options=options)
    return index, runner.outputs(paths)


def check_shard(index: int, paths: list[str], spec: PreprocessSpec,
                hooks: dict[str, Any]) -> tuple[int, list[tuple[int, str]], list[str]]:
    """One shard of the readability check, on a Ray worker: (index, [(position in the shard,
    why the image cannot be read)], images far below the input size) — what
    ``edgekit.calibrate.check_readable`` does on one machine."""
    bad: list[tuple[int, str]] = []
    small: list[Path] = []
    for i, p in enumerate(paths):
        try:
            spec.load(p, small)
        except DataError as exc:
            bad.append((i, str(exc)))
    return index, bad, [str(p) for p in small]


def call_one(index: int, fn: Callable[[Any], Any], item: Any) -> tuple[int, Any]:
    """One item of ``ClusterEvaluator.map``, on a Ray worker."""
    return index, fn(item)


# ------------------------------------------------------------------------------ the driver
@dataclass
class ClusterInfo:
    """What ``results.json`` records about a sharded run (``"cluster"``)."""

    engine: str = "ray"
    address: str = "auto"
    nodes: int = 0
    cpus: int = 0
    shard_size: int | None = None
    shards: dict[str, int] = field(default_factory=dict)  # artifact → shards it was cut into

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "address": self.address, "nodes": self.nodes,
                "cpus": self.cpus, "shard_size": self.shard_size, "shards": dict(self.shards)}


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def _answers(address: str, timeout: float = 5.0) -> None:
    """A clear ConfigError, fast, when nothing listens at HOST:PORT (``ray.init`` would retry
    for a minute before saying so)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--cluster {address}: nothing answers there ({exc}); start a head "
                          "node with `ray start --head` or use --cluster auto") from exc


class ClusterEvaluator(Executor):
    """Classifies evaluation images on a Ray cluster, shard by shard (``logits``); it times
    nothing (a cluster's latencies are not a device's). ``with ClusterEvaluator(...)``
    connects (a local Ray is started for ``auto``) and disconnects at the end; a Ray that was
    already initialised in this process (a notebook) is used and left running."""

    kind = "ray"

    def __init__(self, address: str = "auto", shard_size: int | None = None) -> None:
        self.mode, self.address = parse_address(address)
        self.label = "a local Ray" if self.mode == "auto" else f"the Ray cluster at {address}"
        self.shard_size = shard_size
        if shard_size is not None and shard_size < 1:
            raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
        self.info = ClusterInfo(address=address, shard_size=shard_size)
        self._ray: Any = None
        self._owned = False

    # -- connection
    def connect(self) -> ClusterEvaluator:
        if self._ray is not None:
            return self
        ray = _ray()
        if ray.is_initialized():
            self._ray = ray
        else:
            if self.address is not None:
                _answers(self.address)
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False,
                         **({"num_cpus": os.cpu_count()} if self.address is None else {}))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--cluster {self.info.address}: could not connect to Ray "
                                  f"({type(exc).__name__}: {exc})") from exc
            self._ray, self._owned = ray, True
        self.info.nodes = sum(1 for n in self._ray.nodes() if n.get("Alive"))
        self.info.cpus = int(self._ray.cluster_resources().get("CPU", 0))
        if self.info.cpus < 1:
            self.close()
            raise ConfigError(f"--cluster {self.info.address}: the cluster has no CPU to run "
                              "shards on")
        return self

    def close(self) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray, self._owned = None, False

    def __enter__(self) -> ClusterEvaluator:
        return self.connect()

    # -- the Executor contract
    def environment(self) -> dict[str, Any]:
        raise RunFailed("a Ray cluster classifies images; it is not a timing target")

    def time_artifact(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RunFailed("a Ray cluster classifies images; latencies are measured on the target")

    time_source = time_file = time_artifact

    def logits(self, bundle: Path, artifact: str, images: Sequence[Path],
               options: dict[str, Any] | None = None) -> np.ndarray:
        """The artifact's raw outputs for ``images`` (rows in order), shard by shard on the
        cluster; a RunFailed naming the shard when one fails for good."""
        paths = [str(p) for p in images]
        shards = self._plan(len(paths))
        self.info.shards[f"{Path(bundle).name}/{artifact}"] = len(shards)
        sha = sha256_file(Path(bundle) / "manifest.json")
        where = str(Path(bundle).resolve())
        answers = self._map(
            classify_shard,
            [(i, where, artifact, paths[s.start:s.stop], options, sha, self._hooks())
             for i, s in enumerate(shards)],
            shards, f"{Path(bundle).name}/{artifact}: {len(shards)} shards on "
                    f"{self.info.cpus} Ray CPUs")
        merged = np.concatenate([a for a in answers if a.size] or
                                [np.zeros((0, 0), np.float32)])
        if len(merged) != len(paths):
            raise RunFailed(f"the shards returned {len(merged)} rows for {len(paths)} images")
        return merged

    def check_readable(self, samples: list[Any], spec: PreprocessSpec, on_error: str,
                       what: str) -> tuple[list[Any], list[str]]:
        """``edgekit.calibrate.check_readable`` on the cluster: every image decoded once, in
        shards; the same kept samples (same order) and skipped paths, the same warnings."""
        paths = [str(s.path) for s in samples]
        shards = self._plan(len(paths))
        answers = self._map(check_shard, [(i, paths[s.start:s.stop], spec, self._hooks())
                                          for i, s in enumerate(shards)],
                            shards, f"Checking {len(paths)} {what} images on Ray")
        bad: dict[int, str] = {}
        small: list[Path] = []
        for shard, (found, tiny) in zip(shards, answers, strict=True):
            bad.update((shard.start + i, why) for i, why in found)
            small += [Path(p) for p in tiny]
        if bad and on_error == "fail":
            raise DataError(bad[min(bad)])
        for k in sorted(bad):
            warnings.warn(f"skipping {bad[k]}", stacklevel=2)
        kept = [s for k, s in enumerate(samples) if k not in bad]
        note = small_images_warning(small, len(kept), spec)
        if note:
            warnings.warn(f"{what} images: {note}", stacklevel=2)
        return kept, [paths[k] for k in sorted(bad)]

    def map(self, fn: Callable[[Any], Any], items: list[Any],
            description: str | None = None) -> list[Any]:
        """``[fn(item) for item in items]`` as Ray tasks (one CPU each, retried like shards),
        in item order: e.g. the INT8 rescue's trials (``edgekit.quantize.rescue``'s
        ``map_trials``). ``fn`` travels by value (cloudpickle) and runs on the workers."""
        self.connect()
        return self._map(call_one, [(i, fn, item) for i, item in enumerate(items)],
                         [range(i, i + 1) for i in range(len(items))],
                         description or f"{len(items)} tasks on Ray")

    def _plan(self, n: int) -> list[range]:
        self.connect()
        return plan_shards(n, self.info.cpus, self.shard_size)

    @staticmethod
    def _hooks() -> dict[str, Any]:
        return {"delay": os.environ.get(DELAY_ENV), "marks": os.environ.get(MARKS_ENV)}

    def _map(self, fn: Callable[..., tuple[Any, ...]], calls: list[tuple[Any, ...]],
             shards: list[range], description: str) -> list[Any]:
        """``fn(*call)`` for every call as Ray tasks (one CPU each, retried); the answers
        (without their leading shard index) in call order, each stored exactly once."""
        ray = self._ray
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES,
                          retry_exceptions=[OSError])(fn)
        pending = {task.remote(*call): i for i, call in enumerate(calls)}
        slots: list[Any] = [None] * len(calls)
        try:
            with progress_bar(description, len(calls)) as bar:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        i = pending.pop(ref)
                        index, *answer = self._get(ref, i, shards[i])
                        if index != i or slots[i] is not None:  # cannot happen: one value a ref
                            raise RunFailed(f"shard {i} answered twice or for shard {index}")
                        slots[i] = answer[0] if len(answer) == 1 else tuple(answer)
                        bar.advance()
        finally:
            for ref in pending:  # a failed shard or Ctrl-C: the rest are not wanted
                ray.cancel(ref, force=True)
        return slots

    def _get(self, ref: Any, i: int, shard: range) -> tuple[Any, ...]:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            text = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
            if isinstance(cause, EdgekitError):
                text = str(cause)
            raise RunFailed(f"shard {i} (images {shard.start}..{shard.stop - 1}): {text}") from exc
        except ray.exceptions.RayError as exc:  # worker or node lost more than MAX_RETRIES times
            raise RunFailed(f"shard {i} (images {shard.start}..{shard.stop - 1}) was lost "
                            f"{MAX_RETRIES + 1} times: {type(exc).__name__}") from exc
