"""The Pareto chart: p50 latency vs accuracy, one point per artifact × thread count (PNG).

matplotlib is optional (``pip install 'edgekit[report]'``) and imported only when a chart is
drawn; it is used through its Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.errors import BackendUnavailable
from edgekit.report.recommend import recommend
from edgekit.report.results import (
    ArtifactRecord,
    BenchResults,
    Environment,
    HostCpu,
    Json,
    PredictedRow,
    Row,
    TargetCpu,
    artifact_score,
    as_results,
    backend_colour,
    backend_short_name,
    passes_gate,
    predicted_rows,
    valid_row,
)
from edgekit.report.tables import Results


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


def _short_label(art: ArtifactRecord, threads: Any, multi_bundle: bool) -> str:
    name, backend = str(art.name or art.id), str(art.backend or "")
    short = backend_short_name(backend)
    if short and name.startswith(backend):
        name = short + name[len(backend):]
    if multi_bundle:
        name = f"{art.bundle_name or art.id.split('/')[0]}/{name}"
    return f"{name} ×{threads}" if threads is not None else name


def _multi_bundle(results: BenchResults) -> bool:
    """Whether chart labels need the bundle name: only when artifact names repeat across
    bundles (an int8 and an fp32 bundle of one model have distinct names already)."""
    names = [str(a.name or a.id) for a in results.artifacts]
    return len(set(names)) < len(names)


@dataclass
class _Point:
    row: Row | PredictedRow
    art: ArtifactRecord
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
_EXTRA_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_DPI = 120


def _chart_points(results: BenchResults) -> tuple[list[_Point], list[str]]:
    """Plottable points (a latency and an accuracy) and the labels of rows left out."""
    multi = _multi_bundle(results)
    if not any(r.ok and valid_row(r) for r in results.rows) and any(
            p.ok for p in predicted_rows(results)):
        points, hidden = _predicted_points(results, multi)
    else:
        points, hidden = _measured_points(results, multi)
    bad = results.parity_excluded()
    for p in points:
        if p.row.artifact in bad:
            failed = bad[p.row.artifact].status == "failed"
            p.label += f" (parity {'FAIL' if failed else 'n/a'})"
    return points, hidden


def _measured_points(results: BenchResults, multi: bool) -> tuple[list[_Point], list[str]]:
    arts = results.by_id()
    points, hidden = [], []
    for r in results.rows:
        art = arts[r.artifact]
        label = _short_label(art, r.threads, multi)
        score = artifact_score(art)
        if not r.ok or r.latency_ms is None or score is None or score.value is None:
            hidden.append(label)
            continue
        if not valid_row(r):
            hidden.append(f"{label} (throttled)")
            continue
        lat, k = r.latency_ms, 1.0 if score.metric == "mean_auroc" else 100.0
        x = r.p50
        points.append(_Point(
            r, art, x, min(x, x if lat.min is None else lat.min),
            max(x, x if lat.p90 is None else lat.p90), k * score.value,
            k * score.lo if score.lo is not None else None,
            k * score.hi if score.hi is not None else None,
            label, art.kind == "source" or passes_gate(art)))
    return points, hidden


def _predicted_points(results: BenchResults, multi: bool) -> tuple[list[_Point], list[str]]:
    """Points at the predicted p50 (bar: the predicted range) when nothing was measured."""
    points, hidden = [], []
    for p in predicted_rows(results):
        art = results.art_of(p.artifact, p)
        label = _short_label(art, p.threads, multi)
        score = artifact_score(art)
        if not p.ok or score is None or score.value is None:
            hidden.append(label)
            continue
        k = 1.0 if score.metric == "mean_auroc" else 100.0
        lo, hi = p.bounds
        x = p.p50
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


def pareto_chart(results: Results, recommendation: Json | None = None) -> bytes:
    """The p50-latency vs accuracy chart as PNG bytes (1200×780 px).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch). Raises
    BackendUnavailable with the install hint when matplotlib is missing.
    """
    figure_cls, canvas_cls = _matplotlib()
    res = as_results(results)
    rec = recommendation if recommendation is not None else recommend(res)
    points, hidden = _chart_points(res)
    fig = figure_cls(figsize=(10, 6.5), dpi=_DPI)
    canvas = canvas_cls(fig)
    fig.subplots_adjust(left=0.08, right=0.76, top=0.88, bottom=0.17)
    ax = fig.add_subplot()
    colours = _colours(points)
    _draw_points(ax, points, colours)
    front = [points[i] for i in pareto_front([(p.x, p.y) for p in points])]
    _draw_front(ax, front)
    recommended = [p for p in points if (p.row.artifact, p.row.threads)
                   == (rec.get("artifact"), rec.get("threads"))]
    for p in recommended:
        ax.scatter([p.x], [p.y], s=520, facecolors="none", edgecolors="#d62728",
                   linewidths=2.2, zorder=5)
    _decorate(fig, ax, res, points, hidden)
    _legend(ax, colours, points, bool(front), bool(recommended))
    _place_labels(ax, points, front + recommended, canvas.get_renderer())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _colours(points: list[_Point]) -> dict[str, str]:
    colours: dict[str, str] = {}
    extra = iter(_EXTRA_COLOURS * 4)
    for p in points:
        b = str(p.art.backend)
        if b not in colours:
            colours[b] = backend_colour(b) or next(extra)
    return colours


def _draw_points(ax: Any, points: list[_Point], colours: dict[str, str]) -> None:
    for p in points:
        colour = colours[str(p.art.backend)]
        yerr = None
        if p.ylo is not None and p.yhi is not None:
            yerr = [[max(p.y - p.ylo, 0.0)], [max(p.yhi - p.y, 0.0)]]
        bars = ax.errorbar([p.x], [p.y], xerr=[[p.x - p.xlo], [p.xhi - p.x]], yerr=yerr,
                           fmt="none", ecolor=colour, elinewidth=1.0, capsize=3, alpha=0.55,
                           zorder=2)
        marker = _PREC_MARKER.get(str(p.art.precision), "D")
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


def _decorate(fig: Any, ax: Any, results: BenchResults, points: list[_Point],
              hidden: list[str]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cpu = (results.environment or Environment()).cpu or HostCpu()
    if any(p.predicted for p in points):
        tcpu = results.target.cpu or TargetCpu()
        fig.suptitle(f"Predicted latency vs accuracy on {results.target_name} (not measured)",
                     fontsize=14, fontweight="bold", x=0.08, y=0.965, ha="left")
        ax.set_title(f"{tcpu.model or 'target CPU'} · latency model, no board measured · "
                     "one point per artifact × threads", fontsize=9.5, color="0.3", loc="left")
        ax.set_xlabel("predicted p50 latency, ms (lower is better; bar: expected error range)",
                      fontsize=10)
    else:
        fig.suptitle(f"Latency vs accuracy on {results.target_name}", fontsize=14,
                     fontweight="bold", x=0.08, y=0.965, ha="left")
        ax.set_title(f"{cpu.model or 'unknown CPU'} · {cpu.logical_cores or '?'} "
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


def _footnotes(results: BenchResults, hidden: list[str],
               points: Sequence[_Point] = ()) -> list[str]:
    notes = ["Dashed step line: Pareto front (no other point is both faster and more accurate)."]
    if any(p.predicted for p in points):
        notes.append("Every latency is predicted by the target's latency model (hollow markers, "
                     "dashed bar: expected error range); no board was measured.")
    elif any(p.ok for p in predicted_rows(results)):
        notes.append("Measured latencies only; the predicted ones are in the tables.")
    if any(a.accuracy_source == "bundle" and a.accuracy for a in results.artifacts):
        data = results.data is not None and not results.data.empty
        notes.append("Some accuracies are the bundles' compress-time verification (no fp32 "
                     "reference on your data)." if data else
                     "Accuracy from the bundles' compress-time verification, not measured on "
                     "your data in this run (pass --data).")
    if results.quick:
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
    for prec in dict.fromkeys(str(p.art.precision) for p in points):
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
