"""Functional checks of aarch64 artifacts without ARM hardware: QEMU user-mode emulation.

``prepare()`` builds, once, an aarch64 Python environment in a cache folder (``default_cache()``):

* ``sysroot/``: Debian's arm64 ``python3.X-minimal`` + ``libpython3.X-stdlib`` and their
  dependency closure (libc6, zlib, libffi, libssl, libexpat, libbz2, liblzma, ...) plus
  libstdc++6/libgomp1, fetched with ``apt-get download``-style ``apt-get install
  --download-only`` against a *private* apt state (``APT::Architecture=arm64``, private lists,
  cache and an empty dpkg status), so the system's apt configuration, lists and dpkg database
  are never touched, and unpacked with ``dpkg-deb -x`` (no root, nothing installed);
* ``site-packages/``: the aarch64 wheels of numpy, Pillow, pydicom, onnxruntime, openvino and
  ai-edge-litert (+ their dependencies) from PyPI, unzipped; the runtimes are pinned to the
  versions installed here when those have aarch64 wheels, so parity compares like with like;
* ``cpus/<model>/``: one QEMU ``-L`` root per CPU model: relative links to ``sysroot``'s
  folders plus a fake ARM ``/proc/cpuinfo`` (and ``/sys/.../midr_el1``) for that model.

Why the fake cpuinfo: QEMU 7.2 passes the host's x86 ``/proc/cpuinfo`` through, and
onnxruntime's cpuinfo/XNNPACK segfault while parsing it. QEMU looks up every absolute path the
guest opens under the ``-L`` prefix first, so ``cpus/cortex-a72/proc/cpuinfo`` *is* the guest's
``/proc/cpuinfo``: no ``unshare -m`` + bind mount (which needs root or user namespaces) is
needed. ``prepare`` checks that the redirect works (it reads the guest's cpuinfo back).

tflite-runtime is left out on purpose: edgekit's LiteRT backend prefers ``ai_edge_litert`` (its
successor, same interpreter), and tflite-runtime 2.14 needs numpy<2, which would need a second
site folder with its own numpy for an interpreter that would never be picked.

``EmulatedExecutor`` runs the device runner zipapp (``edgekit.bench.payload``) under
``qemu-aarch64-static -cpu <model>`` on a bundle and returns its logits; ``parity`` compares
them with the same artifact run on this machine. Emulated timings mean nothing (QEMU translates
every instruction in software), so the executor refuses to time anything. Nothing here
downloads except ``prepare`` (``edgekit targets prepare-emulation``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from edgekit.backends import all_backends, backend_names, get_backend
from edgekit.bench.executor import Executor, RunFailed, last_error, options_args
from edgekit.bench.local import LocalExecutor
from edgekit.bench.payload import runner_zip
from edgekit.bench.protocol import Protocol
from edgekit.bundle import artifact_backend
from edgekit.errors import ConfigError, EdgekitError
from edgekit.ui import progress_bar, status

SCHEMA = 1
APPROX_DOWNLOAD_MB = 105  # measured: ~15 MB of Debian packages + ~87 MB of wheels
QEMU = "qemu-aarch64-static"

# Debian packages: the interpreter, its standard library, and the C/C++ runtime the wheels need
# (apt adds the dependency closure: libc6, zlib1g, libffi8, libssl3, libexpat1, libbz2-1.0,
# liblzma5, libgcc-s1, ...). "{py}" is the Debian default python3.X of the host's release.
DEBIAN_PACKAGES = ("python{py}-minimal", "libpython{py}-stdlib", "libstdc++6", "libgcc-s1",
                   "libgomp1", "libc6", "zlib1g", "libffi8", "libssl3", "libexpat1",
                   "libbz2-1.0", "liblzma5")
# PyPI: (distribution, import name). Pinned to this machine's version where installed.
PYTHON_PACKAGES = (("numpy", "numpy"), ("pillow", "PIL"), ("pydicom", "pydicom"),
                   *(b.packages[0] for b in all_backends()))
# backend name -> (distribution, the module the backend imports to run an artifact)
RUNTIMES = {b.name: (b.packages[0][0], b.module) for b in all_backends()}
# manylinux tags pip may accept for an aarch64 glibc system (2.17 ... 2.39): without the newer
# ones pip silently falls back to old releases (openvino needs 2_35, onnxruntime 2_28).
_MANYLINUX = tuple(f"manylinux_2_{n}_aarch64" for n in range(17, 40)) + (
    "manylinux2014_aarch64", "linux_aarch64")

# Fake /proc/cpuinfo per QEMU -cpu model, matching what QEMU reports in MIDR_EL1 and HWCAP.
CPUS: dict[str, dict[str, Any]] = {
    "cortex-a53": {"features": "fp asimd evtstrm crc32 cpuid", "variant": 0x0, "part": 0xd03,
                   "revision": 4},
    "cortex-a57": {"features": "fp asimd evtstrm crc32 cpuid", "variant": 0x1, "part": 0xd07,
                   "revision": 0},
    "cortex-a72": {"features": "fp asimd evtstrm crc32 cpuid", "variant": 0x0, "part": 0xd08,
                   "revision": 3},
    "cortex-a76": {"features": "fp asimd evtstrm crc32 atomics fphp asimdhp cpuid asimdrdm "
                               "lrcpc dcpop asimddp", "variant": 0x4, "part": 0xd0b,
                   "revision": 1},
    "neoverse-n1": {"features": "fp asimd evtstrm crc32 atomics fphp asimdhp cpuid asimdrdm "
                                "lrcpc dcpop asimddp ssbs", "variant": 0x4, "part": 0xd0c,
                    "revision": 1},
}
SMOKE_CPUS = ("cortex-a72", "cortex-a76")  # runtimes are import-tested on these at prepare

_NO_TIMING = ("emulated timings mean nothing: QEMU translates every ARM instruction in software, "
              "so the numbers say nothing about a board; use --host for latency, predicted "
              "latency otherwise")


# --------------------------------------------------------------------------------- the cache
def default_cache() -> Path:
    """``$EDGEKIT_EMULATION_DIR``, else ``$XDG_CACHE_HOME/edgekit/emulation-aarch64`` (or
    ``~/.cache/edgekit/emulation-aarch64``)."""
    if os.environ.get("EDGEKIT_EMULATION_DIR"):
        return Path(os.environ["EDGEKIT_EMULATION_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edgekit" / "emulation-aarch64"


def prepared(cache: str | Path | None = None) -> dict[str, Any] | None:
    """The environment's ``env.json`` when the cache is prepared, else None."""
    root = Path(cache) if cache is not None else default_cache()
    try:
        env = json.loads((root / "env.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(env, dict) or env.get("schema") != SCHEMA:
        return None
    if not (root / env.get("python", {}).get("path", "-")).is_file():
        return None
    return env


def cpuinfo_text(model: str, processors: int) -> str:
    """A Linux arm64 ``/proc/cpuinfo`` for ``processors`` cores of QEMU CPU ``model``."""
    if model not in CPUS:
        raise ConfigError(f"no fake /proc/cpuinfo for QEMU CPU {model!r}; known: "
                          f"{', '.join(CPUS)}")
    c = CPUS[model]
    blocks = [f"processor\t: {i}\n"
              "BogoMIPS\t: 108.00\n"
              f"Features\t: {c['features']}\n"
              "CPU implementer\t: 0x41\n"
              "CPU architecture: 8\n"
              f"CPU variant\t: {c['variant']:#x}\n"
              f"CPU part\t: {c['part']:#05x}\n"
              f"CPU revision\t: {c['revision']}\n"
              for i in range(max(1, processors))]
    return "\n".join(blocks) + "\n"


def midr(model: str) -> int:
    """The MIDR_EL1 value of ``model`` (implementer ARM, architecture 0xf)."""
    c = CPUS[model]
    return 0x41 << 24 | c["variant"] << 20 | 0xF << 16 | c["part"] << 4 | c["revision"]


def _processors() -> int:
    return os.cpu_count() or 1


def _write_cpu_root(cache: Path, model: str, processors: int) -> Path:
    """``cache/cpus/<model>``: QEMU's ``-L`` root with the fake cpuinfo; relative links to the
    sysroot keep it valid after the cache folder is renamed."""
    root = cache / "cpus" / model
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for entry in sorted((cache / "sysroot").iterdir()):
        (root / entry.name).symlink_to(Path("..", "..", "sysroot", entry.name))
    (root / "proc").mkdir()
    (root / "proc" / "cpuinfo").write_text(cpuinfo_text(model, processors))
    for i in range(processors):
        ident = root / "sys" / "devices" / "system" / "cpu" / f"cpu{i}" / "regs" / "identification"
        ident.mkdir(parents=True)
        (ident / "midr_el1").write_text(f"0x{midr(model):016x}\n")
    (root / ".processors").write_text(str(processors))
    return root


def _cpu_root(cache: Path, model: str) -> Path:
    """The ``-L`` root of ``model``, rewritten when this machine's core count changed."""
    if model not in CPUS:
        raise ConfigError(f"QEMU CPU {model!r} has no fake /proc/cpuinfo in edgekit; known: "
                          f"{', '.join(CPUS)}")
    root = cache / "cpus" / model
    n = _processors()
    try:
        current = int((root / ".processors").read_text())
    except (OSError, ValueError):
        current = None
    if current != n:
        try:
            _write_cpu_root(cache, model, n)
        except OSError as exc:
            if current is None:
                raise ConfigError(f"{root}: cannot write the fake /proc/cpuinfo ({exc})") from exc
    return root


# ------------------------------------------------------------------------------- preparation
def _check_host() -> dict[str, str]:
    tools = {QEMU: "qemu-user-static", "apt-get": "apt", "dpkg-deb": "dpkg"}
    found, missing = {}, []
    for tool, package in tools.items():
        path = shutil.which(tool)
        if path is None:
            missing.append(f"{tool} (Debian package {package})")
        else:
            found[tool] = path
    if missing:
        pkgs = " ".join(p.split("package ")[1].rstrip(")") for p in missing)
        raise ConfigError("preparing the emulated aarch64 environment needs "
                          + ", ".join(missing) + f": apt-get install {pkgs}")
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                      check=False).returncode != 0:
        raise ConfigError(f"{sys.executable} has no pip: it downloads the aarch64 wheels "
                          "(python -m ensurepip)")
    return found


def _run(cmd: Sequence[str], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kw)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:", "error:"))] or lines[-5:]
        raise EdgekitError(f"{what} failed (exit {done.returncode}): "
                           + " | ".join(errors[-5:]))
    return done


def _apt_options(state: Path) -> list[str]:
    """apt options for a private arm64 view of the host's Debian sources (system untouched)."""
    for d in ("lists/partial", "cache/archives/partial", "status"):
        (state / d).mkdir(parents=True, exist_ok=True)
    (state / "status" / "status").touch()
    opts = {"APT::Architecture": "arm64", "APT::Architectures::": "arm64",
            "Dir::State": str(state), "Dir::State::Lists": str(state / "lists"),
            "Dir::State::status": str(state / "status" / "status"),
            "Dir::Cache": str(state / "cache"),
            "Dir::Cache::Archives": str(state / "cache" / "archives"),
            "Dir::Cache::pkgcache": "", "Dir::Cache::srcpkgcache": "",
            "Debug::NoLocking": "1", "APT::Install-Recommends": "0",
            "APT::Install-Suggests": "0", "Acquire::Languages": "none"}
    if os.geteuid() == 0:  # apt's _apt sandbox user cannot write into our private folders
        opts["APT::Sandbox::User"] = "root"
    return [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]


def _debian_python(apt: list[str]) -> str:
    """The Debian release's default python3 version ("3.11" on bookworm)."""
    done = _run(["apt-cache", *apt, "depends", "python3-minimal"],
                "apt-cache depends python3-minimal (arm64)")
    found = re.search(r"python(3\.\d+)-minimal", done.stdout)
    if not found:
        raise EdgekitError("this host's apt sources list no arm64 python3-minimal: the emulated "
                           "environment needs a Debian archive that carries arm64 (Debian's "
                           "main archive does; Ubuntu serves arm64 from ports.ubuntu.com)")
    return found.group(1)


def _fetch_debs(work: Path, sysroot: Path, progress: bool) -> dict[str, Any]:
    apt = _apt_options(work / "apt")
    status("Fetching arm64 package lists from Debian's archive (private apt state; the "
           "system's apt is not touched) ...")
    _run(["apt-get", *apt, "-q", "update"], "apt-get update (arm64 lists)")
    py = _debian_python(apt)
    pkgs = [p.format(py=py) for p in DEBIAN_PACKAGES]
    status(f"Downloading Debian arm64 python{py} and its libraries ...")
    _run(["apt-get", *apt, "-q", "-y", "--download-only", "install", *pkgs],
         "apt-get download (arm64 packages)",
         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    debs = sorted((work / "apt" / "cache" / "archives").glob("*.deb"))
    if not debs:
        raise EdgekitError("apt downloaded no arm64 packages")
    sysroot.mkdir(parents=True)
    versions = {}
    with progress_bar("Unpacking Debian packages", len(debs) if progress else None) as bar:
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(sysroot)], f"dpkg-deb -x {deb.name}")
            name, version = deb.name.split("_")[:2]
            versions[name] = version.replace("%3a", ":")
            bar.advance()
    return {"python": py, "packages": versions, "bytes": sum(d.stat().st_size for d in debs)}


