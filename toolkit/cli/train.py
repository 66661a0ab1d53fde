"""``prtk train``: the predictor and the learnable tokens, as a ranker pack."""

from __future__ import annotations

import click

from prtk.cli.base import (PrtkCommand, check_json_destination, check_output, emit_json, force_option, json_option,
                           load_model_from_options, model_options, parse_keeps, refuse_unless, weights_inputs)
from prtk.cli.render import print_pack_table


@click.command("train", cls=PrtkCommand)
@model_options
@click.option("--ranking", "ranking_path", metavar="FILE", required=True,
              help="Ranking file from `prtk rank` (its images, layer and golden orders are the training data).")
@click.option("--data", "data_root", metavar="DIR", required=True,
              help="The ImageFolder the ranking was made from (each image is checked against its hash).")
@click.option("--out", metavar="FILE", required=True, help="Ranker pack to write (e.g. pack.prtk).")
@click.option("--keep", "keeps", default="0.5,0.6,0.7", show_default=True, metavar="R[,R...]",
              help="Keep ratios: the predictor's target budgets, and one set of learnable tokens each.")
@click.option("--tokens", "num_tokens", type=int, default=8, show_default=True,
              help="Learnable tokens P per keep ratio (0: predictor only).")
@click.option("--loss", type=click.Choice(["kl", "listmle"]), default="kl", show_default=True,
              help="kl: KL to the golden keep set, averaged over the keep ratios (reference); "
                   "listmle: likelihood of the whole golden order.")
@click.option("--predictor-epochs", type=int, default=40, show_default=True, help="Epochs of predictor training.")
@click.option("--token-epochs", type=int, default=15, show_default=True, help="Epochs of token training per keep.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Images per training step.")
@click.option("--predictor-lr", type=float, default=3e-3, show_default=True, help="Peak AdamW learning rate.")
@click.option("--token-lr", type=float, default=3e-3, show_default=True, help="Peak AdamW learning rate.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share of the ranked images held out for the metrics and the choice of the best epoch.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@json_option("the pack's metadata and metrics")
@force_option("Overwrite existing outputs and discard a partial run.")
@click.pass_context
def train_command(ctx, model_name, pretrained, checkpoint, model_config, random_weights, seed, ranking_path, data_root,
                  out, keeps, num_tokens, loss, predictor_epochs, token_epochs, batch_size, predictor_lr, token_lr,
                  val_fraction, device, json_path, force):
    """Train the predictor on a ranking file, then learnable tokens per keep ratio; write a ranker pack.

    A killed run restarted with the same command continues at the epoch where it stopped. Under
    `torchrun --nproc-per-node N` it trains with DistributedDataParallel and rank 0 writes the pack.
    """
    from prtk.core.console import progress_bar
    from prtk.ranking.distributed import torchrun_world
    from prtk.predictor.training import TrainConfig, train_pack

    refuse_unless(ctx, ("token_epochs", "token_lr"), num_tokens > 0, "learnable tokens (--tokens above 0)")
    config = TrainConfig(keeps=parse_keeps(keeps), num_tokens=num_tokens, loss=loss,
                         predictor_epochs=predictor_epochs, token_epochs=token_epochs, batch_size=batch_size,
                         predictor_lr=predictor_lr, token_lr=token_lr, val_fraction=val_fraction, seed=seed,
                         device=device)
    config.check()
    inputs = weights_inputs(checkpoint, model_config) | {"--ranking": ranking_path}
    check_output(out, force, inputs)
    check_json_destination(json_path, force, inputs | {"--out": out})
    distributed = torchrun_world()
    world = (distributed[0].index, distributed[0].count) if distributed else (0, 1)
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    with progress_bar(f"train {clip.name}", unit="step") as update:
        pack = train_pack(clip, ranking_path, data_root, out, config, force=force, progress=update, world=world)
    if world[0] != 0:
        return
    print_pack_table(pack.meta)
    click.echo(f"wrote {out}", err=True)
    emit_json(pack.meta, json_path, force)
