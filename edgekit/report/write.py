"""Writing a run folder's report files, each atomically (temporary file + ``os.replace``)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

from edgekit.errors import BackendUnavailable, ConfigError
from edgekit.report.chart import pareto_chart
from edgekit.report.html import render_html
from edgekit.report.markdown import render_markdown
from edgekit.report.recommend import build_report
from edgekit.report.results import as_results, load_results
from edgekit.report.tables import Results, csv_text

FILES = ("report.json", "report.csv", "report.md", "pareto.png", "report.html")


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
    paths = {"report.json": _write_atomic(run / "report.json",
                                          json.dumps(report.to_dict(), indent=2,
                                                     ensure_ascii=False)),
             "report.csv": _write_atomic(run / "report.csv", csv_text(res))}
    try:
        png: bytes | None = pareto_chart(res, report.recommendation)
    except BackendUnavailable as exc:
        warnings.warn(f"{exc}; pareto.png skipped", stacklevel=2)
        png = None
    if png is not None:
        paths["pareto.png"] = _write_atomic(run / "pareto.png", png)
    paths["report.md"] = _write_atomic(
        run / "report.md", render_markdown(report, "pareto.png" if png else None))
    paths["report.html"] = _write_atomic(run / "report.html", render_html(report, png))
    return paths
