"""Parameters and MACs of every zoo model at its published input size (and at 128 px)."""

from __future__ import annotations

from _common import environment, write_results
from edgekit.inspect import summarize
from edgekit.sources import load_model
from edgekit.zoo import list_models, model_config


def main() -> None:
    rows = []
    for name in list_models():
        cfg = model_config(name)
        for size in (cfg.input_size, 128):
            s = summarize(load_model(name, input_size=size), size)
            rows.append({"model": name, "task": cfg.task, "input_size": size,
                         "params": s.params, "macs": s.macs})
    md = ["| model | task | input | parameters | MACs |", "|---|---|---|---:|---:|"]
    md += [f"| {r['model']} | {r['task']} | {r['input_size']}² | {r['params']:,} | "
           f"{r['macs'] / 1e6:,.1f} M |" for r in rows]
    write_results("zoo_stats", {"environment": environment(), "models": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
