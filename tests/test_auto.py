"""``compress --recipe auto``: the Pareto front and the choice on constructed rows, and one small
real search (64 px phantoms, two pruning levels, two backends, real exports and timings)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from edgekit.auto import Candidate, _earlier_level_failed, _speedups, choose, pareto_front


def cand(name: str, p50: float | None, delta: float | None, gate: str = "pass",
         level: str = "none", precision: str = "int8", backend: str = "openvino") -> Candidate:
    return Candidate(bundle=name, artifact=f"{backend}-{precision}", level=level,
                     precision=precision, backend=backend, macs_fraction=1.0, macs=None,
                     gate=gate, images=500, top1_delta=delta, p50_ms=p50,
                     latency_basis=None if p50 is None else "measured")


def ids(rows: list[Candidate]) -> list[str]:
    return [r.bundle for r in rows]


def test_front_drops_dominated_failing_inconclusive_and_untimed_rows() -> None:
    rows = [cand("fast-worse", 1.0, -0.8), cand("slow-better", 3.0, 0.0),
            cand("dominated", 3.5, -0.5),  # slower and less accurate than slow-better
            cand("fails", 0.5, -3.0, gate="fail"),
            cand("unsure", 0.6, -0.1, gate="inconclusive"),
            cand("untimed", None, 0.5), cand("mid", 2.0, -0.2)]
    assert ids(pareto_front(rows)) == ["fast-worse", "mid", "slow-better"]
    assert choose(rows).bundle == "fast-worse"  # no budget: the fastest passing one


def test_budget_picks_the_most_accurate_within_it() -> None:
    rows = [cand("a", 1.0, -0.8), cand("b", 2.0, -0.2), cand("c", 3.0, 0.0)]
    assert choose(rows, budget_ms=2.5).bundle == "b"
    assert choose(rows, budget_ms=3.0).bundle == "c"  # the budget is inclusive
    assert choose(rows, budget_ms=0.5) is None  # nothing passing is fast enough
    assert choose([cand("f", 0.1, 0.0, gate="fail")]) is None


def test_ties_stay_on_the_front_and_are_broken_deterministically() -> None:
    rows = [cand("y", 1.0, -0.5), cand("x", 1.0, -0.5), cand("z", 1.0, -0.1)]
    assert ids(pareto_front(rows)) == ["z"]  # same latency, more accurate: z dominates
    twins = [cand("y", 1.0, -0.5), cand("x", 1.0, -0.5)]
    assert ids(pareto_front(twins)) == ["x", "y"]  # equal on both: neither dominates
    assert choose(twins).bundle == "x"
    assert choose(twins, budget_ms=5).bundle == "x"
    same_delta = [cand("slow", 2.0, 0.0), cand("quick", 1.0, 0.0)]
    assert choose(same_delta, budget_ms=5).bundle == "quick"  # equally accurate: faster


def test_a_heavier_pruning_level_is_skipped_only_after_a_lighter_one_failed_everything() -> None:
    levels = ("none", "prune30", "prune50")
    assert _earlier_level_failed("prune50", levels, {"prune30/fp32": True, "prune30/int8": True})
    assert not _earlier_level_failed("prune50", levels, {"prune30/fp32": True,
                                                         "prune30/int8": False})
    assert not _earlier_level_failed("prune50", levels, {})  # prune30 never ran
    assert not _earlier_level_failed("prune30", levels, {"prune30/fp32": True})


def test_speedups_compare_at_the_recommendation_s_thread_count() -> None:
    fp32 = cand("fp32", 4.0, 0.0, precision="fp32")
    fp32.p50_by_threads = {1: 8.0, 2: 4.0}
    int8 = cand("int8", 2.0, -0.3)
    int8.p50_by_threads = {1: 3.0, 2: 2.0}
    best = cand("prune30-int8", 1.0, -0.4, level="prune30")
    best.threads = 1
    s = _speedups(best, [fp32, int8, best])
    assert s == {"vs_unpruned_fp32_same_backend": 8.0, "vs_unpruned_int8_same_backend": 3.0}
    other = cand("fp32", 1.0, 0.0, precision="fp32", backend="onnxruntime")
    assert _speedups(other, [fp32, int8, other])["vs_unpruned_int8_same_backend"] is None


# ------------------------------------------------------------------------- end to end
pytest.importorskip("torch_pruning", reason="pruning needs torch-pruning (edgekit[compress])")


@pytest.fixture
def small_search(monkeypatch: pytest.MonkeyPatch):
    """The CLI's search with what the command line does not offer: 1 recovery epoch (L2
    importance), bench's quick protocol and a gate wide enough for 24 verification images to
    decide (the tiny phantom model is the same before and after)."""
    import edgekit.cli.compress as cli_compress
    from edgekit.auto import search

    def small(model, *, data, out, options):
        return search(model, data=data, out=out, options=dataclasses.replace(
            options, quick=True, levels=("none", "prune30"), recipe_overrides={
                "pruning.recovery.epochs": 1, "pruning.importance": "l2",
                "gate.max_top1_drop": 60.0, "gate.max_sensitivity_drop": 100.0}))

    monkeypatch.setattr(cli_compress, "search", small)


def test_recipe_auto_end_to_end(trained: Path, mri_phantoms: Path, tmp_path: Path, cli,
                                small_search, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.compress as module

    splits = []
    real = module.plan_data
    monkeypatch.setattr(module, "plan_data", lambda *a, **k: splits.append(1) or real(*a, **k))
    out = tmp_path / "auto"
    res = cli("compress", trained, "--data", mri_phantoms, "--out", out, "--recipe", "auto",
              "--backend", "onnxruntime", "--backend", "openvino", "--calibration-images", 16,
              "--verification-images", 40, "--threads", 1, "--cost", "latency")
    assert "Reusing the pruned model" in res.stderr  # prune30-int8 did not train again
    assert len(splits) == 1  # the folder was split and the source run on it once for all four
    assert res.stderr.count("reusing the loaded verification images") == 3
    rec = json.loads((out / "auto.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"fp32", "int8", "prune30", "prune30-int8",
                                               "bench", "auto.json", "auto.md"}
    for b in ("fp32", "int8", "prune30", "prune30-int8"):
        assert json.loads((out / b / "manifest.json").read_text())["artifacts"]
    cands = {c["id"]: c for c in rec["candidates"]}
    assert len(cands) == 8 and all(c["latency_basis"] == "measured" for c in cands.values())
    assert {c["level"] for c in cands.values()} == {"none", "prune30"}
    assert {c["images"] for c in cands.values()} == {cands["fp32/onnxruntime-fp32"]["images"]}
    pr = [json.loads((out / b / "manifest.json").read_text())["pruning"]
          for b in ("prune30", "prune30-int8")]
    assert pr[0]["widths_after"] == pr[1]["widths_after"]  # one pruned model for both
    assert pr[0]["cost"] == "latency" and pr[0]["latency_profile"]  # --cost reached the pruning
    assert cands["prune30/openvino-fp32"]["macs_fraction"] < 1.0
    front = rec["pareto_front"]
    assert front and all(cands[i]["gate"] == "pass" for i in front)
    fastest = min((c for c in cands.values() if c["gate"] == "pass"),
                  key=lambda c: c["p50_ms"])
    assert rec["recommendation"]["id"] == front[0] == fastest["id"]
    assert rec["recommendation"]["speedups"]["vs_unpruned_fp32_same_backend"] is not None
    md = (out / "auto.md").read_text()
    assert f"**Ship `{front[0]}`.**" in md and "Pareto front" in md
    results = json.loads(next((out / "bench").glob("*/results.json")).read_text())
    assert len({r["artifact"] for r in results["rows"]}) == 8  # one run timed them all
    cli("verify", out / "prune30-int8")  # the sub-bundles are normal bundles

    # an earlier search is replaced only with --overwrite; a foreign folder never
    cli("compress", trained, "--data", mri_phantoms, "--out", out, "--recipe", "auto", code=2)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cli("compress", trained, "--data", mri_phantoms, "--out", foreign, "--recipe", "auto",
        code=2)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_recipe_auto_exits_1_when_nothing_fits_the_budget(trained: Path, mri_phantoms: Path,
                                                          tmp_path: Path, cli,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.cli.compress as cli_compress
    from edgekit.auto import search

    monkeypatch.setattr(cli_compress, "search", lambda model, **kw: search(
        model, **{**kw, "options": dataclasses.replace(
            kw["options"], quick=True, levels=("none",), precisions=("fp32",),
            recipe_overrides={"gate.max_top1_drop": 60.0, "gate.max_sensitivity_drop": 100.0})}))
    out = tmp_path / "auto"
    res = cli("compress", trained, "--data", mri_phantoms, "--out", out, "--recipe", "auto",
              "--backend", "onnxruntime", "--verification-images", 24, "--threads", 1,
              "--latency-budget-ms", 1e-6, code=1)
    assert "within the latency budget" in res.stderr
    rec = json.loads((out / "auto.json").read_text())
    assert rec["recommendation"] is None and rec["latency_budget_ms"] == 1e-6
    assert "No gate-passing artifact is within" in (out / "auto.md").read_text()


def test_auto_options_are_usage_errors_elsewhere(trained: Path, mri_phantoms: Path,
                                                 tmp_path: Path, cli) -> None:
    cli("compress", trained, "--data", mri_phantoms, "--out", tmp_path / "b",
        "--latency-budget-ms", 5, code=2)
    res = cli("compress", trained, "--data", mri_phantoms, "--out", tmp_path / "c",
              "--recipe", "auto", "--target-time", 0.7, code=2)
    assert "--cost latency" in res.stderr and not (tmp_path / "c").exists()
