"""Writing a run folder's report files, each atomically (temporary file + ``os.replace``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from edgekit.errors import BackendUnavailable, ConfigError
from edgekit.outputs import write_atomic
from edgekit.report.chart import pareto_chart
from edgekit.report.html import render_html
from edgekit.report.markdown import render_markdown
from edgekit.report.recommend import build_report
from edgekit.report.results import as_results, load_results
from edgekit.report.tables import Results, csv_text

FILES = ("report.json", "report.csv", "report.md", "pareto.png", "report.html")


def write_report(run_dir: str | Path, results: Results | None = None) -> dict[str, Path]:
    """Write report.json, report.csv, report.md, pareto.png and report.html into ``run_dir``.

    ``results`` defaults to the folder's ``results.json``. Returns file name → path. Without
    matplotlib the chart is skipped with a warning and the other files are still written.
    """
    run = Path(run_dir)
    if run.suffix == ".json" and not run.is_dir():
        run = run.parent
    res = load_results(run) if results is None else as_results(results)
    if not run.is_dir():
        raise ConfigError(f"{run}: not a folder")
    report = build_report(res)
    paths = {"report.json": write_atomic(run / "report.json",
                                          json.dumps(report.to_dict(), indent=2,
                                                     ensure_ascii=False)),
             "report.csv": write_atomic(run / "report.csv", csv_text(res))}
    try:
        png: bytes | None = pareto_chart(res, report.recommendation)
    except BackendUnavailable as exc:
        warnings.warn(f"{exc}; pareto.png skipped", stacklevel=2)
        png = None
    if png is not None:
        paths["pareto.png"] = write_atomic(run / "pareto.png", png)
    paths["report.md"] = write_atomic(
        run / "report.md", render_markdown(report, "pareto.png" if png else None))
    paths["report.html"] = write_atomic(run / "report.html", render_html(report, png))
    return paths
