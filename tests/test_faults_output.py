"""Issue 16, data loss and output: what edgekit writes, replaces and leaves behind.

One or more tests per numbered item of the issue (``test_itemNN_...``); each failed before its
fix. The bundles are small (64 px phantoms, fp32 onnxruntime) and copied before any change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
