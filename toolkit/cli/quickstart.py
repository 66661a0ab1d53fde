"""``prtk quickstart``: the whole pipeline on a test bed."""

from __future__ import annotations

import click

from prtk.cli.base import (PrtkCommand, check_json_destination, emit_json, force_option, json_file, json_option,
                           parse_keeps)
from prtk.cli.render import print_quickstart_table
from prtk.core.errors import PrtkInputError
from prtk.core.files import check_distinct_outputs, check_writable_folder


@click.command("quickstart", cls=PrtkCommand)
@click.option("--model", "model_name", default="prtk-testbed-shapes", show_default=True,
              help="A built-in model with shipped weights (see `prtk models`).")
@click.option("--data", "data_root", metavar="DIR", default=None,
              help="Labelled ImageFolder to rank and evaluate on  [default: generated shapes images]")
@click.option("--out", "out_dir", metavar="DIR", default="out/quickstart", show_default=True,
              help="Folder for the ranking, pack, exports, reports, summary and plots.")
@click.option("--keep", "keeps", default="0.5,0.6,0.7", show_default=True, metavar="R[,R...]", help="Keep ratios.")
@click.option("--rank-images", type=int, default=256, show_default=True, help="Images ranked (the training set).")
@click.option("--eval-images", type=int, default=500, show_default=True, help="Images validated and evaluated.")
@json_option("the summary")
@force_option("Empty a non-empty --out folder and start over.")
def quickstart_command(model_name, data_root, out_dir, keeps, rank_images, eval_images, json_path, force):
    """The whole pipeline on a test bed, on a CPU, in minutes: rank -> train -> export -> engines (where
    TensorRT is present) -> validate -> accuracy -> bench, then a summary table and PNG plots in --out."""
    from prtk.core.console import progress_bar, stderr
    from prtk.models import builtin_checkpoint, builtin_model_names, load_clip
    from prtk.quickstart.pipeline import QuickstartConfig, run_quickstart

    config = QuickstartConfig(keeps=parse_keeps(keeps), rank_images=rank_images, eval_images=eval_images)
    shipped = [name for name in builtin_model_names() if builtin_checkpoint(name) is not None]
    if model_name not in shipped:
        raise PrtkInputError(f"quickstart runs on a built-in model with shipped weights ({', '.join(shipped)}), "
                             f"got {model_name!r}")
    check_json_destination(json_path, force, {"--out": out_dir})
    check_distinct_outputs([("--json", json_file(json_path)),
                            ("the quickstart folder --out", out_dir)])
    check_writable_folder(out_dir)
    clip = load_clip(model_name)
    summary = run_quickstart(clip, out_dir, config, data_root, force, progress=progress_bar,
                             say=lambda line: stderr.print(line, markup=False, highlight=False))
    print_quickstart_table(summary, to_stderr=json_path == "-")
    click.echo(f"wrote {out_dir}/summary.md, summary.json, accuracy_vs_keep.png, speedup_vs_keep.png, "
               f"kept_patches.png in {summary['seconds']:.0f} s", err=True)
    emit_json({key: value for key, value in summary.items() if key != "bench"}, json_path, force)
