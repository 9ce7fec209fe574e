"""Bench reports: one recommendation, tables, a Pareto chart and a self-contained HTML page.

Reads a run folder's ``results.json`` (schema ``edgekit.bench/1``, see docs/bench-results.md)
and writes ``report.json``, ``report.csv``, ``report.md``, ``pareto.png`` and ``report.html``
next to it, each atomically (temporary file + ``os.replace``). matplotlib is optional
(``pip install 'edgekit[report]'``): without it every file but the chart is written.

    >>> from edgekit.report import load_results, recommend, write_report
    >>> rec = recommend(load_results("model-int8/bench/20261122T093000Z-x86-local"))
    >>> rec["text"]
    'On x86-local ship `model-int8/openvino-int8` with 2 threads: p50 4.1 ms, ...'
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BackendUnavailable, ConfigError

RESULTS_SCHEMA = "edgekit.bench/1"
REPORT_SCHEMA = "edgekit.report/1"
SPREAD_LIMIT = 1.2  # max/min of the trials' p50 above which a machine counts as noisy
TIE_FRACTION = 0.05  # a runner-up this close to the winner is effectively a tie
MIN_EVAL_IMAGES = 200  # below this, accuracy confidence intervals are wide
FILES = ("report.json", "report.csv", "report.md", "pareto.png", "report.html")

_REDUCED = {"bf16": "bf16", "bfloat16": "bf16", "f16": "f16", "fp16": "f16", "float16": "f16",
            "half": "f16"}
_SHORT_BACKEND = {"openvino": "ov", "onnxruntime": "ort", "litert": "litert", "pytorch": "torch"}
_MINUS = "\u2212"

Json = dict[str, Any]


# ----------------------------------------------------------------------------------- loading
def load_results(run_dir: str | Path) -> Json:
    """The ``results.json`` of a run folder (or that file itself), checked for its schema.

    Raises ConfigError (exit 2) naming the path when it is missing, not JSON, or not
    ``edgekit.bench/1``.
    """
    path = _results_path(run_dir)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (pass a run folder written by `edgekit bench`)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from exc
    _check_results(results, str(path))
    return results


def _results_path(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    return p if p.suffix == ".json" and not p.is_dir() else p / "results.json"


def _check_results(results: Any, where: str) -> None:
    schema = results.get("schema") if isinstance(results, dict) else None
    if schema != RESULTS_SCHEMA:
        raise ConfigError(f"{where}: schema {schema!r} is not {RESULTS_SCHEMA!r} "
                          "(not a results file of `edgekit bench`)")
    for key, kind in (("target", dict), ("artifacts", list), ("rows", list)):
        if not isinstance(results.get(key), kind):
            raise ConfigError(f"{where}: {key!r} is missing or not a {kind.__name__}")
    for key in ("artifacts", "rows"):
        bad = [i for i, x in enumerate(results[key]) if not isinstance(x, dict)]
        if bad:
            raise ConfigError(f"{where}: {key}[{bad[0]}] is not an object")
    ids = {a.get("id") for a in results["artifacts"]}
    for i, row in enumerate(results["rows"]):
        if row.get("artifact") not in ids:
            raise ConfigError(f"{where}: rows[{i}] names artifact {row.get('artifact')!r}, "
                              "which is not in 'artifacts'")


# ---------------------------------------------------------------------------------- accessors
@dataclass(frozen=True)
class Score:
    """An artifact's headline accuracy: multi-class top-1 (a fraction) or mean AUROC."""

    metric: str  # "accuracy" | "mean_auroc"
    value: float | None
    lo: float | None = None
    hi: float | None = None

    @property
    def label(self) -> str:
        return "mean AUROC" if self.metric == "mean_auroc" else "top-1 accuracy"

    def fmt(self, ci: bool = True) -> str:
        """``91.2 % [88.0, 94.1]`` or ``0.912 [0.885, 0.946]``."""
        if self.value is None:
            return "n/a"
        f = _fmt_score_value(self.metric)
        if ci and self.lo is not None and self.hi is not None:
            return f"{f(self.value)} [{f(self.lo, unit=False)}, {f(self.hi, unit=False)}]"
        return f(self.value)


def _fmt_score_value(metric: str) -> Callable[..., str]:
    if metric == "mean_auroc":
        return lambda x, unit=True: f"{x:.3f}"
    return lambda x, unit=True: f"{100 * x:.1f} %" if unit else f"{100 * x:.1f}"


def _v(m: Any) -> float | None:
    return m.get("value") if isinstance(m, dict) else m


def _ci(m: Any) -> tuple[float | None, float | None]:
    ci = m.get("ci95") if isinstance(m, dict) else None
    return (ci[0], ci[1]) if ci else (None, None)


def artifact_score(art: Json) -> Score | None:
    """The headline accuracy of an artifact, or None when it was not measured."""
    metrics = (art.get("accuracy") or {}).get("metrics") or {}
    for key in ("accuracy", "mean_auroc"):
        if key in metrics:
            return Score(key, _v(metrics[key]), *_ci(metrics[key]))
    return None


def artifact_delta(art: Json) -> Score | None:
    """Change against the source: top-1 accuracy (fraction, with CI) or mean AUROC (point)."""
    acc = art.get("accuracy") or {}
    d = acc.get("accuracy_delta")
    if isinstance(d, dict) and d.get("value") is not None:
        return Score("accuracy", d["value"], *_ci(d))
    for c in acc.get("checks") or []:
        if c.get("check") == "mean AUROC drop" and c.get("value") is not None:
            return Score("mean_auroc", -c["value"])
    return None


def passes_gate(art: Json) -> bool:
    """The artifact's own accuracy verdict, else its bundle status."""
    acc = art.get("accuracy")
    if acc is not None:
        return bool(acc.get("passed"))
    return art.get("status") == "passed"


def _failed_checks(art: Json) -> list[Json]:
    return [c for c in (art.get("accuracy") or {}).get("checks") or [] if not c.get("passed")]


def _ok(row: Json) -> bool:
    lat = row.get("latency_ms")
    return not row.get("error") and isinstance(lat, dict) and lat.get("p50") is not None


def _p50(row: Json) -> float:
    return float(row["latency_ms"]["p50"])


def _by_id(results: Json) -> dict[str, Json]:
    return {a["id"]: a for a in results["artifacts"]}


def _target_name(results: Json) -> str:
    return str(results["target"].get("name") or "this target")


def _eval_n(results: Json, art: Json | None) -> int | None:
    n = (results.get("data") or {}).get("n")
    if n is None and art is not None:
        n = (art.get("accuracy") or {}).get("n")
    if n is None:
        ns = [a["accuracy"]["n"] for a in results["artifacts"]
              if (a.get("accuracy") or {}).get("n") is not None]
        n = max(ns) if ns else None
    return n


def _gate_limit(art: Json) -> float | None:
    for c in (art.get("accuracy") or {}).get("checks") or []:
        if c.get("check") == "top-1 accuracy drop (points)":
            return c.get("limit")
    return None


