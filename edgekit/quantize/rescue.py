"""The rescue loop: re-export an INT8 artifact with its most sensitive layers kept in float.

Candidates keep the top 1, 2, 4, 8 … layers of the sensitivity ranking in float, within a
bounded number of re-exports. Each candidate is judged WITHOUT the verification labels or
images: by its top-1 agreement with the source on tuning images (calibration-side images), so
the verification set is used once, on the chosen candidate, and stays an honest test. The first
candidate whose agreement reaches ``min_agreement`` (and, when the plain artifact already
did, that at least halves its mean logit error) is chosen — the fewest float layers, so the
one closest to full-INT8 speed; when none does, the one with the best agreement (fewest float
layers on a tie), if it beats the plain INT8 artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.quantize.sensitivity import LayerError
from edgekit.ui import progress_bar, status

METHOD = "mixed precision: the most sensitive layers kept in float"


@dataclass(frozen=True)
class Attempt:
    """One candidate: the layers it keeps in float and how it agrees with the source on the
    tuning images."""

    keep_float: tuple[str, ...]
    agreement: float
    mean_abs_logit_diff: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"keep_float": list(self.keep_float), "tuning_top1_agreement": self.agreement,
                "tuning_mean_abs_logit_diff": self.mean_abs_logit_diff,
                "export_seconds": round(self.seconds, 2)}


@dataclass
class RescueOutcome:
    """What the rescue tried and chose. ``artifacts[i]`` is the candidate of ``attempts[i]``;
    ``chosen`` indexes both (None: no candidate beat the plain INT8 artifact)."""

    sensitivity: list[LayerError]
    baseline_agreement: float
    baseline_logit_diff: float
    attempts: list[Attempt] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)
    chosen: int | None = None

    @property
    def artifact(self) -> Any | None:
        return None if self.chosen is None else self.artifacts[self.chosen]

    @property
    def keep_float(self) -> tuple[str, ...]:
        return () if self.chosen is None else self.attempts[self.chosen].keep_float


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


def choose_candidate(export: Callable[[tuple[str, ...], int], Any],
                     score: Callable[[Any], tuple[float, float]],
                     sensitivity: list[LayerError], baseline: tuple[float, float], *,
                     max_attempts: int, min_agreement: float,
                     on_attempt: Callable[[Attempt], None] | None = None) -> RescueOutcome:
    """Export candidates (``export(keep_float, index)``) and score each on the tuning images
    (``score(artifact)`` → agreement, mean |logit diff|; ``baseline``: the plain INT8
    artifact's) until one reaches ``min_agreement`` — and, when the plain artifact already
    did (agreement cannot tell them apart), at least halves its logit error — or the budget is
    spent. Then the best agreement (fewer float layers on a tie) is chosen if it is better than
    the plain artifact by the same measure."""
    base_agree, base_diff = baseline
    outcome = RescueOutcome(sensitivity, base_agree, base_diff)

    def improves(a: Attempt) -> bool:
        return a.agreement > base_agree or (a.agreement >= base_agree
                                             and a.mean_abs_logit_diff <= 0.5 * base_diff)

    for index, keep in enumerate(candidate_sets([r.name for r in sensitivity], max_attempts)):
        t0 = time.perf_counter()
        artifact = export(keep, index)
        agree, diff = score(artifact)
        attempt = Attempt(keep, agree, diff, time.perf_counter() - t0)
        outcome.attempts.append(attempt)
        outcome.artifacts.append(artifact)
        if on_attempt is not None:
            on_attempt(attempt)
        if agree >= min_agreement and improves(attempt):
            outcome.chosen = index
            return outcome
    if outcome.attempts:
        best = max(range(len(outcome.attempts)),
                   key=lambda i: (outcome.attempts[i].agreement,
                                  -len(outcome.attempts[i].keep_float)))
        if improves(outcome.attempts[best]):
            outcome.chosen = best
    return outcome


def run_rescue(backend: Any, request_for: Callable[[tuple[str, ...], Path], Any], artifact: Any,
               work_dir: Path, tuning: np.ndarray, score: Callable[[Any], tuple[float, float]],
               *, name: str, settings: Any, search: bool, sensitivity_images: int = 32
               ) -> RescueOutcome:
    """Rank ``artifact``'s layers (``backend.layer_sensitivity`` on ``sensitivity_images`` of
    the ``tuning`` batch, spread over it) and, when ``search``, look for a candidate
    (``choose_candidate``) within ``settings`` (the recipe's ``rescue``). Candidates are
    exported into ``work_dir``; ``request_for(keep_float, out_dir)`` is the export request."""
    step = max(1, len(tuning) // sensitivity_images)
    sample = tuning[::step][:sensitivity_images]
    status(f"{name}: per-layer sensitivity on {len(sample)} calibration-side images")
    ranking = backend.layer_sensitivity(request_for((), work_dir / "unused"), artifact.path,
                                        sample)
    baseline = score(artifact)
    if not search:
        return RescueOutcome(ranking, *baseline)
    status(f"{name}: rescue — keeping the most sensitive layers in float (at most "
           f"{settings.max_attempts} re-exports; tuning agreement {baseline[0]:.3f} on "
           f"{len(tuning)} calibration-side images, target {settings.min_agreement:g} less one "
           "image)")

    def export(keep: tuple[str, ...], index: int) -> Any:
        return backend.export(request_for(keep, work_dir / f"attempt-{index + 1}"))

    # one image of slack: on 64 tuning images a 0.99 target would otherwise mean every image,
    # and one borderline image flips under any quantization
    target = settings.min_agreement - 1 / max(1, len(tuning))
    with progress_bar(f"{name}: rescue", settings.max_attempts) as bar:
        def report(attempt: Attempt) -> None:
            bar.advance()
            status(f"  {len(attempt.keep_float)} layer(s) in float: tuning agreement "
                   f"{attempt.agreement:.3f} ({attempt.seconds:.1f} s)")

        return choose_candidate(export, score, ranking, baseline,
                                max_attempts=settings.max_attempts,
                                min_agreement=target, on_attempt=report)
