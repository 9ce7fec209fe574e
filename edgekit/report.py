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


# ---------------------------------------------------------------------------- recommendation
def recommend(results: Json) -> Json:
    """The artifact × thread count to ship on this target, in one sentence, plus the flags that
    would falsify or qualify it.

    Among rows without error whose artifact is a compressed artifact (not the PyTorch source)
    and passes the accuracy gate, the one with the lowest p50 latency wins.
    """
    arts = _by_id(results)
    shippable = [r for r in results["rows"] if _ok(r) and arts[r["artifact"]].get("kind") == "artifact"]
    passing = sorted((r for r in shippable if passes_gate(arts[r["artifact"]])), key=_p50)
    best = passing[0] if passing else None
    if best is not None:
        text = _ship_sentence(results, best, arts[best["artifact"]])
    else:
        text = _no_pass_sentence(results, shippable, arts)
    candidates: list[str] = []
    for r in passing:
        if r["artifact"] not in candidates:
            candidates.append(r["artifact"])
    return {"target": _target_name(results),
            "artifact": best["artifact"] if best else None,
            "threads": best.get("threads") if best else None,
            "p50_ms": _p50(best) if best else None,
            "text": text, "flags": _flags(results, best, passing), "candidates": candidates}


def _ship_sentence(results: Json, row: Json, art: Json) -> str:
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
        errors = [r for r in results["rows"] if r.get("error")]
        if errors:
            first = errors[0]
            return (f"On {target} no compressed artifact ran successfully; e.g. "
                    f"`{first['artifact']}`: {first['error']}")
        return f"On {target} there is no compressed artifact to recommend (only the source ran)."
    row = min(shippable, key=_p50)
    art = arts[row["artifact"]]
    return (f"On {target} no artifact passes the accuracy gate: the fastest, `{row['artifact']}` "
            f"with {_threads(row.get('threads'))} (p50 {fmt_ms(_p50(row))} ms), "
            f"fails {_why_failed(art)}.")


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


def _flags(results: Json, best: Json | None, passing: list[Json]) -> list[str]:
    arts = _by_id(results)
    art = arts[best["artifact"]] if best else None
    flags: list[str] = []
    flags += _flag_int8_slower(results, arts)
    flags += _flag_reduced_precision(results, arts)
    flags += _flag_spread(results, best)
    flags += _flag_quick(results)
    flags += _flag_isa(results)
    flags += _flag_bundle_accuracy(results, art)
    flags += _flag_few_images(results, art)
    flags += _flag_delta_ci(art)
    flags += _flag_tie(passing)
    flags += _flag_run_notes(results)
    return flags


def _flag_int8_slower(results: Json, arts: dict[str, Json]) -> list[str]:
    fastest: dict[tuple[str, Any], dict[str, float]] = {}
    for r in results["rows"]:
        a = arts[r["artifact"]]
        if not _ok(r) or a.get("kind") != "artifact":
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
    noisy = [r for r in results["rows"] if _ok(r) and (r.get("spread") or 0) > SPREAD_LIMIT]
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
    """Header and text rows of the latency/accuracy table shared by Markdown and HTML."""
    arts = _by_id(results)
    rec = recommendation or {}
    head = ["artifact", "threads", "p50 ms", "p90 ms", "p99 ms", "spread", "load ms", "RSS MB",
            score_header(results), "Δ vs source [95 % CI]", "gate"]
    rows = []
    for r in results["rows"]:
        art = arts[r["artifact"]]
        lat = r.get("latency_ms") or {}
        star = " ★" if (r["artifact"], r.get("threads")) == (rec.get("artifact"),
                                                             rec.get("threads")) else ""
        score = artifact_score(art)
        rows.append([
            f"{r['artifact']}{star}", str(r.get("threads", "")),
            *(fmt_ms(lat.get(k)) if _ok(r) else "—" for k in ("p50", "p90", "p99")),
            f"{r['spread']:.2f}×" if r.get("spread") is not None else "—",
            fmt_ms(r.get("load_ms")) if r.get("load_ms") is not None else "—",
            f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "—",
            score.fmt() if score else "not measured",
            "—" if art.get("kind") == "source" else fmt_delta(artifact_delta(art)),
            gate_text(r, art),
        ])
    return head, rows


CSV_COLUMNS = ("artifact", "backend", "precision", "threads", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "std_ms", "min_ms", "max_ms", "n", "spread", "load_ms", "peak_rss_mb",
               "inference_precision", "accuracy_metric", "accuracy", "accuracy_ci95_lo",
               "accuracy_ci95_hi", "accuracy_delta", "accuracy_source", "passed", "status",
               "error")


def csv_rows(results: Json) -> list[dict[str, Any]]:
    """One dict per results row with the keys of ``CSV_COLUMNS`` (fractions, not percent)."""
    arts = _by_id(results)
    out = []
    for r in results["rows"]:
        art, lat = arts[r["artifact"]], r.get("latency_ms") or {}
        score, delta = artifact_score(art), artifact_delta(art)
        out.append({
            "artifact": r["artifact"], "backend": art.get("backend"),
            "precision": art.get("precision"), "threads": r.get("threads"),
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
        })
    return out


