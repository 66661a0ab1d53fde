"""``prtk rank`` and ``prtk rank merge``: golden rankings."""

from __future__ import annotations

import click

from prtk.cli.base import (PrtkGroup, check_json_destination, check_output, emit_json, force_option, json_option,
                           load_model_from_options, model_options, weights_inputs)
from prtk.core.errors import PrtkInputError


@click.group("rank", cls=PrtkGroup, invoke_without_command=True, subcommand_metavar="[merge]")
@model_options
@click.option("--data", "data_root", metavar="DIR", default=None,
              help="ImageFolder to rank: DIR/<class>/<image>  [required]")
@click.option("--out", metavar="FILE", default=None, help="Ranking file to write (e.g. ranking.prtk)  [required]")
@click.option("--layer", type=int, default=None,
              help="Rank the tokens entering this block, in [1, L-1]  [default: L // 4, 3 for ViT-B]")
@click.option("--score", type=click.Choice(["label", "confidence", "similarity"]), default="label",
              show_default=True, help="label: log-prob of the true class; confidence: log-prob of the class the "
                                      "unpruned model predicts; similarity: cosine to the unpruned embedding.")
@click.option("--step", type=int, default=1, show_default=True, help="Tokens removed per round (1: exact greedy).")
@click.option("--min-keep", type=float, default=None, metavar="R",
              help="Stop once round(R * N) patches are left; they are ordered by their last-round scores.")
@click.option("--max-batch", type=int, default=1024, show_default=True,
              help="Candidate token sequences per pass through blocks[l:]; memory grows with it "
                   "(about max-batch x N x 4 x width floats).")
@click.option("--chunk", type=int, default=32, show_default=True,
              help="Images ranked together; also the unit of resuming and sharding.")
@click.option("--limit", type=int, default=None, metavar="N", help="Rank an evenly spaced subset of N images.")
@click.option("--shard", default=None, metavar="I/N",
              help="Rank only part I of N (0-based); join the parts with `prtk rank merge`.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--threads", type=int, default=None, metavar="N",
              help="Intra-op CPU threads per process. Results are byte-identical for the same inputs, machine "
                   "and thread count; torchrun gives each process 1 thread unless OMP_NUM_THREADS is set, so give "
                   "a single run and a torchrun run the same --threads to compare them  [default: torch's]")
@json_option("a summary (images, layer, score, step, threads, seconds)")
@force_option("Overwrite existing outputs and discard a partial run.")
@click.pass_context
def rank_command(ctx, model_name, pretrained, checkpoint, model_config, random_weights, seed, data_root, out, layer,
                 score, step, min_keep, max_batch, chunk, limit, shard, device, threads, json_path, force):
    """Golden ranking of every image's patch tokens (greedy backward elimination at block --layer).

    A killed run restarted with the same command continues where it stopped. Under
    `torchrun --nproc-per-node N` the images are split across the processes and rank 0 writes the file.
    """
    if ctx.invoked_subcommand is not None:
        return
    from prtk.core.console import progress_bar
    from prtk.core.devices import resolve_device
    from prtk.ranking.distributed import check_threads, work_partition
    from prtk.ranking.timed_ranking import rank_images
    from prtk.ranking.search import RankingConfig

    for option, value in (("--data", data_root), ("--out", out)):
        if value is None:
            raise PrtkInputError(f"missing option {option}")
    config = RankingConfig(layer=layer, score=score, step=step, min_keep=min_keep, max_batch=max_batch)
    config.check()
    check_threads(threads)
    inputs = weights_inputs(checkpoint, model_config)
    check_output(out, force, inputs)
    check_json_destination(json_path, force, inputs | {"--out": out})
    part, gather = work_partition(shard)
    resolve_device(device)
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    description = f"rank {clip.name}" + (f" (part {part.index + 1}/{part.count})" if part.count > 1 else "")
    with progress_bar(description) as update:
        summary = rank_images(clip, data_root, out, config, part=part, gather=gather, chunk=chunk, limit=limit,
                              threads=threads, force=force, device=device, progress=update)
    if summary is not None:
        click.echo(f"wrote {out}: {summary.images} images x {summary.num_patches} patches, layer {summary.layer}, "
                   f"score {score}, step {step}, {summary.seconds:.1f} s", err=True)
        emit_json(summary, json_path, force)


@rank_command.command("merge")
@click.argument("out", metavar="OUT")
@click.argument("shards", metavar="SHARD...", nargs=-1, required=True)
@force_option("Overwrite an existing OUT.")
def rank_merge_command(out, shards, force):
    """Join the files of `prtk rank --shard i/n` (every i) into the file one run would write."""
    from prtk.ranking.folder_ranking import merge_rankings
    from prtk.ranking.file import load_ranking, save_ranking

    check_output(out, force, {f"SHARD {shard}": shard for shard in shards})
    merged = merge_rankings([load_ranking(path) for path in shards])
    save_ranking(out, merged)
    click.echo(f"wrote {out}: {merged.tensors['order'].shape[0]} images from {len(shards)} shards", err=True)
