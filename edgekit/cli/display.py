"""Terminal tables for the metric dicts of ``edgekit.metrics.evaluate``."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from edgekit.ui import out


def _value(m: Any) -> float | None:
    return m.get("value") if isinstance(m, dict) else m


def fmt_metric(m: Any, pct: bool = True) -> str:
    """``0.953 [0.931, 0.970]`` (or percentages) from ``{"value", "ci95"}`` or a bare number."""
    v = _value(m)
    if v is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    ci = m.get("ci95") if isinstance(m, dict) else None
    return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(v)


def print_metrics(metrics: dict[str, Any], *, title: str) -> None:
    """Headline metrics, then a per-class (or per-label) table, then the confusion matrix."""
    head = Table(title=title, show_header=True)
    head.add_column("metric")
    head.add_column("value [95 % CI]", justify="right")
    if metrics["task"] == "multilabel":
        head.add_row("mean AUROC", fmt_metric(metrics["mean_auroc"], pct=False))
        head.add_row("macro sensitivity @0.5", fmt_metric(metrics["macro_sensitivity"]))
        head.add_row("macro specificity @0.5", fmt_metric(metrics["macro_specificity"]))
    else:
        for key, label, pct in (("accuracy", "accuracy", True), ("auroc", "AUROC", False),
                                ("macro_f1", "macro-F1", False), ("kappa", "Cohen's kappa", False),
                                ("balanced_accuracy", "balanced accuracy", True),
                                ("ece", "calibration error (ECE)", False)):
            if key in metrics:
                head.add_row(label, fmt_metric(metrics[key], pct))
    out.print(head)

    per = metrics.get("per_label") or metrics.get("per_class") or {}
    table = Table(show_header=True)
    if metrics["task"] == "multilabel":
        for col in ("label", "positives", "AUROC [95 % CI]", "sensitivity", "specificity"):
            table.add_column(col, justify="left" if col == "label" else "right")
        for name, m in per.items():
            undefined = _value(m.get("auroc")) is None
            auroc = (m.get("auroc_undefined") or "n/a") if undefined else fmt_metric(m["auroc"], pct=False)
            table.add_row(name, str(m["n_positive"]), auroc, fmt_metric(m["sensitivity"]),
                          fmt_metric(m["specificity"]))
    else:
        for col in ("class", "n", "sensitivity [95 % CI]", "specificity [95 % CI]", "F1"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for name, m in per.items():
            table.add_row(name, str(m["support"]), fmt_metric(m["sensitivity"]),
                          fmt_metric(m["specificity"]), fmt_metric(m["f1"], pct=False))
    out.print(table)

    cm = metrics.get("confusion_matrix")
    if cm:
        names = metrics.get("class_names") or list(per)
        table = Table(title="confusion matrix (rows: true, columns: predicted)")
        table.add_column("")
        for n in names:
            table.add_column(n, justify="right")
        for n, row in zip(names, cm, strict=True):
            table.add_row(n, *(str(v) for v in row))
        out.print(table)
