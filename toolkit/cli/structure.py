"""``prtk prune-structure``: a smaller image tower by MoPE-CLIP structured pruning, distilled from the original."""

from __future__ import annotations

from pathlib import Path

import click

from prtk.cli.base import (PrtkCommand, check_json_destination, emit_json, force_option, json_file, json_option,
                           load_model_from_options, model_options, refuse_unless, weights_inputs)


@click.command("prune-structure", cls=PrtkCommand)
@model_options
@click.option("--data", "data_root", metavar="DIR", required=True,
              help="ImageFolder (DIR/<class>/<image>) for the calibration subset and the distillation.")
@click.option("--out", metavar="DIR", required=True,
              help="Folder for NAME.json (config), NAME.safetensors (weights) and NAME.card.json.")
@click.option("--heads", type=int, default=None, help="Attention heads to keep in every block.")
@click.option("--mlp", type=int, default=None,
              help="MLP channels to keep in every block (a multiple of --mlp-group).")
@click.option("--depth", type=int, default=None,
              help="Blocks to keep, at least 2 (whole blocks removed after the width).")
@click.option("--gflops", "target_gflops", type=float, default=None, metavar="G",
              help="GFLOPs per image to reach: the targets not given are chosen as the shape with the most GFLOPs "
                   "at or under G (ties: more blocks, then more heads).")
@click.option("--select", "selection", type=click.Choice(["mope", "magnitude", "random"]), default="mope",
              show_default=True, help="mope: remove the modules whose removal costs least on the calibration "
                                      "images; magnitude: smallest mean |weight|; random: seeded (baselines).")
@click.option("--metric", type=click.Choice(["zero-shot", "similarity"]), default="zero-shot", show_default=True,
              help="MoPE's error: zero-shot top-1 drop (ties broken by similarity), or embedding similarity "
                   "drop to the unpruned tower alone (labels unused).")
@click.option("--mlp-group", type=int, default=None, metavar="C",
              help="MLP channels per prunable module: the MoPE cost is one pass per group, and GEMMs stay "
                   "multiples of C  [default: the head width, 64 for ViT-B]")
@click.option("--calibration-images", type=int, default=512, show_default=True,
              help="Seeded subset of --data on which MoPE is measured.")
@click.option("--distill-epochs", type=int, default=3, show_default=True, help="Distillation epochs (0: none).")
@click.option("--distill-images", type=int, default=10000, show_default=True,
              help="Seeded subset of --data to distil on (a tenth held out picks the best epoch).")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak AdamW learning rate (cosine decay).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per pass and per step.")
@click.option("--name", default=None, help="Model name (file stem)  [default: MODEL-h<heads>m<mlp>d<depth>]")
@json_option("the result (files, shape, GFLOPs, calibration top-1, distillation history)")
@force_option("Overwrite the model's files and discard a partial run.")
@click.pass_context
def prune_structure_command(ctx, model_name, pretrained, checkpoint, model_config, random_weights, seed, data_root, out,
                            heads, mlp, depth, target_gflops, selection, metric, mlp_group, calibration_images,
                            distill_epochs, distill_images, lr, batch_size, name, json_path, force):
    """Remove whole attention heads, MLP channel groups and blocks by their module-wise pruning error (MoPE,
    width first, then depth), write the smaller model, and distil it from the unpruned tower (embedding cosine +
    zero-shot-logit KL), keeping the best epoch.

    Load the result anywhere with --model-config OUT/NAME.json --checkpoint OUT/NAME.safetensors. A killed run
    restarted with the same command continues where it stopped.
    """
    from prtk.structure import StructureConfig, plan_shape, prune_structure
    from prtk.structure.distillation import DistillConfig

    refuse_unless(ctx, ("metric",), selection == "mope", "--select mope")
    refuse_unless(ctx, ("distill_images", "lr"), distill_epochs > 0, "distillation (--distill-epochs above 0)")
    refuse_unless(ctx, ("mlp_group",), mlp is not None or target_gflops is not None,
                  "an MLP target (--mlp or --gflops)")
    config = StructureConfig(heads=heads, mlp=mlp, depth=depth, gflops=target_gflops, selection=selection,
                             metric=metric, mlp_group=mlp_group, calibration_images=calibration_images,
                             batch_size=batch_size, seed=seed, name=name,
                             distill=DistillConfig(epochs=distill_epochs, images=distill_images, lr=lr,
                                                   batch_size=batch_size, seed=seed))
    config.check()
    inputs = weights_inputs(checkpoint, model_config)
    check_json_destination(json_path, force, inputs)
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    shape = plan_shape(clip, config)
    _check_outputs(Path(out), name or f"{clip.name}-{shape.tag}", inputs, json_path)
    result = prune_structure(clip, data_root, out, config, force=force)
    top1 = result.calibration_top1
    click.echo(f"wrote {result.config_path}, {result.weights_path}: heads {shape.heads}/{clip.spec.heads}, "
               f"MLP {shape.mlp_width}/{clip.spec.mlp_width}, blocks {shape.depth}/{clip.spec.layers}, "
               f"{result.gflops:.4g} of {result.parent_gflops:.4g} GFLOPs; calibration top-1 "
               + ", ".join(f"{key} {value:.2f}%" for key, value in top1.items()), err=True)
    emit_json(result, json_path, force)


def _check_outputs(out: Path, stem: str, inputs: dict, json_path: str | None) -> None:
    """Refuse model files that would replace an input, or that another output of the command (``--json``, the run
    folder) names."""
    from prtk.core.files import check_distinct_outputs, check_not_an_input
    from prtk.structure.job import output_paths, run_folder

    outputs = output_paths(out, stem)
    for path in outputs.values():
        check_not_an_input(path, inputs)
    check_distinct_outputs([("--json", json_file(json_path)),
                            *((f"the model's {role}", path) for role, path in outputs.items()),
                            ("the run folder", run_folder(out, stem))])