# -------------------------------------------------------------------------------- formatting
def fmt_ms(x: float | None) -> str:
    """Milliseconds to three significant digits: 0.312, 4.12, 12.3, 123."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x < 1:
        return f"{x:.3g}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _signed(x: float, fmt: str = ".1f") -> str:
    s = format(x, fmt)
    if s.lstrip("-").strip("0.") == "":  # -0.0 -> +0.0
        s = s.lstrip("-")
    return s.replace("-", _MINUS) if s.startswith("-") else f"+{s}"


def _threads(n: Any) -> str:
    return "default threads" if n is None else f"{n} thread{'' if n == 1 else 's'}"


def fmt_delta(d: Score | None, ci: bool = True) -> str:
    """``−0.3 points [−1.0, +0.5]`` (top-1) or ``−0.004`` (mean AUROC); ``n/a`` when unknown."""
    if d is None or d.value is None:
        return "n/a"
    if d.metric == "mean_auroc":
        return _signed(d.value, ".3f")
    text = f"{_signed(100 * d.value)} points"
    if ci and d.lo is not None and d.hi is not None:
        text += f" [{_signed(100 * d.lo)}, {_signed(100 * d.hi)}]"
    return text


# --------------------------------------------------- measured, predicted and emulated results
def valid_row(row: Json) -> bool:
    """False for a measured row the bench marked invalid (e.g. the board throttled)."""
    return row.get("valid") is not False


def predicted_rows(results: Json) -> list[Json]:
    """``results["predicted"]["rows"]`` (empty when nothing was predicted)."""
    pred = results.get("predicted")
    rows = pred.get("rows") if isinstance(pred, dict) else None
    return [p for p in rows or [] if isinstance(p, dict)]


def _pred_ok(p: Json) -> bool:
    return not p.get("error") and isinstance(p.get("p50_ms"), int | float)


def _rel_err(p: Json) -> float:
    rel = p.get("rel_err")
    if isinstance(rel, int | float):
        return float(rel)
    hi, p50 = p.get("high_ms"), p.get("p50_ms")
    return float(hi) / float(p50) - 1 if isinstance(hi, int | float) and p50 else 0.0


def _pred_bounds(p: Json) -> tuple[float, float]:
    """The predicted interval (low, high) in ms; ±rel_err around p50 when not recorded."""
    p50, rel = float(p["p50_ms"]), _rel_err(p)
    lo, hi = p.get("low_ms"), p.get("high_ms")
    return (float(lo) if isinstance(lo, int | float) else p50 * (1 - rel),
            float(hi) if isinstance(hi, int | float) else p50 * (1 + rel))


def _pct(rel: float) -> str:
    return f"±{100 * rel:.0f} %"


def fmt_predicted(p: Json | None, unit: bool = True) -> str:
    """``23.1 ms ±35 % (predicted)``; ``no prediction`` / ``—`` when there is none."""
    if p is None:
        return "—"
    if not _pred_ok(p):
        return "no prediction"
    return f"{fmt_ms(p['p50_ms'])}{' ms' if unit else ''} {_pct(_rel_err(p))} (predicted)"


def emulated(results: Json) -> Json | None:
    """``results["emulated"]`` (QEMU output parity) or None."""
    emu = results.get("emulated")
    return emu if isinstance(emu, dict) else None


def _emu_rows(results: Json) -> dict[str, Json]:
    rows = (emulated(results) or {}).get("rows") or []
    return {str(r.get("artifact")): r for r in rows if isinstance(r, dict)}


def _qemu_cpu(results: Json) -> str:
    return str((emulated(results) or {}).get("qemu_cpu") or "an ARM CPU")


def _parity_excluded(results: Json) -> dict[str, Json]:
    """Artifacts whose emulated output parity failed or could not be checked."""
    return {a: r for a, r in _emu_rows(results).items() if r.get("status") != "passed"}


def _num(x: Any, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, int | float) else "n/a"


def fmt_parity(emu: Json | None) -> str:
    """``passed (max diff 1.2e-05)``, ``FAIL (max diff 0.31)``, ``error: <why>`` or ``—``."""
    if emu is None:
        return "—"
    status = emu.get("status")
    diff = f" (max diff {_num(emu.get('max_abs_diff'))})" if emu.get("max_abs_diff") is not None \
        else ""
    if status == "passed":
        return f"passed{diff}"
    if status == "failed":
        return f"FAIL{diff}"
    return f"error: {emu.get('reason') or status or 'unknown'}"


def _is_arm(results: Json) -> bool:
    return str(results["target"].get("arch") or "") in ("aarch64", "arm64")


def _target_features(results: Json) -> set[str]:
    return set((results["target"].get("cpu") or {}).get("features") or [])


def _target_cpu_model(results: Json) -> str:
    return str((results["target"].get("cpu") or {}).get("model") or "its CPU")


def _preferred(results: Json, precision: Any) -> list[str]:
    return list((results["target"].get("preferred") or {}).get(str(precision)) or [])


def _art_of(arts: dict[str, Json], artifact: str, pred: Json | None = None) -> Json:
    """The artifact record; for a predicted row naming an artifact that is not in
    ``artifacts``, a stub that never passes the gate."""
    if artifact in arts:
        return arts[artifact]
    p = pred or {}
    return {"id": artifact, "name": artifact.split("/")[-1], "backend": p.get("backend"),
            "precision": p.get("precision"), "kind": "artifact", "status": None,
            "accuracy": None}


@dataclass
class Entry:
    """One line of the report tables: an artifact × threads with what is known about it."""

    artifact: str
    threads: Any
    art: Json
    row: Json | None = None  # measured
    pred: Json | None = None  # predicted
    emu: Json | None = None  # emulated parity (per artifact)


def has_arm_results(results: Json) -> bool:
    """Whether the run carries predicted or emulated results (extra table columns)."""
    return bool(predicted_rows(results)) or emulated(results) is not None


def table_entries(results: Json) -> list[Entry]:
    """Measured rows (in order) with their predictions and parity, then predicted-only rows,
    then artifacts that were only checked under emulation. Without predicted or emulated
    results: exactly one entry per measured row."""
    arts, emu = _by_id(results), _emu_rows(results)
    preds: dict[tuple[str, Any], Json] = {}
    for p in predicted_rows(results):
        preds.setdefault((str(p.get("artifact")), p.get("threads")), p)
    entries, seen = [], set()
    for r in results["rows"]:
        key = (r["artifact"], r.get("threads"))
        seen.add(key)
        entries.append(Entry(r["artifact"], r.get("threads"), arts[r["artifact"]], r,
                             preds.get(key), emu.get(r["artifact"])))
    for key, p in preds.items():
        if key not in seen:
            seen.add(key)
            entries.append(Entry(key[0], key[1], _art_of(arts, key[0], p), None, p,
                                 emu.get(key[0])))
    shown = {a for a, _ in seen}
    for a, e in emu.items():
        if a not in shown:
            entries.append(Entry(a, None, _art_of(arts, a), None, None, e))
    return entries


# ---------------------------------------------------------------------------- recommendation
def recommend(results: Json) -> Json:
    """The artifact × thread count to ship on this target, in one sentence, plus the flags that
    would falsify or qualify it.

    Among measured rows without error, not marked invalid (throttled), whose artifact is a
    compressed artifact (not the PyTorch source), passes the accuracy gate and did not fail
    emulated ARM parity, the one with the lowest p50 latency wins (``basis: "measured"``).
    When no valid row was measured, the same rule runs on the predicted p50 (``basis:
    "predicted"``), with predictions whose intervals overlap the fastest's counted as a tie
    and broken by the target's ``preferred`` runtimes.
    """
    arts, excluded = _by_id(results), _parity_excluded(results)
    measured = [r for r in results["rows"] if _ok(r) and valid_row(r)
                and arts[r["artifact"]].get("kind") == "artifact"]
    preds = [p for p in predicted_rows(results) if _pred_ok(p)
             and _art_of(arts, str(p.get("artifact")), p).get("kind") == "artifact"]
    if not measured and preds:
        return _recommend_predicted(results, arts, preds, excluded)
    shippable = [r for r in measured if r["artifact"] not in excluded]
    passing = sorted((r for r in shippable if passes_gate(arts[r["artifact"]])), key=_p50)
    best = passing[0] if passing else None
    if best is not None:
        text = _ship_sentence(results, best, arts[best["artifact"]])
    else:
        text = _no_pass_sentence(results, shippable, arts)
    return _recommendation(results, best["artifact"] if best else None,
                           best.get("threads") if best else None,
                           _p50(best) if best else None,
                           "measured" if results["rows"] else None, None, text,
                           _flags(results, best, passing), passing)


def _recommendation(results: Json, artifact: str | None, threads: Any, p50: float | None,
                    basis: str | None, pred: Json | None, text: str, flags: list[str],
                    ranked: list[Json]) -> Json:
    candidates: list[str] = []
    for r in ranked:
        if r["artifact"] not in candidates:
            candidates.append(r["artifact"])
    low, high = _pred_bounds(pred) if pred else (None, None)
    return {"target": _target_name(results), "artifact": artifact, "threads": threads,
            "p50_ms": p50, "basis": basis,
            "rel_err": _rel_err(pred) if pred else None, "low_ms": low, "high_ms": high,
            "text": text, "flags": flags, "candidates": candidates,
            "excluded": _excluded(results)}


def _excluded(results: Json) -> list[Json]:
    """Rows and artifacts left out of the recommendation, with why."""
    out = [{"artifact": r["artifact"], "threads": r.get("threads"),
            "reason": r.get("invalid_reason") or "marked invalid (throttled)"}
           for r in results["rows"] if not valid_row(r)]
    out += [{"artifact": a, "threads": None,
             "reason": f"emulated parity {e.get('status') or 'not checked'} "
                       f"(QEMU {_qemu_cpu(results)})" + (f": {e['reason']}" if e.get("reason")
                                                         else "")}
            for a, e in _parity_excluded(results).items()]
    return out


def _pref_key(results: Json, art: Json) -> tuple[int, int]:
    """How the target prefers this artifact's runtime, best first: (penalty, index in
    ``preferred[precision]``). On ARM, OpenVINO INT8 (runs as fp16) and fp16 artifacts on a
    CPU without fp16 arithmetic come after everything else."""
    backend, prec = art.get("backend"), art.get("precision")
    pref = _preferred(results, prec)
    penalty = 0
    if _is_arm(results):
        if backend == "openvino" and prec == "int8":
            penalty = 1
        if prec == "fp16" and "fp16" not in _target_features(results):
            penalty = 1
    return penalty, pref.index(backend) if backend in pref else len(pref)


def _overlap(a: Json, b: Json) -> bool:
    alo, ahi = _pred_bounds(a)
    blo, bhi = _pred_bounds(b)
    return alo <= bhi and blo <= ahi


def rank_predicted(results: Json, rows: list[Json]) -> tuple[list[Json], list[Json]]:
    """``rows`` (predicted, ok) best first, and the tie: the rows whose predicted interval
    overlaps the fastest's (they are ranked by the target's preferred runtimes, then p50)."""
    if not rows:
        return [], []
    arts = _by_id(results)
    by_p50 = sorted(rows, key=lambda p: float(p["p50_ms"]))
    tie = [p for p in by_p50 if _overlap(p, by_p50[0])]
    tie.sort(key=lambda p: (_pref_key(results, _art_of(arts, str(p["artifact"]), p)),
                            float(p["p50_ms"])))
    return tie + [p for p in by_p50 if not any(p is t for t in tie)], tie


def _recommend_predicted(results: Json, arts: dict[str, Json], preds: list[Json],
                         excluded: dict[str, Json]) -> Json:
    shippable = [p for p in preds if p["artifact"] not in excluded]
    passing = [p for p in shippable if passes_gate(_art_of(arts, str(p["artifact"]), p))]
    ranked, tie = rank_predicted(results, passing)
    best = ranked[0] if ranked else None
    if best is not None:
        text = _ship_sentence(results, best, arts[best["artifact"]], predicted=True)
    elif shippable:
        p = min(shippable, key=lambda x: float(x["p50_ms"]))
        art = _art_of(arts, str(p["artifact"]), p)
        text = (f"On {_target_name(results)} no artifact passes the accuracy gate: the fastest "
                f"predicted, `{p['artifact']}` with {_threads(p.get('threads'))} "
                f"({fmt_predicted(p)}; {_why_unmeasured(results)}), fails {_why_failed(art)}.")
    else:
        text = _nothing_sentence(results, preds, arts)
    flags = _flags(results, None, [], basis="predicted",
                   art=arts[best["artifact"]] if best else None, tie=tie)
    return _recommendation(results, best["artifact"] if best else None,
                           best.get("threads") if best else None,
                           float(best["p50_ms"]) if best else None, "predicted", best, text,
                           flags, ranked)


def _why_unmeasured(results: Json) -> str:
    if results.get("measured_by") is None:
        return "no board was measured"
    if any(not valid_row(r) for r in results["rows"]):
        return "every run timed on the board was invalid (throttled)"
    return "no compressed artifact was measured on the board"


def _ship_sentence(results: Json, row: Json, art: Json, predicted: bool = False) -> str:
    if predicted:
        lo, hi = _pred_bounds(row)
        head = (f"On {_target_name(results)} ship `{row['artifact']}` with "
                f"{_threads(row.get('threads'))}: predicted p50 {fmt_ms(row['p50_ms'])} ms "
                f"{_pct(_rel_err(row))} ({fmt_ms(lo)}–{fmt_ms(hi)} ms; "
                f"{_why_unmeasured(results)})")
    else:
        head = (f"On {_target_name(results)} ship `{row['artifact']}` with "
                f"{_threads(row.get('threads'))}: p50 {fmt_ms(_p50(row))} ms")
    score = artifact_score(art)
    if score is None or score.value is None:
        return f"{head}; its accuracy was not measured here (bundle status: {art.get('status')})."
    name = "mean AUROC" if score.metric == "mean_auroc" else "top-1"
    text = f"{head}, {name} {score.fmt(ci=False)}"
    delta = artifact_delta(art)
    if delta is not None and delta.value is not None:
        unit = "" if delta.metric == "mean_auroc" else " points"
        val = _signed(delta.value, ".3f") if unit == "" else _signed(100 * delta.value)
        text += f" ({val}{unit} vs the source"
        if delta.lo is not None and delta.hi is not None:
            text += f", 95 % CI [{_signed(100 * delta.lo)}, {_signed(100 * delta.hi)}]"
        text += ")"
    n = (art.get("accuracy") or {}).get("n") or _eval_n(results, art)
    where = (f"measured on {n} held-out images" if art.get("accuracy_source") != "bundle"
             else f"from the bundle's compress-time verification on {n} images")
    return f"{text}; accuracy {where}."


def _no_pass_sentence(results: Json, shippable: list[Json], arts: dict[str, Json]) -> str:
    target = _target_name(results)
    if not shippable:
        ran = [r for r in results["rows"] if _ok(r) and arts[r["artifact"]].get("kind")
               == "artifact"]
        if any(valid_row(r) for r in ran):  # every valid one failed emulated parity
            return (f"On {target} every measured artifact failed output parity under QEMU "
                    f"{_qemu_cpu(results)} emulation: nothing can be shipped to this target.")
        if ran:
            return (f"On {target} every timed run was invalid (throttled): nothing to "
                    "recommend; cool the board and rerun.")
        errors = [r for r in results["rows"] if r.get("error")]
        if errors:
            first = errors[0]
            return (f"On {target} no compressed artifact ran successfully; e.g. "
                    f"`{first['artifact']}`: {first['error']}")
        if not results["rows"]:
            return _nothing_sentence(results, [], arts)
        return f"On {target} there is no compressed artifact to recommend (only the source ran)."
    row = min(shippable, key=_p50)
    art = arts[row["artifact"]]
    return (f"On {target} no artifact passes the accuracy gate: the fastest, `{row['artifact']}` "
            f"with {_threads(row.get('threads'))} (p50 {fmt_ms(_p50(row))} ms), "
            f"fails {_why_failed(art)}.")


def _nothing_sentence(results: Json, preds: list[Json], arts: dict[str, Json]) -> str:
    """No row measured and none predicted (or every predicted one failed emulated parity)."""
    target = _target_name(results)
    if preds:
        return (f"On {target} every artifact with a predicted latency failed output parity "
                f"under QEMU {_qemu_cpu(results)} emulation: nothing can be shipped to this "
                "target.")
    failed = [p for p in predicted_rows(results) if p.get("error")]
    why = (f"; e.g. no prediction for `{failed[0].get('artifact')}`: {failed[0]['error']}"
           if failed else "")
    measured = ("nothing was measured (no board reachable)" if results.get("measured_by") is None
                else "nothing was measured")
    return f"On {target} {measured} and no latency could be predicted{why}."


def _why_failed(art: Json) -> str:
    failed = _failed_checks(art)
    if not failed:
        return f"its bundle's gate (status {art.get('status')!r})"
    c = failed[0]
    value, limit = c.get("value"), c.get("limit")
    what = f"“{c.get('check')}”"
    if isinstance(value, int | float) and isinstance(limit, int | float):
        what += f": {value:.3g} > limit {limit:g}"
    if len(failed) > 1:
        what += f" (and {len(failed) - 1} more check{'s' if len(failed) > 2 else ''})"
    return what


# ------------------------------------------------------------------------------------- flags
def _flag_run_notes(results: Json) -> list[str]:
    """Notes the bench run itself recorded (e.g. bundles from different source models)."""
    return [str(n) for n in results.get("notes") or []]


def _flags(results: Json, best: Json | None, passing: list[Json], *, basis: str = "measured",
           art: Json | None = None, tie: Sequence[Json] = ()) -> list[str]:
    """``best`` is the recommended measured row (``basis`` measured); for a predicted
    recommendation ``art`` is the recommended artifact's record."""
    arts = _by_id(results)
    if basis == "measured":
        art = arts[best["artifact"]] if best else None
    flags: list[str] = []
    flags += _flag_invalid(results)
    flags += _flag_parity(results)
    flags += _flag_predicted(results, basis)
    flags += _flag_int8_slower(results, arts)
    flags += _flag_reduced_precision(results, arts)
    flags += _flag_spread(results, best if basis == "measured" else None)
    flags += _flag_quick(results)
    flags += _flag_isa(results)
    flags += _flag_target_isa(results, art, basis)
    flags += _flag_outside_prediction(results)
    flags += _flag_bundle_accuracy(results, art)
    flags += _flag_few_images(results, art)
    flags += _flag_delta_ci(art)
    flags += _flag_tie(passing)
    flags += _flag_predicted_tie(results, list(tie))
    flags += _flag_run_notes(results)
    return flags


