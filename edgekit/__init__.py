"""edgekit: make medical-imaging CNN classifiers ship-ready for CPU-only edge devices.

The public API (the CLI calls only these). Heavy modules (torch) are imported on first use, so
``import edgekit`` stays cheap and the device runner never pulls torch in.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_model": "edgekit.zoo",
    "list_models": "edgekit.zoo",
    "load_model": "edgekit.sources",
    "Source": "edgekit.sources",
    "LoadedModel": "edgekit.sources",
    "CompressOptions": "edgekit.compress",
    "prune_file": "edgekit.prune.recover",
    "PreprocessSpec": "edgekit.data.preprocess",
    "scan": "edgekit.data.folder",
    "split_dataset": "edgekit.data.folder",
    "TrainConfig": "edgekit.train",
    "train": "edgekit.train",
    "evaluate_model": "edgekit.evaluate",
    "held_out_dataset": "edgekit.evaluate",
    "summarize": "edgekit.inspect",
    "DemoConfig": "edgekit.demo",
    "Protocol": "edgekit.bench.protocol",
    "load_target": "edgekit.targets",
    "write_report": "edgekit.report",
    "run_demo": "edgekit.demo",
}

__all__ = ["__version__", *_API]
# ``edgekit.bench`` is the benchmarking subpackage (a module, not a function): call
# ``from edgekit.bench import bench``; a lazy "bench" entry here would be shadowed by the
# subpackage as soon as anything imports edgekit.bench.protocol.


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
