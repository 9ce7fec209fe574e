"""``--recipe auto``: search pruning level × precision × backend under ONE clinical gate.

Candidates are made cheapest first (unpruned fp32, unpruned INT8 with the rescue, then each
pruning level: prune + recover ONCE, exported in fp32 and INT8 from that same pruned model),
every artifact gated against the UNPRUNED source on the same held-out images (the source is
loaded, the folder split, those images decoded and the source run on them once, for all). All
candidate artifacts are then timed in ONE ``edgekit bench`` run on the target (interleaved,
one protocol; predicted when the target can only be predicted). The result is the Pareto front
(latency vs top-1 change, gate-passing only) and a recommendation with its evidence, written as
``auto.json`` + ``auto.md`` next to one normal bundle per pruning level × precision.

Library first: :func:`search`; ``edgekit compress … --recipe auto`` is a few lines over it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.backends import require_backend
from edgekit.bench.run import BenchOptions, bench
from edgekit.compress import (
    CompressOptions,
    CompressResult,
    PreparedData,
    PrunedModel,
    compress,
)
from edgekit.errors import ConfigError
from edgekit.outputs import refuse_inside_data, write_atomic
from edgekit.quantize.rescue import remedy_text
from edgekit.recipes import Recipe, load_recipe
from edgekit.report.recommend import recommend
from edgekit.report.results import BenchResults, valid_row
from edgekit.targets import load_target
from edgekit.ui import progress_bar, status

SCHEMA = "edgekit.auto/1"
# pruning level -> the built-in recipes of its fp32 and int8 candidates
LEVELS: dict[str, dict[str, str]] = {
    "none": {"fp32": "fp32", "int8": "int8"},
    "prune30": {"fp32": "prune30", "int8": "prune30-int8"},
    "prune50": {"fp32": "prune50", "int8": "prune50-int8"},
}
PRECISIONS = ("fp32", "int8")
GATE_RECIPE = "int8"  # every candidate is held to this recipe's gate (the strictest built-in)
DEFAULT_VERIFICATION_IMAGES = 500


@dataclass(frozen=True)
class AutoOptions:
    """What the search may try and how it chooses.

    ``compress`` holds the settings shared with every candidate (backends, calibration and
    verification images, seed, target, threads, cluster, preprocessing …; its ``recipe`` is
    ignored). Without ``compress.backends`` the target's preferred runtimes are tried.
    ``latency_budget_ms``: recommend the most accurate gate-passing artifact at most this fast
    (without it: the fastest gate-passing one). ``search_minutes``: stop starting new candidates
    after this long (said in the result). ``recipe_overrides``: dotted recipe fields set on every
    candidate's recipe (``pruning.*`` only on pruned levels), e.g. fewer recovery epochs.
    ``quick``: bench's short protocol (labelled as such)."""

    compress: CompressOptions = field(default_factory=CompressOptions)
    latency_budget_ms: float | None = None
    search_minutes: float | None = None
    levels: tuple[str, ...] = ("none", "prune30", "prune50")
    precisions: tuple[str, ...] = PRECISIONS
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    quick: bool = False


@dataclass
class Candidate:
    """One artifact of the search: pruning level × precision × backend, its gate and latency.
    Deltas are in accuracy points against the unpruned source (negative: worse)."""

    bundle: str  # the sub-bundle folder in OUT
    artifact: str  # the artifact's name in that bundle
    level: str
    precision: str
    backend: str
    macs_fraction: float
    macs: int | None
    gate: str  # pass | fail | inconclusive
    images: int
    top1_delta: float | None = None
    top1_delta_ci: tuple[float, float] | None = None
    worst_class: str | None = None
    worst_class_delta: float | None = None
    remedy: str | None = None  # what the INT8 rescue kept in float, when it ran
    p50_ms: float | None = None
    spread: float | None = None
    threads: int | None = None
    latency_basis: str | None = None  # measured | predicted | None (not timed)
    macs_before: int | None = None  # the unpruned model's MACs (pruned levels)
    p50_by_threads: dict[int, float] = field(default_factory=dict)  # every timed thread count

    @property
    def id(self) -> str:
        return f"{self.bundle}/{self.artifact}"

    @property
    def passes(self) -> bool:
        return self.gate == "pass"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["id"] = self.id
        d["top1_delta_ci"] = None if self.top1_delta_ci is None else list(self.top1_delta_ci)
        return d