def _flag_invalid(results: Json) -> list[str]:
    bad = [r for r in results["rows"] if not valid_row(r)]
    if not bad:
        return []
    shown = "; ".join(f"`{r['artifact']}` with {_threads(r.get('threads'))}"
                      + (f" ({r['invalid_reason']})" if r.get("invalid_reason") else "")
                      for r in bad[:6])
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    were = "run was throttled and is" if len(bad) == 1 else "runs were throttled and are"
    return [f"{len(bad)} {were} excluded: {shown}{more}. Cool the board (heatsink, fan) and "
            f"rerun {'it' if len(bad) == 1 else 'them'}."]


def _flag_parity(results: Json) -> list[str]:
    name, cpu = _target_name(results), _qemu_cpu(results)
    out = []
    for a, e in _parity_excluded(results).items():
        if e.get("status") == "failed":
            agree = e.get("top1_agreement")
            detail = ", ".join(x for x in (
                f"max abs diff {_num(e['max_abs_diff'])}" if e.get("max_abs_diff") is not None
                else "",
                f"top-1 agreement {100 * agree:.1f} %" if isinstance(agree, int | float) else "",
                str(e.get("reason") or "")) if x)
            out.append(f"`{a}` failed output parity under QEMU {cpu} emulation"
                       f"{f' ({detail})' if detail else ''}: its outputs differ on ARM, so it is "
                       f"excluded from the recommendation for {name}.")
        else:
            out.append(f"`{a}`: output parity under QEMU {cpu} emulation could not be checked "
                       f"({e.get('reason') or e.get('status') or 'unknown'}): excluded from the "
                       f"recommendation for {name} until it passes.")
    return out


def _flag_predicted(results: Json, basis: str) -> list[str]:
    if basis != "predicted":
        return []
    rels = [_rel_err(p) for p in predicted_rows(results) if _pred_ok(p)]
    lo, hi = min(rels), max(rels)
    err = _pct(hi) if round(100 * lo) == round(100 * hi) else f"±{100 * lo:.0f}–{100 * hi:.0f} %"
    return [f"{_why_unmeasured(results).capitalize()}: every latency here is predicted by "
            f"{_target_name(results)}'s latency model (expected error {err}; see “Predicted "
            "latency basis”), not measured. Measure on the board before relying on it."]


def _flag_target_isa(results: Json, best: Json | None, basis: str = "measured") -> list[str]:
    """What the target CPU's ISA (cpu.features) does to INT8, fp16 and OpenVINO on ARM."""
    if not _is_arm(results):
        return []
    name, model, feats = _target_name(results), _target_cpu_model(results), \
        _target_features(results)
    arts = [a for a in results["artifacts"] if a.get("kind") == "artifact"]
    ids = {p: [a["id"] for a in arts if a.get("precision") == p] for p in ("int8", "fp16")}
    best_prec = (best or {}).get("precision")
    out = []
    if "dotprod" not in feats and (ids["int8"] or best_prec == "int8"):
        text = (f"{name} has no dotprod ({model}: no sdot instruction): INT8 arithmetic is no "
                "faster than fp32 there, so INT8 gains come only from moving fewer bytes (4× "
                "smaller weights and activations on memory-bound layers), not from faster "
                "arithmetic.")
        if best_prec == "int8":
            text += (f" The recommended `{best['id']}` is INT8: its gain over fp32 there is "
                     "memory traffic alone.")
        out.append(text)
    if "fp16" in feats:
        which = (f"the fp16 artifacts {_ids(ids['fp16'])} use native fp16 arithmetic there — "
                 "worth considering (check their accuracy)" if ids["fp16"] else
                 "an fp16 bundle would use native fp16 arithmetic there — worth benchmarking")
        out.append(f"{name} has fp16 arithmetic ({model}): {which}. OpenVINO computes fp32 "
                   "models in fp16 on this CPU by default unless INFERENCE_PRECISION_HINT=f32.")
    elif ids["fp16"]:
        out.append(f"{name} has no fp16 arithmetic ({model}): the fp16 artifacts "
                   f"{_ids(ids['fp16'])} compute in fp32 there and only halve the file — do not "
                   "prefer them for speed.")
    ov = [a["id"] for a in arts if a.get("backend") == "openvino" and a.get("precision") == "int8"]
    if ov:
        pref = [b for b in _preferred(results, "int8") if b != "openvino"]
        after = (f"{name}'s preferred INT8 runtimes ({', '.join(pref)})" if pref
                 else "the other INT8 runtimes")
        fp16 = "" if "fp16" in feats else (", and this CPU has no fp16 arithmetic, so in effect "
                                           "in fp32")
        rank = (f"ranked after {after} when predicted latencies tie" if basis == "predicted"
                else f"{after} come first for INT8 unless OpenVINO measures faster")
        out.append(f"OpenVINO runs INT8 models as fp16 on ARM (little INT8 support): "
                   f"{_ids(ov)} compute{'s' if len(ov) == 1 else ''} in fp16 on {name}{fp16}; "
                   f"{rank}.")
    return out


