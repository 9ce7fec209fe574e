"""Fleets: ``edgekit bench BUNDLE --target ward.yaml`` times every board of a ward at once.

A *fleet file* lists boards, each a target profile (its *kind*: ``rpi4``, ``rpi5``, or a
profile file) and the board's address::

    fleet: ward-7
    boards:
      - {name: bed-1, target: rpi4, host: pi@10.0.0.11}
      - {name: bed-2, target: rpi4, host: pi@10.0.0.12:2222}
      - {name: desk,  target: ./rpi5-desk.yaml}        # the profile's own access.host

Every board is benched by :func:`edgekit.bench.run.bench` with its own SSH executor, in
parallel (one thread per board: the work happens on the boards), each board timed alone with
the usual protocol. Each board's run is a normal run folder under the fleet's folder; the
fleet's ``fleet.json`` + ``fleet.md`` group the rows per board kind with the spread between
boards of the same kind. A board that cannot be reached, refuses the key or fails costs its
rows, not the run: its error is recorded and shown. Host keys are checked for every board
(the SSH executor's policy; a fleet file has no way to turn it off).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit import config
from edgekit.bench.run import BenchOptions, BenchRun, bench, fresh_folder
from edgekit.bench.ssh import parse_host
from edgekit.errors import ConfigError, EdgekitError
from edgekit.outputs import write_atomic
from edgekit.targets import Target, load_target
from edgekit.ui import bars_off, progress_bar, status

__all__ = ["Board", "Fleet", "FleetRun", "bench_fleet", "is_fleet_file", "load_fleet"]

FLEET_SCHEMA = "edgekit.fleet/1"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Board(BaseModel):
    """One board of a fleet: a target profile (its kind) and, optionally, its address."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=_NAME, description="the board's name (unique in the fleet)")
    target: str = Field(min_length=1, description="built-in target name or a target YAML file "
                                                  "(relative to the fleet file)")
    host: str | None = Field(None, description="user@host[:port]; None: the profile's address")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_host(value)
            except ConfigError as exc:  # its text names --host; the key path names the board
                raise ValueError(str(exc).removeprefix("--host ")) from None
        return value


class Fleet(BaseModel):
    """A fleet file: boards benched in parallel, grouped by kind in the report."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fleet: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="the fleet's name")
    description: str = ""
    boards: list[Board] = Field(min_length=1)

    @field_validator("boards")
    @classmethod
    def _unique(cls, value: list[Board]) -> list[Board]:
        names = [b.name for b in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"board names must differ: {', '.join(twice)} given twice")
        return value


def is_fleet_file(name_or_path: str | Path) -> bool:
    """Whether ``--target`` names a fleet file (a YAML mapping with ``boards:``), not a
    target profile."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        data = config.safe_load(path.read_text())
    except (yaml.YAMLError, OSError):
        return False  # load_target reports it
    return isinstance(data, dict) and "boards" in data