@dataclass
class Skipped:
    what: str  # e.g. "prune50 (fp32, int8)"
    why: str


@dataclass
class AutoResult:
    out: Path
    target: str
    candidates: list[Candidate]
    front: list[Candidate]
    recommended: Candidate | None
    evidence: list[str]
    skipped: list[Skipped]
    bench_run: Path | None
    latency_basis: str | None
    seconds: float
    stopped_early: bool = False
    speedups: dict[str, float | None] = field(default_factory=dict)
    bench_recommendation: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.recommended is not None

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "target": self.target, "seconds": round(self.seconds, 1),
                "latency_basis": self.latency_basis, "stopped_early": self.stopped_early,
                "bench_run": None if self.bench_run is None else str(self.bench_run),
                "candidates": [c.to_json() for c in self.candidates],
                "pareto_front": [c.id for c in self.front],
                "recommendation": None if self.recommended is None else {
                    **self.recommended.to_json(), "speedups": self.speedups},
                "evidence": self.evidence,
                "skipped": [dataclasses.asdict(s) for s in self.skipped],
                "bench_recommendation": self.bench_recommendation}


# ------------------------------------------------------------------------ front + choice
def _delta(c: Candidate) -> float:
    return float("-inf") if c.top1_delta is None else c.top1_delta


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Gate-passing, timed candidates no other one beats on both latency and top-1 change
    (equal on both: both stay), fastest first."""
    pool = [c for c in candidates if c.passes and c.p50_ms is not None]

    def dominated(a: Candidate) -> bool:
        return any(b.p50_ms <= a.p50_ms and _delta(b) >= _delta(a)  # type: ignore[operator]
                   and (b.p50_ms < a.p50_ms or _delta(b) > _delta(a))  # type: ignore[operator]
                   for b in pool)

    return sorted((c for c in pool if not dominated(c)),
                  key=lambda c: (c.p50_ms, -_delta(c), c.id))


def choose(candidates: Sequence[Candidate], budget_ms: float | None = None
           ) -> Candidate | None:
    """Without a budget the fastest gate-passing candidate (ties: the more accurate, then the
    name); with one, the most accurate passing candidate with p50 <= budget (ties: the faster).
    None when no candidate qualifies."""
    front = pareto_front(candidates)
    if budget_ms is None:
        return front[0] if front else None
    within = [c for c in front if c.p50_ms is not None and c.p50_ms <= budget_ms]
    return min(within, key=lambda c: (-_delta(c), c.p50_ms, c.id)) if within else None


# ------------------------------------------------------------------------------- search
def _recipe(level: str, precision: str, backends: list[str], images: int,
            overrides: dict[str, Any]) -> Recipe:
    """The level × precision recipe held to the common gate and verification images."""
    gate = load_recipe(GATE_RECIPE).gate.model_dump()
    rec = load_recipe(LEVELS[level][precision])
    changes: dict[str, Any] = {f"gate.{k}": v for k, v in gate.items()}
    changes.update({"verification.images": images})
    changes.update({k: v for k, v in overrides.items()
                    if level != "none" or not k.startswith("pruning.")})
    return rec.with_overrides(backends=backends, **changes)


def _backends(opts: AutoOptions, tgt: Any) -> list[str]:
    """The given backends, else the target's preferred ones (fp32 and int8) that are installed."""
    if opts.compress.backends:
        return list(opts.compress.backends)
    names: list[str] = []
    for p in opts.precisions:
        names += [b for b in tgt.preferred.get(p, []) if b not in names]
    usable = [b for b in names if require_backend(b).available() is None]
    if not usable:
        raise ConfigError(f"none of target {tgt.name!r}'s runtimes ({', '.join(names)}) is "
                          "installed; pip install 'edgekit[openvino]' (or onnxruntime, litert)")
    return usable


