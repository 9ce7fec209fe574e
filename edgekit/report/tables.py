"""The report's text: number formats, the latency/accuracy table shared by Markdown, HTML and
the terminal, the CSV rows, the environment lines and the predicted/emulated sections."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgekit.errors import DataError
from edgekit.manifest import FastPath
from edgekit.report.results import (
    ArtifactRecord,
    BenchResults,
    EmulatedRow,
    Environment,
    HostCpu,
    Json,
    Latency,
    PredictedRow,
    Row,
    Runtime,
    Score,
    Thermal,
    artifact_delta,
    artifact_score,
    as_results,
    emulated,
    failed_checks,
    inconclusive_checks,
    metric_ci,
    metric_value,
    passes_gate,
    predicted_rows,
    valid_row,
)

Results = BenchResults | Mapping[str, Any]  # typed, or a results.json object to validate
MINUS = "\u2212"  # the minus sign of signed numbers in the report


# -------------------------------------------------------------------------------- formatting
def fmt_ms(x: float | None) -> str:
    """Milliseconds to three significant digits: 0.312, 4.12, 12.3, 123."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x < 1:
        return f"{x:.3g}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fmt_signed(x: float, fmt: str = ".1f") -> str:
    """``+1.2`` / ``−0.3`` (a real minus sign; never ``−0.0``)."""
    s = format(x, fmt)
    if s.lstrip("-").strip("0.") == "":  # -0.0 -> +0.0
        s = s.lstrip("-")
    return s.replace("-", MINUS) if s.startswith("-") else f"+{s}"


def fmt_threads(n: Any) -> str:
    return "default threads" if n is None else f"{n} thread{'' if n == 1 else 's'}"


def fmt_delta(d: Score | None, ci: bool = True) -> str:
    """``−0.3 points [−1.0, +0.5]`` (top-1) or ``−0.004`` (mean AUROC); ``n/a`` when unknown."""
    if d is None or d.value is None:
        return "n/a"
    if d.metric == "mean_auroc":
        return fmt_signed(d.value, ".3f")
    text = f"{fmt_signed(100 * d.value)} points"
    if ci and d.lo is not None and d.hi is not None:
        text += f" [{fmt_signed(100 * d.lo)}, {fmt_signed(100 * d.hi)}]"
    return text


def fmt_pct(rel: float) -> str:
    return f"±{100 * rel:.0f} %"


def fmt_num(x: Any, fmt: str = ".3g") -> str:
    return format(x, fmt) if isinstance(x, int | float) else "n/a"


def fmt_predicted(p: PredictedRow | None, unit: bool = True) -> str:
    """``23.1 ms ±35 % (predicted)``; ``no prediction`` / ``—`` when there is none."""
    if p is None:
        return "—"
    if not p.ok:
        return "no prediction"
    return f"{fmt_ms(p.p50_ms)}{' ms' if unit else ''} {fmt_pct(p.rel_error)} (predicted)"


def fmt_parity(emu: EmulatedRow | None) -> str:
    """``passed (max diff 1.2e-05)``, ``FAIL (max diff 0.31)``, ``error: <why>`` or ``—``."""
    if emu is None:
        return "—"
    status = emu.status
    diff = f" (max diff {fmt_num(emu.max_abs_diff)})" if emu.max_abs_diff is not None else ""
    if status == "passed":
        return f"passed{diff}"
    if status == "failed":
        return f"FAIL{diff}"
    return f"error: {emu.reason or status or 'unknown'}"


def fmt_metric_pct(m: Any) -> str:
    """``91.2 % [88.0, 94.1]`` of a ``{"value", "ci95"}`` fraction, ``n/a`` when missing."""
    v = metric_value(m)
    if v is None:
        return "n/a"
    lo, hi = metric_ci(m)
    return f"{100 * v:.1f} %" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None
                                  and hi is not None else "")