def _wheel_dists() -> list[str]:
    """The PyPI distributions of the emulated site folder (the one reader of PYTHON_PACKAGES)."""
    return [dist for dist, _ in PYTHON_PACKAGES]


def _pins() -> list[str]:
    pins = []
    for dist in _wheel_dists():
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


def _fetch_wheels(work: Path, site: Path, py: str, progress: bool) -> dict[str, Any]:
    wheels = work / "wheels"
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--no-input", "-d", str(wheels), "--only-binary=:all:", "--python-version", py,
            "--implementation", "cp", "--abi", f"cp{py.replace('.', '')}", "--abi", "abi3",
            "--abi", "none", *[a for tag in _MANYLINUX for a in ("--platform", tag)]]
    pinned = _pins()
    status("Downloading aarch64 wheels from PyPI: " + ", ".join(pinned) + " ...")
    try:
        _run([*base, *pinned], "pip download (aarch64 wheels)")
        note = "runtimes pinned to this machine's versions"
    except EdgekitError as exc:
        if pinned == _wheel_dists():
            raise
        status(f"[yellow]Note:[/] this machine's versions are not all on PyPI for aarch64 "
               f"({escape(str(exc))}); taking the newest aarch64 wheels instead")
        shutil.rmtree(wheels, ignore_errors=True)
        _run([*base, *_wheel_dists()], "pip download (aarch64 wheels)")
        note = "newest aarch64 wheels (this machine's versions have none)"
    files = sorted(wheels.glob("*.whl"))
    site.mkdir(parents=True)
    with progress_bar("Unpacking wheels", len(files) if progress else None) as bar:
        for whl in files:
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(site)
            bar.advance()
    for data in site.glob("*.data"):  # a wheel's purelib/platlib payload belongs in site too
        for sub in ("purelib", "platlib"):
            if (data / sub).is_dir():
                shutil.copytree(data / sub, site, dirs_exist_ok=True)
        shutil.rmtree(data)
    for so in site.rglob("*.so*"):  # zipfile drops the executable bits; ld.so does not care,
        so.chmod(so.stat().st_mode | 0o755)  # but keep them as pip would
    versions = {}
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        versions[name.lower().replace("_", "-")] = version
    return {"packages": versions, "bytes": sum(f.stat().st_size for f in files),
            "wheels": [f.name for f in files], "note": note}