def _points(fraction: float) -> float:
    return round(100 * fraction, 3) + 0.0  # + 0.0: no "-0.00"


def _candidates(bundle: str, level: str, result: CompressResult) -> list[Candidate]:
    m = result.manifest
    frac = 1.0 if m.pruning is None else float(m.pruning["macs_fraction"])
    macs = None if m.pruning is None else m.pruning.get("macs_after")
    macs_before = None if m.pruning is None else m.pruning.get("macs_before")
    rows = []
    for a in result.artifacts:
        v = a.verification
        d = v.accuracy_delta or {}
        sens = [(c.check.split(": ", 1)[-1].removesuffix(" (points)"), -c.value + 0.0)
                for c in v.checks if c.value is not None
                and (c.check.startswith("sensitivity drop") or c.check.startswith("specificity"))]
        worst = min(sens, key=lambda t: t[1]) if sens else (None, None)
        rescue = a.artifact.quantization.get("rescue") or {}
        remedy = (remedy_text(rescue.get("options"), rescue["keep_float"])
                  if rescue.get("keep_float") or rescue.get("options") else
                  rescue.get("outcome") or ("none needed" if a.artifact.precision == "int8"
                                            else None))
        rows.append(Candidate(
            bundle=bundle, artifact=a.name, level=level, precision=a.artifact.precision,
            backend=a.artifact.backend, macs_fraction=frac, macs=macs, gate=v.decision,
            images=v.n,
            top1_delta=None if d.get("value") is None else _points(d["value"]),
            top1_delta_ci=(None if not d.get("ci95") else
                           (_points(d["ci95"][0]), _points(d["ci95"][1]))),
            worst_class=worst[0], worst_class_delta=worst[1], remedy=remedy,
            macs_before=macs_before))
    return rows


def _prepare_out(out: Path, overwrite: bool) -> None:
    """OUT is new, empty, or an earlier auto folder (with --overwrite): never a foreign one."""
    if out.exists() and any(out.iterdir()):
        if not (out / "auto.json").is_file():
            raise ConfigError(f"{out} exists and is not an edgekit auto folder (no auto.json); "
                              "choose a new --out")
        if not overwrite:
            raise ConfigError(f"{out} holds an earlier auto search; pass --overwrite to replace "
                              "its bundles")
    out.mkdir(parents=True, exist_ok=True)
    # marks the folder as edgekit's from the start (a rerun after a crash may replace it);
    # replaced by the full record when the search ends
    write_atomic(out / "auto.json", json.dumps({"schema": SCHEMA, "status": "running"}) + "\n")