def binary_summary(metrics: Json) -> str | None:
    """``sensitivity … · specificity … · AUROC …`` of a binary (one sigmoid unit) head."""
    if metrics.get("task") != "binary":
        return None
    auroc = Score("mean_auroc", metric_value(metrics.get("auroc")),
                  *metric_ci(metrics.get("auroc")))
    return (f"binary head (positive class {metrics.get('positive_class')}, threshold "
            f"{metrics.get('threshold', 0.5):g}): sensitivity "
            f"{fmt_metric_pct(metrics.get('sensitivity'))}"
            f" · specificity {fmt_metric_pct(metrics.get('specificity'))} · AUROC "
            f"{auroc.fmt() if auroc.value is not None else 'n/a'}")


# ------------------------------------------------------------------------------ table lines
@dataclass
class Entry:
    """One line of the report tables: an artifact × threads with what is known about it."""

    artifact: str
    threads: Any
    art: ArtifactRecord
    row: Row | None = None  # measured
    pred: PredictedRow | None = None  # predicted
    emu: EmulatedRow | None = None  # emulated parity (per artifact)


def has_arm_results(results: Results) -> bool:
    """Whether the run carries predicted or emulated results (extra table columns)."""
    return bool(predicted_rows(results)) or emulated(results) is not None


def table_entries(results: Results) -> list[Entry]:
    """Measured rows (in order) with their predictions and parity, then predicted-only rows,
    then artifacts that were only checked under emulation. Without predicted or emulated
    results: exactly one entry per measured row."""
    res = as_results(results)
    arts, emu = res.by_id(), res.emulated_rows()
    preds: dict[tuple[str, Any], PredictedRow] = {}
    for p in predicted_rows(res):
        preds.setdefault((p.artifact, p.threads), p)
    entries, seen = [], set()
    for r in res.rows:
        key = (r.artifact, r.threads)
        seen.add(key)
        entries.append(Entry(r.artifact, r.threads, arts[r.artifact], r, preds.get(key),
                             emu.get(r.artifact)))
    for key, p in preds.items():
        if key not in seen:
            seen.add(key)
            entries.append(Entry(key[0], key[1], res.art_of(key[0], p), None, p,
                                 emu.get(key[0])))
    shown = {a for a, _ in seen}
    for a, e in emu.items():
        if a not in shown:
            entries.append(Entry(a, None, res.art_of(a), None, None, e))
    return entries


def score_header(results: Results) -> str:
    """``top-1 [95 % CI]`` or, for multi-label results, ``mean AUROC [95 % CI]``."""
    res = as_results(results)
    ml = (res.data.task if res.data is not None else None) == "multilabel" or any(
        (s := artifact_score(a)) is not None and s.metric == "mean_auroc"
        for a in res.artifacts)
    return "mean AUROC [95 % CI]" if ml else "top-1 [95 % CI]"


def gate_text(row: Row | None, art: ArtifactRecord) -> str:
    """``pass``, ``FAIL: <first failing check>``, ``source`` or ``error: <message>``."""
    if row is not None and row.error:
        return f"error: {row.error}"
    if art.kind == "source":
        return "source"
    if passes_gate(art):
        return "pass"
    failed = failed_checks(art)
    if failed:
        return f"FAIL: {failed[0]['check']}"
    unsure = inconclusive_checks(art)
    return (f"inconclusive: {unsure[0]['check']}" if unsure else
            "inconclusive" if art.status == "inconclusive-gate" else f"FAIL ({art.status})")


