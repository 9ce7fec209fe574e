"""The SSH executor, end to end against a REAL OpenSSH server on 127.0.0.1 (``tests/sshd.py``).

The "device" is this machine: its Python is this venv's (numpy, Pillow and all three runtimes),
reached through sshd with host-key checking on. Devices without a runtime, without numpy or with
a broken runtime are this Python behind a wrapper script that hides the package.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sshd import free_port, masters, ssh_access

from edgekit.bench.local import LocalExecutor, RunFailed
from edgekit.bench.protocol import (
    Protocol,
    ThermalSampler,
    merge_thermal,
    merge_trials,
    throttle_verdict,
    time_session,
)
from edgekit.bench.ssh import DeviceError, SshExecutor, format_host, parse_host
from edgekit.errors import ConfigError

QUICK = Protocol.quick_protocol()
ONNX = "onnxruntime-int8"


# ------------------------------------------------------------------------------ fixtures
access = ssh_access


@pytest.fixture(scope="module")
def device(sshd, tmp_path_factory):
    """One executor shared by the module's happy-path tests (pins to the device's last cores)."""
    workdir = tmp_path_factory.mktemp("device")
    with SshExecutor(access(sshd, workdir), pin=True) as ex:
        yield ex


def wrapper_python(folder: Path, sitecustomize: str = "", packages: dict | None = None) -> str:
    """A "device Python": this venv's interpreter behind a script that puts ``folder/site``
    first on PYTHONPATH (a ``sitecustomize`` and fake packages there)."""
    site = folder / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(sitecustomize)
    for name, code in (packages or {}).items():
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(code)
    script = folder / "python3"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}} "
                      f"exec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def _processes_in(folder: str) -> list[int]:
    """PIDs of processes working in ``folder`` (the runner's cwd; this machine is the device)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "cwd") == folder:
                    found.append(int(d.name))
            except OSError:
                continue
    return found


# --------------------------------------------------------------------------- no connection
@pytest.mark.parametrize("text, expected", [
    ("pi@raspberrypi.local", ("pi", "raspberrypi.local", None)),
    ("pi@10.0.0.7:2222", ("pi", "10.0.0.7", 2222)),
    ("board", (None, "board", None)),
    ("[::1]:2222", (None, "::1", 2222)),
    ("ubuntu@[fe80::1%eth0]", ("ubuntu", "fe80::1%eth0", None)),
    ("fe80::1", (None, "fe80::1", None)),
])
def test_parse_host(text, expected) -> None:
    assert parse_host(text) == expected
    user, host, port = expected
    assert parse_host(format_host(user, host, port)) == expected


@pytest.mark.parametrize("text", ["", "pi@", "pi@host:0", "pi@host:ssh", "-oProxyCommand=x",
                                  "a b@host", "[::1", "[::1]x", "pi@host:70000", "x@y@z;"])
def test_parse_host_rejects_bad_text(text) -> None:
    with pytest.raises(ConfigError) as err:
        parse_host(text)
    assert err.value.exit_code == 2


def test_options_that_could_bypass_host_key_checks_are_refused() -> None:
    from edgekit.targets import ssh_option_problem

    for bad in ("KnownHostsCommand=ssh-keyscan %H", "GlobalKnownHostsFile=/tmp/x",
                "HostKeyAlias=other", "ProxyCommand=nc %h %p", "PermitLocalCommand=yes",
                "LocalCommand=touch /tmp/x", "ControlPath=/tmp/s"):
        assert ssh_option_problem(bad), bad
    for good in ("ProxyJump=pi@bastion", "ServerAliveInterval=30", "StrictHostKeyChecking=yes"):
        assert ssh_option_problem(good) is None, good


def test_insecure_ssh_options_are_refused(tmp_path) -> None:
    from pydantic import ValidationError

    from edgekit.targets import SshAccess

    base = {"kind": "ssh", "host": "pi.local", "user": "pi"}
    assert SshAccess(**base, options=["ProxyJump=me@bastion"]).options == ["ProxyJump=me@bastion"]
    for bad in ("StrictHostKeyChecking=no", "StrictHostKeyChecking accept-new",
                "UserKnownHostsFile=/dev/null", "BatchMode=no", "nonsense"):
        with pytest.raises(ValidationError, match="refused|KEY=VALUE"):
            SshAccess(**base, options=[bad])
        with pytest.raises(ConfigError, match="refused|KEY=VALUE"):
            SshExecutor(host="pi@pi.local", ssh_options=[bad])
    with pytest.raises(ValidationError, match="not a valid SSH host"):
        SshAccess(**{**base, "host": "-oProxyCommand=touch /tmp/x"})
    with pytest.raises(ConfigError, match="key .* not found"):
        SshExecutor(SshAccess(**base, key=str(tmp_path / "missing")))


def test_executor_for_a_target_and_a_host_override() -> None:
    from edgekit.targets import load_target

    rpi4 = load_target("rpi4")
    ex = SshExecutor.for_target(rpi4)
    # no port in the profile: ssh's own config (else 22) decides, so no -p is passed
    assert (ex.user, ex.host, ex.port, ex.label) == ("pi", "raspberrypi.local", None,
                                                      "pi@raspberrypi.local")
    assert "-p" not in ex.connection.args()
    ex = SshExecutor.for_target(rpi4, host="[fd00::7]:2200")
    assert (ex.user, ex.host, ex.port, ex.label) == ("pi", "fd00::7", 2200, "pi@[fd00::7]:2200")
    assert ex.pin == rpi4.pin and ex.workdir == rpi4.access.workdir
    local = load_target("x86-local")
    with pytest.raises(ConfigError, match="give --host"):
        SshExecutor.for_target(local)
    assert SshExecutor.for_target(local, host="me@box").label == "me@box"


def test_the_source_is_not_timed_on_a_device() -> None:
    with pytest.raises(RunFailed, match="not timed on an SSH device"):
        SshExecutor(host="pi@pi.local").time_source("m.pt", [1, 3, 64, 64], 1, QUICK)


# ----------------------------------------------------------------------- thermal validity
def test_throttle_verdict_follows_vcgencmd_bits() -> None:
    assert throttle_verdict(None, None) is None  # no vcgencmd: valid, nothing to judge
    assert throttle_verdict("throttled=0x0", "throttled=0x0") is None
    assert throttle_verdict("throttled=0x50000", "throttled=0x50000") is None  # long ago
    assert "throttled while timing" in throttle_verdict("throttled=0x0", "throttled=0x20002")
    assert "soft temperature" in throttle_verdict("throttled=0x8", "throttled=0x0")
    reason = throttle_verdict("throttled=0x0", "throttled=0x50000")
    assert "during the run" in reason and "under-voltage" in reason


def test_sampler_records_and_rows_carry_thermal_keys(monkeypatch) -> None:
    from edgekit.bench import hostinfo

    states = iter(["throttled=0x0", "throttled=0x20002"])
    monkeypatch.setattr(hostinfo, "throttled", lambda: next(states))
    monkeypatch.setattr(hostinfo, "temperature_c", lambda: 71.5)
    with ThermalSampler(interval=0.01) as sampler:
        time.sleep(0.1)
    r = sampler.result()
    assert r["valid"] is False and "ARM frequency capped" in r["invalid_reason"]
    th = r["thermal"]
    assert th["temp_c_min"] == th["temp_c_max"] == 71.5 and th["samples"] >= 3
    assert (th["throttled_before"], th["throttled_after"]) == ("throttled=0x0",
                                                               "throttled=0x20002")

    monkeypatch.setattr(hostinfo, "throttled", lambda: None)

    class Session:
        def run(self, x):
            return np.zeros((1, 4), np.float32)

    row = time_session(Session, [1, 3, 8, 8], backend="onnxruntime", threads=1,
                       protocol=QUICK)
    assert row["valid"] is True and row["invalid_reason"] is None
    assert set(row["thermal"]) >= {"temp_c_min", "temp_c_max", "freq_mhz_min", "freq_mhz_max",
                                   "samples", "throttled_before", "throttled_after"}
    bad = {**row, "valid": False, "invalid_reason": "throttled while timing"}
    merged = merge_trials([row, bad])
    assert merged["valid"] is False and merged["invalid_reason"] == "throttled while timing"
    assert merged["thermal"]["samples"] == 2 * row["thermal"]["samples"]
    assert merge_thermal([row])["valid"] is True


# ------------------------------------------------------------------------ through sshd
def test_preflight_reports_the_device(device) -> None:
    from edgekit.bench import hostinfo
    from edgekit.bench.protocol import environment

    t0 = time.perf_counter()
    facts = device.preflight()
    here = hostinfo.cpu_info()
    assert facts["arch"] == platform.machine() and facts["cores"] == len(os.sched_getaffinity(0))
    assert facts["features"] == here["features"] and facts["cpu"]["model"] == here["model"]
    assert facts["python"] == platform.python_version()
    assert facts["python_path"] == sys.executable
    for name in ("numpy", "Pillow", "onnxruntime", "openvino", "ai-edge-litert"):
        assert facts["packages"][name], name
    assert facts["taskset"] is True and facts["vcgencmd"] is False
    assert {"governor", "freq_mhz", "temperature_c", "throttled"} <= set(facts)
    env = device.environment()
    assert set(env) == set(environment()) | {"host"}
    assert env["host"] == device.label and env["host"].endswith(f":{device.port}")
    assert device.preflight() is facts and time.perf_counter() - t0 < 30


def test_time_artifact_over_ssh(device, bundle) -> None:
    row = device.time_artifact(bundle, ONNX, 1, QUICK)
    local = LocalExecutor().time_artifact(bundle, ONNX, 1, QUICK)
    assert set(row) == set(local)
    assert row["artifact"] == ONNX and row["error"] is None and row["threads"] == 1
    lat = row["latency_ms"]
    assert lat["n"] >= QUICK.iters * QUICK.trials and 0 < lat["p50"] <= lat["p99"]
    assert row["runtime"]["name"] == "onnxruntime" and row["runtime"]["threads"] == 1
    assert row["valid"] is True and row["thermal"]["samples"] >= 2
    assert row["environment"]["host"] == device.label
    cores = device.preflight()["cores"]
    assert row["protocol"]["pin"] == [cores - 1]  # pin=True: the last core for one thread
    remote = Path(device.files.path)
    assert (remote / "edgekit-runner.pyz").is_file()
    assert not list((remote / "pids").iterdir())  # the PID file goes with the run


def test_logits_over_ssh_equal_local_runner_logits(device, bundle, mri_phantoms) -> None:
    images = sorted(mri_phantoms.rglob("*.jpg"))[::16]
    remote = device.logits(bundle, ONNX, images)
    local = LocalExecutor().logits(bundle, ONNX, images)
    assert remote.shape == (len(images), 4)
    np.testing.assert_array_equal(remote, local)
    # the images stay for the next artifact (close() removes the run folder); each call's
    # logits file is removed
    assert not list(Path(device.files.path).glob("inputs-*/logits-*.npy"))


def test_each_bundle_is_uploaded_once(device, bundle, monkeypatch) -> None:
    first = device.upload(bundle)
    monkeypatch.setattr(device.files, "send", lambda members: pytest.fail("uploaded again"))
    assert device.upload(bundle) == first


@pytest.mark.parametrize("victim", ["artifacts/onnxruntime/model-int8.onnx",
                                    "edgekit-runner.pyz"])
def test_a_changed_copy_on_the_device_is_detected(sshd, bundle, tmp_path, monkeypatch,
                                                  victim) -> None:
    """The copy is altered on the device between the transfer and the check: the sha256
    computed there must disagree with the local one."""
    ex = SshExecutor(access(sshd, tmp_path / "device"))
    send = ex.files.send

    def send_then_tamper(members):
        send(members)
        path = Path(ex.files.path) / (victim if victim.endswith(".pyz")
                                    else f"bundles/0-{bundle.name}/{victim}")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    monkeypatch.setattr(ex.files, "send", send_then_tamper)
    with ex, pytest.raises(DeviceError, match="differ from the local") as err:
        ex.upload(bundle)
    assert Path(victim).name in str(err.value) and "sha256" in str(err.value)


def test_close_removes_the_run_folder_and_the_connection(sshd, bundle, tmp_path) -> None:
    ex = SshExecutor(access(sshd, tmp_path / "device"))
    ex.upload(bundle)
    run, tmp = Path(ex.files.path), Path(ex.connection.tmp)
    assert run.is_dir() and (tmp / "cm").exists()
    assert len(masters(str(tmp))) == 1  # one shared connection
    ex.close()
    assert not run.exists() and list((tmp_path / "device").iterdir()) == []
    assert not tmp.exists()  # control socket and runner zip gone
    deadline = time.monotonic() + 5
    while masters(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert masters(str(tmp)) == []  # the master has exited
    ex.close()  # idempotent


def test_a_timeout_stops_the_runner_on_the_device(sshd, bundle, tmp_path) -> None:
    import threading

    slow = Protocol(warmup_iters=1, warmup_seconds=120, iters=1, min_seconds=0, trials=1)
    with SshExecutor(access(sshd, tmp_path / "device"), timeout=5) as ex:
        ex.upload(bundle)
        seen: list[int] = []
        watch = threading.Timer(3.5, lambda: seen.extend(_processes_in(ex.files.path)))
        watch.start()
        t0 = time.perf_counter()
        with pytest.raises(RunFailed, match="timed out"):
            ex.time_artifact(bundle, ONNX, 1, slow)
        watch.join()
        assert time.perf_counter() - t0 < 20
        assert seen, "the runner should have been running on the device before the timeout"
        assert _processes_in(ex.files.path) == []
        assert not list((Path(ex.files.path) / "pids").glob("*.pid"))


# ------------------------------------------------------------------- what goes wrong
def test_unreachable_port_fails_fast_and_clearly(sshd, tmp_path) -> None:
    t0 = time.perf_counter()
    ex = SshExecutor(access(sshd, tmp_path), host=f"{sshd.user}@127.0.0.1:{free_port()}",
                     connect_timeout=5)
    with pytest.raises(DeviceError, match="not reachable") as err:
        ex.preflight()
    assert "Connection refused" in str(err.value) and time.perf_counter() - t0 < 10


def test_host_override_reaches_the_device(sshd, tmp_path) -> None:
    acc = access(sshd, tmp_path, host="no-such-host.invalid", port=1)
    with SshExecutor(acc, host=sshd.address) as ex:
        assert ex.preflight()["python_path"] == sys.executable


def test_a_refused_key_is_explained(sshd, tmp_path) -> None:
    ex = SshExecutor(access(sshd, tmp_path, key=str(sshd.other_key)))
    with pytest.raises(DeviceError, match="refused the key") as err:
        ex.preflight()
    assert "Permission denied (publickey)" in str(err.value)
    assert str(sshd.other_key) in str(err.value)


@pytest.mark.parametrize("known", ["wrong", "empty"])
def test_host_key_checking_stays_on(sshd, tmp_path, known) -> None:
    path = sshd.wrong_known_hosts if known == "wrong" else tmp_path / "known_hosts"
    if known == "empty":
        path.write_text("")
    ex = SshExecutor(access(sshd, tmp_path, known_hosts=str(path)))
    with pytest.raises(DeviceError, match="host key") as err:
        ex.preflight()
    msg = str(err.value)
    assert "Host key verification failed" in msg
    assert ("differs from the one recorded" if known == "wrong" else "is not in") in msg
    assert "StrictHostKeyChecking=no" not in msg and "accept-new" not in msg
    assert path.read_text() == ("" if known == "empty" else sshd.wrong_known_hosts.read_text())


def test_a_device_without_onnxruntime(sshd, bundle, tmp_path) -> None:
    python = wrapper_python(tmp_path / "py", "import sys\nsys.modules['onnxruntime'] = None\n")
    with SshExecutor(access(sshd, tmp_path / "device", python=python)) as ex:
        assert ex.preflight()["packages"]["onnxruntime"] is None
        assert "onnxruntime" not in ex.environment()["packages"]
        with pytest.raises(RunFailed, match="onnxruntime is not installed on the device") as err:
            ex.time_artifact(bundle, ONNX, 1, QUICK)
        assert "pip install onnxruntime" in str(err.value)
        row = ex.time_artifact(bundle, "openvino-int8", 1, QUICK)  # the run goes on
        assert row["runtime"]["name"] == "openvino" and row["error"] is None


def test_a_broken_runtime_install_names_the_backend(sshd, bundle, tmp_path) -> None:
    """onnxruntime is found but does not import (a wheel for another CPU, a missing .so)."""
    python = wrapper_python(tmp_path / "py", packages={"onnxruntime": (
        "raise ImportError('libonnxruntime.so.1: cannot open shared object file')\n")})
    with SshExecutor(access(sshd, tmp_path / "device", python=python)) as ex:
        with pytest.raises(RunFailed, match="onnxruntime is not installed .*on the device") as e:
            ex.time_artifact(bundle, ONNX, 1, QUICK)
    assert "libonnxruntime.so.1" in str(e.value)


def test_a_device_without_python_or_numpy(sshd, tmp_path) -> None:
    with SshExecutor(access(sshd, tmp_path, python="/nonexistent/python3")) as ex, \
            pytest.raises(DeviceError, match="/nonexistent/python3 not found on") as err:
        ex.preflight()
    assert "pip install" in str(err.value)
    python = wrapper_python(tmp_path / "py", "import sys\nsys.modules['numpy'] = None\n")
    with SshExecutor(access(sshd, tmp_path, python=python)) as ex, \
            pytest.raises(DeviceError, match="numpy is not installed") as err:
        ex.preflight()
    assert "pip install 'edgekit[litert]'" in str(err.value)


def test_images_go_to_the_device_once_for_every_artifact(device, bundle, mri_phantoms,
                                                         monkeypatch) -> None:
    """The evaluation images are sent once per executor, not once per artifact."""
    images = sorted(mri_phantoms.rglob("*.jpg"))[:4]
    device.upload(bundle)
    sent = []
    real = device.files.send
    monkeypatch.setattr(device.files, "send", lambda members: (sent.append(len(members)),
                                                          real(members))[1])
    a = device.logits(bundle, ONNX, images)
    b = device.logits(bundle, "openvino-int8", images)
    assert len(sent) == 1 and sent[0] == len(images) + 1
    assert a.shape == b.shape == (4, 4)
