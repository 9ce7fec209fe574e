"""Sharded evaluation on a REAL local Ray cluster (head + 2 worker nodes on 127.0.0.1):
the merged logits equal the single-machine runner's exactly, also when a worker process is
killed mid-run, and the metrics of a sharded bench equal those of a plain one."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="pip install 'edgekit[cluster]'")
pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")

from edgekit.bench.cluster import DELAY_ENV, MARKS_ENV, ClusterEvaluator, plan_shards  # noqa: E402
from edgekit.bench.local import LocalExecutor  # noqa: E402
from edgekit.bench.protocol import Protocol  # noqa: E402

ART = "onnxruntime-fp32"


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node with no CPU (it schedules nothing) and two 1-CPU worker nodes, each its own
    raylet and worker processes; the tests connect to it by address, as a user would."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 80 * 2**20, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def images(mri_phantoms: Path) -> list[Path]:
    found = sorted(mri_phantoms.glob("*/*.jpg"))
    assert len(found) == 128
    return found


@pytest.fixture(scope="module")
def single(fp32_bundle: Path, images: list[Path]) -> np.ndarray:
    """What `edgekit bench` computes without --cluster: the runner in one subprocess."""
    return LocalExecutor().logits(fp32_bundle, ART, images)


def test_shards_cover_every_image_once() -> None:
    for n, cpus, size in [(128, 2, None), (7, 16, None), (1000, 3, 333), (1, 1, 5)]:
        shards = plan_shards(n, cpus, size)
        assert [i for s in shards for i in s] == list(range(n))
    assert len(plan_shards(128, 2)) == 8  # about 4 shards per CPU, >= 8 images each


def test_sharded_logits_equal_single_machine_even_when_a_worker_is_killed(
        ray_cluster, fp32_bundle: Path, images: list[Path], single: np.ndarray,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv(DELAY_ENV, "0.6")  # each shard sleeps before it classifies
    monkeypatch.setenv(MARKS_ENV, str(marks))
    killed: list[tuple[int, int]] = []

    def kill_first_worker() -> None:  # SIGKILL the worker running the first shard to start
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = sorted(marks.iterdir(), key=lambda p: p.stat().st_mtime_ns)
            if found:
                index, pid = map(int, found[0].name.split("."))
                os.kill(pid, signal.SIGKILL)
                killed.append((index, pid))
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    with ClusterEvaluator(ray_cluster.address, shard_size=16) as ev:
        assert ev.info.nodes == 3 and ev.info.cpus == 2
        sharded = ev.logits(fp32_bundle, ART, images)
    killer.join()
    assert killed, "no shard started"
    index, pid = killed[0]
    runs = [p.name for p in marks.iterdir() if p.name.startswith(f"{index}.")]
    assert len(runs) >= 2 and f"{index}.{pid}" in runs  # the killed shard ran again elsewhere
    assert sharded.dtype == single.dtype and sharded.shape == (len(images), 4)
    assert np.array_equal(sharded, single)  # no image lost, none counted twice, same bits
    assert ev.info.shards == {f"{fp32_bundle.name}/{ART}": 8}


def test_sharded_bench_has_the_single_machine_metrics(ray_cluster, fp32_bundle: Path,
                                                      mri_copy: Path, tmp_path: Path) -> None:
    """The same images kept (the readability check runs on the cluster too: one corrupt file
    skipped by both), the same accuracy, CIs included."""
    from edgekit.bench import bench

    broken = sorted(mri_copy.glob("glioma/*.jpg"))[5]
    broken.write_bytes(b"not a jpeg")
    proto = Protocol(warmup_iters=1, warmup_seconds=0.0, iters=2, min_seconds=0.0, trials=1)
    common = dict(data=mri_copy, threads=[1], protocol=proto, source=False, predict=False)
    with pytest.warns(UserWarning, match=broken.name):
        plain = bench([fp32_bundle], out=tmp_path / "plain", **common).results
    with pytest.warns(UserWarning, match=broken.name):
        sharded = bench([fp32_bundle], out=tmp_path / "sharded", cluster=ray_cluster.address,
                        shard_size=20, **common).results
    assert plain.data.skipped == sharded.data.skipped == [str(broken)]
    assert plain.data.n == sharded.data.n == 127
    acc = {a.id: a.accuracy for a in plain.artifacts}
    assert acc and all(v is not None for v in acc.values())
    assert {a.id: a.accuracy for a in sharded.artifacts} == acc  # CIs included, bit for bit
    info = sharded.cluster
    assert info["engine"] == "ray" and info["cpus"] == 2 and info["shard_size"] == 20
    # 127 images: 7 shards of 20; the source model's outputs in 2 tasks of 64-image batches
    assert info["shards"] == {f"{fp32_bundle.name}/{ART}": 7, f"{fp32_bundle.name}/source": 2}
    assert plain.cluster is None and "cluster" not in plain.to_dict()


def test_the_source_reference_on_the_cluster_equals_the_driver_s(
        ray_cluster, fp32_bundle: Path, images: list[Path]) -> None:
    """The source model's outputs (the reference every artifact is held to) computed by Ray
    workers, 64-image batches as on the driver: the same bits."""
    from edgekit.bench.run import BundleInfo, EvalSet, _load_source, _source_logits
    from edgekit.bundle import load_manifest

    info = BundleInfo(fp32_bundle, load_manifest(fp32_bundle))
    _load_source(info)
    assert info.source is not None, info.source_note
    ev = EvalSet(fp32_bundle, images[:100], np.zeros(100), "multiclass", ())
    here = _source_logits(info, ev)
    with ClusterEvaluator(ray_cluster.address) as cluster:
        there = _source_logits(info, ev, cluster=cluster)
        assert cluster.info.shards == {f"{fp32_bundle.name}/source": 2}
    assert there.shape == (100, 4) and np.array_equal(here, there)


def test_cluster_usage_errors_exit_2(cli, fp32_bundle: Path, mri_phantoms: Path,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ("--data", mri_phantoms, "--out", tmp_path, "--no-source", "--no-predict")
    res = cli("bench", fp32_bundle, *common, "--cluster", f"127.0.0.1:{port}", code=2)
    assert f"--cluster 127.0.0.1:{port}: nothing answers there" in res.stderr
    res = cli("bench", fp32_bundle, *common, "--cluster", "ray://nowhere", code=2)
    assert "ray://HOST:PORT" in res.stderr
    res = cli("bench", fp32_bundle, "--out", tmp_path, "--cluster", "auto", code=2)
    assert "--cluster shards the evaluation images: give --data" in res.stderr
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if not installed
    res = cli("bench", fp32_bundle, *common, "--cluster", "auto", code=2)
    assert "pip install 'edgekit[cluster]'" in res.stderr
    assert not any(tmp_path.iterdir())  # nothing measured, nothing written


def test_the_device_runner_never_imports_ray() -> None:
    import subprocess
    import sys

    code = ("import sys, edgekit.runner, edgekit.bench.run; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_rescue_trials_on_ray_choose_what_the_sequential_search_chooses(ray_cluster) -> None:
    """``choose_candidate(map_trials=ClusterEvaluator.map)``: every trial a Ray task, the same
    attempts, choice and stop reason as one trial at a time — for a search that keeps a
    remedy on, one that stalls, one that looks past a slow passing candidate and one whose
    trial fails (the failure surfaces where the sequential search meets it)."""
    from types import SimpleNamespace

    from edgekit.quantize.rescue import Score, choose_candidate
    from edgekit.quantize.sensitivity import LayerError

    rows = [LayerError(n, "Conv", 1.0, 1.0 - i / 10) for i, n in enumerate("abcdefgh")]
    remedies = [("full bias correction", {"fast_bias_correction": False}),
                ("per-tensor", {"per_channel": False})]

    def search(table: dict, p50: dict | None, map_trials=None, fail_at: int | None = None):
        def export(keep, index, overrides):  # a real process on a worker: its pid differs
            if index == fail_at:
                raise RuntimeError(f"export {index} failed")
            return SimpleNamespace(keep=keep, overrides=dict(overrides), pid=os.getpid(),
                                   quantization={"quantized_ops": 8 - len(keep)})

        def score(art):
            agree, kl = table[(len(art.keep), tuple(sorted(art.overrides)))]
            return Score(agree, 0.0, kl)

        timer = None if p50 is None else (lambda art: p50[len(art.keep)])
        return choose_candidate(export, score, rows, Score(0.90, 0.0, 1.0), max_attempts=6,
                                min_agreement=0.97, timer=timer, baseline_p50_ms=1.0,
                                remedies=remedies, map_trials=map_trials)

    fbc, pt, none = ("fast_bias_correction",), ("per_channel",), ()
    helps = {(0, fbc): (0.92, 0.6), (0, pt): (0.90, 1.2), (1, fbc): (0.95, 0.5),
             (2, fbc): (0.98, 0.3), (4, fbc): (0.99, 0.2), (7, fbc): (0.99, 0.1)}
    stalls = {(0, fbc): (0.90, 1.5), (0, pt): (0.89, 1.1), **{(k, none): (0.90, 1.0)
                                                              for k in (1, 2, 4, 7)}}
    slow = {**helps, (2, fbc): (0.98, 0.3)}
    cases = [(helps, None, None), (stalls, None, None),
             (slow, {0: 1.0, 1: 1.0, 2: 1.5, 4: 1.05, 7: 2.0}, None), (helps, None, 3)]
    with ClusterEvaluator(ray_cluster.address) as ev:
        for table, p50, fail_at in cases:
            if fail_at is not None:
                with pytest.raises(RuntimeError, match="export 3 failed"):
                    search(table, p50, fail_at=fail_at)
                with pytest.raises(RuntimeError, match="export 3 failed"):
                    search(table, p50, ev.map, fail_at=fail_at)
                continue
            one, many = search(table, p50), search(table, p50, ev.map)
            strip = [(a.keep_float, a.options, a.agreement, a.kl, a.passed, a.p50_ms)
                     for a in one.attempts]
            assert strip == [(a.keep_float, a.options, a.agreement, a.kl, a.passed, a.p50_ms)
                             for a in many.attempts]
            assert (one.chosen, one.stopped) == (many.chosen, many.stopped)
            assert [(a.keep, a.overrides) for a in one.artifacts] == \
                [(a.keep, a.overrides) for a in many.artifacts]
            assert {a.pid for a in one.artifacts} == {os.getpid()}
            assert os.getpid() not in {a.pid for a in many.artifacts}  # ran on the workers
