"""The recommendation: which artifact × thread count to ship on the target, in one sentence,
and the flags that would falsify or qualify it (see docs/bench-results.md for the rules)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.report.results import (
    ArtifactRecord,
    BenchResults,
    EmulatedRow,
    Json,
    PredictedRow,
    Row,
    artifact_delta,
    artifact_score,
    as_results,
    failed_checks,
    gate_limit,
    inconclusive_checks,
    int8_as_fp16_on_arm,
    passes_gate,
    predicted_rows,
    runtime_title,
    valid_row,
)
from edgekit.report.tables import (
    MINUS,
    Results,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_predicted,
    fmt_signed,
    fmt_threads,
    off_path,
    table_entries,
)

REPORT_SCHEMA = "edgekit.report/1"
SPREAD_LIMIT = 1.2  # max/min of the trials' p50 above which a machine counts as noisy
TIE_FRACTION = 0.05  # a runner-up this close to the winner is effectively a tie
MIN_EVAL_IMAGES = 200  # below this, accuracy confidence intervals are wide

_REDUCED = {"bf16": "bf16", "bfloat16": "bf16", "f16": "f16", "fp16": "f16", "float16": "f16",
            "half": "f16"}


# ------------------------------------------------------------------------------- the report
@dataclass
class Report:
    """A bench run with its recommendation: what report.json holds and every file renders."""

    results: BenchResults
    recommendation: Json

    def to_dict(self) -> Json:
        """report.json: the results, ``report_schema`` and ``recommendation``."""
        return {**self.results.to_dict(), "report_schema": REPORT_SCHEMA,
                "recommendation": self.recommendation}


def build_report(results: Results) -> Report:
    """``results`` and their recommendation (the content of report.json)."""
    res = as_results(results)
    return Report(res, recommend(res))


def as_report(report: Report | Results) -> Report:
    """``report`` typed: results get their recommendation; a report.json (or bare
    results.json) object is validated, and its recommendation computed when it has none."""
    if isinstance(report, Report):
        return report
    res = as_results(report)
    given = None if isinstance(report, BenchResults) else report.get("recommendation")
    return Report(res, given or recommend(res))


# ---------------------------------------------------------------------------- recommendation
def recommend(results: Results) -> Json:
    """The artifact × thread count to ship on this target, in one sentence, plus the flags that
    would falsify or qualify it.

    Among measured rows without error, not marked invalid (throttled), whose artifact is a
    compressed artifact (not the PyTorch source), passes the accuracy gate and did not fail
    emulated ARM parity, the one with the lowest p50 latency wins (``basis: "measured"``).
    When no valid row was measured, the same rule runs on the predicted p50 (``basis:
    "predicted"``), with predictions whose intervals overlap the fastest's counted as a tie
    and broken by the target's ``preferred`` runtimes.
    """
    res = as_results(results)
    arts, excluded = res.by_id(), res.parity_excluded()
    measured = [r for r in res.rows if r.ok and valid_row(r)
                and arts[r.artifact].kind == "artifact"]
    preds = [p for p in predicted_rows(res) if p.ok
             and res.art_of(p.artifact, p).kind == "artifact"]
    if not measured and preds:
        return _recommend_predicted(res, arts, preds, excluded)
    shippable = [r for r in measured if r.artifact not in excluded]
    passing = sorted((r for r in shippable if passes_gate(arts[r.artifact])),
                     key=lambda r: r.p50)
    best = passing[0] if passing else None
    if best is not None:
        text = _ship_sentence(res, best, arts[best.artifact])
    else:
        text = _no_pass_sentence(res, shippable, arts)
    return _recommendation(res, best.artifact if best else None,
                           best.threads if best else None,
                           best.p50 if best else None,
                           "measured" if res.rows else None, None, text,
                           _flags(res, best, passing), passing)


def _recommendation(results: BenchResults, artifact: str | None, threads: Any,
                    p50: float | None, basis: str | None, pred: PredictedRow | None, text: str,
                    flags: list[str], ranked: Sequence[Row | PredictedRow]) -> Json:
    candidates: list[str] = []
    for r in ranked:
        if r.artifact not in candidates:
            candidates.append(r.artifact)
    low, high = pred.bounds if pred else (None, None)
    return {"target": results.target_name, "artifact": artifact, "threads": threads,
            "p50_ms": p50, "basis": basis,
            "rel_err": pred.rel_error if pred else None, "low_ms": low, "high_ms": high,
            "text": text, "flags": flags, "candidates": candidates,
            "excluded": _excluded(results)}


def _excluded(results: BenchResults) -> list[Json]:
    """Rows and artifacts left out of the recommendation, with why."""
    out: list[Json] = [{"artifact": r.artifact, "threads": r.threads,
                        "reason": r.invalid_reason or "marked invalid (throttled)"}
                       for r in results.rows if not valid_row(r)]
    out += [{"artifact": a, "threads": None,
             "reason": f"emulated parity {e.status or 'not checked'} "
                       f"(QEMU {results.qemu_cpu})" + (f": {e.reason}" if e.reason else "")}
            for a, e in results.parity_excluded().items()]
    return out


def _pref_key(results: BenchResults, art: ArtifactRecord) -> tuple[int, int]:
    """How the target prefers this artifact's runtime, best first: (penalty, index in
    ``preferred[precision]``). On ARM, OpenVINO INT8 (runs as fp16) and fp16 artifacts on a
    CPU without fp16 arithmetic come after everything else."""
    backend, prec = art.backend, art.precision
    pref = results.preferred(prec)
    penalty = 0
    if results.is_arm:
        if prec == "int8" and int8_as_fp16_on_arm(backend):
            penalty = 1
        if prec == "fp16" and "fp16" not in results.target_features:
            penalty = 1
    return penalty, pref.index(backend) if backend in pref else len(pref)


def _overlap(a: PredictedRow, b: PredictedRow) -> bool:
    alo, ahi = a.bounds
    blo, bhi = b.bounds
    return alo <= bhi and blo <= ahi


def rank_predicted(results: BenchResults, rows: list[PredictedRow],
                   ) -> tuple[list[PredictedRow], list[PredictedRow]]:
    """``rows`` (predicted, ok) best first, and the tie: the rows whose predicted interval
    overlaps the fastest's (they are ranked by the target's preferred runtimes, then p50)."""
    if not rows:
        return [], []
    by_p50 = sorted(rows, key=lambda p: p.p50)
    tie = [p for p in by_p50 if _overlap(p, by_p50[0])]
    tie.sort(key=lambda p: (_pref_key(results, results.art_of(p.artifact, p)), p.p50))
    return tie + [p for p in by_p50 if not any(p is t for t in tie)], tie


def _recommend_predicted(results: BenchResults, arts: dict[str, ArtifactRecord],
                         preds: list[PredictedRow], excluded: dict[str, EmulatedRow]) -> Json:
    shippable = [p for p in preds if p.artifact not in excluded]
    passing = [p for p in shippable if passes_gate(results.art_of(p.artifact, p))]
    ranked, tie = rank_predicted(results, passing)
    best = ranked[0] if ranked else None
    if best is not None:
        text = _ship_sentence(results, best, arts[best.artifact])
    elif shippable:
        p = min(shippable, key=lambda x: x.p50)
        art = results.art_of(p.artifact, p)
        text = (f"On {results.target_name} no artifact passes the accuracy gate: the fastest "
                f"predicted, `{p.artifact}` with {fmt_threads(p.threads)} "
                f"({fmt_predicted(p)}; {_why_unmeasured(results)}), fails {_why_failed(art)}.")
    else:
        text = _nothing_sentence(results, preds)
    flags = _flags(results, None, [], basis="predicted",
                   art=arts[best.artifact] if best else None, tie=tie)
    return _recommendation(results, best.artifact if best else None,
                           best.threads if best else None,
                           best.p50 if best else None, "predicted", best, text,
                           flags, ranked)


def _why_unmeasured(results: BenchResults) -> str:
    if results.measured_by is None:
        return "no board was measured"
    if any(not valid_row(r) for r in results.rows):
        return "every run timed on the board was invalid (throttled)"
    return "no compressed artifact was measured on the board"


def _ship_sentence(results: BenchResults, row: Row | PredictedRow, art: ArtifactRecord) -> str:
    """Ship ``row`` (measured, or predicted: then it says so, with its error)."""
    if isinstance(row, PredictedRow):
        lo, hi = row.bounds
        head = (f"On {results.target_name} ship `{row.artifact}` with "
                f"{fmt_threads(row.threads)}: predicted p50 {fmt_ms(row.p50_ms)} ms "
                f"{fmt_pct(row.rel_error)} ({fmt_ms(lo)}–{fmt_ms(hi)} ms; "
                f"{_why_unmeasured(results)})")
    else:
        head = (f"On {results.target_name} ship `{row.artifact}` with "
                f"{fmt_threads(row.threads)}: p50 {fmt_ms(row.p50)} ms")
    score = artifact_score(art)
    if score is None or score.value is None:
        return f"{head}; its accuracy was not measured here (bundle status: {art.status})."
    name = "mean AUROC" if score.metric == "mean_auroc" else "top-1"
    text = f"{head}, {name} {score.fmt(ci=False)}"
    delta = artifact_delta(art)
    if delta is not None and delta.value is not None:
        unit = "" if delta.metric == "mean_auroc" else " points"
        val = fmt_signed(delta.value, ".3f") if unit == "" else fmt_signed(100 * delta.value)
        text += f" ({val}{unit} vs the source"
        if delta.lo is not None and delta.hi is not None:
            text += f", 95 % CI [{fmt_signed(100 * delta.lo)}, {fmt_signed(100 * delta.hi)}]"
        text += ")"
    n = (art.accuracy or {}).get("n") or results.eval_n(art)
    where = (f"measured on {n} held-out images" if art.accuracy_source != "bundle"
             else f"from the bundle's compress-time verification on {n} images")
    return f"{text}; accuracy {where}."


def _no_pass_sentence(results: BenchResults, shippable: list[Row],
                      arts: dict[str, ArtifactRecord]) -> str:
    target = results.target_name
    if not shippable:
        ran = [r for r in results.rows if r.ok and arts[r.artifact].kind == "artifact"]
        if any(valid_row(r) for r in ran):  # every valid one failed emulated parity
            return (f"On {target} every measured artifact failed output parity under QEMU "
                    f"{results.qemu_cpu} emulation: nothing can be shipped to this target.")
        if ran:
            return (f"On {target} every timed run was invalid (throttled): nothing to "
                    "recommend; cool the board and rerun.")
        errors = [r for r in results.rows if r.error]
        if errors:
            first = errors[0]
            return (f"On {target} no compressed artifact ran successfully; e.g. "
                    f"`{first.artifact}`: {first.error}")
        if not results.rows:
            return _nothing_sentence(results, [])
        return f"On {target} there is no compressed artifact to recommend (only the source ran)."
    row = min(shippable, key=lambda r: r.p50)
    art = arts[row.artifact]
    return (f"On {target} no artifact passes the accuracy gate: the fastest, `{row.artifact}` "
            f"with {fmt_threads(row.threads)} (p50 {fmt_ms(row.p50)} ms), "
            f"fails {_why_failed(art)}.")


def _nothing_sentence(results: BenchResults, preds: list[PredictedRow]) -> str:
    """No row measured and none predicted (or every predicted one failed emulated parity)."""
    target = results.target_name
    if preds:
        return (f"On {target} every artifact with a predicted latency failed output parity "
                f"under QEMU {results.qemu_cpu} emulation: nothing can be shipped to this "
                "target.")
    failed = [p for p in predicted_rows(results) if p.error]
    why = (f"; e.g. no prediction for `{failed[0].artifact}`: {failed[0].error}"
           if failed else "")
    measured = ("nothing was measured (no board reachable)" if results.measured_by is None
                else "nothing was measured")
    return f"On {target} {measured} and no latency could be predicted{why}."


def _why_failed(art: ArtifactRecord) -> str:
    failed = failed_checks(art)
    if not failed:
        return f"its bundle's gate (status {art.status!r})"
    c = failed[0]
    value, limit = c.get("value"), c.get("limit")
    what = f"“{c.get('check')}”"
    if isinstance(value, int | float) and isinstance(limit, int | float):
        what += f": {value:.3g} > limit {limit:g}"
    if len(failed) > 1:
        what += f" (and {len(failed) - 1} more check{'s' if len(failed) > 2 else ''})"
    return what


# ------------------------------------------------------------------------------------- flags
def _flag_run_notes(results: BenchResults) -> list[str]:
    """Notes the bench run itself recorded (e.g. bundles from different source models)."""
    return [str(n) for n in results.notes or []]


def _flags(results: BenchResults, best: Row | None, passing: list[Row], *,
           basis: str = "measured", art: ArtifactRecord | None = None,
           tie: Sequence[PredictedRow] = ()) -> list[str]:
    """``best`` is the recommended measured row (``basis`` measured); for a predicted
    recommendation ``art`` is the recommended artifact's record."""
    arts = results.by_id()
    if basis == "measured":
        art = arts[best.artifact] if best else None
    flags: list[str] = []
    flags += _flag_invalid(results)
    flags += _flag_parity(results)
    flags += _flag_predicted(results, basis)
    flags += _flag_predicted_off_path(results)
    flags += _flag_slow_artifacts(results, arts)
    flags += _flag_reduced_precision(results, arts)
    flags += _flag_spread(results, best if basis == "measured" else None)
    flags += _flag_quick(results)
    flags += _flag_isa(results)
    flags += _flag_target_isa(results, art, basis)
    flags += _flag_outside_prediction(results)
    flags += _flag_bundle_accuracy(results, art)
    flags += _flag_few_images(results, art)
    flags += _flag_delta_ci(art)
    flags += _flag_inconclusive(results, best if basis == "measured" else None)
    flags += _flag_tie(passing)
    flags += _flag_predicted_tie(results, list(tie))
    flags += _flag_run_notes(results)
    return flags


