"""``edgekit targets``: the benchmark target profiles, and how this machine compares to them."""

from __future__ import annotations

import json

import click
from rich.table import Table

from edgekit.bench.hostinfo import cpu_info
from edgekit.cli.calibrate import calibrate_command
from edgekit.cli.emulation import prepare_emulation_command
from edgekit.targets import describe_host, isa_notes, list_targets, load_target
from edgekit.ui import out


@click.group("targets")
def command() -> None:
    """Benchmark target profiles: the CPU a benchmark stands for and how to reach it.

    \b
    List the built-in profiles, then look at one (and at how this machine differs from it):
      edgekit targets list
      edgekit targets show x86-avx2
      edgekit targets show my-board.yaml --json
    """


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
def list_command(as_json: bool) -> None:
    """List the built-in targets with their architecture, access, cores and CPU features.

    \b
    Examples:
      edgekit targets list
      edgekit targets list --json
    """
    targets = list_targets()
    if as_json:
        click.echo(json.dumps([t.model_dump(mode="json") for t in targets], indent=2))
        return
    table = Table(title="edgekit targets")
    table.add_column("name", no_wrap=True)
    for col in ("arch", "access", "cores", "features", "description"):
        table.add_column(col)
    for t in targets:
        cores = "detected" if t.detect else str(t.cpu.cores or "?")
        features = "detected at run time" if t.detect else ", ".join(t.cpu.features)
        table.add_row(t.name, t.arch, t.access.kind, cores, features, t.description)
    out.print(table)


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested facts as ``(dotted.key, text)`` rows; None and empty values are left out."""
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        elif value is not None and value != []:
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append((f"{prefix}{key}", text))
    return rows


def _facts_table(title: str, facts: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value")
    for key, text in _flatten(facts):
        table.add_row(key, text)
    return table


@command.command("show")
@click.argument("name_or_path")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
def show_command(name_or_path: str, as_json: bool) -> None:
    """Show one target (a built-in name or a YAML file): the profile, this machine's CPU facts
    for a detected target, the thread counts a benchmark here would use, and why numbers
    measured on this machine may not represent the profile.

    \b
    Examples:
      edgekit targets show x86-local
      edgekit targets show x86-avx512-vnni --json
      edgekit targets show ./targets/my-board.yaml
    """
    target = load_target(name_or_path)
    host = cpu_info()
    threads = target.thread_counts(host["logical_cores"])
    notes = isa_notes(target, host)
    if as_json:
        click.echo(json.dumps({"target": target.model_dump(mode="json"),
                               "effective_cpu": describe_host(target), "host": host,
                               "thread_counts": threads, "isa_notes": notes}, indent=2))
        return
    profile = target.model_dump(mode="json", exclude={"notes"})
    if target.detect:
        profile.pop("cpu")
    profile["runtime_options"] = {backend: ", ".join(f"{k}={v}" for k, v in opts.items())
                                  for backend, opts in target.runtime_options.items()}
    out.print(_facts_table(f"target {target.name}", profile))
    if target.notes:
        out.print("[bold]Notes:[/]")
    for note in target.notes:
        out.print(f"  - {note}", markup=False)
    if target.detect:
        out.print(_facts_table("This machine (detected)", describe_host(target)))
    out.print(f"Thread counts a benchmark here measures: {', '.join(map(str, threads))}")
    if target.detect:
        return
    if not notes:
        out.print(f"This machine matches the {target.name} profile's architecture and features.")
        return
    out.print(f"[bold]Why numbers measured here may not represent {target.name}:[/]")
    for note in notes:
        out.print(f"  - {note}", markup=False)


def _register() -> None:
    """The subcommands that live in their own modules (they import more)."""
    command.add_command(calibrate_command)
    command.add_command(prepare_emulation_command)


_register()
