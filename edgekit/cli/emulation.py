"""``edgekit targets prepare-emulation``: build the emulated aarch64 environment once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from edgekit.bench.emulated import default_cache, prepare, prepared
from edgekit.ui import out, status


def _mb(n: Any) -> str:
    return f"{n / 1e6:.0f} MB" if isinstance(n, int | float) else "?"


def _summary(env: dict[str, Any], cache: Path) -> Table:
    table = Table(title=f"Emulated aarch64 environment ({cache})", show_header=False,
                  title_justify="left")
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value")
    table.add_row("qemu", str(env.get("qemu", {}).get("version")))
    table.add_row("python", f"{env['python']['version']} (Debian arm64)")
    table.add_row("CPU models", ", ".join(env.get("cpus", [])))
    for backend, info in env.get("runtimes", {}).items():
        imports = info.get("import") or {}
        state = "; ".join(f"{cpu}: {'imports' if r == 'ok' else f'unavailable: {r}'}"
                          for cpu, r in imports.items())
        table.add_row(backend, escape(f"{info.get('package')} {info.get('version') or 'missing'}"
                                      f" ({state})"))
    pkgs = env.get("packages", {})
    table.add_row("numpy / Pillow", f"{pkgs.get('numpy', '?')} / {pkgs.get('pillow', '?')}")
    dl = env.get("download_bytes", {})
    table.add_row("downloaded", f"{_mb(dl.get('total'))} (Debian {_mb(dl.get('debian'))}, "
                                f"PyPI {_mb(dl.get('pypi'))})")
    sizes = env.get("sizes", {})
    table.add_row("on disk", _mb(sum(sizes.values())) if sizes else "?")
    table.add_row("prepared", f"{env.get('created')} in {env.get('prepare_seconds', '?')} s")
    return table


@click.command("prepare-emulation")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to build it in [default: $EDGEKIT_EMULATION_DIR, else "
                   "$XDG_CACHE_HOME/edgekit/emulation-aarch64 or "
                   "~/.cache/edgekit/emulation-aarch64].")
@click.option("--force", is_flag=True, help="Rebuild even when it is already prepared.")
@click.option("--json", "as_json", is_flag=True, help="Print env.json to stdout.")
def prepare_emulation_command(cache: Path | None, force: bool, as_json: bool) -> None:
    """Build the aarch64 Python that `edgekit bench --emulate` runs artifacts in under QEMU.

    Downloads about 105 MB once: Debian's arm64 python3 and the C libraries it needs from
    Debian's archive (~15 MB, through this machine's apt sources with a private apt state: the
    system's packages and apt lists are not touched, nothing is installed), and the aarch64
    wheels of numpy, Pillow, pydicom, onnxruntime, openvino and ai-edge-litert from PyPI (~87 MB,
    the runtimes at this machine's versions). Unpacked it takes about 350 MB. It then imports
    each runtime under QEMU (cortex-a72 and cortex-a76) and records what works in env.json.

    `edgekit bench` never downloads: without this environment `--emulate` stops and names this
    command. Needs qemu-user-static, apt and dpkg (apt-get install qemu-user-static); no root.
    Emulation checks output parity only: emulated timings mean nothing.

    \b
    Examples:
      edgekit targets prepare-emulation
      edgekit targets prepare-emulation --cache /data/edgekit-emulation --json
      edgekit targets prepare-emulation --force     # rebuild (new runtime versions)
    """
    root = (cache or default_cache()).expanduser().absolute()
    env = prepared(root)
    if env is not None and not force:
        status(f"The emulated aarch64 environment is already prepared in {root} "
               "(--force rebuilds it).")
    else:
        status(f"Preparing the emulated aarch64 environment in {root} ...")
        env = prepare(root, force=force)
        status("[green]Prepared.[/] `edgekit bench BUNDLE --target rpi4 --emulate` now checks "
               "ARM output parity.")
    if as_json:
        click.echo(json.dumps(env, indent=2))
        return
    out.print(_summary(env, root))
    broken = {b: r for b, r in env.get("runtimes", {}).items() if not r.get("available")}
    for backend, info in broken.items():
        reasons = {cpu: r for cpu, r in (info.get("import") or {}).items() if r != "ok"}
        out.print(f"[yellow]Note:[/] {backend} is unavailable under emulation: "
                  + escape("; ".join(f"{cpu}: {r}" for cpu, r in reasons.items())))