def _ids(ids: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in ids)


def _flag_outside_prediction(results: Json) -> list[str]:
    """Measured p50s outside their predicted interval: the latency model is off there."""
    out = []
    for e in table_entries(results):
        if e.row is None or e.pred is None or not _ok(e.row) or not valid_row(e.row) \
                or not _pred_ok(e.pred):
            continue
        lo, hi = _pred_bounds(e.pred)
        if not lo <= _p50(e.row) <= hi:
            out.append((abs(math.log(_p50(e.row) / float(e.pred["p50_ms"]))), e, lo, hi))
    if not out:
        return []
    _, e, lo, hi = max(out, key=lambda x: x[0])
    many = f"{len(out)} measured rows fall" if len(out) > 1 else "A measured row falls"
    return [f"{many} outside the predicted range (worst: `{e.artifact}` with "
            f"{_threads(e.threads)}, measured {fmt_ms(_p50(e.row))} ms vs "
            f"{fmt_predicted(e.pred)}, range {fmt_ms(lo)}–{fmt_ms(hi)} ms): the latency model "
            "is off for this model and runtime; trust the measurement."]


def _flag_predicted_tie(results: Json, tie: list[Json]) -> list[str]:
    if len(tie) < 2:
        return []
    arts = _by_id(results)
    shown = ", ".join(f"`{p['artifact']}` ×{p.get('threads')} (predicted "
                      f"{fmt_ms(p['p50_ms'])} ms {_pct(_rel_err(p))})" for p in tie[:4])
    more = f" and {len(tie) - 4} more" if len(tie) > 4 else ""
    precs = list(dict.fromkeys(str(_art_of(arts, str(p["artifact"]), p).get("precision"))
                               for p in tie))
    order = "; ".join(f"{prec}: {', '.join(_preferred(results, prec)) or 'none listed'}"
                      for prec in precs)
    return [f"Within the prediction error: {shown}{more} overlap, so they tie; ranked by "
            f"{_target_name(results)}'s preferred runtimes ({order}). Measure on the board to "
            "decide."]


def _flag_int8_slower(results: Json, arts: dict[str, Json]) -> list[str]:
    fastest: dict[tuple[str, Any], dict[str, float]] = {}
    for r in results["rows"]:
        a = arts[r["artifact"]]
        if not _ok(r) or not valid_row(r) or a.get("kind") != "artifact":
            continue
        by_prec = fastest.setdefault((a.get("backend"), r.get("threads")), {})
        prec = a.get("precision")
        by_prec[prec] = min(by_prec.get(prec, math.inf), _p50(r))
    out = []
    for (backend, threads), p in fastest.items():
        if "int8" in p and "fp32" in p and p["int8"] > p["fp32"]:
            out.append(f"INT8 is slower than fp32 here on {backend} ({_threads(threads)}): "
                       f"{fmt_ms(p['int8'])} vs {fmt_ms(p['fp32'])} ms.")
    return out


def _flag_reduced_precision(results: Json, arts: dict[str, Json]) -> list[str]:
    seen: dict[tuple[str, str, str], list[str]] = {}
    for r in results["rows"]:
        raw = str((r.get("runtime") or {}).get("inference_precision") or "")
        reduced = _REDUCED.get(raw.lower())
        a = arts[r["artifact"]]
        if reduced and a.get("precision") in ("fp32", "int8") and not r.get("error"):
            ids = seen.setdefault((str(a.get("backend")), reduced, a["precision"]), [])
            if a["id"] not in ids:
                ids.append(a["id"])
    return [f"This runtime computes in {reduced} on this target: {backend} runs the {prec} "
            f"artifact{'s' if len(ids) > 1 else ''} {', '.join(f'`{i}`' for i in ids)} in "
            f"{reduced}, so outputs differ from {prec} execution."
            for (backend, reduced, prec), ids in seen.items()]


def _flag_spread(results: Json, best: Json | None) -> list[str]:
    noisy = [r for r in results["rows"] if _ok(r) and valid_row(r)
             and (r.get("spread") or 0) > SPREAD_LIMIT]
    if not noisy:
        return []
    worst = max(noisy, key=lambda r: r["spread"])
    where = f"`{worst['artifact']}` with {_threads(worst.get('threads'))}"
    if best is not None and best in noisy:
        return [f"Noisy machine: the recommended row's trials differ by {best['spread']:.2f}× "
                f"in p50 (worst {worst['spread']:.2f}×, {where}); rerun on an idle machine "
                "before trusting close calls."]
    return [f"Noisy machine: run-to-run p50 spread up to {worst['spread']:.2f}× ({where}; "
            f"limit {SPREAD_LIMIT}×); rerun on an idle machine before trusting close calls."]


def _flag_quick(results: Json) -> list[str]:
    if (results.get("protocol") or {}).get("quick"):
        return ["--quick timings: too few iterations to rely on; rerun without --quick."]
    return []


def _flag_isa(results: Json) -> list[str]:
    """Why rows measured on this machine may not represent the target (none when nothing was
    measured here)."""
    if not any(_ok(r) for r in results["rows"]) or results.get("measured_by", "") is None:
        return []
    name = _target_name(results)
    return [f"Measured here, not on {name} itself: {note}"
            for note in results["target"].get("isa_notes") or []]


def _flag_bundle_accuracy(results: Json, art: Json | None) -> list[str]:
    subjects = [art] if art is not None else results["artifacts"]
    if not any(a.get("accuracy_source") == "bundle" and a.get("accuracy") for a in subjects):
        return []
    if results.get("data"):  # data was given, but this bundle had no fp32 reference to score on
        return ["Accuracy is the bundle's compress-time verification: its source model could "
                "not be loaded here and it has no fp32 artifact to compare against on your "
                "data — keep the source checkpoint next to the bundle or add an fp32 bundle."]
    return ["Accuracy is the bundle's compress-time verification, not measured on your "
            "data — pass --data."]


def _flag_few_images(results: Json, art: Json | None) -> list[str]:
    n = _eval_n(results, art)
    if n is not None and n < MIN_EVAL_IMAGES:
        return [f"Only {n} evaluation images: wide confidence intervals (use at least "
                f"{MIN_EVAL_IMAGES}, ideally 500 or more)."]
    return []


def _flag_delta_ci(art: Json | None) -> list[str]:
    if art is None:
        return []
    delta, limit = artifact_delta(art), _gate_limit(art)
    if delta is None or delta.lo is None or limit is None or 100 * delta.lo >= -limit:
        return []
    return [f"The 95 % CI of `{art['id']}`'s top-1 change reaches {_signed(100 * delta.lo)} "
            f"points, beyond the {_MINUS}{limit:g}-point gate: this data cannot rule out a "
            "larger loss than allowed."]


def _flag_tie(passing: list[Json]) -> list[str]:
    if len(passing) < 2:
        return []
    first, second = passing[0], passing[1]
    if _p50(second) > _p50(first) * (1 + TIE_FRACTION):
        return []
    who = ("the same artifact" if second["artifact"] == first["artifact"]
           else f"`{second['artifact']}`")
    return [f"Effectively a tie with {who} with {_threads(second.get('threads'))}: "
            f"{fmt_ms(_p50(second))} vs {fmt_ms(_p50(first))} ms (within "
            f"{100 * TIE_FRACTION:g} %); choose on memory, load time or accuracy."]


