"""The rescue loop: re-export an INT8 artifact with its most sensitive layers kept in float.

Candidates keep the top 1, 2, 4, 8 … layers of the sensitivity ranking in float, within a
bounded number of re-exports. Each candidate is judged WITHOUT the verification labels or
images, on calibration-side tuning images (``Score``): its top-1 agreement with the source and
the mean KL divergence of its output distribution from the source's. The verification set is
used once, on the chosen candidate, and stays an honest test.

The rule (``choose_candidate``):

* a candidate **passes** when its agreement reaches ``min_agreement`` and it improves on the
  plain INT8 artifact: better agreement with a KL divergence no larger (a few borderline
  images flipping is noise otherwise: on prudensnet 64, ORT, +2 of 256 tuning images with a
  larger KL verified worse), or — when the plain artifact already reaches the target, so
  agreement cannot tell them apart — at most half its KL divergence;
* the search **stops** at the first passing candidate (fewest float layers), unless that one
  runs more than ``LOOKAHEAD_SLOWDOWN`` slower than the plain INT8 artifact: then the next
  candidate is tried too and the fastest passing one is kept (merged float islands can be
  faster than a lone one);
* it also stops **early** after ``STALL_LIMIT`` candidates in a row that neither pass, nor
  raise the best agreement so far, nor cut the best KL divergence so far by ``MIN_GAIN``: the next candidates add layers of lower
  sensitivity, which are not expected to do better;
* when nothing passes, the candidate with the best agreement is chosen if it improves on the
  plain artifact — among those within one tuning image of that agreement, the fastest (then
  the fewest float layers): one image is not worth more float layers; otherwise the plain
  artifact stays;
* a candidate whose float islands leave **no op quantized** (the backend's
  ``quantization.quantized_ops`` is 0) is the fp32 model under an INT8 name: it never passes,
  is never chosen, and ends the search.

Every candidate is timed briefly (batch 1, ``WARMUP`` + ``RUNS`` calls, the median) so the
record says what the float layers cost against the plain INT8 artifact.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.quantize.sensitivity import LayerError
from edgekit.ui import progress_bar, status

#: ``map(fn, items) -> [fn(item) ...]`` in item order: the builtin map's contract, e.g. run as Ray
#: tasks by ``edgekit.bench.cluster.ClusterEvaluator.map``
MapTrials = Callable[[Callable[[Any], Any], list[Any]], list[Any]]
METHOD = "mixed precision: the most sensitive layers kept in float"
LOOKAHEAD_SLOWDOWN = 1.10  # a passing candidate this much slower than plain INT8: try one more
MIN_GAIN = 0.10  # a candidate must cut the best KL so far by this fraction to count as progress
STALL_LIMIT = 2  # candidates in a row without progress end the search
TRIGGER_ALPHA = 0.05  # a met gate searches only when the tuning agreement is this clearly low
WARMUP, RUNS = 3, 20  # the brief latency measurement of each candidate (batch 1)


@dataclass(frozen=True)
class Score:
    """How an artifact agrees with the source on the tuning images."""

    agreement: float  # top-1 agreement
    mean_abs_logit_diff: float
    kl: float  # mean KL(source ‖ artifact) of the output distributions (nats)


def mean_kl(reference: np.ndarray, logits: np.ndarray, kind: str) -> float:
    """Mean KL divergence of ``logits``' output distribution from ``reference``'s (nats per
    image): softmax over classes for ``multiclass``; per-output Bernoulli (sigmoid) otherwise,
    averaged over the outputs."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(logits, np.float64)
    if ref.ndim == 1:
        ref, out = ref[:, None], out[:, None]
    if kind == "multiclass":
        log_p = ref - np.logaddexp.reduce(ref, axis=1, keepdims=True)
        log_q = out - np.logaddexp.reduce(out, axis=1, keepdims=True)
        return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))
    log_p1, log_q1 = -np.logaddexp(0, -ref), -np.logaddexp(0, -out)
    log_p0, log_q0 = -np.logaddexp(0, ref), -np.logaddexp(0, out)
    kl = np.exp(log_p1) * (log_p1 - log_q1) + np.exp(log_p0) * (log_p0 - log_q0)
    return float(np.mean(kl))


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def measurably_below(agreement: float, n: int, min_agreement: float,
                     alpha: float = TRIGGER_ALPHA) -> bool:
    """Whether ``agreement`` on ``n`` images shows the artifact's true agreement is below
    ``min_agreement``: the one-sided binomial test of its disagreements against the rate
    ``1 − min_agreement`` allows, at level ``alpha``. On 256 images and 0.99 that takes 6
    disagreements (0.977); 4 (0.984) is what a 0.99 artifact shows one time in four."""
    disagreements = round((1 - agreement) * n)
    return binomial_tail(disagreements, n, 1 - min_agreement) < alpha