def search(source: Any, *, data: str | Path, out: str | Path,
           options: AutoOptions | None = None, **settings: Any) -> AutoResult:
    """Make, gate and time every candidate; write OUT/auto.json + auto.md; return the result.

    ``settings`` replace ``options`` fields by name. Never raises for a failed gate: the result
    says whether a recommendation passes (``passed``)."""
    opts = dataclasses.replace(options or AutoOptions(), **settings)
    out = Path(out)
    t0 = time.perf_counter()
    unknown = [lv for lv in opts.levels if lv not in LEVELS]
    bad_p = [p for p in opts.precisions if p not in PRECISIONS]
    if unknown or bad_p or not opts.levels or not opts.precisions:
        raise ConfigError(f"auto searches levels {', '.join(LEVELS)} and precisions "
                          f"{', '.join(PRECISIONS)}; got {list(opts.levels)} × "
                          f"{list(opts.precisions)}")
    if opts.latency_budget_ms is not None and opts.latency_budget_ms <= 0:
        raise ConfigError("--latency-budget-ms must be > 0")
    if opts.compress.target_time is not None:
        raise ConfigError("--target-time sets one pruning level; --recipe auto tries its own "
                          "levels (give --cost latency to rank their channels by time)")
    refuse_inside_data(out, data)
    tgt = load_target(opts.compress.target)
    backends = _backends(opts, tgt)
    images = opts.compress.verification_images or DEFAULT_VERIFICATION_IMAGES
    base = dataclasses.replace(opts.compress, backends=backends, allow_accuracy_drop=True,
                               strict_gate=False, shared_split=True, verification_images=None,
                               target_macs=None, target_latency_ms=None, pruned=None,
                               cost=None)
    _prepare_out(out, opts.compress.overwrite)

    steps = [(lv, p) for lv in opts.levels for p in PRECISIONS if p in opts.precisions]
    candidates: list[Candidate] = []
    skipped: list[Skipped] = []
    bundles: list[Path] = []
    stopped = False
    level_failed: dict[str, bool] = {}
    with progress_bar("auto: candidates", len(steps)) as bar:
        pruned: PrunedModel | None = None
        pruned_level = None
        prepared: PreparedData | None = None  # the source and data, loaded once for all
        for level, precision in steps:
            name = LEVELS[level][precision]
            what = f"{name} ({', '.join(backends)})"
            elapsed = (time.perf_counter() - t0) / 60
            why = None
            if opts.search_minutes is not None and elapsed >= opts.search_minutes:
                why = (f"the search budget of {opts.search_minutes:g} min was spent "
                       f"({elapsed:.1f} min)")
                stopped = True
            elif level != "none" and _earlier_level_failed(level, opts.levels, level_failed):
                why = ("a lighter pruning level already failed the gate on every backend and "
                       "precision: pruning more cannot pass")
            elif (level != "none" and precision == "int8" and "fp32" in opts.precisions
                  and level_failed.get(f"{level}/fp32")):
                why = ("the pruned model's fp32 artifacts already fail the gate: INT8 only adds "
                       "error to them")
            if why:
                skipped.append(Skipped(what, why))
                status(f"[yellow]auto:[/] skipped {what}: {why}")
                bar.advance()
                continue
            status(f"[bold]auto:[/] candidate {name} on {', '.join(backends)}")
            rec = _recipe(level, precision, backends, images, opts.recipe_overrides)
            reuse = pruned if level != "none" and pruned_level == level else None
            try:
                result = compress(source, data=data, out=out / name,
                                  options=dataclasses.replace(
                                      base, recipe=rec, pruned=reuse, prepared=prepared,
                                      cost=opts.compress.cost if level != "none" else None))
            except ConfigError as exc:
                if level == "none":
                    raise
                skipped.append(Skipped(what, str(exc)))
                status(f"[yellow]auto:[/] skipped {what}: {exc}")
                bar.advance()
                continue
            prepared = prepared or result.prepared
            if result.pruned is not None and reuse is None:
                pruned, pruned_level = result.pruned, level
            rows = _candidates(name, level, result)
            candidates += rows
            bundles.append(out / name)
            level_failed[f"{level}/{precision}"] = all(c.gate == "fail" for c in rows)
            bar.advance()

    run = None
    results: BenchResults | None = None
    if bundles:
        status(f"[bold]auto:[/] timing {len(candidates)} artifacts on {tgt.name} in one run")
        run = bench(bundles, BenchOptions(
            target=opts.compress.target, threads=[opts.compress.threads]
            if opts.compress.threads else None, quick=opts.quick, out=out / "bench",
            source=False, seed=base.seed or 0, predict=tgt.access.kind != "local"))
        results = run.results
        basis = _attach_latency(candidates, results)
    else:
        basis = None
    before = [c.macs_before for c in candidates if c.macs_before]
    for c in candidates:  # the unpruned candidates' MACs, known once a level was pruned
        if c.level == "none" and before:
            c.macs = before[0]
    front = pareto_front(candidates)
    best = choose(candidates, opts.latency_budget_ms)
    result = AutoResult(out, tgt.name, candidates, front, best, [], skipped,
                        None if run is None else run.run_dir, basis,
                        time.perf_counter() - t0, stopped)
    result.bench_recommendation = None if results is None else recommend(results)
    result.speedups = _speedups(best, candidates)
    result.evidence = _evidence(result, opts)
    _write(out, result, opts)
    return result


