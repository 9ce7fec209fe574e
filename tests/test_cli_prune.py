"""`edgekit prune` and `edgekit inspect --groups`: real pruning of a tiny trained checkpoint
(dsconv_cbam_gap on the 64 px MRI phantoms), usage errors, the sensitivity scan."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgekit.cli import main
from edgekit.verify import Check

PRUNE_ONLY_FLAGS = ("--out", "--target-macs", "--epochs")


def _invoke(*args: object) -> Result:
    """Run ``edgekit ARGS`` in-process without asserting the exit code."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _macs(cli, model: Path | str, *extra: object) -> int:
    return json.loads(cli("inspect", model, "--json", *extra).stdout)["macs"]


def _table_rows(text: str) -> list[str]:
    """Body rows of a SIMPLE_HEAD table: lines that start with a group index."""
    return [line for line in text.splitlines() if re.match(r"^\s*\d+\s+[A-Za-z_]", line)]


@pytest.fixture(scope="module")
def pruned(trained: Path, mri_phantoms: Path, tmp_path_factory) -> tuple[Path, Result]:
    """The brief's run: keep 60 % of the MACs, L2 importance, one recovery epoch."""
    out = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    res = _invoke("prune", trained, "--data", mri_phantoms, "--out", out, "--target-macs", "0.6",
                  "--epochs", "1", "--importance", "l2", "--verification-images", "40")
    return out, res


def test_prune_writes_a_smaller_checkpoint(pruned, trained, cli):
    from edgekit.checkpoint import load_checkpoint
    from edgekit.sources import load_model

    out, res = pruned
    assert res.exit_code in (0, 1), (res.output, res.stderr)
    assert out.is_file()
    # the exit code agrees with the printed gate verdict
    verdict = [line for line in res.stdout.splitlines() if line.lstrip("│ ").startswith("pruned")]
    assert len(verdict) == 1, res.stdout
    if res.exit_code == 0:  # passed, or too few images (40) to decide: inconclusive
        assert ("pass" in verdict[0] or "inconclusive" in verdict[0]) \
            and "FAIL" not in verdict[0]
        assert f"edgekit compress {out} --recipe int8 --data" in res.stderr
    else:
        assert "FAIL" in verdict[0]
        assert "accuracy gate" in res.stderr and "still written" in res.stderr
    for text in ("MACs", "parameters", "Layer widths that changed", "Recovery",
                 "Verification on", "accuracy"):
        assert text in res.stdout, text

    record = load_checkpoint(out)[1]["pruning"]
    assert record["macs_fraction"] <= 0.6
    assert record["settings"]["importance"] == "l2" and record["recovery"]
    assert len(record["recovery"][0]["history"]) == 1
    assert (record["verification"]["decision"] != "fail") == (res.exit_code == 0)
    loaded = load_model(out)  # the pruned widths are rebuilt from the plan in the checkpoint
    assert sum(p.numel() for p in loaded.module.parameters()) == record["params_after"]
    macs0, macs1 = _macs(cli, trained), _macs(cli, out)
    assert (macs0, macs1) == (record["macs_before"], record["macs_after"])  # counted alike
    assert macs1 <= 0.6 * macs0
    changed = record["widths_after"]
    assert changed and all(record["widths_before"][k] > v for k, v in changed.items())
    assert "classifier" not in changed  # protected by default


def test_prune_json_and_the_accuracy_gate(trained, mri_phantoms, tmp_path, cli, monkeypatch):
    """A (forced) gate failure exits 1 after writing the checkpoint; --json still prints the
    record; --allow-accuracy-drop exits 0. A channel ratio with no recovery."""
    import edgekit.prune.recover
    import edgekit.verify

    real = edgekit.verify.compare

    def failing(*args, **kwargs):
        v = real(*args, **kwargs)
        forced = Check(check="forced by the test", value=1.0, limit=0.0, decision="fail")
        return dataclasses.replace(v, checks=(*v.checks, forced))

    monkeypatch.setattr(edgekit.prune.recover, "compare", failing)
    out = tmp_path / "p.pt"
    args = ("prune", trained, "--data", mri_phantoms, "--out", out, "--ratio", "0.25",
            "--epochs", "0", "--verification-images", "24")
    res = cli(*args, "--json", code=1)
    data = json.loads(res.stdout)
    assert data["checkpoint"] == str(out) and out.is_file()
    assert data["passed"] is False and data["recovery"] == []
    assert data["settings"]["ratio"] == 0.25 and data["settings"]["target_macs"] is None
    assert data["macs_after"] < data["macs_before"] and "plan" not in data
    assert data["plan_format"] == "edgekit.prune-plan/1"
    assert "accuracy" in data["source_metrics"]
    assert "Error: the pruned model failed" in res.stderr and "still written" in res.stderr

    res = cli(*args, "--overwrite", "--allow-accuracy-drop")
    assert "FAIL (1 check)" in res.stdout and "✗ forced by the test: 1 > 0" in res.stdout
    assert "misses the accuracy gate" in res.stderr and "Recovery" not in res.stdout


