"""Targets are strict YAML profiles; hostinfo reads this machine's CPU; isa_notes compares them."""

from __future__ import annotations

import json
import os
import platform

import pytest

from edgekit.bench import hostinfo
from edgekit.bench.hostinfo import cpu_info, parse_cpuinfo
from edgekit.cli import main
from edgekit.errors import ConfigError
from edgekit.targets import (
    builtin_targets,
    describe_host,
    isa_notes,
    list_targets,
    load_target,
    target_names,
)

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
cpu MHz\t\t: 2100.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512bw \
avx512vl avx512_vnni aes

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512bw \
avx512vl avx512_vnni aes

processor\t: 2
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512bw \
avx512vl avx512_vnni aes
"""


def _arm_cpuinfo(features: str, part: str, board: str, cores: int = 4) -> str:
    block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
             "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
             "CPU part\t: {part}\nCPU revision\t: 3\n\n")
    text = "".join(block.format(i=i, features=features, part=part) for i in range(cores))
    return text + f"Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: {board}\n"


RPI4_CPUINFO = _arm_cpuinfo("fp asimd evtstrm crc32 cpuid", "0xd08",
                            "Raspberry Pi 4 Model B Rev 1.4")
RPI5_CPUINFO = _arm_cpuinfo("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
                            "cpuid asimdrdm lrcpc dcpop asimddp", "0xd0b",
                            "Raspberry Pi 5 Model B Rev 1.0")

AVX2_HOST = {"arch": "x86_64", "logical_cores": 6,
             "features": ["avx", "avx2", "f16c", "fma", "sse4_2"]}
VNNI_HOST = {"arch": "x86_64", "logical_cores": 16,
             "features": ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "f16c", "fma",
                          "sse4_2"]}
BASE = "name: t\narch: x86_64\naccess: {kind: local}\n"


# ------------------------------------------------------------------------------ hostinfo
def test_parse_x86_cpuinfo():
    info = parse_cpuinfo(X86_CPUINFO, "x86_64")
    assert info["model"] == "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"
    assert info["physical_cores"] == 2  # 3 logical processors on 2 (physical id, core id) pairs
    assert info["features"] == ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512f", "f16c",
                                "fma", "sse4_2"]  # curated: no sse2, aes, avx512vl, ...
    assert info["mhz"] == 2100.0


def test_parse_rpi4_cpuinfo():
    info = parse_cpuinfo(RPI4_CPUINFO, "aarch64")
    assert info["model"] == "Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)"
    assert info["features"] == ["neon"]  # ARMv8.0: no dotprod, no fp16 arithmetic
    assert info["physical_cores"] == 4


def test_parse_rpi5_cpuinfo():
    info = parse_cpuinfo(RPI5_CPUINFO, "aarch64")
    assert info["model"].startswith("Cortex-A76")
    assert info["features"] == ["dotprod", "fp16", "neon"]


@pytest.mark.parametrize("features, expected", [
    ("fp asimd fphp", ["neon"]),                      # fp16 needs both fphp and asimdhp
    ("fp asimd fphp asimdhp i8mm bf16 sve sve2", ["bf16", "fp16", "i8mm", "neon", "sve", "sve2"]),
])
def test_arm_feature_normalization(features, expected):
    assert parse_cpuinfo(_arm_cpuinfo(features, "0xd40", "x", 1), "aarch64")["features"] == expected


def test_unknown_arm_part_and_empty_text():
    info = parse_cpuinfo(_arm_cpuinfo("asimd", "0xd99", "Some board", 2), "arm64")
    assert info["model"] == "CPU implementer 0x41 part 0xd99 (Some board)"
    assert parse_cpuinfo("", "x86_64") == {"model": None, "physical_cores": None,
                                           "features": [], "mhz": None}


def test_cpu_info_on_this_machine():
    info = cpu_info()
    assert info["arch"] == platform.machine() and info["arch"]
    assert info["logical_cores"] >= 1 and isinstance(info["model"], str) and info["model"]
    assert info["features"] == sorted(info["features"])
    assert set(info["freq_mhz"]) == {"current", "max"}
    if platform.machine() == "x86_64" and os.path.exists("/proc/cpuinfo"):
        assert "sse4_2" in info["features"]


def test_missing_files_give_none(monkeypatch, tmp_path):
    monkeypatch.setattr(hostinfo, "CPUINFO", str(tmp_path / "nope"))
    monkeypatch.setattr(hostinfo, "CPUFREQ", str(tmp_path / "nofreq"))
    monkeypatch.setattr(hostinfo, "THERMAL_GLOB", str(tmp_path / "zone*/temp"))
    info = cpu_info()
    assert info["features"] == [] and info["physical_cores"] is None
    assert info["governor"] is None and info["freq_mhz"] == {"current": None, "max": None}
    assert hostinfo.temperature_c() is None


def test_sysfs_clocks_governor_and_temperature(monkeypatch, tmp_path):
    freq = tmp_path / "cpufreq"
    freq.mkdir()
    (freq / "scaling_governor").write_text("ondemand\n")
    (freq / "scaling_cur_freq").write_text("1800000\n")
    (freq / "cpuinfo_max_freq").write_text("2400000\n")
    for i, temp in enumerate(["45000\n", "52500\n", "garbage\n"]):
        (tmp_path / f"zone{i}").mkdir()
        (tmp_path / f"zone{i}" / "temp").write_text(temp)
    monkeypatch.setattr(hostinfo, "CPUFREQ", str(freq))
    monkeypatch.setattr(hostinfo, "THERMAL_GLOB", str(tmp_path / "zone*/temp"))
    info = cpu_info()
    assert info["governor"] == "ondemand"
    assert info["freq_mhz"] == {"current": 1800.0, "max": 2400.0}
    assert hostinfo.temperature_c() == 52.5


def test_throttled(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert hostinfo.throttled() is None  # no vcgencmd
    exe = tmp_path / "vcgencmd"
    exe.write_text("#!/bin/sh\necho throttled=0x50000\n")
    exe.chmod(0o755)
    assert hostinfo.throttled() == "throttled=0x50000"


# ------------------------------------------------------------------------------- targets
def test_builtin_targets_load():
    assert {"x86-local", "x86-avx2", "x86-avx512-vnni"} <= set(target_names())
    targets = {t.name: t for t in list_targets()}
    assert set(targets) == set(builtin_targets())  # every file's name: matches its file name
    local = targets["x86-local"]
    assert local.detect and local.threads == "auto" and local.access.kind == "local"
    avx2, vnni = targets["x86-avx2"], targets["x86-avx512-vnni"]
    assert not avx2.detect and "avx2" in avx2.requires
    assert not any(f.startswith("avx512") for f in avx2.cpu.features)
    assert "avx512_vnni" in vnni.requires and vnni.cpu.peak_gmacs_int8 > vnni.cpu.peak_gmacs_fp32
    for t in targets.values():
        assert t.arch in ("x86_64", "aarch64") and t.notes and t.description
        if t.arch == "x86_64":  # else bf16 on AVX512_BF16/AMX CPUs
            assert t.runtime_options["openvino"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert set(t.preferred) == {"fp32", "fp16", "int8"}


def test_ssh_and_emulated_access_load(tmp_path):
    ssh = tmp_path / "pi.yaml"
    ssh.write_text("name: rpi4\narch: aarch64\naccess: {kind: ssh, host: pi.local, user: pi}\n"
                   "cpu: {cores: 4, features: [neon]}\nthreads: [1, 4]\nrequires: [neon]\n"
                   "latency_model: {c0_ms: 0.4, eta: {conv: 0.3}}\n")
    t = load_target(ssh)
    assert (t.access.kind, t.access.port, t.access.workdir) == ("ssh", None, "~/edgekit-bench")  # None: ~/.ssh/config
    assert t.latency_model == {"c0_ms": 0.4, "eta": {"conv": 0.3}}
    emu = tmp_path / "emu.yaml"
    emu.write_text("name: a76-emu\narch: aarch64\naccess: {kind: emulated, qemu_cpu: cortex-a76}\n")
    assert load_target(emu).access.qemu_cpu == "cortex-a76"


@pytest.mark.parametrize("body, message", [
    (BASE + "colour: red\n", "colour: unknown key"),
    (BASE + "cpu: {cores: 4, l4_kb: 1}\n", "cpu.l4_kb: unknown key"),
    (BASE + "runtime_options: {tensorrt: {fp16: true}}\n", "unknown backend(s) tensorrt"),
    (BASE + "preferred: {int8: [openvino, tflite]}\n", "unknown backend(s) tflite"),
    (BASE + "preferred: {int4: [openvino]}\n", "preferred.int4: Input should be 'fp32'"),
    (BASE + "cpu: {features: [avx512vnni]}\n", "unknown x86_64 feature(s) avx512vnni"),
    (BASE + "cpu: {features: [avx2]}\nrequires: [avx2, fma]\n", "fma required but not in cpu"),
    (BASE + "threads: [1, 0]\n", "threads: Value error, list thread counts >= 1"),
    (BASE + "threads: four\n", "give a list of thread counts or auto, got 'four'"),
    (BASE + "threads: [2, 2]\n", "a thread count is listed twice"),
    (BASE + "latency_model: [1, 2]\n", "latency_model"),
    ("name: t\narch: x86_64\naccess: {kind: ssh, user: pi}\n", "access.host: Field required"),
    ("name: t\narch: x86_64\naccess: {kind: ssh, host: h, user: u, prot: 2}\n",
     "access.prot: unknown key"),
    ("name: t\narch: x86_64\naccess: {kind: telnet}\n", "access: Input tag 'telnet'"),
    ("name: t\narch: riscv64\naccess: {kind: local}\n", "arch: Input should be"),
    ("name: My Target\narch: x86_64\naccess: {kind: local}\n", "name: String should match"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_bad_targets_name_the_file_and_key(tmp_path, body, message):
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_target(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_unknown_target_lists_builtins():
    with pytest.raises(ConfigError, match="Unknown target 'rpi9'.*x86-avx2, x86-avx512-vnni"):
        load_target("rpi9")


def test_thread_counts():
    local, avx2 = load_target("x86-local"), load_target("x86-avx2")
    assert local.thread_counts(8) == [1, 8]
    assert local.thread_counts(1) == [1] and local.thread_counts(0) == [1]
    assert avx2.threads == [1, 4, 6] and avx2.thread_counts(12) == [1, 4, 6]
    assert avx2.thread_counts(2) == [1, 2]  # never more threads than usable cores


# ------------------------------------------------------------------------------ isa_notes
def test_isa_notes_avx2_profile_on_vnni_host():
    notes = isa_notes(load_target("x86-avx2"), VNNI_HOST)
    int8 = [n for n in notes if "avx512_vnni" in n]
    assert len(int8) == 1 and "INT8 speed-ups measured here overstate" in int8[0]
    assert any("avx512bw and avx512f" in n for n in notes)
    assert not any("usable cores" in n for n in notes)  # 16 cores >= the profile's 6


def test_isa_notes_vnni_profile_on_avx2_host():
    notes = isa_notes(load_target("x86-avx512-vnni"), AVX2_HOST)
    assert any("requires avx512f, avx512bw and avx512_vnni" in n for n in notes)
    assert any("6 usable cores" in n and "16" in n for n in notes)
    assert not any("this machine has avx" in n for n in notes)  # nothing extra on the host


def test_isa_notes_matching_host_other_arch_and_detect():
    assert isa_notes(load_target("x86-avx512-vnni"), VNNI_HOST) == []
    assert isa_notes(load_target("x86-avx2"), AVX2_HOST) == []
    arm = isa_notes(load_target("x86-avx2"), {"arch": "aarch64", "features": ["neon"]})
    assert len(arm) == 1 and "aarch64" in arm[0] and "x86_64" in arm[0]
    assert "unknown" in isa_notes(load_target("x86-avx2"), {"arch": "x86_64"})[0]
    assert isa_notes(load_target("x86-local"), {"arch": "aarch64"}) == []


def test_describe_host():
    detected = describe_host(load_target("x86-local"))
    assert detected["source"] == "detected" and detected["cores"] == cpu_info()["logical_cores"]
    declared = describe_host(load_target("x86-avx2"))
    assert declared["source"] == "declared" and declared["cores"] == 6
    assert declared["arch"] == "x86_64" and "avx2" in declared["features"]


# ------------------------------------------------------------------------------------ CLI
def test_cli_targets_list(cli):
    table = cli("targets", "list").stdout
    assert "x86-avx2" in table and "x86-local" in table and "detected" in table
    data = {t["name"]: t for t in json.loads(cli("targets", "list", "--json").stdout)}
    assert {"x86-local", "x86-avx2", "x86-avx512-vnni"} <= set(data)
    assert data["x86-avx2"]["cpu"]["cores"] == 6 and data["x86-local"]["threads"] == "auto"


def test_cli_targets_show(cli):
    text = cli("targets", "show", "x86-local").stdout
    assert "This machine (detected)" in text and cpu_info()["arch"] in text
    data = json.loads(cli("targets", "show", "x86-avx2", "--json").stdout)
    assert data["target"]["name"] == "x86-avx2" and data["effective_cpu"]["source"] == "declared"
    assert data["isa_notes"] == isa_notes(load_target("x86-avx2"), cpu_info())
    assert data["thread_counts"] == load_target("x86-avx2").thread_counts(
        cpu_info()["logical_cores"])


def test_cli_targets_errors_and_help(cli, tmp_path):
    res = cli("targets", "show", "nope", code=2)
    assert "Error: Unknown target 'nope'" in res.stderr and "x86-local" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "colour: red\n")
    res = cli("targets", "show", str(bad), code=2)
    assert f"Error: {bad}: invalid target — colour: unknown key" in res.stderr
    for sub in main.commands["targets"].commands.values():
        assert sub.help and len(sub.help) > 20
    assert "edgekit targets show" in cli("targets", "--help").output
