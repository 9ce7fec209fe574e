"""Where edgekit writes: checks shared by every command that writes an output.

An output inside the data folder it reads becomes part of the data: a bundle folder under
``--data`` is an unexpected class on the next run, a bench run's ``pareto.png`` under
``data/glioma/`` is a glioma image that ``train`` then learns from. So every command that
reads a data folder and writes somewhere refuses an output inside it, before any work.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import ConfigError


def refuse_inside_data(out: str | Path, data: str | Path | None, *, what: str | None = None
                       ) -> None:
    """ConfigError (exit 2) naming both paths when ``out`` is ``data`` or lies inside it
    (symlinks resolved). ``what`` names the output (default ``--out OUT``)."""
    if data is None:
        return
    out, data = Path(out), Path(data)
    real_out, real_data = out.resolve(), data.resolve()
    if real_out == real_data or real_out.is_relative_to(real_data):
        what = what or f"--out {out}"
        raise ConfigError(f"{what} is inside --data {data}: the output would become part of "
                          "the images edgekit reads (an unexpected class, or images of a class); "
                          "choose an output folder outside the data")