_SMOKE = r"""
import json, platform, sys, traceback
out = {"python": platform.python_version(), "machine": platform.machine(), "modules": {}}
try:
    text = open("/proc/cpuinfo").read()
    out["cpuinfo"] = {"arm": "CPU implementer" in text,
                      "part": next((ln.split(":")[1].strip() for ln in text.splitlines()
                                    if ln.startswith("CPU part")), None)}
except OSError as exc:
    out["cpuinfo"] = {"arm": False, "error": str(exc)}
for mod in sys.argv[1:]:
    try:
        __import__(mod)
        out["modules"][mod] = "ok"
    except BaseException as exc:
        out["modules"][mod] = f"{type(exc).__name__}: {exc}".strip().splitlines()[-1][:300]
print(json.dumps(out))
"""


def _smoke(cache: Path, env: dict[str, Any], cpu: str, modules: Sequence[str]) -> dict[str, Any]:
    """Import every runtime, one fresh emulated process each (a segfault costs one row)."""
    result: dict[str, Any] = {"modules": {}}
    for mod in ["numpy", "PIL.Image", *modules]:
        cmd = [*_qemu_cmd(cache, env, cpu), "-c", _SMOKE, mod]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=_guest_env(cache),
                                  timeout=600, check=False)
        except subprocess.TimeoutExpired:
            result["modules"][mod] = "timed out importing it under QEMU (600 s)"
            continue
        line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("{")), "")
        if done.returncode != 0 or not line:
            why = (f"killed by signal {-done.returncode}" if done.returncode < 0
                   else f"exit {done.returncode}")
            tail = " | ".join(ln for ln in done.stderr.strip().splitlines()[-2:])
            result["modules"][mod] = f"the emulated import crashed ({why}){': ' + tail if tail else ''}"
            continue
        data = json.loads(line)
        result["modules"][mod] = data["modules"][mod]
        result.update(python=data["python"], machine=data["machine"], cpuinfo=data["cpuinfo"])
    return result


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*"))


