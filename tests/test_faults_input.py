"""Issue 16, input and wording items: each test reproduces one numbered defect with real files
(a tiny bundle from ``test_manifest.make_bundle``, phantom images, real CLI runs).

4, 5: manifest paths are confined to the bundle, broken manifests are refused (verify, runner);
6: 16-bit images are scaled by their bit depth, not clipped to 8 bits;
8: images far below the input size are upscaled with one warning per run;
9: non-UTF-8 file names in --data; 10: a 0-byte .onnx; 11: decompression-bomb images;
14: misleading wording (random bytes as model.pt, a directory as an image, runner options after
the bundle, a bundle without artifacts, a ProxyJump value carrying an ssh option).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from test_manifest import ONNX, edit, make_bundle

from edgekit.bench.ssh.upload import bundle_files
from edgekit.calibrate import check_readable
from edgekit.data.folder import Sample, dhash_file, files_digest, scan_folder, split_dataset
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError, DataError
from edgekit.evaluate import load_arrays
from edgekit.manifest import MANIFEST
from edgekit.runner import Runner, choose_artifact
from edgekit.sources import load_model
from edgekit.targets import SshAccess, load_target, ssh_option_problem

BAD_NAME = b"bad\xff\xfe"  # not UTF-8: Linux file names are bytes


def _runner(*args: object) -> subprocess.CompletedProcess:
    """``python -m edgekit.runner ARGS`` in a fresh process (as on a board)."""
    return subprocess.run([sys.executable, "-m", "edgekit.runner", *map(str, args)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"})


def _bomb(path: Path) -> Path:
    """A valid PNG of 20000 × 20000 one-bit pixels (50 KB on disk, 400 megapixels decoded)."""
    width = height = 20000
    row = b"\0" + bytes(width // 8)
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw)
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ 4: paths stay in the bundle
def _outside_copy(tiny: Path) -> Path:
    outside = tiny.parents[1] / "outside" / "model.onnx"
    outside.parent.mkdir(parents=True)
    shutil.copy(tiny / ONNX, outside)
    return outside


def _refused_everywhere(bundle: Path, image: Path, cli, message: str) -> None:
    """verify, the runner, the runner's bench and the SSH upload all refuse ``bundle``
    (``message``: a regular expression)."""
    assert re.search(message, cli("verify", bundle, code=1).output)
    for args in ((image,), ("--bench", "--quick")):
        done = _runner(bundle, *args)
        assert done.returncode == 1 and re.search(message, done.stderr), done.stderr
    with pytest.raises(DataError, match=message):  # nor is anything sent over SSH
        bundle_files(bundle)


def test_item04_dotdot_artifact_path_with_matching_sha256_is_refused(tiny, image, cli):
    _outside_copy(tiny)
    edit(tiny, lambda m: m["artifacts"][0]["files"][0].update(path="../../outside/model.onnx"))
    _refused_everywhere(tiny, image, cli, "leaves the bundle|unsafe file path")


def test_item04_symlinked_artifact_outside_the_bundle_is_refused(tiny, image, cli):
    outside = _outside_copy(tiny).resolve()
    (tiny / ONNX).unlink()
    (tiny / ONNX).symlink_to(outside)  # same bytes: the manifest's sha256 still matches
    _refused_everywhere(tiny, image, cli, "outside the bundle")


# ----------------------------------------------------------------- 5: broken manifests refused
BROKEN = {
    "no artifacts": (lambda m: m.update(artifacts=[]), "must list at least one artifact"),
    "input_size 0x0": (lambda m: m["preprocess"].update(input_size=[0, 0]),
                       "input_size must be two sizes"),
    "scale NaN": (lambda m: m["preprocess"].update(scale=float("nan")),
                  "preprocess.scale: must be a finite number"),
}


@pytest.mark.parametrize("defect", list(BROKEN))
def test_item05_verify_and_runner_refuse_a_broken_manifest(tiny, image, cli, defect):
    change, message = BROKEN[defect]
    edit(tiny, change)
    result = cli("verify", tiny, code=1)
    assert f"{tiny / MANIFEST}: " in result.output and message in " ".join(result.output.split())
    done = _runner(tiny, image)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_item05_class_names_shorter_than_the_outputs(tmp_path, image, cli):
    bundle = make_bundle(tmp_path / "b", width=5)  # 5 outputs, 4 class names
    result = cli("verify", bundle, code=1)
    assert "5 outputs" in result.output or "class names" in result.output
    done = _runner(bundle, image)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "class names" in done.stderr and "zip()" not in done.stderr


def test_item05_unlisted_files_are_reported(tiny, cli):
    (tiny / "thesis.txt").write_text("mine")
    result = cli("verify", tiny)
    assert "thesis.txt" in result.output and "not in manifest.json" in result.output


# --------------------------------------------------------------------- 6: 16-bit images scaled
def _sixteen_bit(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A 12-bit 'MRI slice' saved as a 16-bit PNG, and its exact 8-bit equivalent."""
    ramp = (np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64 - 1) * 4095)
    values = ramp.astype(np.uint16)
    png16 = tmp_path / "slice16.png"
    Image.fromarray(values).save(png16)
    assert Image.open(png16).mode.startswith("I")
    png8 = tmp_path / "slice8.png"
    Image.fromarray(np.round(values / 65535 * 255).astype(np.uint8), mode="L").save(png8)
    return png16, png8, values