def test_usage_errors(cli, tmp_path):
    """Checked before anything is loaded: the model does not even need to exist."""
    base = ("prune", tmp_path / "model.pt", "--data", tmp_path)
    res = cli(*base, "--out", tmp_path / "p.pt", "--target-macs", "0.5", "--ratio", "0.3", code=2)
    assert "--target-macs and --ratio are mutually exclusive" in res.stderr
    res = cli(*base, "--out", tmp_path / "p.pt", "--ratio", "0.3", "--target-latency-ms", "5",
              code=2)
    assert "--ratio and --target-latency-ms are mutually exclusive" in res.stderr
    res = cli(*base, "--out", tmp_path / "p.pt", "--threads", "2", code=2)
    assert "--threads only applies with --target-latency-ms" in res.stderr
    res = cli(*base, code=2)
    assert "Missing option '--out'" in res.stderr
    res = cli(*base, "--scan", "--out", tmp_path / "p.pt", "--target-macs", "0.5", "--epochs", "1",
              code=2)
    assert "--scan only measures" in res.stderr
    assert all(flag in res.stderr for flag in PRUNE_ONLY_FLAGS)
    res = cli(*base, "--out", tmp_path / "p.pt", "--scan-ratio", "0.3", code=2)
    assert "--scan-ratio only applies with --scan" in res.stderr
    cli(*base, "--out", tmp_path / "p.pt", "--target-macs", "1.5", code=2)  # out of (0, 1)
    assert not (tmp_path / "p.pt").exists()


def test_existing_out_and_recipe_without_pruning(trained, mri_phantoms, tmp_path):
    out = tmp_path / "taken.pt"
    out.write_bytes(b"keep me")
    res = _invoke("prune", trained, "--data", mri_phantoms, "--out", out)
    # prune_file raises DataError (exit 1); compress's bundle writer uses ConfigError (exit 2)
    assert res.exit_code in (1, 2), (res.output, res.stderr)
    assert f"Error: {out} exists; pass --overwrite" in res.stderr
    assert out.read_bytes() == b"keep me"

    res = _invoke("prune", trained, "--data", mri_phantoms, "--out", tmp_path / "p.pt",
                  "--recipe", "int8")
    assert res.exit_code == 2, (res.output, res.stderr)
    assert "recipe 'int8' has no 'pruning' section" in res.stderr and "prune30" in res.stderr
    assert not (tmp_path / "p.pt").exists()


def test_scan_prints_one_row_per_group(trained, mri_phantoms, cli):
    groups = json.loads(cli("inspect", trained, "--groups", "--json").stdout)["groups"]
    res = cli("prune", trained, "--data", mri_phantoms, "--scan", "--verification-images", "40")
    rows = _table_rows(res.stdout)
    assert len(rows) == len(groups), res.stdout
    assert {r.split()[1] for r in rows} == {g["root"] for g in groups}
    assert "Sensitivity" in res.stdout and "pruned alone by 50%" in res.stdout
    # the groups that were not pruned (protected, or no wider than --round-to) come last
    skipped = [i for i, r in enumerate(rows) if "protected" in r or "≤ 8 ch" in r]
    assert skipped == list(range(len(rows) - len(skipped), len(rows)))
    assert sum("protected" in r for r in rows) == sum(g["protected"] for g in groups) >= 2


def test_inspect_groups(cli, tmp_path):
    data = json.loads(cli("inspect", "dsconv_cbam_gap", "--input-size", "64", "--groups",
                          "--json").stdout)
    groups = {g["root"]: g for g in data["groups"]}
    assert groups["classifier"]["protected"] and groups["classifier"]["layers"] == ["classifier"]
    assert any(not g["protected"] and g["channels"] >= 64 for g in groups.values())
    assert all(set(g) >= {"index", "root", "channels", "layers", "protected", "macs"}
               for g in data["groups"])
    plain = json.loads(cli("inspect", "dsconv_cbam_gap", "--input-size", "64", "--json").stdout)
    assert "groups" not in plain
    text = cli("inspect", "dsconv_cbam_gap", "--input-size", "64", "--groups", "--no-layers").stdout
    assert f"{len(groups)} channel groups" in text and len(_table_rows(text)) == len(groups)

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    res = cli("inspect", tmp_path / "m.onnx", "--groups", code=2)
    assert "--groups needs a PyTorch model" in res.stderr
    assert "ONNX" in res.stderr


def test_prune_help(cli):
    text = " ".join(cli("prune", "--help").stdout.split())  # unwrapped
    for phrase in ("removing whole channels", "knowledge distillation", "are never trained on",
                   "Examples:", "edgekit prune model.pt --data Training/ --out pruned.pt",
                   "--scan", "--allow-accuracy-drop", "exclude each other"):
        assert phrase in text, phrase
    assert "prune" in main.commands
    assert "--groups" in cli("inspect", "--help").stdout