def load_fleet(path: str | Path) -> tuple[Fleet, list[Target]]:
    """The fleet and each board's target profile (in board order); a ConfigError naming the
    file and board for anything wrong, before anything is measured."""
    path = Path(path)
    try:
        data = config.safe_load(path.read_text())
    except (yaml.YAMLError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable YAML fleet file ({exc})") from None
    fleet = config.validate(Fleet, data, str(path), "fleet")
    targets = []
    for board in fleet.boards:
        ref = Path(board.target)
        local = ref if ref.is_absolute() else path.parent / ref
        try:
            tgt = load_target(local if local.is_file() else board.target)
        except ConfigError as exc:
            raise ConfigError(f"{path}: board {board.name}: {exc}") from None
        if tgt.access.kind != "ssh" and board.host is None:
            raise ConfigError(f"{path}: board {board.name}: target {tgt.name!r} is reached by "
                              f"{tgt.access.kind!r}; a fleet's boards are reached over SSH "
                              "(give host: user@address[:port])")
        targets.append(tgt)
    return fleet, targets


@dataclass
class FleetRun:
    """A written fleet folder: ``fleet.json`` (summary) + one run folder per measured board."""

    fleet_dir: Path
    summary: dict[str, Any]
    runs: dict[str, BenchRun]  # board name → its run (boards that dropped out are absent)


# ------------------------------------------------------------------------------------ the run
def bench_fleet(bundles: list[str | Path], fleet_file: str | Path,
                options: BenchOptions | None = None, **settings: Any) -> FleetRun:
    """Bench ``bundles`` on every board of ``fleet_file`` in parallel; write the fleet folder.

    ``options`` / ``settings`` are :func:`edgekit.bench.bench`'s (``target`` and ``host``
    come from the fleet file; ``out`` is where the fleet folder is created, else
    BUNDLE/bench)."""
    opts = dataclasses.replace(options or BenchOptions(), **settings)
    if opts.host:
        raise ConfigError("--host names one board; a fleet file names its boards' addresses")
    fleet, targets = load_fleet(fleet_file)
    parent = Path(opts.out) if opts.out else Path(bundles[0]).resolve() / "bench"
    fleet_dir = fresh_folder(parent, f"fleet-{fleet.fleet}")
    fleet_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    runs: dict[str, BenchRun] = {}
    errors: dict[str, str] = {}

    def one(board: Board, tgt: Target) -> BenchRun:
        return bench(bundles, dataclasses.replace(
            opts, target=_target_arg(fleet_file, board), host=board.host,
            out=fleet_dir / board.name))

    status(f"Benching {len(fleet.boards)} boards of {fleet.fleet} in parallel ...")
    with bars_off(), progress_bar(f"Fleet {fleet.fleet}", len(fleet.boards)) as bar, \
            ThreadPoolExecutor(max_workers=len(fleet.boards),
                               thread_name_prefix="edgekit-board") as pool:
        futures = {pool.submit(one, b, t): b for b, t in zip(fleet.boards, targets, strict=True)}
        for fut in as_completed(futures):
            board = futures[fut]
            try:
                runs[board.name] = fut.result()
                if runs[board.name].results.measured_by is None:
                    errors[board.name] = "not reachable: nothing was measured"
            except (EdgekitError, OSError) as exc:  # DeviceError, RunFailed, ...: its rows only
                errors[board.name] = str(exc)
            if board.name in errors:
                status(f"[red]Board {board.name} dropped out:[/] {errors[board.name]}")
            bar.advance()
    summary = fleet_summary(fleet, targets, runs, errors, fleet_dir)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_atomic(fleet_dir / "fleet.json", json.dumps(summary, indent=1, allow_nan=False))
    write_atomic(fleet_dir / "fleet.md", fleet_markdown(summary))
    return FleetRun(fleet_dir, summary, runs)


def _target_arg(fleet_file: str | Path, board: Board) -> str | Path:
    ref = Path(board.target)
    local = ref if ref.is_absolute() else Path(fleet_file).parent / ref
    return local if local.is_file() else board.target


def fleet_summary(fleet: Fleet, targets: list[Target], runs: dict[str, BenchRun],
                  errors: dict[str, str], fleet_dir: Path) -> dict[str, Any]:
    """``fleet.json``: every board's status and, per board kind, each (artifact, threads) row
    with every board's p50 and the spread between the boards (max p50 / min p50)."""
    boards = []
    kinds: dict[str, dict[str, Any]] = {}
    for board, tgt in zip(fleet.boards, targets, strict=True):
        run = runs.get(board.name)
        measured = run is not None and board.name not in errors
        boards.append({"name": board.name, "kind": tgt.name,
                       "host": run.results.measured_host if run is not None else board.host,
                       "status": "measured" if measured else "dropped out",
                       "error": errors.get(board.name),
                       "run": str(run.run_dir.relative_to(fleet_dir)) if run else None})
        kind = kinds.setdefault(tgt.name, {"kind": tgt.name, "boards": [], "rows": {}})
        kind["boards"].append(board.name)
        if not measured:
            continue
        for row in run.results.rows:
            key = (row.artifact, row.threads)
            entry = kind["rows"].setdefault(key, {"artifact": row.artifact,
                                                  "threads": row.threads, "p50_ms": {},
                                                  "errors": {}})
            p50 = row.latency_ms.p50 if row.latency_ms is not None else None
            if row.error or p50 is None or row.valid is False:
                entry["errors"][board.name] = row.error or row.invalid_reason or "invalid"
            else:
                entry["p50_ms"][board.name] = float(p50)
    for kind in kinds.values():
        rows = []
        for entry in kind["rows"].values():
            vals = list(entry["p50_ms"].values())
            entry.update(
                median_ms=statistics.median(vals) if vals else None,
                min_ms=min(vals) if vals else None, max_ms=max(vals) if vals else None,
                spread=round(max(vals) / min(vals), 4) if len(vals) > 1 and min(vals) > 0
                else None)
            rows.append(entry)
        kind["rows"] = sorted(rows, key=lambda r: (r["artifact"], r["threads"] or 0))
    return {"schema": FLEET_SCHEMA, "fleet": fleet.fleet,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "boards": boards, "kinds": list(kinds.values())}


def fleet_markdown(summary: dict[str, Any]) -> str:
    """``fleet.md``: the boards, then one table per board kind (p50 per board, spread)."""
    lines = [f"# Fleet {summary['fleet']}", "", "| board | kind | host | status | run |",
             "|---|---|---|---|---|"]
    for b in summary["boards"]:
        state = b["status"] + (f": {b['error']}" if b["error"] else "")
        lines.append(f"| {b['name']} | {b['kind']} | {b['host'] or ''} | {state} | "
                     f"{b['run'] or ''} |")
    for kind in summary["kinds"]:
        names = kind["boards"]
        lines += ["", f"## {kind['kind']} ({len(names)} board{'s' if len(names) > 1 else ''})",
                  "", "| artifact | threads | " + " | ".join(f"{n} p50 ms" for n in names)
                  + " | median ms | spread (max/min) |",
                  "|---|---|" + "---|" * len(names) + "---|---|"]
        for r in kind["rows"]:
            cells = [f"{r['p50_ms'][n]:.2f}" if n in r["p50_ms"] else
                     ("error" if n in r["errors"] else "—") for n in names]
            med = f"{r['median_ms']:.2f}" if r["median_ms"] is not None else "—"
            spread = f"{r['spread']:.2f}×" if r["spread"] is not None else "—"
            lines.append(f"| {r['artifact']} | {r['threads']} | " + " | ".join(cells)
                         + f" | {med} | {spread} |")
        if not kind["rows"]:
            lines += ["", "No board of this kind was measured."]
    return "\n".join(lines) + "\n"
