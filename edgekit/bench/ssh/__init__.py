"""Benchmark a bundle on a device over the user's own OpenSSH (``docs/TARGETS.md``, protocol).

``SshExecutor`` is the executor of ``edgekit.bench.run`` for ``access: {kind: ssh}`` targets. It
runs the ``ssh`` program (so ``~/.ssh/config``, agents and ``ProxyJump`` work as they do for the
user), always with ``BatchMode=yes`` (never a prompt) and ``StrictHostKeyChecking=yes`` (an
unknown or changed host key is an error, never accepted). One connection is opened and shared
(``ControlMaster``, socket in a private temporary folder) and closed by ``close()``.

1. ``preflight()``: one command reports the device's CPU (``hostinfo``'s own code, run there),
   Python, numpy/Pillow/runtime versions, governor, clocks, temperature, ``vcgencmd`` and
   ``taskset``; a missing Python, numpy or Pillow, or no runtime at all, is a ``DeviceError``.
2. Upload: the manifest's files and the single-file runner (``edgekit-runner.pyz``) go into one
   fresh run folder ``WORKDIR/run-<random>`` as one tar stream; every file's sha256 is then
   computed *on the device* and compared with the local hashes (a mismatch is a DeviceError).
   Each bundle is sent once per executor.
3. ``time_artifact``: ``python3 edgekit-runner.pyz BUNDLE --bench`` there, with the protocol's
   options, the thread count and ``taskset -c`` pinning; the row is the runner's JSON line (the
   same as ``LocalExecutor``'s, including the thermal sampling done by the runner), with
   ``environment.host`` added. A failing artifact is a ``RunFailed`` (one row), naming the
   backend when its runtime is not installed on the device.
4. ``logits``: the images go over as one tar stream; the runner writes ``--save-logits`` there
   and the ``.npy`` comes back.
5. ``close()``: stops any runner still running (each run writes its PID to ``pids/``), removes
   the run folder and ends the shared connection.

Pinning: a protocol with ``pin`` CPU ids pins to exactly those (checked against the device's
cores). Otherwise, an executor made with ``pin=True`` (a target with ``pin: true``) pins a run
with ``N`` threads to the device's LAST ``N`` cores: CPU 0 takes most interrupts (and the SSH
session itself), so the highest-numbered cores are the quietest. No secret (key contents,
passwords) is ever read, stored or reported: only the key's path is passed to ``ssh -i``.

One module per concern: ``host`` (``user@host[:port]`` text), ``connection`` (the ``ssh``
program, the shared connection, ssh's errors), ``preflight`` (1.), ``upload`` (2., the run
folder) and ``executor`` (3.-5., running the runner). The SSH option policy a target's
``access.options`` obey is ``edgekit.targets.ssh_option_problem``.
"""

from edgekit.bench.ssh.connection import DeviceError, SshConnection
from edgekit.bench.ssh.executor import SshExecutor
from edgekit.bench.ssh.host import format_host, parse_host
from edgekit.bench.ssh.preflight import DeviceProbe
from edgekit.bench.ssh.upload import RunFolder

__all__ = ["DeviceError", "DeviceProbe", "RunFolder", "SshConnection", "SshExecutor",
           "format_host", "parse_host"]
