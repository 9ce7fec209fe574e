"""Wall time of `edgekit demo` with its defaults (the README promises a few minutes on 2 cores)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import environment, write_results
from edgekit.demo import DemoConfig, run_demo


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_demo(DemoConfig(out=Path(tmp) / "demo"))
        wall = time.perf_counter() - t
    cfg = DemoConfig()
    acc = res.metrics["accuracy"]
    md = [f"# edgekit demo (defaults: {cfg.model}, {cfg.images_per_class} phantoms/class, "
          f"{cfg.input_size}px, {cfg.epochs} epochs)", "",
          f"- wall time **{wall:.0f} s** (data {res.seconds['data']:.0f} s, training "
          f"{res.seconds['train']:.0f} s, evaluation {res.seconds['evaluate']:.0f} s, "
          f"INT8 compression to 3 backends {res.seconds['compress']:.0f} s, benchmark on "
          f"x86-local with the HTML report {res.seconds.get('bench', 0):.0f} s)",
          f"- held-out accuracy on SYNTHETIC phantoms {100 * acc['value']:.1f} % "
          f"[{100 * acc['ci95'][0]:.1f}, {100 * acc['ci95'][1]:.1f}] "
          f"({res.val_images} images), best epoch {res.best_epoch}"]
    write_results("demo_time", {"environment": environment(), "wall_seconds": wall,
                                "seconds": res.seconds, "metrics": res.metrics},
                  "\n".join(md))


if __name__ == "__main__":
    main()
