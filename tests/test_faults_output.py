"""Issue 16, data loss and output: what edgekit writes, replaces and leaves behind.

One or more tests per numbered item of the issue (``test_itemNN_...``); each failed before its
fix. The bundles are small (64 px phantoms, fp32 onnxruntime) and copied before any change.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.bench.run import _run_folder
from edgekit.bundle import read_manifest, verify_bundle

SMALL = ("--recipe", "fp32", "--backend", "onnxruntime", "--verification-images", "16",
         "--allow-accuracy-drop")


@pytest.fixture(scope="module")
def small_bundle(trained, mri_phantoms, tmp_path_factory) -> Path:
    """An fp32 onnxruntime bundle of ``trained`` (read-only: copy before changing it)."""
    from edgekit.compress import compress

    out = tmp_path_factory.mktemp("faults") / "bundle"
    compress(trained, data=mri_phantoms, out=out, recipe="fp32", backends=["onnxruntime"],
             verification_images=16, allow_accuracy_drop=True)
    return out


@pytest.fixture
def bundle_copy(small_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(small_bundle, dst)
    return dst


def _compress(cli, trained, data, out, *extra, code=0):
    return cli("compress", trained, "--data", data, "--out", out, *SMALL, *extra, code=code)


# ------------------------------------------------------------------------------ item 1
def test_item01_overwrite_refuses_a_folder_that_only_holds_a_manifest_json(
        cli, trained, mri_phantoms, tmp_path):
    """``echo '{}' > u/manifest.json`` does not make ``u`` a bundle: --overwrite refuses and
    says why; the user's thesis survives."""
    u = tmp_path / "u"
    u.mkdir()
    (u / "thesis.txt").write_text("x\n")
    (u / "manifest.json").write_text("{}\n")
    res = _compress(cli, trained, mri_phantoms, u, "--overwrite", code=2)
    assert f"Error: {u} exists and is not an edgekit bundle" in res.stderr
    assert "manifest.json" in res.stderr and "refusing to replace it" in res.stderr
    assert (u / "thesis.txt").read_text() == "x\n"
    assert (u / "manifest.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]  # no partial folder left


def test_item01_overwrite_refuses_a_bundle_holding_files_it_does_not_list(
        cli, trained, mri_phantoms, bundle_copy):
    """A real bundle with a user's file in it: replacing it would delete the file, so refuse
    and name it (bench/ is edgekit's own: item 2)."""
    (bundle_copy / "notes.txt").write_text("my notes")
    (bundle_copy / "artifacts" / "extra").mkdir()
    (bundle_copy / "artifacts" / "extra" / "mine.onnx").write_bytes(b"mine")
    before = read_manifest(bundle_copy)
    res = _compress(cli, trained, mri_phantoms, bundle_copy, "--overwrite", code=2)
    assert "files its manifest.json does not list" in res.stderr
    assert "notes.txt" in res.stderr and "artifacts/extra/mine.onnx" in res.stderr
    assert (bundle_copy / "notes.txt").read_text() == "my notes"
    assert (bundle_copy / "artifacts" / "extra" / "mine.onnx").read_bytes() == b"mine"
    assert read_manifest(bundle_copy) == before


def test_item01_overwrite_replaces_a_verified_bundle(cli, trained, mri_phantoms, bundle_copy):
    """The case --overwrite is for still works: a bundle with nothing unlisted is replaced."""
    before = read_manifest(bundle_copy)["created"]
    _compress(cli, trained, mri_phantoms, bundle_copy, "--overwrite", "--seed", "3")
    assert read_manifest(bundle_copy)["recipe"]["seed"] == 3 != before
    verify_bundle(bundle_copy, load=False)
    assert not list(bundle_copy.parent.glob(".bundle.*"))


# ------------------------------------------------------------------------------ item 2
def test_item02_overwrite_keeps_the_bench_runs(cli, trained, mri_phantoms, bundle_copy):
    """BUNDLE/bench/ (bench runs, never overwritten, and whatever the user put there) moves
    into the new bundle."""
    run = bundle_copy / "bench" / "20250101T000000Z-x86-local"
    run.mkdir(parents=True)
    (run / "results.json").write_text('{"measured": true}')
    (bundle_copy / "bench" / "my-notes.txt").write_text("keep")
    before = read_manifest(bundle_copy)
    _compress(cli, trained, mri_phantoms, bundle_copy, "--overwrite", "--seed", "3")
    after = read_manifest(bundle_copy)
    assert after["recipe"]["seed"] == 3 and after != before
    assert (run / "results.json").read_text() == '{"measured": true}'
    assert (bundle_copy / "bench" / "my-notes.txt").read_text() == "keep"
    rows = verify_bundle(bundle_copy, load=False)  # bench/ is reported, not a problem
    assert any("bench/ (2 files)" in r["hashes"] for r in rows)
    assert not list(bundle_copy.parent.glob(".bundle.*"))


# ------------------------------------------------------------------------------ item 7
def test_item07_compress_refuses_an_out_inside_the_data(cli, trained, mri_copy):
    """``--out data/glioma/bundle`` would make the bundle (and later bench's pareto.png) part
    of the glioma class; refused before any work, naming both paths."""
    out = mri_copy / "glioma" / "bundle"
    before = sorted(p.name for p in (mri_copy / "glioma").iterdir())
    res = _compress(cli, trained, mri_copy, out, code=2)
    assert f"--out {out}" in res.stderr and f"is inside --data {mri_copy}" in res.stderr
    assert sorted(p.name for p in (mri_copy / "glioma").iterdir()) == before
    res = _compress(cli, trained, mri_copy, mri_copy, "--overwrite", code=2)  # the folder itself
    assert f"is inside --data {mri_copy}" in res.stderr


def test_item07_train_and_prune_refuse_an_out_inside_the_data(cli, trained, mri_copy):
    res = cli("train", "dsconv_cbam_gap", "--data", mri_copy, "--input-size", "64",
              "--epochs", "1", "--out", mri_copy / "model.pt", code=2)
    assert f"--out {mri_copy / 'model.pt'} is inside --data {mri_copy}" in res.stderr
    res = cli("prune", trained, "--data", mri_copy, "--out", mri_copy / "notumor" / "p.pt",
              code=2)
    assert f"is inside --data {mri_copy}" in res.stderr
    assert not (mri_copy / "model.pt").exists() and not (mri_copy / "notumor" / "p.pt").exists()


def test_item07_bench_refuses_a_run_folder_inside_the_data(cli, small_bundle, mri_copy, tmp_path):
    """A bundle that an older edgekit put into the data, benched with that data: its default
    run folder (BUNDLE/bench) would put pareto.png among the glioma images."""
    inside = mri_copy / "glioma" / "bundle"
    shutil.copytree(small_bundle, inside)
    res = cli("bench", inside, "--data", mri_copy, "--quick", "--no-source", code=2)
    assert f"is inside --data {mri_copy}" in res.stderr and str(inside / "bench") in res.stderr
    assert not (inside / "bench").exists()
    bundle = tmp_path / "b"
    shutil.copytree(small_bundle, bundle)
    res = cli("bench", bundle, "--data", mri_copy, "--quick", "--no-source",
              "--out", mri_copy / "runs", code=2)
    assert f"--out {mri_copy / 'runs'} is inside --data {mri_copy}" in res.stderr
    assert not (mri_copy / "runs").exists()


# ------------------------------------------------------------------------------ item 12
# Tests run as root here (chmod does not stop root), so the read-only filesystem and the full
# disk are the kernel's own errors raised where the write happens; the handling is real.
def _fail_writes_under(monkeypatch, folder: Path, err: int, *, after_bytes: int = 0) -> None:
    """Every mkdir under ``folder`` fails with ``err``; so does writing a file there once
    ``after_bytes`` bytes are written (a disk that fills up half-way through a file)."""
    real_mkdir = Path.mkdir
    text = os.strerror(err)

    def mkdir(self, *args, **kwargs):  # an existing folder is EEXIST first, as on a real fs
        if Path(self).resolve().is_relative_to(folder) and not after_bytes and not self.exists():
            raise OSError(err, text, str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    if after_bytes:
        real_write = Path.write_bytes

        def write_bytes(self, data):
            if Path(self).resolve().is_relative_to(folder):
                real_write(self, data[:after_bytes])
                raise OSError(err, text, str(self))
            return real_write(self, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_item12_read_only_out_is_one_error_naming_the_path(cli, trained, mri_phantoms, tmp_path,
                                                           monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _fail_writes_under(monkeypatch, ro.resolve(), errno.EROFS)
    res = _compress(cli, trained, mri_phantoms, ro / "bundle", code=2)
    assert f"Error: cannot write the bundle {ro / 'bundle'}: Read-only file system" in res.stderr
    assert str(ro) in res.stderr and "Traceback" not in res.output
    assert list(ro.iterdir()) == []


def test_item12_full_disk_during_export_names_the_file_and_leaves_nothing(
        cli, trained, mri_phantoms, tmp_path, monkeypatch):
    """The disk fills up while the exporter writes the artifact."""
    from edgekit.backends import onnxruntime as ort_backend

    real_export = type(ort_backend.BACKEND).export

    def export(self, request):
        artifact = real_export(self, request)
        data = artifact.path.read_bytes()
        artifact.path.unlink()
        artifact.path.write_bytes(data)  # again, on a disk with 100 bytes left
        return artifact

    monkeypatch.setattr(type(ort_backend.BACKEND), "export", export)
    _fail_writes_under(monkeypatch, tmp_path.resolve(), errno.ENOSPC, after_bytes=100)
    out = tmp_path / "bundle"
    res = _compress(cli, trained, mri_phantoms, out, code=1)
    assert f"Error: cannot write the bundle {out}: No space left on device (" in res.stderr
    assert "model-fp32.onnx)" in res.stderr and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []  # no half-written artifact, no partial folder


def test_item12_full_disk_while_writing_a_bench_run(cli, small_bundle, tmp_path, monkeypatch):
    real_write_text = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name == "results.json":  # the disk is full when the measurements are saved
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    runs = tmp_path / "runs"
    res = cli("bench", small_bundle, "--quick", "--no-source", "--threads", "1", "--out", runs,
              code=1)
    assert f"Error: cannot write the bench run under {runs}: No space left on device" \
        in res.stderr
    assert "results.json" in res.stderr and "Traceback" not in res.output
    assert not runs.exists() or list(runs.iterdir()) == []


def test_item12_full_disk_while_saving_a_checkpoint(cli, mri_phantoms, tmp_path, monkeypatch):
    import torch

    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "ckpt" / "model.pt"
    res = cli("train", "dsconv_cbam_gap", "--data", mri_phantoms, "--input-size", "32",
              "--epochs", "1", "--max-per-class", "4", "--out", out, code=1)
    assert f"Error: cannot write the checkpoint {out}: No space left on device" in res.stderr
    assert "Traceback" not in res.output and list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------ item 3
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
       "PYTHONWARNINGS": "ignore"}


def _wait_for(pattern_dir: Path, pattern: str, proc: subprocess.Popen, seconds: float) -> Path:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = sorted(pattern_dir.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {pattern} appeared in {seconds} s")


def test_item03_a_killed_compress_leaves_a_partial_folder_the_next_run_deletes(
        cli, trained, mri_phantoms, tmp_path):
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "compress", trained, "--data",
                             mri_phantoms, "--out", out, *SMALL], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = _wait_for(tmp_path, ".b.partial-*", proc, 120)
    proc.send_signal(signal.SIGKILL)  # no clean-up runs
    proc.wait()
    assert partial.is_dir()
    _compress(cli, trained, mri_phantoms, out)
    assert not partial.exists() and not list(tmp_path.glob(".b.*"))
    assert read_manifest(out)["status"] == "passed"


def test_item03_a_live_runs_partial_folder_is_kept_and_an_unknown_one_named(
        cli, trained, mri_phantoms, tmp_path):
    """Another process still writing into the same place keeps its folder; one edgekit cannot
    attribute (an older edgekit's, another host's) is left alone and named in a warning."""
    out = tmp_path / "b"
    code = ("import sys, time; from edgekit.bundle import BundleWriter; "
            "BundleWriter(sys.argv[1]).__enter__(); print('ready', flush=True); time.sleep(60)")
    live = subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "ready\n"
        (live_partial,) = tmp_path.glob(".b.partial-*")
        unknown = tmp_path / ".b.partial-0a1b2c3d"
        (unknown / "artifacts").mkdir(parents=True)
        res = _compress(cli, trained, mri_phantoms, out)
        assert live_partial.is_dir() and unknown.is_dir()
        assert "left by earlier runs that did not finish" in res.stderr
        assert str(unknown) in res.stderr and str(live_partial) not in res.stderr
    finally:
        live.kill()
        live.wait()


def test_item03_bench_with_missing_data_leaves_no_empty_bench_folder(cli, bundle_copy, tmp_path):
    res = cli("bench", bundle_copy, "--data", tmp_path / "nope", "--quick", "--no-source",
              code=1)
    assert "nope" in res.stderr
    assert not (bundle_copy / "bench").exists()
    (bundle_copy / "bench").mkdir()  # a folder that was there before is kept, even empty
    cli("bench", bundle_copy, "--data", tmp_path / "nope", "--quick", code=1)
    assert (bundle_copy / "bench").is_dir()


def test_item03_an_interrupted_bench_leaves_no_empty_bench_folder(bundle_copy, mri_phantoms,
                                                                  monkeypatch):
    from edgekit.bench import bench
    from edgekit.bench import run as bench_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_run, "_eval_set", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench([bundle_copy], data=mri_phantoms, quick=True, source=False)
    assert not (bundle_copy / "bench").exists()
    assert sorted(p.name for p in bundle_copy.iterdir()) == ["README.md", "artifacts",
                                                             "manifest.json"]


# ------------------------------------------------------------------------------ item 13
_EXPORT_INTERRUPTED = """
import os, signal, sys, time
import torch

def export(*args, **kwargs):
    try:
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, through the real handler
        time.sleep(5)
    except KeyboardInterrupt:
        raise AttributeError("partially initialized module 'torch._dynamo' has no "
                             "attribute 'exc' (most likely due to a circular import)") from None
    raise AssertionError("no SIGINT arrived")

torch.onnx.export = export
sys.argv = ["edgekit", *sys.argv[1:]]
from edgekit.__main__ import run
run()
"""


def test_item13_an_interrupt_the_exporter_turns_into_another_error_is_reported_as_one(
        trained, mri_phantoms, tmp_path):
    """Ctrl-C in the middle of torch's lazy imports leaves half-initialized modules; torch's
    own error handling then fails with "partially initialized module" and the backend reported
    that as a failed export. The interrupt is what happened: exit 130, nothing left. (In a
    process of its own: a real SIGINT inside the test process, with every runtime's threads
    loaded by earlier tests, can crash it.)"""
    out = tmp_path / "b"
    proc = subprocess.run([sys.executable, "-c", _EXPORT_INTERRUPTED, "compress", str(trained),
                           "--data", str(mri_phantoms), "--out", str(out), *SMALL], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last == "Error: interrupted (SIGINT)" and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_item13_sigint_in_the_first_seconds_of_compress_exits_130(trained, mri_phantoms,
                                                                   tmp_path):
    """A real `python -m edgekit compress` interrupted while it imports, while it reads the data
    and as soon as it starts exporting (bounded: about 15 s in all)."""
    out = tmp_path / "b"
    for when in (0.1, 0.6, 1.5, "export"):
        proc = subprocess.Popen([sys.executable, "-m", "edgekit", "compress", trained,
                                 "--data", mri_phantoms, "--out", out, *SMALL], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if when == "export":
            _wait_for(tmp_path, ".b.partial-*", proc, 60)
        else:
            time.sleep(when)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (when, err)
        assert "Traceback" not in err and "Aborted" not in err, (when, err)
        assert err.rstrip().splitlines()[-1] == "Error: interrupted (SIGINT)", (when, err)
        assert list(tmp_path.iterdir()) == [], when


# -------------------------------------------------- README promise: bench runs never overwritten
def test_bench_runs_are_never_overwritten(tmp_path):
    """A second run in the same second gets its own folder; the first is left as it was."""
    first = _run_folder([], tmp_path, "x86-local")
    first.mkdir()
    (first / "results.json").write_text("{}")
    second = _run_folder([], tmp_path, "x86-local")
    assert second != first and not second.exists()
    assert (first / "results.json").read_text() == "{}"


def test_every_test_named_in_docs_reliability_exists():
    """docs/reliability.md tells reviewers which test backs each promise: the names must be
    real (a ``*`` suffix names a family, which must have at least one member)."""

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "reliability.md").read_text()
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(
        p.read_text() for p in (root / "tests").glob("test_*.py")), flags=re.M))
    named = re.findall(r"`(?:[\w.]+::)?(test_\w+\*?)(?![\w.])", doc)
    assert len(named) > 30
    for name in named:
        if name.endswith("*"):
            assert any(d.startswith(name[:-1]) for d in defined), name
        else:
            assert name in defined, name