def test_item06_sixteen_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    png16, png8, values = _sixteen_bit(tmp_path)
    spec = PreprocessSpec(input_size=(64, 64), color="gray", mean=(0.0,), std=(1.0,))
    x = spec.load(png16)[0]  # training, calibration and the runner all read through load()
    assert np.count_nonzero(x >= 0.999) == 0, "values above 255 saturated at 1.0"
    np.testing.assert_allclose(x, values / 65535, atol=1e-6)
    np.testing.assert_allclose(x, spec.load(png8)[0], atol=1 / 255)
    rgb = PreprocessSpec(input_size=(32, 32)).load(png16)
    assert rgb.shape == (3, 32, 32) and rgb.max() < 4096 / 65535 + 1e-3
    # the de-duplication hash sees the same image, not a flat white one
    assert dhash_file(png16) == dhash_file(png8)


def test_item06_runner_reads_sixteen_bit_png_like_its_8_bit_equivalent(tiny, tmp_path):
    png16, png8, _ = _sixteen_bit(tmp_path)
    done = _runner("--json", tiny, png16, png8)
    assert done.returncode == 0, done.stderr
    a, b = (json.loads(line) for line in done.stdout.splitlines())
    assert a["prediction"] == b["prediction"]
    for c in a["probabilities"]:
        assert abs(a["probabilities"][c] - b["probabilities"][c]) < 0.01


def test_item06_floating_point_images_are_refused_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((16, 16), 3000.0, np.float32)).save(path)
    with pytest.raises(DataError, match=r"float\.tif: .*floating-point"):
        PreprocessSpec(input_size=(16, 16)).load(path)


# ------------------------------------------------------------------- 8: tiny images are upscaled
def _tiny_images_dataset(root: Path, mri_phantoms: Path) -> Path:
    for cls in ("glioma", "notumor"):
        (root / cls).mkdir(parents=True)
        for f in sorted((mri_phantoms / cls).iterdir())[:3]:
            shutil.copy(f, root / cls / f.name)
        for k in range(2):
            Image.new("L", (1 + k, 1), 128).save(root / cls / f"speck{k}.png")
    return root


def test_item08_images_far_below_the_input_size_warn_once_with_a_count(tmp_path, mri_phantoms):
    data = _tiny_images_dataset(tmp_path / "data", mri_phantoms)
    dataset = scan_folder(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_arrays(dataset, PreprocessSpec(input_size=(64, 64)), on_error="skip")
    small = [str(w.message) for w in caught if "smaller than" in str(w.message)]
    assert len(small) == 1, small
    assert "4 of 10 images" in small[0] and "speck0.png" in small[0] and "64×64" in small[0]


def test_item08_runner_warns_once_about_tiny_images(tiny, tmp_path, image):
    specks = []
    for k in range(3):
        specks.append(tmp_path / f"speck{k}.png")
        Image.new("RGB", (1, 1), (9, 9, 9)).save(specks[-1])
    done = _runner(tiny, image, *specks)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "smaller than" in ln]
    assert len(lines) == 1 and "3 of 4 images" in lines[0], done.stderr
    done = _runner(tiny, image)  # an image at the input size: no warning
    assert "smaller than" not in done.stderr


# ----------------------------------------------------------------- 9: non-UTF-8 names in --data
def test_item09_files_digest_of_a_non_utf8_name(tmp_path):
    root = Path(os.fsdecode(os.fsencode(tmp_path)))
    bad = Path(os.fsdecode(os.fsencode(root / "a") + b"/" + BAD_NAME + b".jpg"))
    good = root / "a" / "good.jpg"
    digest = files_digest([Sample(good, 0), Sample(bad, 0)], root)
    assert len(digest) == 64 and digest != files_digest([Sample(good, 0)], root)
    # names that are UTF-8 keep the digest they always had
    assert files_digest([Sample(good, 0)], root) == hashlib.sha256(b"a/good.jpg").hexdigest()


