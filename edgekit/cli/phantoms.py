"""``edgekit phantoms``: write a synthetic MRI or CT dataset (the embedded default data)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.data import phantoms
from edgekit.ui import progress_bar, status


@click.command("phantoms")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["mri", "ct"]), default="mri", show_default=True,
              help="Brain MRI (4 tumour classes, class folders) or head CT (DICOM + RSNA labels).")
@click.option("-n", "--count", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Images per class (mri) or slices in total (ct).")
@click.option("--size", type=click.IntRange(32, 1024), default=128, show_default=True,
              help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
def command(out: Path, kind: str, count: int, size: int, seed: int) -> None:
    """Generate SYNTHETIC phantom images into OUT (never for clinical use).

    \b
    mri: OUT/<glioma|meningioma|notumor|pituitary>/*.jpg, the Kaggle Brain Tumor MRI layout.
    ct:  OUT/ID_<hex>.dcm head-CT slices in Hounsfield units + OUT/labels.csv (RSNA ICH format).
    """
    total = count * len(phantoms.MRI_CLASSES) if kind == "mri" else count
    with progress_bar(f"Writing {kind.upper()} phantoms", total) as bar:
        if kind == "mri":
            phantoms.generate_mri_dataset(out, n_per_class=count, size=size, seed=seed,
                                          progress=bar.set)
        else:
            phantoms.generate_ct_dataset(out, n=count, size=size, seed=seed, progress=bar.set)
    status(f"Wrote {total} synthetic {kind.upper()} phantom images to {out}")
    click.echo(str(out))