def remedy_text(options: str | None, keep_float: Sequence[str]) -> str:
    """What a candidate did, for messages: "full bias correction + 2 layer(s) kept in float"."""
    return f"{options + ' + ' if options else ''}{len(keep_float)} layer(s) kept in float"


def quantized_ops(artifact: Any) -> int | None:
    """How many ops of an INT8 artifact still run quantized (the backend's count in
    ``quantization.quantized_ops``; None when it does not say). Keeping a layer in float also
    keeps its neighbours' float islands, so a few layers can leave nothing quantized."""
    value = (getattr(artifact, "quantization", None) or {}).get("quantized_ops")
    return None if value is None else int(value)


def p50_ms(call: Callable[[], Any], warmup: int = WARMUP, runs: int = RUNS) -> float:
    """The median of ``runs`` timed calls after ``warmup`` untimed ones, in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@dataclass(frozen=True)
class Attempt:
    """One candidate: the layers it keeps in float, how it agrees with the source on the
    tuning images, whether it passes (see the module), and its batch-1 p50 latency."""

    keep_float: tuple[str, ...]
    agreement: float
    mean_abs_logit_diff: float
    seconds: float
    kl: float = float("nan")
    passed: bool = False
    p50_ms: float | None = None
    float_only: bool = False  # no quantized op left: the fp32 model under an INT8 name
    options: str = ""  # a quantizer option of the backend's (``rescue_options``), if any

    def to_json(self) -> dict[str, Any]:
        return {"keep_float": list(self.keep_float), "tuning_top1_agreement": self.agreement,
                "tuning_mean_abs_logit_diff": self.mean_abs_logit_diff,
                "tuning_mean_kl": _round(self.kl), "passed": self.passed,
                "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
                "export_seconds": round(self.seconds, 2), "float_only": self.float_only,
                **({"options": self.options} if self.options else {})}


def _round(x: float) -> float | None:
    return None if x != x else float(f"{x:.4g}")  # NaN → null


@dataclass
class RescueOutcome:
    """What the rescue tried and chose. ``artifacts[i]`` is the candidate of ``attempts[i]``;
    ``chosen`` indexes both (None: no candidate beat the plain INT8 artifact). ``stopped``
    says why the search ended."""

    sensitivity: list[LayerError]
    baseline_agreement: float
    baseline_logit_diff: float
    attempts: list[Attempt] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)
    chosen: int | None = None
    baseline_kl: float = float("nan")
    baseline_p50_ms: float | None = None
    stopped: str = ""
    searched: bool = True  # False: the layers were only ranked (or not even that)

    @property
    def artifact(self) -> Any | None:
        return None if self.chosen is None else self.artifacts[self.chosen]

    @property
    def keep_float(self) -> tuple[str, ...]:
        return () if self.chosen is None else self.attempts[self.chosen].keep_float

    @property
    def options(self) -> str:
        return "" if self.chosen is None else self.attempts[self.chosen].options


def candidate_sets(ranked: Sequence[str], max_attempts: int) -> list[tuple[str, ...]]:
    """The top 1, 2, 4, 8 … names, at most ``max_attempts`` sets; never all of them (unless
    there is only one): keeping every quantized layer in float is the fp32 model, whose
    artifact the recipe fp32 makes."""
    cap = max(1, len(ranked) - 1)
    sets: list[tuple[str, ...]] = []
    size = 1
    while ranked and len(sets) < max_attempts:
        chosen = tuple(ranked[:min(size, cap)])
        if not sets or chosen != sets[-1]:
            sets.append(chosen)
        if size >= cap:
            break
        size *= 2
    return sets


def choose_candidate(export: Callable[[tuple[str, ...], int, dict[str, Any]], Any],
                     score: Callable[[Any], Score],
                     sensitivity: list[LayerError], baseline: Score, *,
                     max_attempts: int, min_agreement: float,
                     timer: Callable[[Any], float | None] | None = None,
                     baseline_p50_ms: float | None = None,
                     on_attempt: Callable[[Attempt], None] | None = None,
                     remedies: Sequence[tuple[str, dict[str, Any]]] = (),
                     tie: float = 0.0,
                     map_trials: MapTrials | None = None) -> RescueOutcome:
    """Export candidates (``export(keep_float, index, option_overrides)``), score each on the
    tuning images (``score(artifact)``; ``baseline``: the plain INT8 artifact's) and time it
    (``timer``: batch-1 p50 in ms, or None), by the rule in the module docstring.
    ``remedies`` (label, QuantOptions overrides) are tried first with nothing kept in float;
    the best one that improves on the plain artifact stays on for the keep-float candidates.
    ``tie``: agreements this close (one tuning image) count as equal when nothing passes.
    ``map_trials(fn, items)`` runs trials at once (``prefetched``), with the same choice."""
    outcome = RescueOutcome(sensitivity, baseline.agreement, baseline.mean_abs_logit_diff,
                            baseline_kl=baseline.kl, baseline_p50_ms=baseline_p50_ms)
    agreement_decides = baseline.agreement < min_agreement

    def improves(a: Attempt | Score) -> bool:
        # more agreement counts only with a distribution no further from the source's: a
        # couple of borderline images flipping is noise otherwise
        if agreement_decides and a.agreement > baseline.agreement and a.kl <= baseline.kl:
            return True
        return a.agreement >= baseline.agreement and a.kl <= 0.5 * baseline.kl

    best_kl, best_agree, stalled, lookahead = baseline.kl, baseline.agreement, 0, False
    remedies = list(remedies)[:max(0, max_attempts - 1)]  # leave a keep-float candidate
    keep_sets = (candidate_sets([r.name for r in sensitivity], max_attempts - len(remedies))
                 if sensitivity else [])
    sets: list[tuple[str, ...]] = [()] * len(remedies) + keep_sets
    remedy: tuple[str, dict[str, Any]] = ("", {})  # the option the keep-float candidates use
    remedy_kl = baseline.kl
    if map_trials is not None:  # every trial up front; the rule below reads them in order
        export, score, timer = prefetched(map_trials, export, score, timer, sets, remedies,
                                          improves, baseline.kl)
    for index, keep in enumerate(sets):
        label, overrides = remedies[index] if index < len(remedies) else remedy
        t0 = time.perf_counter()
        artifact = export(keep, index, dict(overrides))
        got = score(artifact)
        seconds = time.perf_counter() - t0
        float_only = quantized_ops(artifact) == 0
        attempt = Attempt(keep, got.agreement, got.mean_abs_logit_diff, seconds, got.kl,
                          passed=(not float_only and got.agreement >= min_agreement
                                  and improves(got)),
                          p50_ms=None if timer is None else timer(artifact),
                          float_only=float_only, options=label)
        outcome.attempts.append(attempt)
        outcome.artifacts.append(artifact)
        if on_attempt is not None:
            on_attempt(attempt)
        if index < len(remedies) and improves(got) and got.kl < remedy_kl:
            remedy, remedy_kl = remedies[index], got.kl
        if float_only:  # larger sets keep even more in float
            outcome.stopped = ("the float islands of this candidate covered every quantized "
                               "op: it is the fp32 model, not an INT8 artifact")
            break
        if lookahead:
            outcome.stopped = "looked one candidate past the first passing one"
            break
        if attempt.passed:
            slow = (attempt.p50_ms is not None and baseline_p50_ms is not None
                    and attempt.p50_ms > LOOKAHEAD_SLOWDOWN * baseline_p50_ms)
            if not slow or index + 1 == len(sets):
                outcome.stopped = "first passing candidate"
                break
            lookahead = True
            continue
        progress = got.kl < (1 - MIN_GAIN) * best_kl or got.agreement > best_agree
        best_kl, best_agree = min(best_kl, got.kl), max(best_agree, got.agreement)
        stalled = 0 if progress else stalled + 1
        if stalled >= STALL_LIMIT and index + 1 < len(sets):
            outcome.stopped = (f"{STALL_LIMIT} candidates in a row without a {MIN_GAIN:.0%} "
                               "lower KL divergence: more float layers are not expected to help")
            break
    else:
        outcome.stopped = "budget spent" if len(sets) == max_attempts else "candidates exhausted"
    passing = [i for i, a in enumerate(outcome.attempts) if a.passed]
    if passing:
        def speed(i: int) -> tuple[float, int]:
            p50 = outcome.attempts[i].p50_ms
            return (float("inf") if p50 is None else p50, len(outcome.attempts[i].keep_float))
        fastest = min(passing, key=speed)
        first = passing[0]  # fewer float layers: kept unless the other is clearly faster
        p_first, p_fast = outcome.attempts[first].p50_ms, outcome.attempts[fastest].p50_ms
        outcome.chosen = (fastest if p_first is not None and p_fast is not None
                          and p_fast < 0.97 * p_first else first)
        return outcome
    improving = [i for i, a in enumerate(outcome.attempts) if improves(a) and not a.float_only]
    if improving:
        # the best agreement, but one tuning image (``tie``) is not worth more float layers:
        # among the candidates that close, the fastest (then the fewest float layers)
        best = max(outcome.attempts[i].agreement for i in improving)
        near = [i for i in improving if outcome.attempts[i].agreement >= best - tie - 1e-12]

        def cost(i: int) -> tuple[float, int, float]:
            a = outcome.attempts[i]
            return (float("inf") if a.p50_ms is None else a.p50_ms, len(a.keep_float), a.kl)
        timed = all(outcome.attempts[i].p50_ms is not None for i in near)
        outcome.chosen = min(near, key=cost if timed else lambda i: cost(i)[1:])
    return outcome


def run_rescue(backend: Any, request_for: Callable[[tuple[str, ...], Path], Any], artifact: Any,
               work_dir: Path, tuning: np.ndarray, score: Callable[[Any], Score],
               *, name: str, settings: Any, search: bool | None, rank: bool = True,
               sensitivity_images: int = 32,
               map_trials: MapTrials | None = None) -> RescueOutcome:
    """Rank ``artifact``'s layers (``backend.layer_sensitivity`` on ``sensitivity_images`` of
    the ``tuning`` batch, spread over it) and, when ``search``, look for a candidate
    (``choose_candidate``) within ``settings`` (the recipe's ``rescue``). ``search=None``
    (the artifact did not miss its gate) searches only when its tuning agreement is
    measurably below ``min_agreement`` (``measurably_below``): within the gate's limits but
    further from the source than a good INT8 artifact is; without a search the layers are ranked only when
    ``rank``. Candidates are
    exported into ``work_dir``; ``request_for(keep_float, out_dir, overrides)`` is the export
    request (``overrides``: QuantOptions fields of a ``backend.rescue_options`` remedy).
    Each candidate and the plain artifact are timed with the backend's own session (batch 1,
    one tuning image)."""
    baseline = score(artifact)
    # one image of slack: on 64 tuning images a 0.99 target would otherwise mean every image,
    # and one borderline image flips under any quantization
    target = settings.min_agreement - 1 / max(1, len(tuning))
    if search is None:  # gate not missed: search when the artifact is measurably off the source
        search = measurably_below(baseline.agreement, len(tuning), settings.min_agreement)
        if search:
            status(f"{name}: within its gate, but on {len(tuning)} calibration-side images it "
                   f"agrees with the source on {baseline.agreement:.3f} of them: clearly below "
                   f"{settings.min_agreement:g} (binomial test, p < {TRIGGER_ALPHA:g}); looking "
                   "for a closer INT8 artifact")
        else:
            status(f"{name}: agrees with the source on {baseline.agreement:.3f} of "
                   f"{len(tuning)} calibration-side images (not clearly below "
                   f"{settings.min_agreement:g}): no rescue needed")
        if not search and not rank:
            return RescueOutcome([], baseline.agreement, baseline.mean_abs_logit_diff,
                                 baseline_kl=baseline.kl, searched=False)
    step = max(1, len(tuning) // sensitivity_images)
    sample = tuning[::step][:sensitivity_images]
    status(f"{name}: per-layer sensitivity on {len(sample)} calibration-side images")
    ranking = backend.layer_sensitivity(request_for((), work_dir / "unused"), artifact.path,
                                        sample)
    if not search:
        return RescueOutcome(ranking, baseline.agreement, baseline.mean_abs_logit_diff,
                             baseline_kl=baseline.kl, searched=False)
    remedies = tuple(getattr(backend, "rescue_options", ()))
    if not ranking and not remedies:
        status(f"{name}: no per-layer sensitivity for this source on {backend.name}: nothing to "
               "keep in float")
        return RescueOutcome(ranking, baseline.agreement, baseline.mean_abs_logit_diff,
                             baseline_kl=baseline.kl, stopped="no layers ranked")

    def timer(candidate: Any) -> float | None:
        try:
            return p50_ms(backend.open(candidate.path).bind(tuning[:1]))
        except Exception:  # noqa: BLE001 - timing is informative; the choice falls back on order
            return None

    base_p50 = timer(artifact)
    status(f"{name}: rescue — keeping the most sensitive layers in float (at most "
           f"{settings.max_attempts} re-exports; plain INT8 on {len(tuning)} calibration-side "
           f"images: agreement {baseline.agreement:.3f}, KL {baseline.kl:.2e}"
           + ("" if base_p50 is None else f", p50 {base_p50:.2f} ms")
           + (f"; target agreement {target:.3f}" if baseline.agreement < target
              else "; it already reaches the agreement target, so a candidate must halve "
                   "its KL divergence") + ")")

    def export(keep: tuple[str, ...], index: int, overrides: dict[str, Any]) -> Any:
        return backend.export(request_for(keep, work_dir / f"attempt-{index + 1}", overrides))

    with progress_bar(f"{name}: rescue", settings.max_attempts) as bar:
        def report(attempt: Attempt) -> None:
            bar.advance()
            p50 = "" if attempt.p50_ms is None else f", p50 {attempt.p50_ms:.2f} ms"
            status(f"  {remedy_text(attempt.options, attempt.keep_float)}: tuning agreement "
                   f"{attempt.agreement:.3f}, KL {attempt.kl:.2e}{p50}"
                   f"{' — passes' if attempt.passed else ''} ({attempt.seconds:.1f} s)")

        return choose_candidate(export, score, ranking, baseline,
                                max_attempts=settings.max_attempts, min_agreement=target,
                                timer=timer, baseline_p50_ms=base_p50, on_attempt=report,
                                remedies=remedies, tie=1 / max(1, len(tuning)),
                                map_trials=map_trials)


def prefetched(map_trials: MapTrials, export: Callable[[tuple[str, ...], int, dict[str, Any]], Any],
               score: Callable[[Any], Score], timer: Callable[[Any], float | None] | None,
               sets: list[tuple[str, ...]], remedies: list[tuple[str, dict[str, Any]]],
               improves: Callable[[Score], bool], baseline_kl: float) -> tuple[Any, Any, Any]:
    """Run ``choose_candidate``'s trials (export + score + time) through ``map_trials`` in two
    waves — the remedies, then the keep-float sets with the remedy the sequential rule keeps —
    and return (export, score, timer) that hand back those results. The rule then sees what
    it would have computed one trial at a time (exports and scores are deterministic), so it
    chooses the same candidate; trials past where it stops are wasted, not used. Latencies
    timed while other trials run are noisier, and ``Attempt.seconds`` is no longer the
    trial's own time."""
    def trial(item: tuple[tuple[str, ...], int, dict[str, Any]]) -> tuple[Any, Any, Any]:
        keep, index, overrides = item
        try:
            artifact = export(keep, index, overrides)
            return artifact, score(artifact), None if timer is None else timer(artifact)
        except Exception as exc:  # noqa: BLE001 - raised where the sequential loop would meet it
            return exc, None, None

    current = [0]  # the loop scores and times each candidate right after exporting it

    def export_again(keep: tuple[str, ...], index: int, overrides: dict[str, Any]) -> Any:
        current[0] = index
        if isinstance(done[index][0], Exception):
            raise done[index][0]
        return done[index][0]

    n = len(remedies)
    done = dict(enumerate(map_trials(trial, [((), i, dict(remedies[i][1])) for i in range(n)])))
    remedy: tuple[str, dict[str, Any]] = ("", {})
    for i in range(n):  # the loop's own remedy rule
        got = done[i][1]
        if got is None:  # the loop stops at this failed trial
            break
        if improves(got) and got.kl < baseline_kl:
            remedy, baseline_kl = remedies[i], got.kl
    rest = range(n, len(sets))
    done.update(zip(rest, map_trials(trial, [(sets[i], i, dict(remedy[1])) for i in rest]),
                    strict=True))
    return (export_again, lambda artifact: done[current[0]][1],
            None if timer is None else (lambda artifact: done[current[0]][2]))