def _flag_invalid(results: BenchResults) -> list[str]:
    bad = [r for r in results.rows if not valid_row(r)]
    if not bad:
        return []
    shown = "; ".join(f"`{r.artifact}` with {fmt_threads(r.threads)}"
                      + (f" ({r.invalid_reason})" if r.invalid_reason else "")
                      for r in bad[:6])
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    were = "run was throttled and is" if len(bad) == 1 else "runs were throttled and are"
    return [f"{len(bad)} {were} excluded: {shown}{more}. Cool the board (heatsink, fan) and "
            f"rerun {'it' if len(bad) == 1 else 'them'}."]


def _flag_parity(results: BenchResults) -> list[str]:
    name, cpu = results.target_name, results.qemu_cpu
    out = []
    for a, e in results.parity_excluded().items():
        if e.status == "failed":
            agree = e.top1_agreement
            detail = ", ".join(x for x in (
                f"max abs diff {fmt_num(e.max_abs_diff)}" if e.max_abs_diff is not None
                else "",
                f"top-1 agreement {100 * agree:.1f} %" if agree is not None else "",
                str(e.reason or "")) if x)
            out.append(f"`{a}` failed output parity under QEMU {cpu} emulation"
                       f"{f' ({detail})' if detail else ''}: its outputs differ on ARM, so it is "
                       f"excluded from the recommendation for {name}.")
        else:
            out.append(f"`{a}`: output parity under QEMU {cpu} emulation could not be checked "
                       f"({e.reason or e.status or 'unknown'}): excluded from the "
                       f"recommendation for {name} until it passes.")
    return out


