"""What the device is and has, from ONE command; what it must have for the runner to run.

The preflight command sends ``hostinfo``'s own code and runs it there: CPU model, cores,
features, governor and clocks, plus Python, numpy/Pillow/runtime versions, temperature,
``vcgencmd`` and ``taskset``. A missing Python, numpy or Pillow, or no runtime at all, is a
``DeviceError`` saying what to install. What runs a backend on the device (its
distributions and module) is asked of the backend registry.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekit.backends import all_backends, backend_names, device_install_hint, get_backend
from edgekit.bench import hostinfo
from edgekit.bench.ssh.connection import DeviceError, SshConnection, quote, sh, tail

MIN_PYTHON = (3, 10)
# (distribution, import name) of what the runner may need on the device (plain tuples: their
# repr goes into the remote script).
DEVICE_PACKAGES = (("numpy", "numpy"), ("Pillow", "PIL"),
                   *(tuple(p) for b in all_backends() for p in b.packages),
                   ("pydicom", "pydicom"), ("edgekit", "edgekit"))
_INSTALL_HINT = device_install_hint()


def runtime_dists(backend: str | None) -> tuple[str, ...]:
    """The distributions any one of which runs ``backend`` on a device (() when unknown)."""
    if backend not in backend_names():
        return ()
    return tuple(d for d, _ in get_backend(backend).packages)


def pip_name(backend: str) -> str:
    """What to ``pip install`` on a device to run ``backend``."""
    return get_backend(backend).packages[0][0] if backend in backend_names() else backend


def runtime_module(backend: str) -> str:
    """The module a device imports to run ``backend`` (named in its ImportError)."""
    return get_backend(backend).packages[0][1] if backend in backend_names() else backend


# ------------------------------------------------------------------------- remote snippet
_PREFLIGHT = r'''
import json, os, platform, shutil, sys
out = {"python": platform.python_version(), "python_path": sys.executable,
       "version_info": list(sys.version_info[:3]), "os": platform.platform(),
       "machine": platform.machine(), "cores": os.cpu_count(),
       "home": os.path.expanduser("~"),
       "workdir": os.path.abspath(os.path.expanduser(WORKDIR)),
       "taskset": shutil.which("taskset") is not None,
       "vcgencmd": shutil.which("vcgencmd") is not None}
try:
    ns = {"__name__": "edgekit_hostinfo"}
    exec(compile(HOSTINFO, "hostinfo.py", "exec"), ns)
    out["cpu"] = ns["cpu_info"]()
    out["temperature_c"] = ns["temperature_c"]()
    out["throttled"] = ns["throttled"]()
except Exception as exc:
    out["cpu_error"] = repr(exc)
import importlib.util
try:
    from importlib import metadata
except ImportError:
    metadata = None
packages = {}
for dist, module in PACKAGES:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    version = None
    if found:
        version = "unknown"
        if metadata is not None:
            try:
                version = metadata.version(dist)
            except Exception:
                pass
    packages[dist] = version
out["packages"] = packages
print("EDGEKIT_PREFLIGHT " + json.dumps(out))
'''


class DeviceProbe:
    """The device's facts, read once through ``connection`` with the interpreter ``python``
    (a command line, e.g. ``["python3"]``); ``workdir`` is resolved there to an absolute path."""

    def __init__(self, connection: SshConnection, python: Sequence[str], workdir: str) -> None:
        self.connection = connection
        self.python = list(python)
        self.workdir = workdir
        self._facts: dict[str, Any] | None = None

    def facts(self) -> dict[str, Any]:
        """Facts about the device from ONE command (cached): see the module docstring."""
        if self._facts is not None:
            return self._facts
        label = self.connection.label
        script = (f"HOSTINFO = {Path(hostinfo.__file__).read_text()!r}\n"
                  f"PACKAGES = {DEVICE_PACKAGES!r}\nWORKDIR = {self.workdir!r}\n{_PREFLIGHT}")
        py = quote(self.python)
        command = sh(f"command -v {shlex.quote(self.python[0])} >/dev/null 2>&1 || "
                     "{ echo EDGEKIT_NO_PYTHON; uname -m; exit 0; }; exec " + py + " -")
        done = self.connection.run(command, input=script.encode(),
                                   timeout=self.connection.connect_timeout + 60,
                                   action="run the preflight check on")
        out = done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        if "EDGEKIT_NO_PYTHON" in out:
            arch = out.split("EDGEKIT_NO_PYTHON", 1)[1].strip()
            raise DeviceError(
                f"{self.python[0]} not found on {label} ({arch or 'unknown arch'}; PATH of "
                f"a non-interactive SSH session): install Python >= {MIN_PYTHON[0]}."
                f"{MIN_PYTHON[1]} there and {_INSTALL_HINT}, or set the target's access.python "
                "to the interpreter's full path")
        line = next((ln for ln in out.splitlines() if ln.startswith("EDGEKIT_PREFLIGHT ")), None)
        if done.returncode != 0 or line is None:
            raise DeviceError(f"the preflight check failed on {label} with "
                              f"{' '.join(self.python)} (exit code {done.returncode}): "
                              f"{tail(err or out)}")
        facts = json.loads(line.split(" ", 1)[1])
        self._check(facts)
        cpu = facts.get("cpu") or {"model": "unknown", "arch": facts["machine"],
                                   "logical_cores": facts["cores"], "physical_cores": None,
                                   "features": [], "governor": None,
                                   "freq_mhz": {"current": None, "max": None}}
        self._facts = {
            "host": label, "arch": cpu["arch"], "cores": cpu["logical_cores"],
            "cpu": cpu, "features": cpu["features"], "python": facts["python"],
            "python_path": facts["python_path"], "os": facts["os"],
            "packages": facts["packages"], "governor": cpu["governor"],
            "freq_mhz": cpu["freq_mhz"], "temperature_c": facts.get("temperature_c"),
            "throttled": facts.get("throttled"), "taskset": facts["taskset"],
            "vcgencmd": facts["vcgencmd"], "home": facts["home"], "workdir": facts["workdir"]}
        return self._facts

    def _check(self, facts: dict[str, Any]) -> None:
        py = " ".join(self.python)
        label = self.connection.label
        if tuple(facts["version_info"]) < MIN_PYTHON:
            raise DeviceError(f"{py} on {label} is Python {facts['python']}; the runner "
                              f"needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (set access.python to a "
                              "newer interpreter there)")
        pk = facts["packages"]
        missing = [n for n in ("numpy", "Pillow") if not pk.get(n)]
        if missing:
            raise DeviceError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                              f"not installed for {py} on {label}: run there "
                              f"`{py} -m {_INSTALL_HINT}`")
        if not any(pk.get(d) for b in backend_names() for d in runtime_dists(b)):
            raise DeviceError(f"no inference runtime is installed for {py} on {label}: "
                              f"run there `{py} -m {_INSTALL_HINT}`")

    def has_runtime(self, backend: str) -> bool:
        """Is a distribution that runs ``backend`` installed there (True for unknown names)?"""
        dists = runtime_dists(backend)
        return not dists or any(self.facts()["packages"].get(d) for d in dists)

    def environment(self) -> dict[str, Any]:
        """The device, in the shape of ``protocol.environment()`` plus ``host``."""
        f = self.facts()
        return {"cpu": f["cpu"], "os": f["os"], "python": f["python"],
                "packages": {k: v for k, v in f["packages"].items() if v},
                "temperature_c": f["temperature_c"], "throttled": f["throttled"],
                "host": self.connection.label}