# ------------------------------------------------------------------------------------ pareto
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated ``(latency, accuracy)`` points.

    Lower latency and higher accuracy are better. A point is dominated when another is at
    least as good on both and strictly better on one; identical points do not dominate each
    other, so all copies stay on the front.
    """
    front = []
    for i, (xi, yi) in enumerate(points):
        dominated = any(xj <= xi and yj >= yi and (xj < xi or yj > yi)
                        for j, (xj, yj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


# ------------------------------------------------------------------------------------ tables
def _short_label(art: Json, threads: Any, multi_bundle: bool) -> str:
    name, backend = str(art.get("name") or art["id"]), str(art.get("backend") or "")
    short = _SHORT_BACKEND.get(backend)
    if short and name.startswith(backend):
        name = short + name[len(backend):]
    if multi_bundle:
        name = f"{art.get('bundle_name') or art['id'].split('/')[0]}/{name}"
    return f"{name} ×{threads}" if threads is not None else name


def _multi_bundle(results: Json) -> bool:
    """Whether chart labels need the bundle name: only when artifact names repeat across
    bundles (an int8 and an fp32 bundle of one model have distinct names already)."""
    names = [str(a.get("name") or a["id"]) for a in results["artifacts"]]
    return len(set(names)) < len(names)


def score_header(results: Json) -> str:
    """``top-1 [95 % CI]`` or, for multi-label results, ``mean AUROC [95 % CI]``."""
    ml = (results.get("data") or {}).get("task") == "multilabel" or any(
        (s := artifact_score(a)) is not None and s.metric == "mean_auroc"
        for a in results["artifacts"])
    return "mean AUROC [95 % CI]" if ml else "top-1 [95 % CI]"


def gate_text(row: Json, art: Json) -> str:
    """``pass``, ``FAIL: <first failing check>``, ``source`` or ``error: <message>``."""
    if row.get("error"):
        return f"error: {row['error']}"
    if art.get("kind") == "source":
        return "source"
    if passes_gate(art):
        return "pass"
    failed = _failed_checks(art)
    return f"FAIL: {failed[0]['check']}" if failed else f"FAIL ({art.get('status')})"


def main_table(results: Json, recommendation: Json | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the latency/accuracy table shared by Markdown and HTML.

    One row per artifact × threads (:func:`table_entries`). Runs with predicted or emulated
    results get a ``predicted p50`` and/or an ``emulated parity`` column; a run with no
    measured row drops the columns only a measurement fills (p99, spread, load, RSS)."""
    rec = recommendation or {}
    pred, emu = bool(predicted_rows(results)), emulated(results) is not None
    full = bool(results["rows"]) or not (pred or emu)
    head = ["artifact", "threads", "p50 ms", "p90 ms"]
    head += ["p99 ms", "spread", "load ms", "RSS MB"] if full else []
    head += ["predicted p50"] if pred else []
    head += [f"emulated parity (QEMU {_qemu_cpu(results)})"] if emu else []
    head += [score_header(results), "Δ vs source [95 % CI]", "gate"]
    rows = []
    for e in table_entries(results):
        r, art = e.row or {}, e.art
        lat = r.get("latency_ms") or {}
        star = " ★" if (e.artifact, e.threads) == (rec.get("artifact"),
                                                   rec.get("threads")) else ""
        score = artifact_score(art)
        measured = [fmt_ms(lat.get(k)) if _ok(r) else "—" for k in ("p50", "p90", "p99")]
        if _ok(r) and not valid_row(r):
            measured[0] += " (invalid)"
        cells = [f"{e.artifact}{star}", "" if e.threads is None else str(e.threads),
                 *measured[:2]]
        if full:
            cells += [measured[2],
                      f"{r['spread']:.2f}×" if r.get("spread") is not None else "—",
                      fmt_ms(r.get("load_ms")) if r.get("load_ms") is not None else "—",
                      f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "—"]
        if pred:
            cells.append(fmt_predicted(e.pred))
        if emu:
            cells.append(fmt_parity(e.emu))
        cells += [score.fmt() if score else "not measured",
                  "—" if art.get("kind") == "source" else fmt_delta(artifact_delta(art)),
                  gate_text(r, art)]
        rows.append(cells)
    return head, rows


CSV_COLUMNS = ("artifact", "backend", "precision", "threads", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "std_ms", "min_ms", "max_ms", "n", "spread", "load_ms", "peak_rss_mb",
               "inference_precision", "accuracy_metric", "accuracy", "accuracy_ci95_lo",
               "accuracy_ci95_hi", "accuracy_delta", "accuracy_source", "passed", "status",
               "error", "valid", "invalid_reason", "temp_c_max", "freq_mhz_min",
               "latency_basis", "predicted_p50_ms", "predicted_low_ms", "predicted_high_ms",
               "predicted_rel_err", "predicted_group", "predicted_basis", "predicted_error",
               "emulated_parity", "emulated_max_abs_diff", "emulated_max_rel_diff",
               "emulated_top1_agreement")


def csv_rows(results: Json) -> list[dict[str, Any]]:
    """One dict per :func:`table_entries` line (one per measured row when nothing was
    predicted or emulated) with the keys of ``CSV_COLUMNS`` (fractions, not percent).

    ``p50_ms`` … ``max_ms`` are measured only; ``latency_basis`` says whether the line's latency
    is ``measured`` or ``predicted`` (``predicted_*``; its error ``predicted_rel_err``)."""
    out = []
    for e in table_entries(results):
        art, r, p, emu = e.art, e.row or {}, e.pred or {}, e.emu or {}
        lat = r.get("latency_ms") or {}
        thermal = r.get("thermal") or {}
        score, delta = artifact_score(art), artifact_delta(art)
        lo, hi = _pred_bounds(p) if _pred_ok(p) else (None, None)
        out.append({
            "artifact": e.artifact, "backend": art.get("backend"),
            "precision": art.get("precision"), "threads": e.threads,
            **{f"{k}_ms": lat.get(k) for k in ("p50", "p90", "p99", "mean", "std", "min", "max")},
            "n": lat.get("n"), "spread": r.get("spread"), "load_ms": r.get("load_ms"),
            "peak_rss_mb": r.get("peak_rss_mb"),
            "inference_precision": (r.get("runtime") or {}).get("inference_precision"),
            "accuracy_metric": score.metric if score else None,
            "accuracy": score.value if score else None,
            "accuracy_ci95_lo": score.lo if score else None,
            "accuracy_ci95_hi": score.hi if score else None,
            "accuracy_delta": delta.value if delta else None,
            "accuracy_source": art.get("accuracy_source"),
            "passed": passes_gate(art) if art.get("kind") == "artifact" else None,
            "status": art.get("status"), "error": r.get("error"),
            "valid": r.get("valid"), "invalid_reason": r.get("invalid_reason"),
            "temp_c_max": thermal.get("temp_c_max"), "freq_mhz_min": thermal.get("freq_mhz_min"),
            "latency_basis": ("measured" if e.row is not None
                              else "predicted" if e.pred is not None else None),
            "predicted_p50_ms": p.get("p50_ms") if _pred_ok(p) else None,
            "predicted_low_ms": lo, "predicted_high_ms": hi,
            "predicted_rel_err": _rel_err(p) if _pred_ok(p) else None,
            "predicted_group": p.get("group"), "predicted_basis": p.get("basis"),
            "predicted_error": p.get("error"),
            "emulated_parity": emu.get("status"),
            "emulated_max_abs_diff": emu.get("max_abs_diff"),
            "emulated_max_rel_diff": emu.get("max_rel_diff"),
            "emulated_top1_agreement": emu.get("top1_agreement"),
        })
    return out


def environment_lines(results: Json) -> list[tuple[str, str]]:
    """``(label, text)`` pairs describing target, machine, runtimes, protocol and data."""
    t, env = results["target"], results.get("environment") or {}
    cpu = env.get("cpu") or {}
    freq = cpu.get("freq_mhz") or {}
    lines = [("target", f"{t.get('name')}: {t.get('description') or ''} "
                        f"(access: {(t.get('access') or {}).get('kind', 'n/a')})".strip())]
    tcpu = t.get("cpu") or {}
    if tcpu.get("model") or tcpu.get("features"):
        lines.append(("target CPU", f"{tcpu.get('model') or 'unknown'} ({t.get('arch') or '?'}; "
                      f"features: {', '.join(tcpu.get('features') or []) or 'n/a'})"))
    nothing = "measured_by" in results and results["measured_by"] is None
    if nothing:
        lines.append(("measured", "nothing (no board reachable)"
                      + ("; latencies are predicted" if predicted_rows(results) else "")))
    elif "measured_by" in results:
        by = str(results["measured_by"])
        lines.append(("measured", {"local": "on this machine",
                                   "ssh": "on the board, over SSH"}.get(by, by)))
    lines += [("CPU (this machine, nothing timed on it)" if nothing else "CPU",
               f"{cpu.get('model') or 'unknown'} ({cpu.get('arch') or '?'}, "
               f"{cpu.get('logical_cores') or '?'} logical cores, governor "
               f"{cpu.get('governor') or 'n/a'}, {freq.get('current') or '?'} MHz)"),
              ("CPU features", ", ".join(cpu.get("features") or []) or "n/a"),
              ("system", f"{env.get('os') or '?'}, Python {env.get('python') or '?'}"),
              ("packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
               or "n/a")]
    for key in ("temperature_c", "throttled"):
        if env.get(key) is not None:
            lines.append((key.replace("_c", " °C"), str(env[key])))
    thermal = _thermal_line(results)
    if thermal:
        lines.append(("thermal while timing", thermal))
    proto = results.get("protocol") or {}
    lines.append(("protocol", ", ".join(f"{k} {v}" for k, v in proto.items()) or "n/a"))
    data = results.get("data")
    lines.append(("data", f"{data.get('path')} ({data.get('n')} images, {data.get('task')})"
                  if data else "none in this run (accuracy from the bundles, where recorded)"))
    ref = results.get("reference")
    if ref:
        lines.append(("reference", f"{ref.get('artifact')}: {ref.get('description') or ''}"))
    lines.append(("created", f"{results.get('created')} by edgekit {results.get('edgekit')}"))
    return lines


def _thermal_line(results: Json) -> str | None:
    """Temperature and clock ranges over every measured row's ``thermal`` samples."""
    th = [r["thermal"] for r in results["rows"] if isinstance(r.get("thermal"), dict)]
    if not th:
        return None

    def span(lo: str, hi: str, unit: str) -> str | None:
        los = [x[lo] for x in th if isinstance(x.get(lo), int | float)]
        his = [x[hi] for x in th if isinstance(x.get(hi), int | float)]
        return f"{min(los):g}–{max(his):g} {unit}" if los and his else None

    parts = [x for x in (span("temp_c_min", "temp_c_max", "°C"),
                         span("freq_mhz_min", "freq_mhz_max", "MHz")) if x]
    samples = sum(int(x.get("samples") or 0) for x in th)
    throttled = sum(1 for x in th if x.get("throttled_after") not in (None, 0, "0x0", False)
                    and x.get("throttled_after") != x.get("throttled_before"))
    parts.append(f"{samples} samples over {len(th)} runs")
    if throttled:
        parts.append(f"{throttled} run{'s' if throttled > 1 else ''} throttled")
    return ", ".join(parts)