def test_item09_train_and_compress_with_non_utf8_file_names(tmp_path, mri_copy, cli):
    for cls in sorted(p for p in mri_copy.iterdir() if p.is_dir()):
        for f in sorted(cls.iterdir())[:4]:
            os.rename(os.fsencode(f), os.fsencode(cls) + b"/" + BAD_NAME + os.fsencode(f.name))
    model = tmp_path / "model.pt"
    cli("train", "dsconv_cbam_gap", "--data", mri_copy, "--input-size", 32, "--epochs", 1,
        "--out", model)
    meta = json.loads(subprocess.run(
        [sys.executable, "-c", "import sys, json; from edgekit.checkpoint import "
         "load_checkpoint; print(json.dumps(load_checkpoint(sys.argv[1])[1]))", str(model)],
        capture_output=True, text=True, check=True).stdout)
    assert any("\\udcff" in json.dumps(f) for f in meta["split"]["val_files"]), \
        "the test needs a non-UTF-8 name among the validation files"
    out = tmp_path / "bundle"
    cli("compress", model, "--data", mri_copy, "--out", out, "--backend", "onnxruntime",
        "--recipe", "fp32", "--allow-accuracy-drop")
    cli("verify", out)


# ------------------------------------------------------------------------- 10: a 0-byte .onnx
def test_item10_empty_onnx_file_is_named(tmp_path, mri_phantoms, cli):
    empty = tmp_path / "model.onnx"
    empty.write_bytes(b"")
    result = cli("compress", empty, "--data", mri_phantoms, "--out", tmp_path / "b",
                 "--backend", "onnxruntime", code=1)
    assert f"{empty}: empty file (0 bytes), not an ONNX model" in result.output
    assert not (tmp_path / "b").exists()


def test_item10_onnx_without_a_graph_input_is_named(tmp_path):
    path = tmp_path / "nograph.onnx"
    onnx.save(onnx.ModelProto(ir_version=9), str(path))

    with pytest.raises(DataError, match=r"nograph\.onnx: not an ONNX model.*no graph input"):
        load_model(path)


# --------------------------------------------------------------- 11: decompression-bomb images
def test_item11_bomb_is_skipped_by_name_when_reading_and_splitting(tmp_path, mri_copy):
    bomb = _bomb(mri_copy / "glioma" / "bomb.png")
    dataset = scan_folder(mri_copy)
    with pytest.warns(UserWarning, match=r"skipping .*bomb\.png: .*(decompression bomb|pixels)"):
        split = split_dataset(dataset)  # train decodes every image here first
    assert bomb in [p for p, _ in split.train.skipped]
    with pytest.raises(DataError, match=r"bomb\.png: .*(decompression bomb|pixels)"):
        split_dataset(scan_folder(mri_copy), on_error="fail")
    spec = PreprocessSpec(input_size=(64, 64))  # calibration, verification and the runner
    with pytest.raises(DataError, match=r"bomb\.png: not a readable image"):
        spec.load(bomb)


def test_item11_train_skips_a_bomb_and_fail_mode_names_it(tmp_path, mri_copy, cli):
    _bomb(mri_copy / "glioma" / "bomb.png")
    result = cli("train", "dsconv_cbam_gap", "--data", mri_copy, "--input-size", 32,
                 "--epochs", 1, "--out", tmp_path / "m.pt", "--on-error", "fail", code=1)
    assert "bomb.png" in result.output and "Traceback" not in result.output
    result = cli("train", "dsconv_cbam_gap", "--data", mri_copy, "--input-size", 32,
                 "--epochs", 1, "--out", tmp_path / "m.pt")
    assert "bomb.png" in result.output


def test_item11_compress_skips_a_bomb(tmp_path, mri_phantoms):
    bomb = _bomb(tmp_path / "bomb.png")
    samples = [Sample(bomb, 0), *(Sample(p, 0) for p in sorted(mri_phantoms.rglob("*.jpg"))[:2])]
    with pytest.warns(UserWarning, match=r"bomb\.png"):
        kept, skipped = check_readable(samples, PreprocessSpec(input_size=(32, 32)), "skip",
                                       "calibration")
    assert skipped == [str(bomb)] and len(kept) == 2
    with pytest.raises(DataError, match=r"bomb\.png"):
        check_readable(samples, PreprocessSpec(input_size=(32, 32)), "fail", "calibration")