def main_table(results: Results,
               recommendation: Json | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the latency/accuracy table shared by Markdown and HTML.

    One row per artifact × threads (:func:`table_entries`). Runs with predicted or emulated
    results get a ``predicted p50`` and/or an ``emulated parity`` column; a run with no
    measured row drops the columns only a measurement fills (p99, spread, load, RSS)."""
    res = as_results(results)
    rec = recommendation or {}
    pred, emu = bool(predicted_rows(res)), emulated(res) is not None
    full = bool(res.rows) or not (pred or emu)
    head = ["artifact", "threads", "p50 ms", "p90 ms"]
    head += ["p99 ms", "spread", "load ms", "RSS MB"] if full else []
    head += ["predicted p50"] if pred else []
    head += [f"emulated parity (QEMU {res.qemu_cpu})"] if emu else []
    head += [score_header(res), "Δ vs source [95 % CI]", "gate"]
    rows = []
    for e in table_entries(res):
        r, art = e.row or Row(artifact=e.artifact), e.art
        lat = r.latency_ms or Latency()
        star = " ★" if (e.artifact, e.threads) == (rec.get("artifact"),
                                                   rec.get("threads")) else ""
        score = artifact_score(art)
        measured = [fmt_ms(v) if r.ok else "—" for v in (lat.p50, lat.p90, lat.p99)]
        if r.ok and not valid_row(r):
            measured[0] += " (invalid)"
        cells = [f"{e.artifact}{star}", "" if e.threads is None else str(e.threads),
                 *measured[:2]]
        if full:
            cells += [measured[2],
                      f"{r.spread:.2f}×" if r.spread is not None else "—",
                      fmt_ms(r.load_ms) if r.load_ms is not None else "—",
                      f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "—"]
        if pred:
            cells.append(fmt_predicted(e.pred))
        if emu:
            cells.append(fmt_parity(e.emu))
        cells += [score.fmt() if score else "not measured",
                  "—" if art.kind == "source" else fmt_delta(artifact_delta(art)),
                  gate_text(e.row, art)]
        rows.append(cells)
    return head, rows


def legend_extra(results: BenchResults) -> str:
    """What the extra columns and marks of the main table mean (predicted, emulated, invalid)."""
    text = ""
    if predicted_rows(results):
        text += (" predicted p50: from the target's latency model, not measured, ± its expected "
                 "relative error.")
    if emulated(results) is not None:
        text += (" emulated parity: outputs under QEMU emulation vs the reference (timings under "
                 "emulation are not reported).")
    if any(not valid_row(r) for r in results.rows):
        text += " (invalid): the run throttled and is excluded."
    return text


# --------------------------------------------------------------------------------------- csv
CSV_COLUMNS = ("artifact", "backend", "precision", "threads", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "std_ms", "min_ms", "max_ms", "n", "spread", "load_ms", "peak_rss_mb",
               "inference_precision", "accuracy_metric", "accuracy", "accuracy_ci95_lo",
               "accuracy_ci95_hi", "accuracy_delta", "accuracy_source", "passed", "status",
               "error", "valid", "invalid_reason", "temp_c_max", "freq_mhz_min",
               "latency_basis", "predicted_p50_ms", "predicted_low_ms", "predicted_high_ms",
               "predicted_rel_err", "predicted_group", "predicted_basis", "predicted_error",
               "emulated_parity", "emulated_max_abs_diff", "emulated_max_rel_diff",
               "emulated_top1_agreement")


def csv_rows(results: Results) -> list[dict[str, Any]]:
    """One dict per :func:`table_entries` line (one per measured row when nothing was
    predicted or emulated) with the keys of ``CSV_COLUMNS`` (fractions, not percent).

    ``p50_ms`` … ``max_ms`` are measured only; ``latency_basis`` says whether the line's latency
    is ``measured`` or ``predicted`` (``predicted_*``; its error ``predicted_rel_err``)."""
    out = []
    for e in table_entries(results):
        art = e.art
        r = e.row or Row(artifact=e.artifact)
        p = e.pred or PredictedRow(artifact=e.artifact)
        emu = e.emu or EmulatedRow(artifact=e.artifact)
        lat, thermal = r.latency_ms or Latency(), r.thermal or Thermal()
        score, delta = artifact_score(art), artifact_delta(art)
        lo, hi = p.bounds if p.ok else (None, None)
        out.append({
            "artifact": e.artifact, "backend": art.backend,
            "precision": art.precision, "threads": e.threads,
            **{f"{k}_ms": getattr(lat, k) for k in ("p50", "p90", "p99", "mean", "std", "min",
                                                    "max")},
            "n": lat.n, "spread": r.spread, "load_ms": r.load_ms,
            "peak_rss_mb": r.peak_rss_mb,
            "inference_precision": (r.runtime or Runtime()).inference_precision,
            "accuracy_metric": score.metric if score else None,
            "accuracy": score.value if score else None,
            "accuracy_ci95_lo": score.lo if score else None,
            "accuracy_ci95_hi": score.hi if score else None,
            "accuracy_delta": delta.value if delta else None,
            "accuracy_source": art.accuracy_source,
            "passed": passes_gate(art) if art.kind == "artifact" else None,
            "status": art.status, "error": r.error,
            "valid": r.valid, "invalid_reason": r.invalid_reason,
            "temp_c_max": thermal.temp_c_max, "freq_mhz_min": thermal.freq_mhz_min,
            "latency_basis": ("measured" if e.row is not None
                              else "predicted" if e.pred is not None else None),
            "predicted_p50_ms": p.p50_ms if p.ok else None,
            "predicted_low_ms": lo, "predicted_high_ms": hi,
            "predicted_rel_err": p.rel_error if p.ok else None,
            "predicted_group": p.group, "predicted_basis": p.basis,
            "predicted_error": p.error,
            "emulated_parity": emu.status,
            "emulated_max_abs_diff": emu.max_abs_diff,
            "emulated_max_rel_diff": emu.max_rel_diff,
            "emulated_top1_agreement": emu.top1_agreement,
        })
    return out


def csv_text(results: Results) -> str:
    """report.csv: ``CSV_COLUMNS``, one line per :func:`csv_rows` dict (None as empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


# ------------------------------------------------------------------------------- environment
def environment_lines(results: Results) -> list[tuple[str, str]]:
    """``(label, text)`` pairs describing target, machine, runtimes, protocol and data."""
    res = as_results(results)
    t, env = res.target, res.environment or Environment()
    cpu = env.cpu or HostCpu()
    freq = cpu.freq_mhz or {}
    lines = [("target", f"{t.name}: {t.description or ''} "
                        f"(access: {(t.access or {}).get('kind', 'n/a')})".strip())]
    if t.runtime_options:  # what each runtime was opened with (target + --runtime-option)
        lines.append(("runtime options", "; ".join(
            f"{b}: " + ", ".join(f"{k}={v}" for k, v in (o or {}).items())
            for b, o in t.runtime_options.items())))
    tcpu = t.cpu
    if tcpu is not None and (tcpu.model or tcpu.features):
        lines.append(("target CPU", f"{tcpu.model or 'unknown'} ({t.arch or '?'}; "
                      f"features: {', '.join(tcpu.features or []) or 'n/a'})"))
    nothing = res.given("measured_by") and res.measured_by is None
    if nothing:
        lines.append(("measured", "nothing (no board reachable)"
                      + ("; latencies are predicted" if predicted_rows(res) else "")))
    elif res.given("measured_by"):
        by = str(res.measured_by)
        lines.append(("measured", {"local": "on this machine",
                                   "ssh": "on the board, over SSH"}.get(by, by)))
    lines += [("CPU (this machine, nothing timed on it)" if nothing else "CPU",
               f"{cpu.model or 'unknown'} ({cpu.arch or '?'}, "
               f"{cpu.logical_cores or '?'} logical cores, governor "
               f"{cpu.governor or 'n/a'}, {freq.get('current') or '?'} MHz)"),
              ("CPU features", ", ".join(cpu.features or []) or "n/a"),
              ("system", f"{env.os or '?'}, Python {env.python or '?'}"),
              ("packages", ", ".join(f"{k} {v}" for k, v in (env.packages or {}).items())
               or "n/a")]
    for key in ("temperature_c", "throttled"):
        if getattr(env, key) is not None:
            lines.append((key.replace("_c", " °C"), str(getattr(env, key))))
    thermal = _thermal_line(res)
    if thermal:
        lines.append(("thermal while timing", thermal))
    proto = res.protocol or {}
    lines.append(("protocol", ", ".join(f"{k} {v}" for k, v in proto.items()) or "n/a"))
    data = res.data
    lines.append(("data", f"{data.path} ({data.n} images, {data.task})"
                  if data is not None and not data.empty
                  else "none in this run (accuracy from the bundles, where recorded)"))
    ref = res.reference
    if ref is not None and not ref.empty:
        lines.append(("reference", f"{ref.artifact}: {ref.description or ''}"))
    lines.append(("created", f"{res.created} by edgekit {res.edgekit}"))
    return lines


def _thermal_line(results: BenchResults) -> str | None:
    """Temperature and clock ranges over every measured row's ``thermal`` samples."""
    th = [r.thermal for r in results.rows if r.thermal is not None]
    if not th:
        return None

    def span(lo: str, hi: str, unit: str) -> str | None:
        los = [getattr(x, lo) for x in th if getattr(x, lo) is not None]
        his = [getattr(x, hi) for x in th if getattr(x, hi) is not None]
        return f"{min(los):g}–{max(his):g} {unit}" if los and his else None

    parts = [x for x in (span("temp_c_min", "temp_c_max", "°C"),
                         span("freq_mhz_min", "freq_mhz_max", "MHz")) if x]
    samples = sum(int(x.samples or 0) for x in th)
    throttled = sum(1 for x in th if x.throttled_after not in (None, 0, "0x0", False)
                    and x.throttled_after != x.throttled_before)
    parts.append(f"{samples} samples over {len(th)} runs")
    if throttled:
        parts.append(f"{throttled} run{'s' if throttled > 1 else ''} throttled")
    return ", ".join(parts)


# ---------------------------------------------------------------------- predicted / emulated
def off_path(art: ArtifactRecord) -> FastPath | None:
    """The artifact's fast-path record when it lists ops off the fast path; else None (clean,
    unknown, not recorded, or a record this edgekit cannot read)."""
    record = art.fast_path
    if not record or record.get("status") != "off":
        return None
    try:
        return FastPath.from_json(record, where=art.id)
    except DataError:
        return None


def fast_path_section(results: Results, limit: int = 12) -> list[tuple[str, str, list[list[str]]]]:
    """Per artifact with ops off its runtime's fast path: (id, one-line summary, rows of
    [op, node, reason], the first ``limit``)."""
    out = []
    for art in as_results(results).artifacts:
        found = off_path(art)
        if found is not None:
            rows = [[o.op, o.node, o.reason] for o in found.ops[:limit]]
            if len(found.ops) > limit:
                rows.append(["…", f"{len(found.ops) - limit} more", ""])
            out.append((art.id, found.summary(), rows))
    return out


def predicted_section(results: Results) -> tuple[list[str], list[str], list[list[str]]] | None:
    """The “Predicted latency basis” section: (paragraphs, table head, table rows), or None
    when nothing was predicted."""
    res = as_results(results)
    pred, rows = res.predicted, predicted_rows(res)
    if pred is None or not rows:
        return None
    paras = [f"Predicted latencies come from {res.target_name}'s latency model "
             "(edgekit.bench.predict), not from a measurement; each carries its expected "
             "relative error (±) and the range low–high. Two predictions whose ranges overlap "
             "are a tie."]
    paras += [str(n) for n in pred.notes or []]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for p in rows:
        if not p.ok:
            continue
        key = (str(p.group or "n/a"), str(p.basis or "n/a"), fmt_pct(p.rel_error))
        groups.setdefault(key, []).append(f"{p.artifact} ×{p.threads}")
    table = [[g, b, e, ", ".join(who)] for (g, b, e), who in groups.items()]
    for p in rows:
        if not p.ok:
            paras.append(f"No prediction for `{p.artifact}` with "
                         f"{fmt_threads(p.threads)}: {p.error or 'no p50'}.")
    return paras, ["group", "basis", "expected error", "predicted for"], table


def emulated_section(results: Results,
                     ) -> tuple[str, list[str], list[str], list[list[str]]] | None:
    """The “Emulated parity (QEMU …)” section: (title, paragraphs, head, rows) or None."""
    res = as_results(results)
    emu = res.emulated
    if emu is None:
        return None
    cpu = res.qemu_cpu
    paras = [f"Output parity of each artifact run under QEMU user-mode emulation of a {cpu} "
             f"on {emu.images or '?'} images, against its reference outputs. Emulated "
             "timings are not reported: emulation says nothing about speed."]
    if emu.note:
        paras.append(str(emu.note))
    env_text = _emu_env_text(emu.environment)
    if env_text:
        paras.append(f"Environment: {env_text}.")
    rows = [[str(r.artifact), fmt_parity(r).split(" (")[0].split(":")[0],
             fmt_num(r.max_abs_diff), fmt_num(r.max_rel_diff),
             f"{100 * r.top1_agreement:.1f} %" if r.top1_agreement is not None else "n/a",
             str(r.reason or "")]
            for r in emu.rows]
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
