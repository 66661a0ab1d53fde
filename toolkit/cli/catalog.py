"""``prtk models`` and ``prtk make-shapes``: what models prtk knows, and the synthetic data set."""

from __future__ import annotations

import json

import click

from prtk.cli.base import PrtkCommand, force_option


@click.command("models", cls=PrtkCommand)
@click.option("--json", "as_json", is_flag=True, help="Print the names as a JSON object.")
def models_command(as_json):
    """List the built-in models (test beds with their shipped weights) and the open_clip architectures."""
    from prtk.models.compat import import_open_clip
    from prtk.models import builtin_checkpoint, builtin_model_names, register_builtin_configs

    register_builtin_configs()
    builtin = builtin_model_names()
    trained = [name for name in builtin if builtin_checkpoint(name) is not None]
    others = [name for name in import_open_clip().list_models() if name not in builtin]
    if as_json:
        click.echo(json.dumps({"builtin": builtin, "shipped_weights": trained, "open_clip": others}, indent=2))
        return
    click.echo("built-in: " + ", ".join(f"{name} (trained weights shipped)" if name in trained else name
                                        for name in builtin))
    click.echo("open_clip: " + ", ".join(others))


@click.command("make-shapes", cls=PrtkCommand)
@click.argument("out", metavar="OUT_DIR")
@click.option("--count", type=int, default=1000, show_default=True, help="Number of images (classes cycle).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Data set seed; image i depends only on (seed, i). Seed 0 is prtk-testbed-shapes' training split.")
@click.option("--size", type=int, default=64, show_default=True, help="Image side in pixels.")
@force_option("Replace OUT_DIR if it exists and is not empty.")
def make_shapes_command(out, count, seed, size, force):
    """Write the synthetic shapes data set (10 colour x shape classes) as an ImageFolder."""
    from prtk.data.synthetic import write_shapes_folder

    write_shapes_folder(out, count, seed, size, force)
    click.echo(f"wrote {count} images in 10 classes to {out}", err=True)
