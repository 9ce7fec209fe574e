"""Helpers shared by the benchmark scripts: environment capture and result writing."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edgekit.verify import paired_drop_ci

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]


def environment() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}


def real_data_dir() -> Path | None:
    base = os.environ.get("EDGEKIT_DATA_DIR")
    root = Path(base) if base else REPO.parent / "shared" / "data"
    for p in (root / "brain-tumor-mri" / "Training", root / "Training", root):
        if (p / "glioma").is_dir():
            return p
    return None


def write_results(name: str, payload: dict, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
    return RESULTS / f"{name}.json"


def work_folder(workdir: Path | None, prefix: str) -> Path:
    """``--workdir`` if given, else a new temporary folder (resolved)."""
    return (workdir or Path(tempfile.mkdtemp(prefix=prefix))).resolve()


def release_work_folder(work: Path, workdir: Path | None, keep: bool,
                        say: Callable[[str], None]) -> None:
    """Remove a temporary work folder (not a --workdir, not with --keep); else say where it is."""
    if workdir is None and not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"work folder kept: {work}")


def limit_per_class(ds, n: int):
    """At most ``n`` images of each class of a ``Dataset`` (smoke runs), in its order."""
    kept, seen = [], {}
    for s in ds.samples:
        if seen.get(s.target, 0) < n:
            kept.append(s)
            seen[s.target] = seen.get(s.target, 0) + 1
    return ds.subset(kept)


def symlink_folder(ds, dest: Path) -> Path:
    """A class-per-folder view of ``ds`` (symlinks to its files): a folder that holds exactly
    those images, e.g. the training side only, for compress to calibrate on."""
    for s in ds.samples:
        link = dest / ds.relative(s)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(s.path.resolve())
    return dest


def paired(a_ok, b_ok) -> dict:
    """b − a in points with its paired 95 % CI (Tango score interval on the discordant pairs):
    ``a_ok``/``b_ok`` are boolean arrays, whether each model got each image right."""
    worse = int(np.sum(a_ok & ~b_ok))
    better = int(np.sum(~a_ok & b_ok))
    n = len(a_ok)
    _, lo, hi = paired_drop_ci(worse, better, n)  # CI of the DROP (a − b), fractions
    return {"delta_points": 100 * (better - worse) / n, "ci95_points": [-100 * hi, -100 * lo],
            "b_right_a_wrong": better, "a_right_b_wrong": worse, "n": n}