def environment_lines(results: Json) -> list[tuple[str, str]]:
    """``(label, text)`` pairs describing target, machine, runtimes, protocol and data."""
    t, env = results["target"], results.get("environment") or {}
    cpu = env.get("cpu") or {}
    freq = cpu.get("freq_mhz") or {}
    lines = [("target", f"{t.get('name')}: {t.get('description') or ''} "
                        f"(access: {(t.get('access') or {}).get('kind', 'n/a')})".strip()),
             ("CPU", f"{cpu.get('model') or 'unknown'} ({cpu.get('arch') or '?'}, "
                     f"{cpu.get('logical_cores') or '?'} logical cores, governor "
                     f"{cpu.get('governor') or 'n/a'}, {freq.get('current') or '?'} MHz)"),
             ("CPU features", ", ".join(cpu.get("features") or []) or "n/a"),
             ("system", f"{env.get('os') or '?'}, Python {env.get('python') or '?'}"),
             ("packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
              or "n/a")]
    for key in ("temperature_c", "throttled"):
        if env.get(key) is not None:
            lines.append((key.replace("_c", " °C"), str(env[key])))
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


_PREC_MARKER = {"fp32": "o", "fp16": "^", "int8": "s"}
_BACKEND_COLOUR = {"openvino": "#1f77b4", "onnxruntime": "#ff7f0e", "litert": "#2ca02c",
                   "pytorch": "#7f7f7f"}
_EXTRA_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_DPI = 120


def _chart_points(results: Json) -> tuple[list[_Point], list[str]]:
    """Plottable points (a latency and an accuracy) and the labels of rows left out."""
    arts, multi = _by_id(results), _multi_bundle(results)
    points, hidden = [], []
    for r in results["rows"]:
        art = arts[r["artifact"]]
        label = _short_label(art, r.get("threads"), multi)
        score = artifact_score(art)
        if not _ok(r) or score is None or score.value is None:
            hidden.append(label)
            continue
        lat, k = r["latency_ms"], 1.0 if score.metric == "mean_auroc" else 100.0
        x = _p50(r)
        points.append(_Point(
            r, art, x, min(x, lat.get("min", x)), max(x, lat.get("p90", x)), k * score.value,
            k * score.lo if score.lo is not None else None,
            k * score.hi if score.hi is not None else None,
            label, art.get("kind") == "source" or passes_gate(art)))
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
        ax.errorbar([p.x], [p.y], xerr=[[p.x - p.xlo], [p.xhi - p.x]], yerr=yerr, fmt="none",
                    ecolor=colour, elinewidth=1.0, capsize=3, alpha=0.55, zorder=2)
        ax.scatter([p.x], [p.y], s=70, marker=_PREC_MARKER.get(str(p.art.get("precision")), "D"),
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
    fig.suptitle(f"Latency vs accuracy on {_target_name(results)}", fontsize=14,
                 fontweight="bold", x=0.08, y=0.965, ha="left")
    ax.set_title(f"{cpu.get('model') or 'unknown CPU'} · {cpu.get('logical_cores') or '?'} "
                 "logical cores · one point per artifact × threads", fontsize=9.5, color="0.3",
                 loc="left")
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
    fig.text(0.01, 0.01, "\n".join(_footnotes(results, hidden)), fontsize=8.5, color="0.3",
             ha="left", va="bottom")


def _footnotes(results: Json, hidden: list[str]) -> list[str]:
    notes = ["Dashed step line: Pareto front (no other point is both faster and more accurate)."]
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
        notes.append(f"Not shown (error or no accuracy): {shown}.")
    return notes


def _legend(ax: Any, colours: dict[str, str], points: list[_Point], front: bool,
            rec: bool) -> None:
    from matplotlib.lines import Line2D

    def marker(**kw: Any) -> Line2D:
        return Line2D([], [], linestyle="none", **{"markersize": 8, **kw})

    handles = [marker(marker="o", color=c, label=b) for b, c in colours.items()]
    for prec in dict.fromkeys(str(p.art.get("precision")) for p in points):
        handles.append(marker(marker=_PREC_MARKER.get(prec, "D"), color="0.35", label=prec))
    if any(not p.passed for p in points):
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
              "accuracy gate.", ""]
    if chart:
        lines += [f"![latency vs accuracy]({chart})", ""]
    lines += ["## Environment", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in environment_lines(report)]
    return "\n".join(lines) + "\n"


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
              "recipe's accuracy gate</p>"]
    if png:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(f"<img src='{uri}' alt='p50 latency vs accuracy, one point per artifact "
                     "and thread count' width='1000'>")
    else:
        parts.append("<p class='sub'>Chart not drawn: pip install 'edgekit[report]'.</p>")
    parts += ["<h2>Accuracy per artifact</h2>", _html_accuracy(report, rec),
              "<h2>Environment</h2>", _html_environment(report), "</body></html>"]
    return "\n".join(parts) + "\n"


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