def _flag_predicted(results: BenchResults, basis: str) -> list[str]:
    if basis != "predicted":
        return []
    rels = [p.rel_error for p in predicted_rows(results) if p.ok]
    lo, hi = min(rels), max(rels)
    err = fmt_pct(hi) if round(100 * lo) == round(100 * hi) \
        else f"±{100 * lo:.0f}–{100 * hi:.0f} %"
    return [f"{_why_unmeasured(results).capitalize()}: every latency here is predicted by "
            f"{results.target_name}'s latency model (expected error {err}; see “Predicted "
            "latency basis”), not measured. Measure on the board before relying on it."]


def _flag_predicted_off_path(results: BenchResults) -> list[str]:
    """Predictions of artifacts with ops off the fast path are lower bounds."""
    ids = sorted({p.artifact for p in predicted_rows(results) if p.ok and p.off_fast_path})
    if not ids:
        return []
    return [f"The latency model costs every kernel at its fast rate: {_ids(ids)} "
            f"{'has' if len(ids) == 1 else 'have'} ops off the fast path (see “Off the fast "
            f"path”), so {'its prediction is' if len(ids) == 1 else 'their predictions are'} "
            "a lower bound."]


def _flag_target_isa(results: BenchResults, best: ArtifactRecord | None,
                     basis: str = "measured") -> list[str]:
    """What the target CPU's ISA (cpu.features) does to INT8, fp16 and OpenVINO on ARM."""
    if not results.is_arm:
        return []
    name, model, feats = results.target_name, results.target_cpu_model, results.target_features
    arts = [a for a in results.artifacts if a.kind == "artifact"]
    ids = {p: [a.id for a in arts if a.precision == p] for p in ("int8", "fp16")}
    best_prec = best.precision if best is not None else None
    out = []
    if "dotprod" not in feats and (ids["int8"] or best_prec == "int8"):
        text = (f"{name} has no dotprod ({model}: no sdot instruction): INT8 arithmetic is no "
                "faster than fp32 there, so INT8 gains come only from moving fewer bytes (4× "
                "smaller weights and activations on memory-bound layers), not from faster "
                "arithmetic.")
        if best is not None and best_prec == "int8":
            text += (f" The recommended `{best.id}` is INT8: its gain over fp32 there is "
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
    ov = [a.id for a in arts if a.precision == "int8" and int8_as_fp16_on_arm(a.backend)]
    if ov:
        pref = [b for b in results.preferred("int8") if not int8_as_fp16_on_arm(b)]
        after = (f"{name}'s preferred INT8 runtimes ({', '.join(pref)})" if pref
                 else "the other INT8 runtimes")
        fp16 = "" if "fp16" in feats else (", and this CPU has no fp16 arithmetic, so in effect "
                                           "in fp32")
        title = " / ".join(sorted({runtime_title(a.backend) for a in arts
                                   if a.precision == "int8" and int8_as_fp16_on_arm(a.backend)}))
        rank = (f"ranked after {after} when predicted latencies tie" if basis == "predicted"
                else f"{after} come first for INT8 unless {title} measures faster")
        out.append(f"{title} runs INT8 models as fp16 on ARM (little INT8 support): "
                   f"{_ids(ov)} compute{'s' if len(ov) == 1 else ''} in fp16 on {name}{fp16}; "
                   f"{rank}.")
    return out


def _ids(ids: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in ids)


def _flag_outside_prediction(results: BenchResults) -> list[str]:
    """Measured p50s outside their predicted interval: the latency model is off there."""
    out = []
    for e in table_entries(results):
        if e.row is None or e.pred is None or not e.row.ok or not valid_row(e.row) \
                or not e.pred.ok:
            continue
        lo, hi = e.pred.bounds
        if not lo <= e.row.p50 <= hi:
            out.append((abs(math.log(e.row.p50 / e.pred.p50)), e, e.row.p50, lo, hi))
    if not out:
        return []
    _, e, p50, lo, hi = max(out, key=lambda x: x[0])
    many = f"{len(out)} measured rows fall" if len(out) > 1 else "A measured row falls"
    return [f"{many} outside the predicted range (worst: `{e.artifact}` with "
            f"{fmt_threads(e.threads)}, measured {fmt_ms(p50)} ms vs "
            f"{fmt_predicted(e.pred)}, range {fmt_ms(lo)}–{fmt_ms(hi)} ms): the latency model "
            "is off for this model and runtime; trust the measurement."]


def _flag_predicted_tie(results: BenchResults, tie: list[PredictedRow]) -> list[str]:
    if len(tie) < 2:
        return []
    shown = ", ".join(f"`{p.artifact}` ×{p.threads} (predicted "
                      f"{fmt_ms(p.p50_ms)} ms {fmt_pct(p.rel_error)})" for p in tie[:4])
    more = f" and {len(tie) - 4} more" if len(tie) > 4 else ""
    precs = list(dict.fromkeys(str(results.art_of(p.artifact, p).precision) for p in tie))
    order = "; ".join(f"{prec}: {', '.join(results.preferred(prec)) or 'none listed'}"
                      for prec in precs)
    return [f"Within the prediction error: {shown}{more} overlap, so they tie; ranked by "
            f"{results.target_name}'s preferred runtimes ({order}). Measure on the board to "
            "decide."]


def _flag_slow_artifacts(results: BenchResults, arts: dict[str, ArtifactRecord]) -> list[str]:
    """An artifact slower than its own fp32 sibling (same bundle and backend) or than its
    source model in PyTorch eager (same bundle), at the same thread count, with the ops its
    backend found off the fast path: the ones responsible, as far as edgekit can tell."""
    p50: dict[tuple[str | None, str | None, str | None, Any], float] = {}
    for r in results.rows:
        a = arts[r.artifact]
        if r.ok and valid_row(r):
            source = a.kind == "source"
            key = (a.bundle_name, "source" if source else a.backend,
                   None if source else a.precision, r.threads)
            p50[key] = min(p50.get(key, math.inf), r.p50)
    out = []
    for r in results.rows:
        a = arts[r.artifact]
        if not r.ok or not valid_row(r) or a.kind != "artifact":
            continue
        slower = []
        sibling = p50.get((a.bundle_name, a.backend, "fp32", r.threads))
        if a.precision != "fp32" and sibling is not None and r.p50 > sibling:
            slower.append(f"its fp32 sibling ({fmt_ms(sibling)} ms)")
        eager = p50.get((a.bundle_name, "source", None, r.threads))
        if eager is not None and r.p50 > eager:
            slower.append(f"PyTorch eager ({fmt_ms(eager)} ms)")
        if not slower:
            continue
        found = off_path(a)
        if found is not None:
            why = (f"Its backend found {found.summary()}; first: {found.ops[0].op} "
                   f"`{found.ops[0].node}`.")
        elif (a.fast_path or {}).get("status") == "clean":
            why = "Its backend found every op on the fast path: profile it on the target."
        else:
            why = "Its backend did not check which ops run off the fast path."
        out.append(f"`{a.id}` ({fmt_ms(r.p50)} ms, {fmt_threads(r.threads)}) is slower than "
                   f"{' and '.join(slower)}. {why}")
    return out


def _flag_reduced_precision(results: BenchResults,
                            arts: dict[str, ArtifactRecord]) -> list[str]:
    seen: dict[tuple[str, str, str], list[str]] = {}
    for r in results.rows:
        raw = str((r.runtime.inference_precision if r.runtime else None) or "")
        reduced = _REDUCED.get(raw.lower())
        a = arts[r.artifact]
        if reduced and a.precision in ("fp32", "int8") and not r.error:
            ids = seen.setdefault((str(a.backend), reduced, str(a.precision)), [])
            if a.id not in ids:
                ids.append(a.id)
    return [f"This runtime computes in {reduced} on this target: {backend} runs the {prec} "
            f"artifact{'s' if len(ids) > 1 else ''} {', '.join(f'`{i}`' for i in ids)} in "
            f"{reduced}, so outputs differ from {prec} execution."
            for (backend, reduced, prec), ids in seen.items()]


def _flag_spread(results: BenchResults, best: Row | None) -> list[str]:
    noisy = [r for r in results.rows if r.ok and valid_row(r)
             and (r.spread or 0) > SPREAD_LIMIT]
    if not noisy:
        return []
    worst = max(noisy, key=lambda r: r.spread or 0)
    where = f"`{worst.artifact}` with {fmt_threads(worst.threads)}"
    if best is not None and best in noisy:
        return [f"Noisy machine: the recommended row's trials differ by {best.spread:.2f}× "
                f"in p50 (worst {worst.spread:.2f}×, {where}); rerun on an idle machine "
                "before trusting close calls."]
    return [f"Noisy machine: run-to-run p50 spread up to {worst.spread:.2f}× ({where}; "
            f"limit {SPREAD_LIMIT}×); rerun on an idle machine before trusting close calls."]


def _flag_quick(results: BenchResults) -> list[str]:
    if results.quick:
        return ["--quick timings: too few iterations to rely on; rerun without --quick."]
    return []


def _flag_isa(results: BenchResults) -> list[str]:
    """Why rows measured on this machine may not represent the target (none when nothing was
    measured here)."""
    if not any(r.ok for r in results.rows) or (results.given("measured_by")
                                               and results.measured_by is None):
        return []
    name = results.target_name
    return [f"Measured here, not on {name} itself: {note}"
            for note in results.target.isa_notes or []]


def _flag_bundle_accuracy(results: BenchResults, art: ArtifactRecord | None) -> list[str]:
    subjects = [art] if art is not None else results.artifacts
    if not any(a.accuracy_source == "bundle" and a.accuracy for a in subjects):
        return []
    if results.data is not None and not results.data.empty:
        # data was given, but this bundle had no fp32 reference to score on
        return ["Accuracy is the bundle's compress-time verification: its source model could "
                "not be loaded here and it has no fp32 artifact to compare against on your "
                "data — keep the source checkpoint next to the bundle or add an fp32 bundle."]
    return ["Accuracy is the bundle's compress-time verification, not measured on your "
            "data — pass --data."]


def _flag_few_images(results: BenchResults, art: ArtifactRecord | None) -> list[str]:
    n = results.eval_n(art)
    if n is not None and n < MIN_EVAL_IMAGES:
        return [f"Only {n} evaluation images: wide confidence intervals (use at least "
                f"{MIN_EVAL_IMAGES}, ideally 500 or more)."]
    return []


def _flag_delta_ci(art: ArtifactRecord | None) -> list[str]:
    if art is None:
        return []
    delta, limit = artifact_delta(art), gate_limit(art)
    if delta is None or delta.lo is None or limit is None or 100 * delta.lo >= -limit:
        return []
    return [f"The 95 % CI of `{art.id}`'s top-1 change reaches {fmt_signed(100 * delta.lo)} "
            f"points, beyond the {MINUS}{limit:g}-point gate: this data cannot rule out a "
            "larger loss than allowed."]


def _flag_inconclusive(results: BenchResults, best: Row | None) -> list[str]:
    """Artifacts faster than the recommendation (or any, without one) left out only because
    too few images could decide their gate."""
    arts, out = results.by_id(), []
    for r in sorted((r for r in results.rows if r.ok and valid_row(r)), key=lambda r: r.p50):
        art = arts[r.artifact]
        if best is not None and r.p50 >= best.p50:
            break
        unsure = inconclusive_checks(art) if not failed_checks(art) else []
        if not unsure or any(r.artifact in f for f in out):
            continue
        c = unsure[0]
        need = c.get("images_to_decide")
        out.append(f"`{r.artifact}` was faster ({fmt_ms(r.p50)} ms) but its gate is "
                   f"inconclusive: “{c.get('check')}” on {c.get('n', '?')} images"
                   + (f" (≈{need:,} would decide it)" if need else "")
                   + " — evaluate it on more labelled images (--data) before shipping it.")
    return out


def _flag_tie(passing: list[Row]) -> list[str]:
    if len(passing) < 2:
        return []
    first, second = passing[0], passing[1]
    if second.p50 > first.p50 * (1 + TIE_FRACTION):
        return []
    who = ("the same artifact" if second.artifact == first.artifact
           else f"`{second.artifact}`")
    return [f"Effectively a tie with {who} with {fmt_threads(second.threads)}: "
            f"{fmt_ms(second.p50)} vs {fmt_ms(first.p50)} ms (within "
            f"{100 * TIE_FRACTION:g} %); choose on memory, load time or accuracy."]