def _earlier_level_failed(level: str, levels: Sequence[str], failed: dict[str, bool]) -> bool:
    """A lighter pruning level that ran and failed the gate on everything it made."""
    order = [lv for lv in LEVELS if lv != "none"]
    lighter = [lv for lv in order[:order.index(level)] if lv in levels]
    for lv in lighter:
        ran = [v for k, v in failed.items() if k.startswith(f"{lv}/")]
        if ran and all(ran):
            return True
    return False


def _attach_latency(candidates: list[Candidate], results: BenchResults) -> str | None:
    """Each candidate's best p50 over the thread counts: measured rows, else predicted ones."""
    by_id = {c.id: c for c in candidates}
    for basis, rows in (("measured", [r for r in results.rows if r.ok and valid_row(r)]),
                        ("predicted", results.predicted.rows if results.predicted else [])):
        rows = [r for r in rows if r.ok and r.artifact in by_id]
        for r in rows:
            c = by_id[r.artifact]
            if r.threads is not None:
                c.p50_by_threads[r.threads] = round(r.p50, 4)
            if c.p50_ms is None or r.p50 < c.p50_ms:
                c.p50_ms, c.threads, c.latency_basis = round(r.p50, 4), r.threads, basis
                c.spread = getattr(r, "spread", None)
        if rows:
            return basis
    return None


def _speedups(best: Candidate | None, candidates: list[Candidate]) -> dict[str, float | None]:
    """The recommendation's speed-up over the unpruned fp32 of its backend and over the
    unpruned INT8 of its backend (as the int8 recipe makes it), at the recommendation's thread
    count (same bench run)."""
    if best is None or best.p50_ms is None:
        return {}

    def ref(precision: str) -> float | None:
        found = [c.p50_by_threads.get(best.threads, c.p50_ms) if best.threads is not None
                 else c.p50_ms for c in candidates if c.level == "none"
                 and c.backend == best.backend and c.precision == precision]
        return round(found[0] / best.p50_ms, 3) if found and found[0] else None

    return {"vs_unpruned_fp32_same_backend": ref("fp32"),
            "vs_unpruned_int8_same_backend": ref("int8")}


def _threads(n: int | None) -> str:
    return "" if n is None else f" with {n} thread{'s' if n != 1 else ''}"


def _fmt_delta(c: Candidate) -> str:
    if c.top1_delta is None:
        return "n/a"
    ci = "" if c.top1_delta_ci is None else \
        f" [{c.top1_delta_ci[0]:+.2f}, {c.top1_delta_ci[1]:+.2f}]"
    return f"{c.top1_delta:+.2f}{ci}"


def _fmt_ms(c: Candidate) -> str:
    if c.p50_ms is None:
        return "not timed"
    return f"{c.p50_ms:.3g}" + (" (predicted)" if c.latency_basis == "predicted" else "")


