"""``prtk export``: static-shape ONNX graphs, one per keep ratio, with their checks."""

from __future__ import annotations

import click

from prtk.cli.base import (PrtkCommand, calibration_options, check_json_destination, emit_json, force_option,
                           json_file, json_option, load_model_from_options, model_options, optimize_option,
                           pack_layer_option, parse_keeps, refuse_unless, stage_schedule, stage_scorer_option,
                           stages_option, weights_inputs)
from prtk.cli.render import print_export_table
from prtk.core.files import check_writable_folder
from prtk.export.options import DEFAULT_CONTROL_IMAGES, QUANTIZE_MODES


@click.command("export", cls=PrtkCommand)
@model_options
@click.option("--pack", metavar="FILE", default=None,
              help="Ranker pack from `prtk train`: its predictor scores the patches, its tokens are appended.")
@click.option("--scorer", type=click.Choice(["cls-attention", "fixed-random", "elip"]), default=None,
              help="Without --pack: the baseline scorer (fixed-random: one seeded random patch subset for every image, "
                   "the random baseline a static graph can hold; elip: language-guided by the --classes zero-shot "
                   "head, baked into the graph)  [default: cls-attention; with --pack, the pack's predictor]")
@click.option("--keep", "keeps", default="0.6", show_default=True, metavar="R[,R...]",
              help="Keep ratios; one graph each, with k = max(1, round(R * N)) patches.")
@pack_layer_option
@stages_option
@stage_scorer_option
@click.option("--out", "out_dir", metavar="DIR", required=True,
              help="Folder for <model>_keep<R>.onnx and its .json sidecar per ratio.")
@click.option("--full", is_flag=True, help="Also export the unpruned tower (<model>_full.onnx), the reference.")
@click.option("--classes", "classes_path", metavar="FILE", default=None,
              help="Class names, one per line: bake a zero-shot classifier into a 'logits' output [B, C].")
@click.option("--no-normalize", is_flag=True, help="Output the raw embedding instead of the L2-normalised one.")
@click.option("--no-kept-indices", is_flag=True, help="Leave out the 'kept_indices' output [B, k].")
@click.option("--no-tokens", is_flag=True, help="With --pack: leave out its learnable tokens.")
@click.option("--fuse-dropped", is_flag=True,
              help="Add one token merging the dropped patches (EViT, ELIP); later stages fold theirs into it.")
@click.option("--fp16", is_flag=True, help="fp16 weights and activations; LayerNorm, softmax and I/O stay fp32.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default=None,
              help="int8 graph (ONNX Runtime's quantizer; weight MatMul/Gemm in int8, and at O2 int8-dynamic the "
                   "fused Attention as QAttention; the patch embedding, scorers, TopK, LayerNorm, softmax and "
                   "normalisation in float): int8-dynamic quantizes activations at run time (ONNX Runtime, "
                   "OpenVINO); int8-static is a Q/DQ graph calibrated on --calib-data that ONNX Runtime, OpenVINO "
                   "and TensorRT (build-engine --precision int8) run in int8.  [default: fp32]")
@calibration_options
@click.option("--max-agreement-drop", type=float, default=None, metavar="POINTS",
              help="int8-static, accuracy-controlled: keep the fewest weight GEMMs float (the most sensitive first, "
                   "as OpenVINO NNCF's accuracy control does) that bring the int8 graph's zero-shot predictions over "
                   "--calib-data's classes within POINTS of the float graph's, measured on --control-images further "
                   "images; the sidecar's quantization.accuracy_control says which and what share of the weights.")
@click.option("--control-images", type=int, default=DEFAULT_CONTROL_IMAGES, show_default=True,
              help="--max-agreement-drop: images of --calib-data, none of them a calibration image, that measure it.")
@optimize_option
@click.option("--opset", type=int, default=None,
              help="ONNX opset, from 17 (LayerNormalization as one op) to the newest the installed torch exports (20). "
                   "[default: 20 at O1/O2, where Gelu is one op; 17 at O0]")
@click.option("--data", "check_data", metavar="DIR", default=None,
              help="ImageFolder whose images feed the ONNX Runtime check  [default: generated shapes images]")
@click.option("--check-images", type=int, default=8, show_default=True,
              help="Images in the ONNX Runtime check (also run alone, at batch 1).")