def prepare(cache: str | Path | None = None, *, force: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Build the emulated aarch64 environment into ``cache`` once; return its ``env.json``.

    Downloads ~105 MB (Debian's archive: ~15 MB of arm64 packages; PyPI: ~87 MB of aarch64
    wheels), about 350 MB on disk. Built in a temporary sibling folder and renamed into place,
    so an interrupted run leaves no half-built cache. A prepared cache is returned as it is
    unless ``force``. ``progress`` shows progress bars (status lines always, unless quiet).
    """
    root = Path(cache) if cache is not None else default_cache()
    root = root.expanduser().absolute()
    existing = prepared(root)
    if existing is not None and not force:
        return existing
    tools = _check_host()
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        build = work / "env"
        build.mkdir()
        debs = _fetch_debs(work, build / "sysroot", progress)
        py = debs["python"]
        wheels = _fetch_wheels(work, build / "site-packages", py, progress)
        n = _processors()
        for model in CPUS:
            _write_cpu_root(build, model, n)
        env: dict[str, Any] = {
            "schema": SCHEMA, "arch": "aarch64",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "qemu": {"path": tools[QEMU], "version": _qemu_version(tools[QEMU])},
            "python": {"version": py, "path": f"sysroot/usr/bin/python{py}"},
            "debian_packages": debs["packages"], "packages": wheels["packages"],
            "wheels_note": wheels["note"],
            "download_bytes": {"debian": debs["bytes"], "pypi": wheels["bytes"],
                               "total": debs["bytes"] + wheels["bytes"]},
            "cpus": sorted(CPUS), "runtimes": {}, "smoke": {},
        }
        modules = [mod for _, mod in RUNTIMES.values()]
        for cpu in SMOKE_CPUS:
            status(f"Smoke test under QEMU {cpu}: importing numpy, Pillow and each runtime ...")
            smoke = _smoke(build, env, cpu, modules)
            env["smoke"][cpu] = smoke
            if smoke.get("python"):
                env["python"]["version"] = smoke["python"]
        for backend, (dist, mod) in RUNTIMES.items():
            imports = {cpu: env["smoke"][cpu]["modules"].get(mod) for cpu in SMOKE_CPUS}
            env["runtimes"][backend] = {
                "package": dist, "module": mod, "version": wheels["packages"].get(dist),
                "import": imports,
                "available": all(v == "ok" for v in imports.values())}
        env["sizes"] = {"sysroot": _du(build / "sysroot"),
                        "site-packages": _du(build / "site-packages")}
        env["prepare_seconds"] = round(time.perf_counter() - t0, 1)
        (build / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        if root.exists():  # --force, or a broken cache: swap, and put it back on failure
            old = work / "old"
            root.rename(old)
            try:
                build.rename(root)
            except OSError:
                old.rename(root)
                raise
        else:
            try:
                build.rename(root)
            except OSError:  # another prepare finished first
                if prepared(root) is None:
                    raise
                return prepared(root) or env
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return env


def _qemu_version(qemu: str) -> str:
    try:
        done = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout.strip().splitlines() or ["unknown"])[0]


def _guest_env(cache: Path) -> dict[str, str]:
    """The emulated Python's whole environment: none of this host's PYTHON* or LD_* leaks in."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "HOME": os.environ.get("HOME", "/tmp"), "TMPDIR": tempfile.gettempdir(),
           "PYTHONPATH": str(cache / "site-packages"), "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    return env


def _qemu_cmd(cache: Path, env: dict[str, Any], cpu: str) -> list[str]:
    qemu = shutil.which(QEMU) or env.get("qemu", {}).get("path") or QEMU
    return [qemu, "-cpu", cpu, "-L", str(_cpu_root(cache, cpu)),
            str(cache / env["python"]["path"])]


# --------------------------------------------------------------------------------- executor
class EmulatedExecutor(Executor):
    """Runs the device runner zipapp under ``qemu-aarch64-static -cpu <model>``.

    Output parity only: ``logits`` works, ``time_*`` raise RunFailed. Never builds or downloads
    anything: an unprepared cache is a ConfigError naming ``edgekit targets prepare-emulation``.
    """

    kind = "emulated"

    def __init__(self, qemu_cpu: str = "cortex-a72", cache: str | Path | None = None,
                 timeout: float | None = 1800) -> None:
        self.cache = (Path(cache) if cache is not None else default_cache()).expanduser()
        self.cache = self.cache.absolute()
        env = prepared(self.cache)
        if env is None:
            raise ConfigError(
                f"the emulated aarch64 environment is not prepared ({self.cache}): run "
                f"`edgekit targets prepare-emulation` (downloads ~{APPROX_DOWNLOAD_MB} MB once)")
        if qemu_cpu not in CPUS:
            raise ConfigError(f"QEMU CPU {qemu_cpu!r} is not supported for emulation; known: "
                              f"{', '.join(CPUS)}")
        if shutil.which(QEMU) is None:
            raise ConfigError(f"{QEMU} is not installed: apt-get install qemu-user-static")
        self.qemu_cpu = qemu_cpu
        self.label = f"QEMU {qemu_cpu}"
        self.timeout = timeout
        self.env = env
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._pyz: Path | None = None
        self._pyz_sha: str | None = None

    def close(self) -> None:
        """Remove the runner zipapp's temporary folder."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp, self._pyz = None, None

    def environment(self) -> dict[str, Any]:
        env = self.env
        return {"emulated": True, "arch": "aarch64",
                "qemu": {"version": _qemu_version(shutil.which(QEMU) or QEMU),
                         "cpu": self.qemu_cpu},
                "cpu": {"model": self.qemu_cpu, "emulated": True,
                        "features": CPUS[self.qemu_cpu]["features"].split()},
                "os": "Debian arm64 user space under QEMU user-mode emulation",
                "python": env["python"]["version"], "packages": dict(env.get("packages", {})),
                "runtimes": {b: {"version": r.get("version"), "available": r.get("available")}
                             for b, r in env.get("runtimes", {}).items()},
                "prepared": env.get("created"), "cache": str(self.cache),
                "runner_sha256": self._pyz_sha}

    def _runner(self) -> Path:
        if self._pyz is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgekit-emulated-")
            self._pyz, self._pyz_sha = runner_zip(self._tmp.name)
        return self._pyz

    def unavailable(self, backend: str) -> str | None:
        """Why ``backend`` cannot run under this CPU's emulation (prepare's smoke test), else
        None (also when it was not smoke-tested on this CPU)."""
        info = self.env.get("runtimes", {}).get(backend)
        if info is None:
            return None
        if info.get("version") is None:
            return f"{info.get('package', backend)} is not in the emulated environment"
        result = (info.get("import") or {}).get(self.qemu_cpu)
        return None if result in (None, "ok") else result

    def _run(self, args: Sequence[str], backend: str | None = None) -> str:
        cmd = [*_qemu_cmd(self.cache, self.env, self.qemu_cpu), str(self._runner()), *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=_guest_env(self.cache),
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RunFailed(f"timed out after {self.timeout:.0f} s under QEMU "
                            f"{self.qemu_cpu}") from exc
        if done.returncode < 0:
            tail = [ln for ln in done.stderr.strip().splitlines() if ln.strip()][-2:]
            raise RunFailed(f"the emulated runner crashed under QEMU {self.qemu_cpu} (signal "
                            f"{-done.returncode})" + (f": {' | '.join(tail)}" if tail else ""))
        if done.returncode != 0:
            raise RunFailed(_explain(last_error(done.stderr), backend, self.qemu_cpu))
        return done.stdout

    def logits(self, bundle: Path, artifact: str, images: Sequence[Path],
               options: dict[str, Any] | None = None) -> np.ndarray:
        """The artifact's raw outputs for ``images`` computed by the runner under QEMU."""
        bundle = Path(bundle).absolute()
        backend = artifact_backend(bundle, artifact)
        why = self.unavailable(backend) if backend else None
        if why:
            raise RunFailed(f"{backend} unavailable under emulation ({self.qemu_cpu}): {why}")
        with tempfile.TemporaryDirectory(prefix="edgekit-emulated-logits-") as tmp:
            listing = Path(tmp) / "images.txt"
            listing.write_text("".join(f"{Path(p).absolute()}\n" for p in images))
            out = Path(tmp) / "logits.npy"
            self._run([str(bundle), "--artifact", artifact, "--image-list", str(listing),
                       "--save-logits", str(out), *options_args(options)], backend)
            if not out.is_file():
                raise RunFailed(f"the emulated runner wrote no logits for {artifact}")
            return np.load(out)

    def time_artifact(self, bundle: Path, artifact: str, threads: int | None,
                      protocol: Protocol, options: dict[str, Any] | None = None,
                      ) -> dict[str, Any]:
        raise RunFailed(_NO_TIMING)

    def time_source(self, source: str, shape: Sequence[int], threads: int | None,
                    protocol: Protocol) -> dict[str, Any]:
        raise RunFailed(_NO_TIMING)

    def time_file(self, path: Path, backend: str, shape: Sequence[int], threads: int | None,
                  protocol: Protocol, options: dict[str, Any] | None = None) -> dict[str, Any]:
        raise RunFailed(_NO_TIMING)


