"""Bench reports: one recommendation, tables, a Pareto chart and a self-contained HTML page.

Reads a run folder's ``results.json`` (schema ``edgekit.bench/1``, see docs/bench-results.md)
and writes ``report.json``, ``report.csv``, ``report.md``, ``pareto.png`` and ``report.html``
next to it, each atomically (temporary file + ``os.replace``). matplotlib is optional
(``pip install 'edgekit[report]'``): without it every file but the chart is written.

    >>> from edgekit.report import load_results, recommend, write_report
    >>> rec = recommend(load_results("model-int8/bench/20261122T093000Z-x86-local"))
    >>> rec["text"]
    'On x86-local ship `model-int8/openvino-int8` with 2 threads: p50 4.1 ms, ...'

The run is a typed :class:`BenchResults` (``results``); functions that take results also take
a results.json object (a dict), validated first. The modules: ``results`` (loading, validation,
the typed results), ``recommend`` (the recommendation and its flags), ``tables`` (the text of
the tables, CSV), ``chart`` (the Pareto PNG), ``markdown``, ``html`` and ``write`` (the files).
"""

from __future__ import annotations

from edgekit.report.chart import pareto_chart, pareto_front
from edgekit.report.html import render_html
from edgekit.report.markdown import render_markdown
from edgekit.report.recommend import (
    MIN_EVAL_IMAGES,
    REPORT_SCHEMA,
    SPREAD_LIMIT,
    TIE_FRACTION,
    Report,
    build_report,
    rank_predicted,
    recommend,
)
from edgekit.report.results import (
    RESULTS_SCHEMA,
    ArtifactRecord,
    BenchResults,
    Emulated,
    EmulatedRow,
    Predicted,
    PredictedRow,
    Row,
    Score,
    artifact_delta,
    artifact_score,
    emulated,
    load_results,
    passes_gate,
    predicted_rows,
    valid_row,
)
from edgekit.report.tables import (
    CSV_COLUMNS,
    Entry,
    binary_summary,
    csv_rows,
    emulated_section,
    environment_lines,
    fast_path_section,
    fmt_delta,
    fmt_ms,
    fmt_parity,
    fmt_predicted,
    gate_text,
    has_arm_results,
    main_table,
    predicted_section,
    score_header,
    table_entries,
)
from edgekit.report.write import FILES, write_report

__all__ = [
    "CSV_COLUMNS", "FILES", "MIN_EVAL_IMAGES", "REPORT_SCHEMA", "RESULTS_SCHEMA", "SPREAD_LIMIT",
    "TIE_FRACTION", "ArtifactRecord", "BenchResults", "Emulated", "EmulatedRow", "Entry",
    "Predicted", "PredictedRow", "Report", "Row", "Score", "artifact_delta", "artifact_score",
    "binary_summary", "build_report", "csv_rows", "emulated", "emulated_section",
    "environment_lines", "fast_path_section", "fmt_delta", "fmt_ms", "fmt_parity", "fmt_predicted", "gate_text",
    "has_arm_results", "load_results", "main_table", "pareto_chart", "pareto_front",
    "passes_gate", "predicted_rows", "predicted_section", "rank_predicted", "recommend",
    "render_html", "render_markdown", "score_header", "table_entries", "valid_row",
    "write_report",
]
