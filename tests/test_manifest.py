"""The typed bundle manifest: exact JSON round trip, strict schema, paths confined to the bundle.

The bundles here are built by hand around a tiny ONNX model (no torch, no compress run) so every
defect of issue 16 is one small edit of a bundle that otherwise verifies and runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgekit.bundle import (
    MANIFEST,
    BundleWriter,
    load_manifest,
    read_manifest,
    sha256_file,
    verify_bundle,
)
from edgekit.errors import DataError, VerificationFailed
from edgekit.manifest import Manifest
from edgekit.runner import Runner

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
ONNX = "artifacts/onnxruntime/model-fp32.onnx"


def _tiny_onnx(path: Path, width: int) -> None:
    """input (1, 3, 8, 8) → global average pool → (3 → width) matmul: ``width`` outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(
        (np.arange(3 * width, dtype=np.float32).reshape(3, width) - width) / 7.0, "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["output"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _spec() -> dict[str, Any]:
    return {"version": 1, "input_size": [8, 8], "color": "rgb", "scale": 0.00392156862745098,
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "NCHW",
            "ct_windows": None}


def _artifact(files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "onnxruntime-fp32", "backend": "onnxruntime", "precision": "fp32",
        "status": "passed", "files": files, "bytes": sum(f["bytes"] for f in files),
        "input": {"name": "input", "shape": [1, 3, 8, 8], "dtype": "float32", "layout": "NCHW"},
        "output": {"dtype": "float32"},
        "quantization": {},
        "notes": ["Runs on ONNX Runtime's CPUExecutionProvider."],
        "export_seconds": 0.31,
        "verification": {"n": 16, "max_abs_logit_diff": 1.2e-06, "passed": True,
                         "metrics": {"accuracy": {"value": 0.5, "ci95": [0.25, 0.75]}},
                         "checks": [{"check": "max |logit diff|", "passed": True}]},
    }


def manifest_json(files: list[dict[str, Any]]) -> dict[str, Any]:
    """A manifest in exactly the shape and key order ``compress`` writes (before ``commit``)."""
    return {
        "created": "2026-12-05T13:06:25+00:00",
        "started": "2026-12-05T13:06:15+00:00",
        "seconds": 10.4,
        "status": "passed",
        "source": {"source": "/data/model.pt", "kind": "torch", "architecture": "dsconv_cbam_gap",
                   "sha256": "a" * 64, "trained": True, "parameters": 31555,
                   "data_note": "synthetic phantoms (not clinical data)"},
        "task": "multiclass",
        "class_names": list(CLASSES),
        "head": {"scores_are": "logits", "threshold": 0.5},
        "preprocess": _spec(),
        "recipe": {"name": "fp32", "precision": "fp32", "backends": ["onnxruntime"],
                   "gate": {"max_top1_drop": 1.0}, "pruning": None},
        "data": {"data_root": "/data/mri", "origin": "held-out split recorded in the checkpoint",
                 "calibration_images": 0, "calibration_files_sha256": "b" * 64,
                 "verification_images": 16, "verification_files_sha256": "c" * 64,
                 "skipped_files": []},
        "source_metrics": {"task": "multiclass", "n_samples": 16,
                           "accuracy": {"value": 0.5, "ci95": [0.25, 0.75]}},
        "artifacts": [_artifact(files)],
        "environment": {"edgekit": "0.1.0", "python": "3.11.7", "machine": "x86_64",
                        "packages": {"numpy": "2.4.6", "onnxruntime": "1.32.0"}},
    }


def make_bundle(out: Path, width: int = 4) -> Path:
    """A valid one-artifact bundle (ONNX Runtime, fp32) written by BundleWriter."""
    with BundleWriter(out) as writer:
        model = writer.tmp / ONNX
        _tiny_onnx(model, width)
        writer.commit(manifest_json([writer.file_entry(model)]), "# tiny bundle\n")
    return out


def edit(bundle: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """Apply ``change`` to the bundle's manifest.json in place (as a person with an editor)."""
    path = bundle / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return bundle


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundles" / "tiny")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.png"
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------- round trip
def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _with_pruning(m: dict[str, Any]) -> dict[str, Any]:
    m["pruning"] = {"macs_fraction": 0.7, "plan_format": "edgekit.prune/1",
                    "checkpoint": {"path": "source/pruned.pt", "sha256": "d" * 64, "bytes": 9}}
    m["files"] = [m["pruning"]["checkpoint"]]
    return m


def _old(m: dict[str, Any]) -> dict[str, Any]:  # before heads were recorded
    del m["head"]
    return m


def _keras(m: dict[str, Any]) -> dict[str, Any]:
    m["source"]["keras"] = {"flavor": "keras", "removed_layers": [], "input_range": "0-255",
                            "input_range_reason": "in-graph Rescaling", "outputs": 4}
    m["head"] = {"scores_are": "probs", "threshold": 0.5}
    return m


def _binary(m: dict[str, Any]) -> dict[str, Any]:
    m["class_names"] = ["no", "yes"]
    m["head"] = {"scores_are": "logits", "threshold": 0.3, "type": "binary-sigmoid",
                 "positive_class": "yes"}
    return m


@pytest.mark.parametrize("variant", [lambda m: m, _with_pruning, _old, _keras, _binary],
                         ids=["plain", "pruned", "no-head", "keras", "binary"])
def test_round_trip_reproduces_the_json_byte_for_byte(variant) -> None:
    readme = {"path": "README.md", "sha256": "e" * 64, "bytes": 12}
    m = variant(manifest_json([{"path": ONNX, "sha256": "f" * 64, "bytes": 1}]))
    m = {"schema_version": 1, **m}
    m["files"] = [readme, *m.get("files", [])]
    typed = Manifest.from_json(json.loads(_dumps(m)))
    assert _dumps(typed.to_json()) == _dumps(m)
    assert Manifest.from_json(typed.to_json()) == typed


def test_writer_accepts_a_manifest_or_a_dict_and_writes_the_same_bytes(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    with BundleWriter(tmp_path / "b") as writer:
        model = writer.tmp / ONNX
        _tiny_onnx(model, 4)
        data = manifest_json([writer.file_entry(model)])
        typed = Manifest.from_json({"schema_version": 1, **data, "files": []})
        writer.commit(typed, "# tiny bundle\n")
    one, two = (json.loads((p / MANIFEST).read_text()) for p in (a, tmp_path / "b"))
    assert one == two and list(one) == list(two)
    assert list(one)[0] == "schema_version" and list(one)[-1] == "files"
    assert read_manifest(a) == one and load_manifest(a).to_json() == one


def test_a_valid_bundle_verifies_loads_and_runs(tiny: Path, image: Path) -> None:
    rows = verify_bundle(tiny)
    assert [r["name"] for r in rows] == ["bundle files", "onnxruntime-fp32"]
    assert all(r["hashes"] == "ok" for r in rows) and rows[1]["loads"] == "ok"
    runner = Runner(tiny)
    assert runner.entry.backend == "onnxruntime" and runner.entry.name == "onnxruntime-fp32"
    res = runner.predict_one(image)
    assert res["prediction"] in CLASSES and abs(sum(res["probabilities"].values()) - 1) < 1e-6


# ----------------------------------------------------------------------- strict schema (issue 16)
def _set(key_path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        *parents, last = key_path.split(".")
        node: Any = m
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value
    return change


DEFECTS = {
    "no artifacts": (_set("artifacts", []), r"artifacts: must list at least one artifact"),
    "input_size 0x0": (_set("preprocess.input_size", [0, 0]),
                       r"preprocess: Invalid preprocessing spec: input_size must be two sizes"),
    "scale NaN": (_set("preprocess.scale", float("nan")),
                  r"preprocess\.scale: must be a finite number, got nan"),
    "scale inf": (_set("preprocess.scale", float("inf")), r"preprocess\.scale: must be a finite"),
    "scale 0": (_set("preprocess.scale", 0), r"preprocess\.scale: must be > 0, got 0"),
    "scale negative": (_set("preprocess.scale", -1.0), r"preprocess\.scale: must be > 0"),
    "std NaN": (_set("preprocess.std", [1.0, float("nan"), 1.0]), r"preprocess\.std\[1\]"),
    "input_size text": (_set("preprocess.input_size", ["a", "b"]),
                        r"preprocess\.input_size\[0\]: expected an integer, got string"),
    "spec key missing": (lambda m: m["preprocess"].pop("layout"), r"preprocess\.layout: missing"),
    "no class names": (_set("class_names", []), r"class_names: must not be empty"),
    "duplicate class": (_set("class_names", ["a", "a", "b", "c"]),
                        r"class_names: duplicate name\(s\) 'a'"),
    "binary head, 3 classes": (_set("head", {"scores_are": "logits", "threshold": 0.5,
                                             "type": "binary-sigmoid", "positive_class": "b"}),
                               r"head\.type: a binary-sigmoid head needs exactly 2 class names"),
    "keras outputs": (lambda m: m["source"].update(keras={"outputs": 3, "input_range": "0-1"}),
                      r"class_names: 4 names, but source\.keras\.outputs says the model has 3 "
                      r"outputs"),
    "head threshold": (_set("head.threshold", 1.5), r"head\.threshold: must be in \[0, 1\]"),
    "scores_are": (_set("head.scores_are", "logit"), r"head\.scores_are: must be one of"),
    "task": (_set("task", "binary"), r"task: must be one of \('multiclass', 'multilabel'\)"),
    "status": (_set("artifacts.0.status", "ok"), r"artifacts\[0\]\.status: must be one of"),
    "unknown key": (_set("surprise", 1), r"\(top level\): unknown key\(s\) 'surprise'"),
    "unknown artifact key": (_set("artifacts.0.colour", "red"),
                             r"artifacts\[0\]: unknown key\(s\) 'colour'"),
    "missing key": (lambda m: m["artifacts"][0].pop("backend"),
                    r"artifacts\[0\]\.backend: missing"),
    "wrong type": (_set("artifacts.0.files.0.bytes", "12"),
                   r"artifacts\[0\]\.files\[0\]\.bytes: expected an integer, got string"),
    "bool is not int": (_set("artifacts.0.bytes", True),
                        r"artifacts\[0\]\.bytes: expected an integer, got boolean"),
    "mapping section": (_set("recipe", ["fp32"]), r"recipe: expected an object, got list"),
    "null optional": (_set("head", None), r"head: expected an object, got null"),
    "bad sha256": (_set("artifacts.0.files.0.sha256", "xyz"),
                   r"artifacts\[0\]\.files\[0\]\.sha256: expected 64 lowercase hex digits"),
    "no files": (_set("artifacts.0.files", []), r"artifacts\[0\]\.files: must not be empty"),
    "shape vs spec": (_set("artifacts.0.input.shape", [1, 3, 16, 16]),
                      r"artifacts\[0\]\.input\.shape: \[1, 3, 16, 16\] is not the preprocessing"),
    "layout vs spec": (_set("artifacts.0.input.layout", "NHWC"),
                       r"artifacts\[0\]\.input\.layout: 'NHWC' is not the preprocessing"),
    "duplicate artifact": (lambda m: m["artifacts"].append(m["artifacts"][0]),
                           r"artifacts: duplicate name\(s\) 'onnxruntime-fp32'"),
    "not an object": (lambda m: m.clear(), r"schema version None"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_the_strict_schema_refuses_each_defect_naming_file_and_key(tiny: Path,
                                                                   defect: str) -> None:
    change, message = DEFECTS[defect]
    edit(tiny, change)
    where = f"{tiny / MANIFEST}: "
    with pytest.raises(DataError, match=message) as exc:
        verify_bundle(tiny, load=False)
    assert str(exc.value).startswith(where)
    with pytest.raises(DataError, match=message):
        Runner(tiny)


def test_every_problem_is_named_at_once(tiny: Path) -> None:
    edit(tiny, lambda m: (m.update(class_names=[], artifacts=[]),
                          m["preprocess"].update(scale=float("nan"))))
    with pytest.raises(DataError) as exc:
        load_manifest(tiny)
    text = str(exc.value)
    assert "class_names" in text and "artifacts" in text and "preprocess.scale" in text


def test_messages_that_existed_stay_byte_identical(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(DataError) as exc:
        read_manifest(tmp_path)
    assert str(exc.value) == f"{tmp_path}: not an edgekit bundle (no manifest.json)"
    edit(tiny, _set("schema_version", 2))
    with pytest.raises(DataError) as exc:
        read_manifest(tiny)
    assert str(exc.value) == (f"{tiny / MANIFEST}: manifest schema version 2; this edgekit "
                              "reads version 1")
    (tiny / MANIFEST).write_text("{")
    with pytest.raises(DataError, match=r"manifest.json: not valid JSON \("):
        read_manifest(tiny)


def test_a_json_list_is_not_a_manifest(tiny: Path) -> None:
    (tiny / MANIFEST).write_text("[]")
    with pytest.raises(DataError, match=r"manifest.json: expected a JSON object, got list"):
        read_manifest(tiny)


def test_the_writer_refuses_to_write_a_manifest_the_reader_would_refuse(tmp_path: Path) -> None:
    out = tmp_path / "b"
    with pytest.raises(DataError, match="class_names: duplicate"), BundleWriter(out) as writer:
        model = writer.tmp / ONNX
        _tiny_onnx(model, 4)
        m = manifest_json([writer.file_entry(model)])
        m["class_names"] = ["a", "a", "b", "c"]
        writer.commit(m, "# tiny\n")
    assert not out.exists() and not list(tmp_path.glob(".b.partial-*"))


# ------------------------------------------------------------------------ output width
@pytest.mark.parametrize("width", [3, 5])
def test_class_names_must_match_the_artifacts_output_width(tmp_path: Path, image: Path,
                                                           width: int) -> None:
    bundle = make_bundle(tmp_path / "b", width=width)  # 4 class names, `width` outputs
    verify_bundle(bundle, load=False)  # the width is only known once the artifact runs
    with pytest.raises(VerificationFailed, match=rf"onnxruntime-fp32: outputs {width} scores "
                                                 r"per image but the manifest has 4 class names"):
        verify_bundle(bundle)
    runner = Runner(bundle)
    with pytest.raises(DataError, match=rf"onnxruntime-fp32: outputs {width} scores per image "
                                        r"but the manifest has 4 class names"):
        runner.predict_one(image)


def test_a_two_class_bundle_may_have_one_sigmoid_output(tmp_path: Path, image: Path) -> None:
    bundle = make_bundle(tmp_path / "b", width=1)
    edit(bundle, _set("class_names", ["no", "yes"]))
    assert verify_bundle(bundle)[1]["loads"] == "ok"
    assert Runner(bundle).predict_one(image)["prediction"] in ("no", "yes")


# ------------------------------------------------------------------------------ confinement
def _point_artifact_at(bundle: Path, path: str) -> None:
    def change(m: dict[str, Any]) -> None:
        m["artifacts"][0]["files"][0]["path"] = path
    edit(bundle, change)


def _outside_copy(tiny: Path) -> Path:
    outside = tiny.parents[1] / "outside" / "model.onnx"
    outside.parent.mkdir(parents=True)
    shutil.copy(tiny / ONNX, outside)
    return outside


def test_a_path_with_dotdot_is_refused_even_with_a_matching_sha256(tiny: Path) -> None:
    outside = _outside_copy(tiny)
    assert (tiny / "../../outside/model.onnx").resolve() == outside.resolve()
    _point_artifact_at(tiny, "../../outside/model.onnx")
    message = r"artifacts\[0\]\.files\[0\]\.path: '\.\./\.\./outside/model\.onnx' leaves the bundle"
    with pytest.raises(DataError, match=message):
        verify_bundle(tiny)
    with pytest.raises(DataError, match=message):
        Runner(tiny)


def test_an_absolute_path_is_refused(tiny: Path) -> None:
    outside = _outside_copy(tiny)
    _point_artifact_at(tiny, str(outside))
    message = rf"artifacts\[0\]\.files\[0\]\.path: '{outside}' is an absolute path"
    with pytest.raises(DataError, match=message):
        verify_bundle(tiny)
    with pytest.raises(DataError, match=message):
        Runner(tiny)


@pytest.mark.parametrize("bad", ["artifacts\\onnxruntime\\m.onnx", "./artifacts/m.onnx",
                                 "artifacts//m.onnx", ""])
def test_only_plain_relative_posix_paths(tiny: Path, bad: str) -> None:
    _point_artifact_at(tiny, bad)
    with pytest.raises(DataError, match=r"artifacts\[0\]\.files\[0\]\.path: .*not a plain "
                                        r"relative POSIX path"):
        load_manifest(tiny)


def test_a_pruned_checkpoint_path_is_confined_too(tiny: Path) -> None:
    edit(tiny, lambda m: m.update(pruning={"checkpoint": {"path": "../pruned.pt"}}))
    with pytest.raises(DataError, match=r"pruning\.checkpoint\.path: '\.\./pruned\.pt' leaves"):
        load_manifest(tiny)


def test_a_symlink_out_of_the_bundle_is_refused(tiny: Path) -> None:
    outside = _outside_copy(tiny).resolve()
    inside = tiny / ONNX
    inside.unlink()
    inside.symlink_to(outside)  # same bytes: the sha256 in the manifest still matches
    assert sha256_file(inside) == load_manifest(tiny).artifacts[0].files[0].sha256
    with pytest.raises(VerificationFailed, match=rf"{ONNX}: resolves to {outside}, outside "
                                                 "the bundle"):
        verify_bundle(tiny, load=False)
    with pytest.raises(DataError, match=rf"{tiny / ONNX}: resolves to {outside}, outside "
                                        "the bundle"):
        Runner(tiny)


def test_a_symlinked_folder_out_of_the_bundle_is_refused(tiny: Path) -> None:
    outside = _outside_copy(tiny)
    shutil.rmtree(tiny / "artifacts" / "onnxruntime")
    (tiny / "artifacts" / "onnxruntime").symlink_to(outside.parent, target_is_directory=True)
    os.replace(outside, outside.parent / "model-fp32.onnx")
    with pytest.raises(VerificationFailed, match="outside the bundle"):
        verify_bundle(tiny, load=False)
    with pytest.raises(DataError, match="outside the bundle"):
        Runner(tiny)


def test_a_symlink_inside_the_bundle_is_fine(tiny: Path) -> None:
    real = tiny / "artifacts" / "real.onnx"
    os.replace(tiny / ONNX, real)
    (tiny / ONNX).symlink_to(real)
    assert verify_bundle(tiny, load=False)[1]["hashes"] == "ok"
    assert Runner(tiny, open_session=False).entry.files[0].path == ONNX


# --------------------------------------------------------------------------- unlisted files
def test_unlisted_files_are_reported_and_fail_only_under_artifacts(tiny: Path) -> None:
    (tiny / "notes.txt").write_text("mine")
    (tiny / "bench" / "run-1").mkdir(parents=True)
    (tiny / "bench" / "run-1" / "results.json").write_text("{}")
    rows = verify_bundle(tiny, load=False)
    assert rows[-1] == {"name": "unlisted files",
                        "hashes": "not in manifest.json (not checked): bench/ (1 file), "
                                  "notes.txt",
                        "loads": "-"}
    (tiny / "artifacts" / "onnxruntime" / "extra.onnx").write_bytes(b"\0")
    with pytest.raises(VerificationFailed,
                       match=r"artifacts/onnxruntime/extra\.onnx: not in manifest\.json"):
        verify_bundle(tiny, load=False)


def test_a_clean_bundle_has_no_unlisted_files_row(tiny: Path) -> None:
    assert "unlisted files" not in [r["name"] for r in verify_bundle(tiny, load=False)]


# ------------------------------------------------------------------------- import hygiene
def test_the_runner_and_the_manifest_import_nothing_a_board_lacks() -> None:
    code = ("import sys, edgekit.runner, edgekit.manifest; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'pydantic', 'click', 'rich', 'yaml')); print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ a real compress bundle
@pytest.mark.slow
def test_a_compress_bundle_round_trips_byte_for_byte(fp32_bundle: Path) -> None:
    text = (fp32_bundle / MANIFEST).read_text()
    assert _dumps(load_manifest(fp32_bundle).to_json()) == text
    verify_bundle(fp32_bundle)