def _explain(message: str, backend: str | None, cpu: str) -> str:
    """The runner's error, plus what is known about it on this CPU model."""
    hint = (get_backend(backend).arm_failure_hint(message, cpu, CPUS[cpu]["features"].split())
            if backend in backend_names() else None)
    return f"{message} ({hint})" if hint else message


# ----------------------------------------------------------------------------------- parity
# Tolerances relative to the reference's largest |logit| ("scale"), per artifact precision.
FP32_REL = 1e-3
FP16_REL = 1e-2
INT8_TOP1 = 0.98
INT8_REL = 0.1


def parity(reference: np.ndarray, emulated: np.ndarray, *, precision: str, task: str,
           noise_floor: float | None = None) -> dict[str, Any]:
    """Do the emulated ARM outputs match the same artifact's outputs on this machine?

    ``max_abs_diff`` is the largest absolute logit difference; ``max_rel_diff`` is it divided
    by the reference's largest |logit| (the scale of the outputs, so a tiny logit does not blow
    up a per-element ratio); ``top1_agreement`` is the fraction of images whose predicted class
    agrees (argmax for single-label tasks; for ``multilabel`` and single-logit binary outputs,
    the fraction of logits with the same sign, i.e. the same decision at p = 0.5).

    Thresholds (``status`` "passed"/"failed", ``reason`` when failed):

    * fp32: ``max_abs_diff <= 1e-3 * scale``. The same graph in fp32 differs between NEON and
      AVX kernels only in summation order, FMA contraction and exp/sigmoid approximations:
      ~1e-6..1e-5 relative. 1e-3 leaves two orders of headroom for deep nets while a real fault
      (wrong layout, wrong kernel, a miscompiled op) moves logits by O(scale).
    * fp16: ``max_abs_diff <= 1e-2 * scale``. fp16 carries 11 significant bits (unit roundoff
      4.9e-4); an ARM CPU with fp16 arithmetic (cortex-a76) computes whole layers in fp16
      where x86 upcasts to fp32, so errors accumulate to ~1e-3..5e-3 of the scale.
    * int8: ``top1_agreement >= 0.98`` and ``max_rel_diff <= 0.1``. ARM int8 kernels round
      differently from x86 (VNNI/AVX2 u8s8 with 7-bit weights vs. NEON sdot/smlal, fixed-point
      requantization with rounding-doubling multiplies vs. float scales): one quantization
      step of a hidden activation flipping propagates to a few output steps, i.e. a few % of
      the scale. Predictions must still agree on (almost) every image; 10 % bounds the logit
      error well above rounding noise yet far below what a wrong kernel produces.

    ``noise_floor`` (fp16 and int8 only): the artifact's own verified error on this machine,
    i.e. the largest |logit| difference between it and its fp32 source (the manifest's
    ``verification.max_abs_logit_diff``, see ``verified_error``). The relative bound alone is
    unfair to a model whose logits are all near zero (an undertrained one: the quantization
    error is then a large fraction of a tiny scale), so a difference no larger than the
    quantization error the bundle already accepted also passes: the ARM kernels then land
    within the noise that quantization itself makes. Top-1 agreement is still required.
    """
    if precision not in _THRESHOLDS:
        raise ConfigError(f"unknown precision {precision!r} for a parity check; known: "
                          f"{', '.join(_THRESHOLDS)}")
    ref = np.asarray(reference, dtype=np.float64)
    emu = np.asarray(emulated, dtype=np.float64)
    ref2 = ref.reshape(ref.shape[0], -1) if ref.ndim else ref.reshape(1, 1)
    emu2 = emu.reshape(emu.shape[0], -1) if emu.ndim else emu.reshape(1, 1)
    thresholds = dict(_THRESHOLDS[precision])
    if noise_floor is not None and precision != "fp32" and np.isfinite(noise_floor):
        thresholds["noise_floor"] = float(noise_floor)
    result: dict[str, Any] = {"precision": precision, "task": task, "n": int(ref2.shape[0]),
                              "thresholds": thresholds}
    if ref2.shape != emu2.shape:
        return {**result, "max_abs_diff": None, "max_rel_diff": None, "top1_agreement": None,
                "scale": None, "status": "failed",
                "reason": f"output shapes differ: {tuple(ref.shape)} here, "
                          f"{tuple(emu.shape)} under emulation"}
    if ref2.size == 0:
        return {**result, "max_abs_diff": None, "max_rel_diff": None, "top1_agreement": None,
                "scale": None, "status": "failed", "reason": "no outputs to compare"}
    finite = bool(np.all(np.isfinite(ref2)) and np.all(np.isfinite(emu2)))
    diff = np.abs(ref2 - emu2)
    scale = float(np.max(np.abs(ref2))) if np.all(np.isfinite(ref2)) else float("nan")
    max_abs = float(np.max(diff)) if finite else float("inf")
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    if task == "multilabel" or ref2.shape[1] == 1:
        agree = float(np.mean((ref2 >= 0) == (emu2 >= 0)))
    else:
        agree = float(np.mean(np.argmax(ref2, axis=1) == np.argmax(emu2, axis=1)))
    result.update(scale=scale, max_abs_diff=max_abs, max_rel_diff=max_rel,
                  top1_agreement=agree)
    reasons = []
    floor = thresholds.get("noise_floor")
    within_floor = floor is not None and max_abs <= floor
    if not finite:
        reasons.append("non-finite outputs (NaN/inf)")
    else:
        if precision == "int8" and agree < thresholds["top1_agreement"]:
            reasons.append(f"top-1 agreement {agree:.3f} < {thresholds['top1_agreement']}")
        if max_rel > thresholds["max_rel_diff"] and not within_floor:
            reasons.append(f"max |difference| {max_abs:.3g} > {thresholds['max_rel_diff']:g} x "
                           f"the largest |logit| ({scale:.3g})"
                           + (f" and > the artifact's verified error {floor:.3g}"
                              if floor is not None else ""))
    result["within_noise_floor"] = bool(within_floor and max_rel > thresholds["max_rel_diff"])
    result["status"] = "failed" if reasons else "passed"
    if reasons:
        result["reason"] = "; ".join(reasons)
    return result