def test_item11_runner_names_a_bomb_and_classifies_the_rest(tiny, tmp_path, image):
    bomb = _bomb(tmp_path / "bomb.png")
    done = _runner(tiny, bomb, image)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"Error: {bomb}: not a readable image" in done.stderr
    assert str(image) in done.stdout


# ----------------------------------------------------------------------- 14: misleading wording
def test_item14a_random_bytes_named_model_pt_are_not_called_a_pickle(tmp_path, mri_phantoms,
                                                                      cli):
    path = tmp_path / "model.pt"
    path.write_bytes(np.random.default_rng(16).integers(0, 256, 4096, np.uint8).tobytes())
    result = cli("compress", path, "--data", mri_phantoms, "--out", tmp_path / "b", code=1)
    text = " ".join(result.output.split())
    assert f"{path}: not a PyTorch checkpoint" in text
    assert "pickle that needs code execution" not in text


def test_item14b_a_directory_given_to_the_runner_is_called_a_directory(tiny, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    done = _runner(tiny, folder)
    assert done.returncode == 1
    assert f"Error: {folder}: is a directory, not an image file" in done.stderr
    assert "file not found" not in done.stderr


def test_item14c_runner_options_after_the_bundle(tiny, image):
    done = _runner(tiny, "--artifact", "onnxruntime-fp32", image)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{image}\t")
    done = _runner(tiny, image, "--json", "--artifact", "onnxruntime-fp32", image)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2


def test_item14d_a_bundle_without_artifacts_says_so(tiny, image):
    edit(tiny, lambda m: m.update(artifacts=[]))
    done = _runner(tiny, image)
    assert done.returncode == 1
    assert "must list at least one artifact" in done.stderr
    assert "No runtime" not in done.stderr
    manifest = Runner(make_bundle(tiny.parent / "other"), open_session=False).manifest
    with pytest.raises(DataError, match="no artifacts"):  # a Manifest built in code
        choose_artifact(dataclasses.replace(manifest, artifacts=()))


def test_item14d_the_runner_prefers_an_undecided_artifact_to_a_failed_one(tiny):
    """passed < inconclusive-gate < failed-gate, whatever the order in the manifest (a failed
    INT8 listed first was chosen over an inconclusive one)."""
    manifest = Runner(tiny, open_session=False).manifest
    art = manifest.artifacts[0]
    arts = (dataclasses.replace(art, name="a-failed", status="failed-gate"),
            dataclasses.replace(art, name="b-undecided", status="inconclusive-gate"))
    chosen = choose_artifact(dataclasses.replace(manifest, artifacts=arts))
    assert chosen.name == "b-undecided"
    passed = dataclasses.replace(art, name="c-passed", status="passed")
    chosen = choose_artifact(dataclasses.replace(manifest, artifacts=(*arts, passed)))
    assert chosen.name == "c-passed"


@pytest.mark.parametrize("value", ["-oProxyCommand=touch /tmp/pwned", "-J evil",
                                   "bastion -oProxyCommand=x", "user@host;touch x",
                                   "bastion,-oProxyCommand=x", "`touch x`@bastion"])
def test_item14e_proxyjump_carrying_an_ssh_option_is_refused_by_edgekit(value):
    assert "ProxyJump" in (ssh_option_problem(f"ProxyJump={value}") or "")
    with pytest.raises(ValueError, match="ProxyJump"):
        SshAccess(kind="ssh", host="pi", options=[f"ProxyJump={value}"])


@pytest.mark.parametrize("value", ["bastion", "user@bastion:2222", "a@b,c@d:22",
                                   "ssh://user@bastion:2222", "none", "user@[fe80::1]:22"])
def test_item14e_plain_proxyjump_values_still_pass(value):
    assert ssh_option_problem(f"ProxyJump={value}") is None


def test_item14e_a_target_file_with_an_injected_proxyjump_is_a_usage_error(tmp_path):
    target = tmp_path / "pi.yaml"
    target.write_text("name: pi\narch: aarch64\n"
                      "access: {kind: ssh, host: pi, options: ['ProxyJump=-oProxyCommand=x']}\n")
    with pytest.raises(ConfigError, match=r"access\.options.*ProxyJump") as info:
        load_target(target)
    assert str(target) in str(info.value)