@click.option("--no-check", is_flag=True, help="Skip the checks (onnx.checker, ONNX Runtime, TensorRT readiness).")
@json_option("the sidecars and check results")
@force_option("Overwrite existing exports.")
@click.pass_context
def export_command(ctx, model_name, pretrained, checkpoint, model_config, random_weights, seed, pack, scorer, keeps,
                   layer, stages, stage_scorer, out_dir, full, classes_path, no_normalize, no_kept_indices, no_tokens,
                   fuse_dropped, fp16, quantize, calib_data, calib_images, calib_method, before_pruning, optimize,
                   max_agreement_drop, control_images, opset, check_data, check_images, no_check, json_path, force):
    """Export static-shape ONNX graphs, one per keep ratio, and check each.

    Each graph maps images [batch,3,H,W] to an embedding [batch,E] with the scorer, a constant-K TopK,
    the gather and the learnable tokens inside; only the batch dimension is dynamic. --optimize O1 (the
    default) writes every transformer block as 23 standard nodes that TensorRT and ONNX Runtime fuse; O2
    writes ONNX Runtime's fused operators (ONNX Runtime only: build-engine refuses it); O0 traces open_clip's
    blocks as they are. --quantize writes int8 graphs (<name>_int8-dynamic.onnx, <name>_int8-static.onnx).
    --stages writes one staged graph (<model>_keep0.70_b6k0.70_b9k0.70.onnx: each later stage's block and keep).
    Checks (a table; any failure exits 1): onnx.checker full check, ONNX Runtime against PyTorch (max abs
    diff <= 1e-4 in fp32 with identical kept indices, 1e-2 in fp16, 0.1 in int8) and TensorRT readiness
    (not at O2 or int8-dynamic); their results, and as runtimes only those whose checks passed, are part of the
    graph's embedded description. One export writes a folder at a time (a second is refused); --json may not
    name a file the export writes. The same inputs give byte-identical files.
    """
    from prtk.export.config import ExportConfig
    from prtk.export.exporter import read_class_names

    layer, keep, later_stages = stage_schedule(ctx, stages, layer, None)
    _refuse_unused_options(ctx, quantize, stages, pack, no_check)
    config = ExportConfig(keeps=parse_keeps(keeps) if keep is None else (keep,), pack=pack, scorer=scorer, layer=layer,
                          later_stages=later_stages, stage_scorer=stage_scorer, fuse_dropped=fuse_dropped,
                          tokens=not no_tokens, full=full, normalize=not no_normalize, kept_indices=not no_kept_indices,
                          classes=read_class_names(classes_path) if classes_path else (), fp16=fp16, quantize=quantize,
                          calib_data=calib_data, calib_images=calib_images, calib_method=calib_method,
                          before_pruning=before_pruning, max_agreement_drop=max_agreement_drop,
                          control_images=control_images, optimize=optimize, opset=opset, seed=seed,
                          run_checks=not no_check)
    config.check()
    inputs = weights_inputs(checkpoint, model_config) | {"--pack": pack, "--classes": classes_path}
    check_json_destination(json_path, force, inputs)
    check_writable_folder(out_dir)
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    records = _export(clip, config, out_dir, inputs, (check_data, check_images), json_path, force)
    if not all(record.passed for record in records):
        click.echo("prtk export: a check failed (see the table)", err=True)
        ctx.exit(1)


def _refuse_unused_options(ctx: click.Context, quantize: str | None, stages: str | None, pack: str | None,
                           no_check: bool) -> None:
    refuse_unless(ctx, ("calib_images", "calib_method"), quantize == "int8-static", "--quantize int8-static")
    refuse_unless(ctx, ("control_images",), ctx.params["max_agreement_drop"] is not None, "--max-agreement-drop")
    refuse_unless(ctx, ("stage_scorer",), stages is not None, "--stages")
    refuse_unless(ctx, ("no_tokens",), pack is not None, "--pack")
    refuse_unless(ctx, ("check_data", "check_images"), not no_check, "the checks (drop --no-check)")


def _export(clip, config, out_dir: str, inputs: dict, check_source: tuple, json_path: str | None, force: bool):
    """``export_models`` into ``out_dir`` under its writer lock after refusing outputs that cannot be written;
    the checks' images from ``check_source`` (``--check-data``, ``--check-images``); prints the table and the
    ``--json`` document."""
    from prtk.core.console import progress_bar
    from prtk.core.files import folder_writer_lock
    from prtk.export.checks import load_check_images
    from prtk.export.exporter import check_export_outputs, export_models

    with folder_writer_lock(out_dir, "export"):
        check_export_outputs(clip.name, config, out_dir, force, inputs, {"--json": json_file(json_path)})
        images, source = ((None, "") if not config.run_checks
                          else load_check_images(clip.preprocess, clip.spec.image_size, *check_source))
        with progress_bar(f"export {clip.name}", unit="graph") as update:
            records = export_models(clip, config, out_dir, images, force=force, progress=update)
        print_export_table(records, source, to_stderr=json_path == "-")
        emit_json({"exports": [record.as_dict() for record in records]}, json_path, force)
    return records
