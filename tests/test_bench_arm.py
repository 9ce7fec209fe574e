"""`edgekit bench --target rpi4`: what is measured, emulated and predicted when the target is an
ARM board — with no board (predicted, labelled), through a real local sshd (`--host`), and under
QEMU (`--emulate`). Real bundles, real runtimes, quick protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgekit.bench.protocol import Protocol
from edgekit.errors import ConfigError

pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")

QUICK = Protocol.quick_protocol()


def _unreachable_rpi4(tmp_path: Path) -> Path:
    """The rpi4 profile pointing at a closed port on this machine (no board there)."""
    from edgekit.targets import builtin_targets

    data = yaml.safe_load(builtin_targets()["rpi4"].read_text())
    data["name"] = "rpi4-offline"
    data["access"] = {"kind": "ssh", "host": "127.0.0.1", "user": "pi", "port": 9}
    path = tmp_path / "rpi4-offline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_no_board_gives_labelled_predictions_only(bundle, tmp_path) -> None:
    from edgekit.bench.run import bench

    run = bench([bundle], target=_unreachable_rpi4(tmp_path), quick=True, out=tmp_path / "runs")
    res = run.results.to_dict()
    assert res["measured_by"] is None and res["rows"] == []
    assert any("nothing was measured" in n for n in res["notes"])
    pred = res["predicted"]
    assert pred["label"] == "predicted"
    ok = [r for r in pred["rows"] if "p50_ms" in r]
    names = {a["name"] for a in json.loads((bundle / "manifest.json").read_text())["artifacts"]}
    # every artifact is predicted, except OpenVINO INT8, which cannot run on the Cortex-A72
    # (its ARM plugin asks for fp16 kernels): an error row that says so, not a number
    assert {r["artifact"].split("/", 1)[1] for r in ok} == names - {"openvino-int8"}
    errors = [r for r in pred["rows"] if "error" in r]
    assert {r["artifact"].split("/", 1)[1] for r in errors} == {"openvino-int8"}
    assert all("OpenVINO" in r["error"] and "fp16" in r["error"] for r in errors)
    assert {r["threads"] for r in ok} == {1, 4}                   # the profile's thread counts
    for r in ok:
        assert r["label"] == "predicted" and r["basis"] and 0 < r["rel_err"] < 2
        assert r["low_ms"] < r["p50_ms"] < r["high_ms"]
    # 4 threads never predicted slower than 1 for the same artifact
    by = {(r["artifact"], r["threads"]): r["p50_ms"] for r in ok}
    for (art, t), ms in by.items():
        if t == 4:
            assert ms <= by[(art, 1)] * 1.001
    md = (run.run_dir / "report.md").read_text()
    assert "predicted" in md
    rec = json.loads((run.run_dir / "report.json").read_text())["recommendation"]
    assert rec.get("basis") == "predicted" and "predicted" in rec["text"]


def test_explicit_host_that_is_down_is_an_error(bundle, tmp_path) -> None:
    from edgekit.bench.run import bench
    from edgekit.bench.ssh import DeviceError

    with pytest.raises(DeviceError):
        bench([bundle], target="rpi4", host="pi@127.0.0.1:9", quick=True, out=tmp_path)
    assert not any((tmp_path).iterdir())  # no half-written run folder


def test_host_and_emulate_need_the_right_kind_of_target(bundle, tmp_path, cli) -> None:
    from edgekit.bench.run import bench

    with pytest.raises(ConfigError, match="--host is for SSH targets"):
        bench([bundle], target="x86-local", host="pi@10.0.0.1", quick=True, out=tmp_path)
    with pytest.raises(ConfigError, match="--emulate checks aarch64"):
        bench([bundle], target="x86-local", emulate=True, quick=True, out=tmp_path)
    res = cli("bench", str(bundle), "--host", "pi@10.0.0.1", code=2)
    assert "--host is for SSH targets" in res.output


def _rpi4_via(server, workdir: Path, tmp_path: Path, **changes) -> Path:
    """The rpi4 profile reaching the test sshd (this machine stands in for the board)."""
    from sshd import ssh_access

    from edgekit.targets import builtin_targets

    data = yaml.safe_load(builtin_targets()["rpi4"].read_text())
    data["name"] = "rpi4-sshd"
    data["access"] = ssh_access(server, workdir, **changes).model_dump(mode="json",
                                                                        exclude_none=True)
    path = tmp_path / "rpi4-sshd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bench_through_sshd_measures_on_the_device(bundle, mri_phantoms, sshd, tmp_path) -> None:
    """bench --target (an SSH profile) end to end: preflight, upload, sha256 on the device,
    timing and classification there, predictions beside the measurements, nothing left behind."""
    from edgekit.bench.run import bench

    workdir = tmp_path / "device"
    workdir.mkdir()
    run = bench([bundle], target=_rpi4_via(sshd, workdir, tmp_path), data=mri_phantoms,
                max_images=24, threads=[1], quick=True, out=tmp_path / "runs")
    res = run.results.to_dict()
    assert res["measured_by"] == "ssh"
    assert res["environment"]["host"].endswith(f":{sshd.port}")
    arts = [a for a in res["artifacts"] if a["kind"] == "artifact"]
    assert not any(a["kind"] == "source" and a.get("timed", True) for a in res["artifacts"])
    assert {r["artifact"] for r in res["rows"]} == {a["id"] for a in arts}
    for row in res["rows"]:
        assert row.get("error") is None, row
        assert row["latency_ms"]["p50"] > 0 and row["valid"] is True
        assert "thermal" in row
    for a in arts:  # scored from logits the device computed, against the local source model
        assert a["accuracy_source"] == "bench" and a["accuracy"]["n"] == 24
    assert {r["threads"] for r in res["predicted"]["rows"]} == {1}
    assert list(workdir.iterdir()) == []  # the run folder on the device is gone


@pytest.mark.slow
def test_emulate_checks_every_artifact_on_the_boards_cpu(bundle, tmp_path) -> None:
    """--emulate: every artifact under QEMU cortex-a72 against the same artifact here; no
    emulated timing anywhere in the results."""
    from edgekit.bench.emulated import prepared
    from edgekit.bench.run import bench

    if prepared() is None:
        pytest.skip("emulation environment not prepared: run `edgekit targets "
                    "prepare-emulation` (scripts/setup.sh does)")
    run = bench([bundle], target=_unreachable_rpi4(tmp_path), emulate=True, emulate_images=4,
                quick=True, out=tmp_path / "runs")
    emu = run.results.to_dict()["emulated"]
    assert emu["qemu_cpu"] == "cortex-a72" and emu["images"] == 4
    rows = {r["artifact"].split("/", 1)[1]: r for r in emu["rows"]}
    assert set(rows) == {"onnxruntime-int8", "openvino-int8", "litert-int8"}
    for name in ("onnxruntime-int8", "litert-int8"):
        assert rows[name]["status"] == "passed", rows[name]
    # OpenVINO's ARM plugin asks for fp16 kernels the Cortex-A72 lacks: a clear error row
    assert rows["openvino-int8"]["status"] in ("passed", "error")
    if rows["openvino-int8"]["status"] == "error":
        assert rows["openvino-int8"]["reason"]
    assert run.results.to_dict()["rows"] == []  # nothing timed under emulation
    rec = json.loads((run.run_dir / "report.json").read_text())["recommendation"]
    assert rec["artifact"] != f"{bundle.name}/openvino-int8" or \
        rows["openvino-int8"]["status"] == "passed"
    assert "Emulated parity" in (run.run_dir / "report.md").read_text()


def test_a_changed_host_key_is_an_error_not_a_fallback(bundle, sshd, tmp_path) -> None:
    """Only an unreachable board falls back to predictions: a host key that differs from
    known_hosts (possible interception) stops the run, even without --host."""
    from edgekit.bench.run import bench
    from edgekit.bench.ssh import DeviceError

    target = _rpi4_via(sshd, tmp_path, tmp_path, known_hosts=str(sshd.wrong_known_hosts))
    with pytest.raises(DeviceError, match="host key"):
        bench([bundle], target=target, quick=True, out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