_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"max_rel_diff": FP32_REL},
    "fp16": {"max_rel_diff": FP16_REL},
    "int8": {"top1_agreement": INT8_TOP1, "max_rel_diff": INT8_REL},
}


def verified_error(artifact: dict[str, Any]) -> float | None:
    """An artifact's largest |logit| difference from its fp32 source, as verified on this
    machine when the bundle was made (manifest ``verification.max_abs_logit_diff``)."""
    value = (artifact.get("verification") or {}).get("max_abs_logit_diff")
    return float(value) if isinstance(value, int | float) else None


def check_bundle(bundle: str | Path, images: Sequence[Path], *,
                 cpus: Sequence[str] = ("cortex-a72",), artifacts: Sequence[str] | None = None,
                 options: dict[str, dict[str, Any]] | None = None,
                 cache: str | Path | None = None) -> list[dict[str, Any]]:
    """Every artifact of ``bundle`` (or the named ones) on this machine and under each QEMU
    CPU: one row per (artifact, cpu) with ``parity``'s numbers, or ``status: "error"`` and the
    ``reason`` when either run failed. ``options`` are runtime options per backend."""
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    arts = [a for a in manifest["artifacts"] if artifacts is None or a["name"] in artifacts]
    here = LocalExecutor()
    rows: list[dict[str, Any]] = []
    refs: dict[str, np.ndarray | str] = {}
    for cpu in cpus:
        emu = EmulatedExecutor(cpu, cache=cache)
        try:
            for art in arts:
                opts = (options or {}).get(art["backend"])
                row: dict[str, Any] = {"artifact": art["name"], "backend": art["backend"],
                                       "precision": art["precision"], "qemu_cpu": cpu}
                if art["name"] not in refs:
                    try:
                        refs[art["name"]] = here.logits(bundle, art["name"], images, opts)
                    except RunFailed as exc:
                        refs[art["name"]] = f"the reference run on this machine failed: {exc}"
                ref = refs[art["name"]]
                if isinstance(ref, str):
                    rows.append({**row, "status": "error", "reason": ref})
                    continue
                t0 = time.perf_counter()
                try:
                    got = emu.logits(bundle, art["name"], images, opts)
                except RunFailed as exc:
                    rows.append({**row, "status": "error", "reason": str(exc),
                                 "seconds": round(time.perf_counter() - t0, 1)})
                    continue
                rows.append({**row, **parity(ref, got, precision=art["precision"],
                                             task=manifest["task"],
                                             noise_floor=verified_error(art)),
                             "seconds": round(time.perf_counter() - t0, 1)})
        finally:
            emu.close()
    return rows