# ---------------------------------------------------------------------- predicted / emulated
def predicted_section(results: Json) -> tuple[list[str], list[str], list[list[str]]] | None:
    """The “Predicted latency basis” section: (paragraphs, table head, table rows), or None
    when nothing was predicted."""
    pred = results.get("predicted")
    rows = predicted_rows(results)
    if not isinstance(pred, dict) or not rows:
        return None
    paras = [f"Predicted latencies come from {_target_name(results)}'s latency model "
             "(edgekit.bench.predict), not from a measurement; each carries its expected "
             "relative error (±) and the range low–high. Two predictions whose ranges overlap "
             "are a tie."]
    paras += [str(n) for n in pred.get("notes") or []]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for p in rows:
        if not _pred_ok(p):
            continue
        key = (str(p.get("group") or "n/a"), str(p.get("basis") or "n/a"), _pct(_rel_err(p)))
        groups.setdefault(key, []).append(f"{p.get('artifact')} ×{p.get('threads')}")
    table = [[g, b, e, ", ".join(who)] for (g, b, e), who in groups.items()]
    for p in rows:
        if not _pred_ok(p):
            paras.append(f"No prediction for `{p.get('artifact')}` with "
                         f"{_threads(p.get('threads'))}: {p.get('error') or 'no p50'}.")
    return paras, ["group", "basis", "expected error", "predicted for"], table


def emulated_section(results: Json) -> tuple[str, list[str], list[str], list[list[str]]] | None:
    """The “Emulated parity (QEMU …)” section: (title, paragraphs, head, rows) or None."""
    emu = emulated(results)
    if emu is None:
        return None
    cpu = _qemu_cpu(results)
    paras = [f"Output parity of each artifact run under QEMU user-mode emulation of a {cpu} "
             f"on {emu.get('images') or '?'} images, against its reference outputs. Emulated "
             "timings are not reported: emulation says nothing about speed."]
    if emu.get("note"):
        paras.append(str(emu["note"]))
    env_text = _emu_env_text(emu.get("environment"))
    if env_text:
        paras.append(f"Environment: {env_text}.")
    rows = [[str(r.get("artifact")), fmt_parity(r).split(" (")[0].split(":")[0],
             _num(r.get("max_abs_diff")), _num(r.get("max_rel_diff")),
             f"{100 * r['top1_agreement']:.1f} %" if isinstance(r.get("top1_agreement"),
                                                                int | float) else "n/a",
             str(r.get("reason") or "")]
            for r in emu.get("rows") or [] if isinstance(r, dict)]
    return (f"Emulated parity (QEMU {cpu})", paras,
            ["artifact", "parity", "max abs diff", "max rel diff", "top-1 agreement", "reason"],
            rows)


def _emu_env_text(env: Any) -> str:
    """QEMU version, emulated CPU features, Python and runtime versions, in one line."""
    if not isinstance(env, dict):
        return ""
    qemu, cpu = env.get("qemu") or {}, env.get("cpu") or {}
    parts = []
    if isinstance(qemu, dict) and qemu.get("version"):
        parts.append(f"QEMU {qemu['version']}")
    if isinstance(cpu, dict) and cpu.get("features"):
        parts.append(f"CPU features {' '.join(map(str, cpu['features']))}")
    if env.get("python"):
        parts.append(f"Python {env['python']}")
    runtimes = env.get("runtimes") or {}
    if isinstance(runtimes, dict) and runtimes:
        parts += [f"{b} {r.get('version') or 'n/a'}"
                  + ("" if r.get("available", True) else " (unavailable)")
                  for b, r in runtimes.items() if isinstance(r, dict)]
    elif isinstance(env.get("packages"), dict):
        parts += [f"{k} {v}" for k, v in env["packages"].items()]
    return ", ".join(parts)


# ------------------------------------------------------------------------------------- chart
@dataclass
class _Point:
    row: Json
    art: Json
    x: float
    xlo: float
    xhi: float
    y: float
    ylo: float | None
    yhi: float | None
    label: str
    passed: bool
    predicted: bool = False  # x is a predicted p50, the bar its expected error range


_PREC_MARKER = {"fp32": "o", "fp16": "^", "int8": "s"}
_BACKEND_COLOUR = {"openvino": "#1f77b4", "onnxruntime": "#ff7f0e", "litert": "#2ca02c",
                   "pytorch": "#7f7f7f"}
_EXTRA_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_DPI = 120


def _chart_points(results: Json) -> tuple[list[_Point], list[str]]:
    """Plottable points (a latency and an accuracy) and the labels of rows left out."""
    arts, multi = _by_id(results), _multi_bundle(results)
    if not any(_ok(r) and valid_row(r) for r in results["rows"]) and any(
            _pred_ok(p) for p in predicted_rows(results)):
        points, hidden = _predicted_points(results, arts, multi)
    else:
        points, hidden = _measured_points(results, arts, multi)
    bad = _parity_excluded(results)
    for p in points:
        if p.row["artifact"] in bad:
            failed = bad[p.row["artifact"]].get("status") == "failed"
            p.label += f" (parity {'FAIL' if failed else 'n/a'})"
    return points, hidden


def _measured_points(results: Json, arts: dict[str, Json],
                     multi: bool) -> tuple[list[_Point], list[str]]:
    points, hidden = [], []
    for r in results["rows"]:
        art = arts[r["artifact"]]
        label = _short_label(art, r.get("threads"), multi)
        score = artifact_score(art)
        if not _ok(r) or score is None or score.value is None:
            hidden.append(label)
            continue
        if not valid_row(r):
            hidden.append(f"{label} (throttled)")
            continue
        lat, k = r["latency_ms"], 1.0 if score.metric == "mean_auroc" else 100.0
        x = _p50(r)
        points.append(_Point(
            r, art, x, min(x, lat.get("min", x)), max(x, lat.get("p90", x)), k * score.value,
            k * score.lo if score.lo is not None else None,
            k * score.hi if score.hi is not None else None,
            label, art.get("kind") == "source" or passes_gate(art)))
    return points, hidden


def _predicted_points(results: Json, arts: dict[str, Json],
                      multi: bool) -> tuple[list[_Point], list[str]]:
    """Points at the predicted p50 (bar: the predicted range) when nothing was measured."""
    points, hidden = [], []
    for p in predicted_rows(results):
        art = _art_of(arts, str(p.get("artifact")), p)
        label = _short_label(art, p.get("threads"), multi)
        score = artifact_score(art)
        if not _pred_ok(p) or score is None or score.value is None:
            hidden.append(label)
            continue
        k = 1.0 if score.metric == "mean_auroc" else 100.0
        lo, hi = _pred_bounds(p)
        x = float(p["p50_ms"])
        points.append(_Point(
            p, art, x, min(x, lo), max(x, hi), k * score.value,
            k * score.lo if score.lo is not None else None,
            k * score.hi if score.hi is not None else None,
            label, passes_gate(art), predicted=True))
    return points, hidden


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise BackendUnavailable("The Pareto chart needs matplotlib: "
                                 "pip install 'edgekit[report]'") from exc
    return Figure, FigureCanvasAgg


def pareto_chart(results: Json, recommendation: Json | None = None) -> bytes:
    """The p50-latency vs accuracy chart as PNG bytes (1200×780 px).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch). Raises
    BackendUnavailable with the install hint when matplotlib is missing.
    """
    figure_cls, canvas_cls = _matplotlib()
    rec = recommendation if recommendation is not None else recommend(results)
    points, hidden = _chart_points(results)
    fig = figure_cls(figsize=(10, 6.5), dpi=_DPI)
    canvas = canvas_cls(fig)
    fig.subplots_adjust(left=0.08, right=0.76, top=0.88, bottom=0.17)
    ax = fig.add_subplot()
    colours = _colours(points)
    _draw_points(ax, points, colours)
    front = [points[i] for i in pareto_front([(p.x, p.y) for p in points])]
    _draw_front(ax, front)
    recommended = [p for p in points if (p.row["artifact"], p.row.get("threads"))
                   == (rec.get("artifact"), rec.get("threads"))]
    for p in recommended:
        ax.scatter([p.x], [p.y], s=520, facecolors="none", edgecolors="#d62728",
                   linewidths=2.2, zorder=5)
    _decorate(fig, ax, results, points, hidden)
    _legend(ax, colours, points, bool(front), bool(recommended))
    _place_labels(ax, points, front + recommended, canvas.get_renderer())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _colours(points: list[_Point]) -> dict[str, str]:
    colours: dict[str, str] = {}
    extra = iter(_EXTRA_COLOURS * 4)
    for p in points:
        b = str(p.art.get("backend"))
        if b not in colours:
            colours[b] = _BACKEND_COLOUR.get(b) or next(extra)
    return colours


def _draw_points(ax: Any, points: list[_Point], colours: dict[str, str]) -> None:
    for p in points:
        colour = colours[str(p.art.get("backend"))]
        yerr = None
        if p.ylo is not None and p.yhi is not None:
            yerr = [[max(p.y - p.ylo, 0.0)], [max(p.yhi - p.y, 0.0)]]
        bars = ax.errorbar([p.x], [p.y], xerr=[[p.x - p.xlo], [p.xhi - p.x]], yerr=yerr,
                           fmt="none", ecolor=colour, elinewidth=1.0, capsize=3, alpha=0.55,
                           zorder=2)
        marker = _PREC_MARKER.get(str(p.art.get("precision")), "D")
        if p.predicted:  # hollow; dashed error bars; × inside when the gate fails
            bars[2][0].set_linestyle("--")  # the latency bar: the predicted range
            ax.scatter([p.x], [p.y], s=70, marker=marker, facecolors="none", edgecolors=colour,
                       linewidths=1.6, zorder=4)
            if not p.passed:
                ax.scatter([p.x], [p.y], s=28, marker="x", color=colour, linewidths=1.4,
                           zorder=4)
            continue
        ax.scatter([p.x], [p.y], s=70, marker=marker,
                   facecolors=colour if p.passed else "white", edgecolors=colour,
                   linewidths=1.6, zorder=4)