def _evidence(r: AutoResult, opts: AutoOptions) -> list[str]:
    lines = []
    budget = opts.latency_budget_ms
    passing = [c for c in r.candidates if c.passes and c.p50_ms is not None]
    if r.recommended is not None:
        c = r.recommended
        rule = (f"the most accurate gate-passing artifact with p50 <= {budget:g} ms" if budget
                else "the fastest gate-passing artifact")
        lines.append(f"Recommended `{c.id}` ({c.level}, {c.precision}, {c.backend}): {rule}; "
                     f"p50 {_fmt_ms(c)} ms{_threads(c.threads)}"
                     f", top-1 {_fmt_delta(c)} points vs the unpruned source on {c.images} "
                     f"held-out images, worst class {c.worst_class} "
                     f"{'n/a' if c.worst_class_delta is None else f'{c.worst_class_delta:+.2f}'}"
                     f" points; gate {c.gate}.")
        s = r.speedups
        for key, label in (("vs_unpruned_fp32_same_backend", "unpruned fp32"),
                           ("vs_unpruned_int8_same_backend", "unpruned INT8")):
            if s.get(key):
                lines.append(f"{s[key]:.2f}x faster than the {label} artifact on {c.backend} "
                             f"(same bench run{_threads(c.threads)}).")
    else:
        if budget is not None and passing:
            fastest = min(passing, key=lambda c: c.p50_ms)  # type: ignore[arg-type,return-value]
            lines.append(f"No gate-passing artifact is within {budget:g} ms: the fastest that "
                         f"passes is `{fastest.id}` at {_fmt_ms(fastest)} ms.")
        else:
            lines.append("No artifact passes the gate.")
        floats = [c for c in passing if c.precision == "fp32"]
        if floats:
            f = min(floats, key=lambda c: c.p50_ms)  # type: ignore[arg-type,return-value]
            lines.append(f"Fastest passing float artifact: `{f.id}` ({_fmt_ms(f)} ms).")
    unsure = [c.id for c in r.candidates if c.gate == "inconclusive"]
    if unsure:
        lines.append(f"Inconclusive (too few images to decide; not recommended): "
                     f"{', '.join(unsure)}.")
    if r.latency_basis == "predicted":
        lines.append("Latencies are PREDICTED by the latency model (the target was not "
                     "measured): measure with edgekit bench on the board before shipping.")
    if opts.quick:
        lines.append("Timed with bench's quick protocol: a few iterations only.")
    if r.stopped_early:
        lines.append(f"The search stopped early: --search-minutes {opts.search_minutes:g} "
                     "was spent (see skipped).")
    for flag in (r.bench_recommendation or {}).get("flags", []):
        lines.append(f"bench: {flag}")
    return lines


# ------------------------------------------------------------------------------ outputs
def render_markdown(r: AutoResult) -> str:
    front = {c.id for c in r.front}
    rows = [f"| `{c.id}` | {c.level} | {100 * c.macs_fraction:.0f} % | {c.backend} | "
            f"{c.precision} | {c.remedy or ''} | {_fmt_ms(c)} | {_fmt_delta(c)} | {c.images} | "
            f"{c.worst_class or ''} "
            f"{'' if c.worst_class_delta is None else f'{c.worst_class_delta:+.2f}'} | "
            f"{c.gate}{' ★' if c.id in front else ''} |"
            for c in sorted(r.candidates, key=lambda c: (c.p50_ms is None, c.p50_ms or 0))]
    skipped = [f"- {s.what}: {s.why}" for s in r.skipped] or ["- none"]
    rec = (f"**Ship `{r.recommended.id}`.**" if r.recommended is not None
           else "**No recommendation passes the gate.**")
    return "\n".join([
        f"# edgekit auto search on {r.target}", "", rec, "",
        *[f"- {e}" for e in r.evidence], "",
        f"## Candidates ({len(r.candidates)}; ★ Pareto front: latency vs top-1 change, "
        "gate-passing only)", "",
        "| artifact | pruning | MACs | backend | precision | rescue | p50 ms | top-1 Δ points "
        "[95 % CI] | images | worst class Δ | gate |",
        "|---|---|---:|---|---|---|---:|---:|---:|---|---|", *rows, "",
        "## Skipped", "", *skipped, "",
        f"Timing run: `{r.bench_run}` (report.md there has the full protocol, spread and flags)."
        if r.bench_run else "Nothing was timed.", ""])


def _write(out: Path, r: AutoResult, opts: AutoOptions) -> None:
    data = r.to_json()
    data["latency_budget_ms"] = opts.latency_budget_ms
    data["search_minutes"] = opts.search_minutes
    write_atomic(out / "auto.md", render_markdown(r))
    write_atomic(out / "auto.json", json.dumps(data, indent=2, default=str) + "\n")
