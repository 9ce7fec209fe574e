"""Fleets: `edgekit bench BUNDLE --target ward.yaml` benches every board in parallel, through
REAL OpenSSH servers on 127.0.0.1 (two "boards" of one kind, plus one whose host key is wrong:
it drops out, costing its rows only)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from edgekit.bench.protocol import Protocol
from edgekit.errors import ConfigError

pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")


@pytest.fixture(scope="module")
def second_sshd(sshd, tmp_path_factory):
    from sshd import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd2") / "server")
    yield server
    server.stop()


def _profile(server, tmp_path: Path, tag: str, **changes) -> Path:
    """The rpi4 profile reaching ``server`` (this machine stands in for the board); every
    board's profile is named rpi4-sshd, so they are one board kind."""
    from sshd import ssh_access

    from edgekit.targets import builtin_targets

    data = yaml.safe_load(builtin_targets()["rpi4"].read_text())
    data["name"] = "rpi4-sshd"
    workdir = tmp_path / f"device-{tag}"
    workdir.mkdir()
    data["access"] = ssh_access(server, workdir, **changes).model_dump(mode="json",
                                                                        exclude_none=True)
    path = tmp_path / f"rpi4-{tag}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_fleet_is_benched_in_parallel_and_grouped_per_kind(
        sshd, second_sshd, fp32_bundle, tmp_path, cli) -> None:
    _profile(sshd, tmp_path, "a")
    _profile(second_sshd, tmp_path, "b")
    _profile(sshd, tmp_path, "c", known_hosts=str(sshd.wrong_known_hosts))
    ward = tmp_path / "ward.yaml"
    ward.write_text("fleet: ward-7\nboards:\n"
                    "  - {name: bed-1, target: rpi4-a.yaml}\n"
                    "  - {name: bed-2, target: rpi4-b.yaml}\n"
                    "  - {name: bed-3, target: rpi4-c.yaml}\n")
    from edgekit.bench.fleet import bench_fleet

    proto = Protocol(warmup_iters=1, warmup_seconds=0.0, iters=5, min_seconds=2.0, trials=1)
    fleet = bench_fleet([fp32_bundle], ward, threads=[1], protocol=proto, predict=False,
                        out=tmp_path / "runs")
    s = json.loads((fleet.fleet_dir / "fleet.json").read_text())
    assert s == fleet.summary and s["fleet"] == "ward-7"
    by = {b["name"]: b for b in s["boards"]}
    assert by["bed-1"]["status"] == by["bed-2"]["status"] == "measured"
    assert by["bed-1"]["host"].endswith(f":{sshd.port}")
    assert by["bed-2"]["host"].endswith(f":{second_sshd.port}")
    # host keys are checked on every board: the wrong one drops out, with its reason
    assert by["bed-3"]["status"] == "dropped out" and "host key" in by["bed-3"]["error"].lower()
    assert sorted(fleet.runs) == ["bed-1", "bed-2"]
    # each board timed alone with the protocol, all boards at once: the runs overlap in time
    spans = []
    for name in ("bed-1", "bed-2"):
        res = fleet.runs[name].results
        assert res.measured_by == "ssh" and all(r.ok for r in res.rows)
        end = datetime.fromisoformat(res.created).timestamp()
        spans.append((end - float(res.seconds), end))
    assert max(a for a, _ in spans) < min(b for _, b in spans)
    (kind,) = s["kinds"]
    assert kind["kind"] == "rpi4-sshd" and kind["boards"] == ["bed-1", "bed-2", "bed-3"]
    (row,) = kind["rows"]
    assert row["artifact"] == f"{fp32_bundle.name}/onnxruntime-fp32" and row["threads"] == 1
    p50 = row["p50_ms"]
    assert sorted(p50) == ["bed-1", "bed-2"] and row["errors"] == {}
    assert row["spread"] == pytest.approx(max(p50.values()) / min(p50.values()), rel=1e-3)
    assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    md = (fleet.fleet_dir / "fleet.md").read_text()
    assert "## rpi4-sshd (3 boards)" in md and "dropped out" in md
    for name in ("bed-1", "bed-2"):
        assert (fleet.fleet_dir / by[name]["run"] / "results.json").is_file()
    assert not (fleet.fleet_dir / "bed-3").exists()  # no empty folder for the lost board

    # the CLI: a fleet whose only board drops out exits 1 and says so
    lost = tmp_path / "lost.yaml"
    lost.write_text("fleet: lost\nboards:\n  - {name: bed-3, target: rpi4-c.yaml}\n")
    res = cli("bench", fp32_bundle, "--target", lost, "--threads", "1", "--quick",
              "--no-predict", "--out", tmp_path / "runs", code=1)
    assert "no board of the fleet was measured" in res.stderr


def test_fleet_file_errors_name_the_board(fp32_bundle, tmp_path) -> None:
    from edgekit.bench.fleet import bench_fleet, is_fleet_file

    bad = tmp_path / "bad.yaml"
    cases = [
        ("fleet: w\nboards:\n  - {name: a, target: rpi4}\n  - {name: a, target: rpi5}\n",
         "given twice"),
        ("fleet: w\nboards:\n  - {name: a, target: nosuch}\n", "board a: Unknown target"),
        ("fleet: w\nboards:\n  - {name: a, target: x86-local}\n", "reached over SSH"),
        ("fleet: w\nboards:\n  - {name: a, target: rpi4, host: 'pi@-oProxyCommand=x'}\n",
         "boards.0.host"),
        ("fleet: w\nboards: []\n", "boards"),
    ]
    for text, match in cases:
        bad.write_text(text)
        assert is_fleet_file(bad)
        with pytest.raises(ConfigError, match=match):
            bench_fleet([fp32_bundle], bad, out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
    assert not is_fleet_file("rpi4")
