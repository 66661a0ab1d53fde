"""``prtk eval``: zero-shot accuracy of the unpruned and the pruned tower."""

from __future__ import annotations

import click

from prtk.cli.base import (PrtkCommand, check_json_destination, emit_json, force_option, json_option,
                           load_model_from_options, model_options, refuse_unless, stage_schedule, stage_scorer_option,
                           stages_option, weights_inputs)
from prtk.cli.render import print_eval_table
from prtk.core.errors import PrtkInputError


@click.command("eval", cls=PrtkCommand)
@model_options
@click.option("--data", "data_root", metavar="DIR", required=True,
              help="ImageFolder: DIR/<class>/<image>; class names come from the folder names.")
@click.option("--keep", type=float, default=0.6, show_default=True,
              help="Fraction of patch tokens kept, in (0, 1]; k = max(1, round(keep * N)).")
@click.option("--layer", type=int, default=None,
              help="Prune at the input of this block, in [1, L-1]  [default: L // 4, 3 for ViT-B]")
@click.option("--scorer", type=click.Choice(["cls-attention", "random", "golden", "predictor", "elip"]),
              default="cls-attention", show_default=True,
              help="How patch tokens are ranked before pruning (golden: --ranking FILE; predictor: --pack FILE; "
                   "elip: CLS mixed with the zero-shot head of the folder's classes, see --stage-scorer).")
@click.option("--ranking", metavar="FILE", default=None,
              help="Ranking file from `prtk rank` for --scorer golden (same model, weights and images).")
@click.option("--pack", metavar="FILE", default=None,
              help="Ranker pack from `prtk train` for --scorer predictor (its layer; its tokens for --keep).")
@click.option("--no-tokens", is_flag=True, help="With --scorer predictor: leave out the pack's learnable tokens.")
@click.option("--fuse-dropped", is_flag=True, help="Add one token averaging the dropped ones (EViT-style).")
@stages_option
@stage_scorer_option
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=int, default=1, show_default=True, help="Data loader worker processes (0: main).")
@click.option("--limit", type=int, default=None, metavar="N",
              help="Evaluate an evenly spaced subset of N images.")
@click.option("--skip-bad", is_flag=True, help="Count and skip images that cannot be decoded instead of stopping.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@json_option("the report")
@force_option()
@click.pass_context
def eval_command(ctx, model_name, pretrained, checkpoint, model_config, random_weights, seed, data_root, keep, layer,
                 scorer, ranking, pack, no_tokens, fuse_dropped, stages, stage_scorer, batch_size, workers, limit,
                 skip_bad, device, json_path, force):
    """Zero-shot top-1/top-5, images/s and GFLOPs of the unpruned and the pruned image tower."""
    from prtk.core.console import progress_bar
    from prtk.data.folder import UnreadableImageError
    from prtk.evaluation.accuracy import EvalConfig, evaluate
    from prtk.pruning.tower import check_keep

    layer, keep, later_stages = stage_schedule(ctx, stages, layer, keep)
    refuse_unless(ctx, ("stage_scorer",), stages is not None, "--stages")
    refuse_unless(ctx, ("no_tokens",), pack is not None, "--pack (the learnable tokens are the pack's)")
    check_keep(keep)
    check_json_destination(json_path, force, weights_inputs(checkpoint, model_config)
                           | {"--ranking": ranking, "--pack": pack})
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    config = EvalConfig(keep=keep, layer=layer, scorer=scorer, ranking=ranking, pack=pack, tokens=not no_tokens,
                        seed=seed, fuse_dropped=fuse_dropped, later_stages=later_stages, stage_scorer=stage_scorer,
                        batch_size=batch_size, workers=workers, limit=limit, skip_bad=skip_bad, device=device)
    try:
        with progress_bar(f"eval {clip.name}") as update:
            report = evaluate(clip, data_root, config, progress=update)
    except UnreadableImageError as error:
        raise PrtkInputError(f"{error} (pass --skip-bad to count and skip unreadable images)") from None
    print_eval_table(report, to_stderr=json_path == "-")
    emit_json(report, json_path, force)
