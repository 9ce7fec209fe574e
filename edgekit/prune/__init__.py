"""Structured pruning: ``engine`` (groups, importance, policy, the replayable plan — imports only
the zoo and Torch-Pruning), ``recover`` (prune + distillation recovery, ``prune_file``,
``scan_source``), ``latency`` (pruning to a measured latency target).

The names below load their module on first use, so ``edgekit.sources`` can import the engine
without pulling in training, data and verification (which themselves load sources).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_API = {
    **dict.fromkeys(("IMPORTANCES", "PLAN_FORMAT", "PruneGroup", "PruneOutcome", "PruneSettings",
                     "accumulate_gradients", "apply_plan", "blocked", "count", "default_protected",
                     "layer_widths", "make_plan", "prunable_groups", "prune", "scan_groups",
                     "step_settings"), "edgekit.prune.engine"),
    **dict.fromkeys(("PruneFileResult", "prune_and_recover", "prune_and_verify", "prune_file",
                     "recovery_split", "require_prunable", "scan_source"),
                    "edgekit.prune.recover"),
    **dict.fromkeys(("Blocker", "blockers", "check_runs", "editable", "export_program"),
                    "edgekit.prune.graph"),
    **dict.fromkeys(("LATENCY_FRACTIONS", "for_latency", "latency_search"),
                    "edgekit.prune.latency"),
    "pruning_recipe": "edgekit.recipes",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'edgekit.prune' has no attribute {name!r}")