def _draw_front(ax: Any, front: list[_Point]) -> None:
    if not front:
        return
    pts = sorted(front, key=lambda p: (p.x, p.y))
    ax.step([p.x for p in pts], [p.y for p in pts], where="post", color="black",
            linestyle="--", linewidth=1.1, alpha=0.8, zorder=3)
    ax.scatter([p.x for p in pts], [p.y for p in pts], s=150, facecolors="none",
               edgecolors="black", linewidths=1.2, zorder=4)


def _decorate(fig: Any, ax: Any, results: Json, points: list[_Point], hidden: list[str]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cpu = ((results.get("environment") or {}).get("cpu") or {})
    if any(p.predicted for p in points):
        tcpu = results["target"].get("cpu") or {}
        fig.suptitle(f"Predicted latency vs accuracy on {_target_name(results)} (not measured)",
                     fontsize=14, fontweight="bold", x=0.08, y=0.965, ha="left")
        ax.set_title(f"{tcpu.get('model') or 'target CPU'} · latency model, no board measured · "
                     "one point per artifact × threads", fontsize=9.5, color="0.3", loc="left")
        ax.set_xlabel("predicted p50 latency, ms (lower is better; bar: expected error range)",
                      fontsize=10)
    else:
        fig.suptitle(f"Latency vs accuracy on {_target_name(results)}", fontsize=14,
                     fontweight="bold", x=0.08, y=0.965, ha="left")
        ax.set_title(f"{cpu.get('model') or 'unknown CPU'} · {cpu.get('logical_cores') or '?'} "
                     "logical cores · one point per artifact × threads", fontsize=9.5,
                     color="0.3", loc="left")
        ax.set_xlabel("p50 latency, ms (lower is better; bar: min to p90)", fontsize=10)
    ml = any(getattr(artifact_score(p.art), "metric", "") == "mean_auroc" for p in points)
    ax.set_ylabel(("mean AUROC" if ml else "top-1 accuracy, %") + " (bar: 95 % CI)", fontsize=10)
    ax.grid(True, color="0.9", linewidth=0.8, zorder=0)
    if points and max(p.xhi for p in points) / max(min(p.xlo for p in points), 1e-9) > 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if not points:
        ax.text(0.5, 0.5, "no row has both a latency and an accuracy", transform=ax.transAxes,
                ha="center", va="center", color="0.4")
    ax.margins(x=0.12, y=0.12)
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    fig.text(0.01, 0.01, "\n".join(_footnotes(results, hidden, points)), fontsize=8.5,
             color="0.3", ha="left", va="bottom")


def _footnotes(results: Json, hidden: list[str], points: Sequence[_Point] = ()) -> list[str]:
    notes = ["Dashed step line: Pareto front (no other point is both faster and more accurate)."]
    if any(p.predicted for p in points):
        notes.append("Every latency is predicted by the target's latency model (hollow markers, "
                     "dashed bar: expected error range); no board was measured.")
    elif any(_pred_ok(p) for p in predicted_rows(results)):
        notes.append("Measured latencies only; the predicted ones are in the tables.")
    if any(a.get("accuracy_source") == "bundle" and a.get("accuracy")
           for a in results["artifacts"]):
        notes.append("Some accuracies are the bundles' compress-time verification (no fp32 "
                     "reference on your data)." if results.get("data") else
                     "Accuracy from the bundles' compress-time verification, not measured on "
                     "your data in this run (pass --data).")
    if (results.get("protocol") or {}).get("quick"):
        notes.append("--quick timings: too few iterations to rely on.")
    if hidden:
        shown = ", ".join(hidden[:6]) + (f" and {len(hidden) - 6} more" if len(hidden) > 6 else "")
        why = ("no prediction or no accuracy" if any(p.predicted for p in points)
               else "error, throttled or no accuracy" if any(h.endswith("(throttled)")
                                                             for h in hidden)
               else "error or no accuracy")
        notes.append(f"Not shown ({why}): {shown}.")
    return notes


def _legend(ax: Any, colours: dict[str, str], points: list[_Point], front: bool,
            rec: bool) -> None:
    from matplotlib.lines import Line2D

    def marker(**kw: Any) -> Line2D:
        return Line2D([], [], linestyle="none", **{"markersize": 8, **kw})

    handles = [marker(marker="o", color=c, label=b) for b, c in colours.items()]
    for prec in dict.fromkeys(str(p.art.get("precision")) for p in points):
        hollow = {"markerfacecolor": "none"} if any(p.predicted for p in points) else {}
        handles.append(marker(marker=_PREC_MARKER.get(prec, "D"), color="0.35", label=prec,
                              **hollow))
    if any(p.predicted for p in points):
        handles.append(marker(marker="o", markerfacecolor="none", markeredgecolor="0.35",
                              label="predicted (not measured)"))
        if any(not p.passed for p in points):
            handles.append(marker(marker="x", color="0.35", label="fails the gate"))
    elif any(not p.passed for p in points):
        handles.append(marker(marker="o", markerfacecolor="white", markeredgecolor="0.35",
                              label="fails the gate"))
    if front:
        handles.append(Line2D([], [], color="black", linestyle="--", marker="o",
                              markerfacecolor="none", markersize=9, label="Pareto front"))
    if rec:
        handles.append(marker(marker="o", markerfacecolor="none", markeredgecolor="#d62728",
                              markeredgewidth=2, markersize=14, label="recommended"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, fontsize=9, frameon=False, labelspacing=0.9)


def _label_offsets() -> list[tuple[float, float]]:
    angles = (35, -35, 145, -145, 90, -90, 0, 180)
    return [(r * math.cos(math.radians(a)), r * math.sin(math.radians(a)))
            for r in (9, 18, 30, 44, 60) for a in angles]


def _place_labels(ax: Any, points: list[_Point], first: list[_Point], renderer: Any) -> None:
    """Greedy label placement: for each point (``first`` ones first) the nearest offset whose
    text box overlaps no marker, no earlier label and stays inside the axes; else the offset
    with the fewest collisions. Far offsets get a leader line."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    axbox = ax.get_window_extent(renderer)
    rings = {id(p): 24.0 for p in first}
    obstacles = []
    for p in points:
        px, py = ax.transData.transform((p.x, p.y))
        r = rings.get(id(p), 9.0)
        obstacles.append(Bbox.from_extents(px - r, py - r, px + r, py + r))

    def cost(dx: float, dy: float, p: _Point) -> tuple[int, Bbox]:
        ann = _annotate(ax, p, dx, dy)
        ann.update_positions(renderer)
        box = Text.get_window_extent(ann, renderer).padded(2)
        ann.remove()
        outside = not (box.x0 >= axbox.x0 and box.x1 <= axbox.x1 and box.y0 >= axbox.y0
                       and box.y1 <= axbox.y1)
        return 100 * outside + sum(box.overlaps(o) for o in obstacles), box

    seen: set[int] = set()
    for p in first + points:
        if id(p) in seen:
            continue
        seen.add(id(p))
        best: tuple[int, Bbox, tuple[float, float]] | None = None
        for dx, dy in _label_offsets():
            c, box = cost(dx, dy, p)
            if best is None or c < best[0]:
                best = (c, box, (dx, dy))
            if c == 0:
                break
        assert best is not None
        _annotate(ax, p, *best[2])
        obstacles.append(best[1])


def _annotate(ax: Any, p: _Point, dx: float, dy: float) -> Any:
    ha = "left" if dx > 1 else "right" if dx < -1 else "center"
    va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
    far = math.hypot(dx, dy) > 12
    return ax.annotate(p.label, (p.x, p.y), xytext=(dx, dy), textcoords="offset points",
                       ha=ha, va=va, fontsize=9, color="0.1", zorder=6,
                       arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.7,
                                   "shrinkA": 0, "shrinkB": 4} if far else None)


# ---------------------------------------------------------------------------------- markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Json, chart: str | None = "pareto.png") -> str:
    """The Markdown summary: recommendation, flags, the main table, environment, chart link."""
    rec = report["recommendation"]
    lines = [f"# edgekit bench: {_target_name(report)}", "", f"**Recommendation.** {rec['text']}",
             ""]
    lines += [f"- ⚠ {f}" for f in rec["flags"]] + ([""] if rec["flags"] else [])
    head, rows = main_table(report, rec)
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join("---" if i in (0, len(head) - 1) else "---:"
                           for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    lines += ["", "★ recommended. Δ: change against the source model; gate: the recipe's "
              f"accuracy gate.{_legend_extra(report)}", ""]
    binary = [(a["id"], text) for a in report["artifacts"]
              if (text := binary_summary(((a.get("accuracy") or {}).get("metrics")) or {}))]
    if binary:
        lines += ["## Binary head", ""] + [f"- `{i}`: {t}" for i, t in binary] + [""]
    if chart:
        lines += [f"![latency vs accuracy]({chart})", ""]
    lines += _md_sections(report)
    lines += ["## Environment", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in environment_lines(report)]
    return "\n".join(lines) + "\n"


def _legend_extra(results: Json) -> str:
    text = ""
    if predicted_rows(results):
        text += (" predicted p50: from the target's latency model, not measured, ± its expected "
                 "relative error.")
    if emulated(results) is not None:
        text += (" emulated parity: outputs under QEMU emulation vs the reference (timings under "
                 "emulation are not reported).")
    if any(not valid_row(r) for r in results["rows"]):
        text += " (invalid): the run throttled and is excluded."
    return text


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(_md_cell(h) for h in head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(_md_cell(str(c)) for c in row) + " |" for row in rows)]


def _md_sections(results: Json) -> list[str]:
    """The “Predicted latency basis” and “Emulated parity” sections (when present)."""
    lines: list[str] = []
    pred = predicted_section(results)
    if pred:
        paras, head, rows = pred
        lines += ["## Predicted latency basis", "", paras[0], ""]
        lines += [f"- {p}" for p in paras[1:]] + ([""] if paras[1:] else [])
        lines += (_md_table(head, rows) + [""]) if rows else []
    emu = emulated_section(results)
    if emu:
        title, paras, head, rows = emu
        lines += [f"## {title}", "", *(x for p in paras for x in (p, "")),
                  *_md_table(head, rows), ""]
    return lines


# -------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:2rem auto;max-width:1180px;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
.rec{background:#eef7ee;border-left:5px solid #2a8a4a;padding:.8rem 1rem;font-size:1.05rem}
.rec.none{background:#fbeeee;border-color:#c0392b}
.flags{background:#fff8e6;border-left:5px solid #e0a800;padding:.5rem 1rem .5rem 2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #d4d4d4;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}th:first-child,td:first-child,td:last-child{text-align:left}
td.l{text-align:left}tr.star{background:#fff6d5;font-weight:600}.fail{color:#b00020}
code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
img{max-width:100%;height:auto;border:1px solid #eee}
details{margin:.5rem 0 1rem}summary{cursor:pointer;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}
dd{margin:0}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _e_code(text: str) -> str:
    """Escape, then render `backticked` parts as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(text))


def _html_table(head: Sequence[str], rows: Sequence[Sequence[Any]],
                classes: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_e(classes[i])}"' if classes and classes[i] else ""
        cells = "".join(f'<td class="fail">{_e(c)}</td>' if str(c).startswith(("FAIL", "error"))
                        else f"<td>{_e(c)}</td>" for c in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(report: Json, png: bytes | None) -> str:
    """One self-contained page: inline CSS, the chart as a data URI, no scripts or fonts."""
    rec = report["recommendation"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>edgekit bench: {_e(_target_name(report))}</title><style>{_CSS}</style>",
        "</head><body>",
        f"<h1>edgekit bench: {_e(_target_name(report))}</h1>",
        f"<p class='sub'>{_e(report.get('created') or '')} · edgekit "
        f"{_e(report.get('edgekit') or '')}</p>",
        f"<p class='rec{'' if rec['artifact'] else ' none'}'>{_e_code(rec['text'])}</p>",
    ]
    if rec["flags"]:
        parts.append("<ul class='flags'>" + "".join(f"<li>{_e_code(f)}</li>" for f in rec["flags"])
                     + "</ul>")
    parts += ["<h2>Latency and accuracy</h2>", _html_main_table(report, rec),
              "<p class='sub'>★ recommended · Δ: change against the source model · gate: the "
              f"recipe's accuracy gate{_e(_legend_extra(report))}</p>"]
    if png:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(f"<img src='{uri}' alt='p50 latency vs accuracy, one point per artifact "
                     "and thread count' width='1000'>")
    else:
        parts.append("<p class='sub'>Chart not drawn: pip install 'edgekit[report]'.</p>")
    parts += _html_sections(report)
    parts += ["<h2>Accuracy per artifact</h2>", _html_accuracy(report, rec),
              "<h2>Environment</h2>", _html_environment(report), "</body></html>"]
    return "\n".join(parts) + "\n"


def _html_sections(results: Json) -> list[str]:
    parts = []
    pred = predicted_section(results)
    if pred:
        paras, head, rows = pred
        parts += ["<h2>Predicted latency basis</h2>", f"<p>{_e_code(paras[0])}</p>"]
        if paras[1:]:
            parts.append("<ul>" + "".join(f"<li>{_e_code(p)}</li>" for p in paras[1:]) + "</ul>")
        if rows:
            parts.append(_html_table(head, rows))
    emu = emulated_section(results)
    if emu:
        title, paras, head, rows = emu
        parts += [f"<h2>{_e(title)}</h2>", *(f"<p>{_e_code(p)}</p>" for p in paras),
                  _html_table(head, rows)]
    return parts


def _html_main_table(report: Json, rec: Json) -> str:
    head, rows = main_table(report, rec)
    return _html_table(head, rows, ["star" if r[0].endswith("★") else "" for r in rows])


def _html_accuracy(report: Json, rec: Json) -> str:
    parts = []
    for art in report["artifacts"]:
        acc = art.get("accuracy")
        if not acc:
            parts.append(f"<p><code>{_e(art['id'])}</code>: accuracy not measured.</p>")
            continue
        score = artifact_score(art)
        summary = (f"<code>{_e(art['id'])}</code> — {_e(score.fmt() if score else 'n/a')}, "
                   f"n = {_e(acc.get('n'))}, source: {_e(art.get('accuracy_source') or 'n/a')}")
        is_open = " open" if art["id"] == rec.get("artifact") else ""
        parts.append(f"<details{is_open}><summary>{summary}</summary>")
        parts.append(_html_binary(acc.get("metrics") or {}))
        parts.append(_html_per_class(acc.get("metrics") or {}))
        parts.append(_html_checks(acc.get("checks") or []))
        parts.append(_html_confusion(acc.get("metrics") or {}))
        parts.append("</details>")
    return "\n".join(parts)


def _fmt_pct(m: Any) -> str:
    v = _v(m)
    if v is None:
        return "n/a"
    lo, hi = _ci(m)
    return f"{100 * v:.1f} %" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None
                                  and hi is not None else "")


def binary_summary(metrics: Json) -> str | None:
    """``sensitivity … · specificity … · AUROC …`` of a binary (one sigmoid unit) head."""
    if metrics.get("task") != "binary":
        return None
    auroc = Score("mean_auroc", _v(metrics.get("auroc")), *_ci(metrics.get("auroc")))
    return (f"binary head (positive class {metrics.get('positive_class')}, threshold "
            f"{metrics.get('threshold', 0.5):g}): sensitivity {_fmt_pct(metrics.get('sensitivity'))}"
            f" · specificity {_fmt_pct(metrics.get('specificity'))} · AUROC "
            f"{auroc.fmt() if auroc.value is not None else 'n/a'}")


def _html_binary(metrics: Json) -> str:
    text = binary_summary(metrics)
    return f"<p>{_e(text)}</p>" if text else ""


def _html_per_class(metrics: Json) -> str:
    if metrics.get("task") == "multilabel":
        rows = []
        for name, m in (metrics.get("per_label") or {}).items():
            s = Score("mean_auroc", _v(m.get("auroc")), *_ci(m.get("auroc")))
            auroc = s.fmt() if s.value is not None else (m.get("auroc_undefined") or "n/a")
            rows.append([name, m.get("n_positive"), auroc, _fmt_pct(m.get("sensitivity")),
                         _fmt_pct(m.get("specificity"))])
        return _html_table(["label", "positives", "AUROC [95 % CI]", "sensitivity @0.5",
                            "specificity @0.5"], rows)
    rows = [[name, m.get("support"), _fmt_pct(m.get("sensitivity")),
             _fmt_pct(m.get("specificity")),
             f"{m['f1']:.3f}" if isinstance(m.get("f1"), int | float) else "n/a"]
            for name, m in (metrics.get("per_class") or {}).items()]
    if not rows:
        return ""
    return _html_table(["class", "n", "sensitivity [95 % CI]", "specificity [95 % CI]", "F1"],
                       rows)


def _html_checks(checks: list[Json]) -> str:
    if not checks:
        return ""
    rows = [[c.get("check"), f"{c['value']:.3g}" if isinstance(c.get("value"), int | float)
             else "n/a", c.get("limit"), "pass" if c.get("passed") else "FAIL"] for c in checks]
    return _html_table(["gate check", "value", "limit", "result"], rows)


def _html_confusion(metrics: Json) -> str:
    cm = metrics.get("confusion_matrix")
    if not cm:
        return ""
    names = metrics.get("class_names") or list(metrics.get("per_class") or {})
    if len(names) != len(cm):
        names = [str(i) for i in range(len(cm))]
    head = ["true \\ predicted", *names]
    return ("<p class='sub'>Confusion matrix (rows: true class, columns: predicted)</p>"
            + _html_table(head, [[n, *row] for n, row in zip(names, cm, strict=True)]))


def _html_environment(report: Json) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in environment_lines(report))
    return f"<dl>{items}</dl>"


# ------------------------------------------------------------------------------------ writing
def _write_atomic(path: Path, data: bytes | str) -> Path:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _csv_text(results: Json) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def build_report(results: Json) -> Json:
    """``results`` + ``recommendation`` + ``report_schema`` (the content of report.json)."""
    return {**results, "report_schema": REPORT_SCHEMA, "recommendation": recommend(results)}


def write_report(run_dir: str | Path, results: Json | None = None) -> dict[str, Path]:
    """Write report.json, report.csv, report.md, pareto.png and report.html into ``run_dir``.

    ``results`` defaults to the folder's ``results.json``. Returns file name → path. Without
    matplotlib the chart is skipped with a warning and the other files are still written.
    """
    run = Path(run_dir)
    if run.suffix == ".json" and not run.is_dir():
        run = run.parent
    if results is None:
        results = load_results(run)
    else:
        _check_results(results, "results")
    if not run.is_dir():
        raise ConfigError(f"{run}: not a folder")
    report = build_report(results)
    paths = {"report.json": _write_atomic(run / "report.json",
                                          json.dumps(report, indent=2, ensure_ascii=False)),
             "report.csv": _write_atomic(run / "report.csv", _csv_text(results))}
    try:
        png: bytes | None = pareto_chart(results, report["recommendation"])
    except BackendUnavailable as exc:
        warnings.warn(f"{exc}; pareto.png skipped", stacklevel=2)
        png = None
    if png is not None:
        paths["pareto.png"] = _write_atomic(run / "pareto.png", png)
    paths["report.md"] = _write_atomic(
        run / "report.md", render_markdown(report, "pareto.png" if png else None))
    paths["report.html"] = _write_atomic(run / "report.html", render_html(report, png))
    return paths
