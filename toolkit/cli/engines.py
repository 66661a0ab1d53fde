"""``prtk build-engine``, ``prtk bench`` and ``prtk validate``: engines, speed, and proof of answers."""

from __future__ import annotations

from pathlib import Path

import click

from prtk.cli.base import (PrtkCommand, calibration_options, check_json_destination, check_output, emit_json,
                           force_option, json_option, load_model_from_options, model_options, optimize_option,
                           pack_layer_option, parse_counts, parse_keeps, refuse_export_options, refuse_unless,
                           weights_inputs)
from prtk.cli.render import print_bench_table


@click.command("build-engine", cls=PrtkCommand)
@click.argument("target", metavar="DIR_OR_ONNX")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp16", show_default=True,
              help="Engine precision; under fp16/bf16/int8 LayerNorm, softmax and reductions stay fp32. int8 builds "
                   "a Q/DQ graph (export --quantize int8-static) with explicit quantization, its float layers in "
                   "fp16; it is the only precision for such a graph.")
@click.option("--batch", "batch_profile", default="1:8:32", show_default=True, metavar="MIN:OPT:MAX",
              help="Optimisation profile of the batch dimension.")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="Builder workspace limit in GiB.")
@click.option("--timing-cache", metavar="FILE", default=None,
              help="Timing cache read before and updated after each build  [default: DIR/timing.cache]")
@force_option("Overwrite existing engines.")
def build_engine_command(target, precision, batch_profile, workspace, timing_cache, force):
    """Build a TensorRT engine from each exported ONNX (a file, or every .onnx in a folder).

    Writes <name>_<precision>.engine beside the ONNX with a .json sidecar: the ONNX sidecar plus the
    TensorRT version, GPU, compute capability, precision and profile. Needs TensorRT and an NVIDIA GPU.
    """
    from prtk.engines.tensorrt_build import EngineConfig, build_engines, engine_sources, parse_batch_profile

    config = EngineConfig(precision, parse_batch_profile(batch_profile), workspace, timing_cache)
    config.check()
    sources = engine_sources(target, precision, force, timing_cache)
    for engine in build_engines(sources, config, force):
        click.echo(f"wrote {engine}", err=True)


@click.command("bench", cls=PrtkCommand)
@click.argument("artifacts", nargs=-1, metavar="[DIR_OR_FILE]...")
@model_options
@click.option("--pack", metavar="FILE", default=None,
              help="Ranker pack (its predictor and tokens); else --scorer. With artifacts: the pack they were "
                   "exported from, for the torch backend.")
@click.option("--no-tokens", is_flag=True, help="With --pack: leave out its learnable tokens.")
@click.option("--scorer", type=click.Choice(["cls-attention", "fixed-random"]), default=None,
              help="Without --pack: the baseline scorer  [default: cls-attention]")
@click.option("--keep", "keeps", default="0.5,0.6,0.7", show_default=True, metavar="R[,R...]", help="Keep ratios.")
@pack_layer_option
@click.option("--backend", "backends", default="torch,onnxruntime", show_default=True, metavar="B[,B...]",
              help="Among torch, onnxruntime, openvino, tensorrt (TensorRT needs a GPU and the tensorrt package). "
                   "With artifacts: graphs run on the ONNX runtimes their sidecars list, engines on TensorRT, and "
                   "torch runs the PyTorch module of each fp32 graph.")
@click.option("--variants", default="fp32", show_default=True, metavar="V[,V...]",
              help="Precision variants among fp32, int8-dynamic, int8-static (as `prtk export --quantize` writes "
                   "them), each timed on every backend that runs it: torch fp32 only, TensorRT fp32 (at --precision) "
                   "and int8-static.")
@calibration_options
@optimize_option
@click.option("--batch", "batches", default="1,8,32", show_default=True, metavar="N[,N...]", help="Batch sizes.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda[:N]; on cuda onnxruntime uses its CUDA provider.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="torch precision, and the engines' built for the fp32 variant (fp16/bf16 on a GPU only).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs per case.")
@click.option("--iterations", type=int, default=10, show_default=True, help="Timed runs per case, at least.")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Timed seconds per case, at least.")
@click.option("--baseline", metavar="FILE", default=None,
              help="With artifacts: the reference every row is also compared with on the same backend, of any "
                   "model (e.g. the parent model's unpruned graph); it is timed in the same rounds.")
@json_option("the rows")
@force_option()
@click.pass_context
def bench_command(ctx, artifacts, model_name, pretrained, checkpoint, model_config, random_weights, seed, pack,
                  no_tokens, scorer, keeps, layer, backends, variants, calib_data, calib_images, calib_method,
                  before_pruning, optimize, batches, device, precision, warmup, iterations, seconds, baseline,
                  json_path, force):
    """The deployment frontier: latency (median, p90, p99), images/s, GFLOPs and speedups per artifact, backend,
    precision variant, keep ratio and batch.

    Given DIR_OR_FILE (export folders as `prtk export` and `prtk build-engine` wrote them, or single .onnx /
    .engine files, of one model or several), times those artifacts as they are; each pruned one needs the unpruned
    tower of its model and variant beside it (export with --full), or a --baseline. Without, exports the model's
    graphs (--keep, --variants, ...) into a temporary folder and times them. Every contender of a batch is timed
    round-robin in one loop, the order rotated every round. Speedups per row, paired (the median of per-round
    ratios): over the unpruned tower of the same model, backend and variant (beside the cost-model bound), over the
    --baseline (beside the GFLOPs ratio), and over the fastest unpruned deployment of the run (any backend, any
    variant); '(noise)' marks one more than 10% above its bound. Backends are timed through one runner interface:
    CUDA events for torch on a GPU, wall time otherwise.
    """
    from prtk.core.console import progress_bar
    from prtk.engines.benchmark import BenchConfig, Timing, bench_artifacts, run_bench

    config = BenchConfig(keeps=parse_keeps(keeps), pack=pack, tokens=not no_tokens, scorer=scorer, layer=layer,
                         optimize=optimize, backends=tuple(b.strip() for b in backends.split(",")),
                         variants=tuple(v.strip() for v in variants.split(",")), calib_data=calib_data,
                         calib_images=calib_images, calib_method=calib_method, before_pruning=before_pruning,
                         batches=parse_counts(batches, "--batch"), device=device, precision=precision, seed=seed,
                         timing=Timing(warmup, iterations, seconds))
    _check_bench_options(ctx, config, artifacts)
    check_json_destination(json_path, force, weights_inputs(checkpoint, model_config) | {"--pack": pack})
    given = model_name is not None or model_config is not None
    clip = (load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
            if given or not artifacts else None)
    with progress_bar(f"bench {clip.name if clip else Path(artifacts[0]).name}", unit="batch") as update:
        result = (bench_artifacts(artifacts, config, clip, progress=update, baseline=baseline) if artifacts
                  else run_bench(clip, config, progress=update))
    print_bench_table(result, to_stderr=json_path == "-")
    emit_json(result, json_path, force)


def _check_bench_options(ctx, config, artifacts: tuple[str, ...]) -> None:
    """Refuse the options of the mode not taken (exporting a model's graphs, or timing ``artifacts``) and settings
    that cannot be measured, before any work."""
    from prtk.core.devices import resolve_device

    if artifacts:
        refuse_export_options(ctx, ("keeps", "no_tokens", "scorer", "layer", "variants", "calib_data",
                                    "calib_images", "calib_method", "before_pruning", "optimize"))
        config.check_timing()
    else:
        refuse_unless(ctx, ("baseline",), False, "artifacts to time (DIR_OR_FILE)")
        refuse_unless(ctx, ("calib_images", "calib_method"), "int8-static" in config.variants,
                      "the int8-static variant (--variants)")
        refuse_unless(ctx, ("no_tokens",), config.pack is not None, "--pack")
        config.check()
    resolve_device(config.device)


@click.command("validate", cls=PrtkCommand)
@click.argument("artifact", metavar="ARTIFACT")
@model_options
@click.option("--data", "data_root", metavar="DIR", required=True, help="Labelled ImageFolder to validate on.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "cpp-openvino"]), default="onnxruntime",
              show_default=True,
              help="What runs an .onnx artifact: ONNX Runtime or OpenVINO from Python on preprocessed tensors, or "
                   "cpp-openvino: the compiled C++ program prtk-embed (`prtk cpp build`) on the image files, which "
                   "it decodes and preprocesses itself, as a C++ application does. An .engine runs on TensorRT.")
@click.option("--cpp-program", metavar="PATH", default=None,
              help="The prtk-embed program for --backend cpp-openvino  [default: the one `prtk cpp build` built]")
@click.option("--pack", metavar="FILE", default=None, help="The pack the artifact was exported from (if any).")
@click.option("--limit", type=int, default=None, metavar="N", help="Validate on an evenly spaced subset of N images.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per run.")
@click.option("--min-agreement", type=float, default=None,
              help="Smallest prediction agreement with the pruned reference, %  [default: 99.9 fp32, 99.5 fp16, "
                   "99 int8]")
@click.option("--min-cosine", type=float, default=None,
              help="Smallest embedding cosine to the pruned reference  [default: 0.9999 fp32, 0.999 fp16, 0.98 int8]")
@click.option("--max-accuracy-delta", type=float, default=None,
              help="Largest |top-1 difference| to the pruned reference, points  [default: 0.1; 0.5 int8]")
@click.option("--max-abs-diff", type=float, default=None,
              help="Largest |artifact - pruned reference| of any embedding element  [default: 1e-4 fp32, 1e-2 fp16, "
                   "0.1 int8]")
@click.option("--max-relative-error", type=float, default=None,
              help="Largest per-image ||artifact - reference|| / ||reference|| of the embedding  "
                   "[default: 1e-4 fp32, 1e-2 fp16, 0.2 int8]")
@click.option("--min-kept-identical", type=float, default=None,
              help="Smallest share of images whose kept patch set is the pruned reference's (graphs that output "
                   "kept_indices), %  [default: 99 fp32 and int8, 90 fp16]")
@click.option("--report", "report_prefix", metavar="PREFIX", default=None,
              help="Write PREFIX.md and PREFIX.json  [default: the artifact's path + .validation]")
@click.option("--save-results", "results_path", metavar="FILE.json", default=None,
              help="Also write the tensor comparison's run results (every batch's embedding from the PyTorch "
                   "reference and the artifact) as Polygraphy JSON (`polygraphy inspect data FILE.json` reads it), "
                   "and FILE_inputs.py, a data loader of the same batches; the report then gives the `polygraphy "
                   "run` command that repeats the comparison.")
@force_option("Overwrite existing reports and results.")
@click.pass_context
def validate_command(ctx, artifact, model_name, pretrained, checkpoint, model_config, random_weights, seed,
                     data_root, backend, cpp_program, pack, limit, batch_size, min_agreement, min_cosine,
                     max_accuracy_delta, max_abs_diff, max_relative_error, min_kept_identical, report_prefix,
                     results_path, force):
    """Prove an exported .onnx (or .engine) gives its PyTorch reference's answers; exit 0 pass, 1 fail.

    The sidecar must be the graph's own description (the one embedded in the ONNX metadata) and agree
    with the graph's inputs, outputs and precision; the thresholds follow the graph's precision (fp32,
    fp16, int8: an int8 graph is held to its float pruned reference, and its delta to the unpruned one
    is reported). The
    references are the unpruned tower and the tower pruned with the same pack, scorer and keep ratio,
    loaded from the weights the sidecar names (or the model options given, which must match them).
    """
    from prtk.core.console import progress_bar
    from prtk.engines.cpp_program import CppProgram
    from prtk.engines.validation import PROGRAM_BACKENDS, validate, validation_backend
    from prtk.engines.validation_report import write_report
    from prtk.export.artifact import Artifact
    from prtk.export.criteria import THRESHOLD_RANGES, Thresholds

    refuse_unless(ctx, ("cpp_program",), backend in PROGRAM_BACKENDS, "--backend cpp-openvino")
    target = Artifact.read(artifact)
    validation_backend(target, backend)
    program = CppProgram.find(cpp_program) if backend in PROGRAM_BACKENDS else None
    thresholds = Thresholds.for_precision(target.precision, **{key: ctx.params[key] for key in THRESHOLD_RANGES})
    inputs = {**target.inputs, "--pack": pack, **weights_inputs(checkpoint, model_config)}
    outputs = _validation_outputs(report_prefix or f"{target.path}.validation", results_path, force, inputs)
    clip = (target.load_reference_model() if model_name is None and model_config is None
            else load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed))
    with progress_bar(f"validate {target.path.name}") as update:
        report = validate(clip, target, data_root, thresholds, pack, limit, batch_size, progress=update,
                          backend=backend, results_path=results_path, program=program)
    click.echo(write_report(report, *outputs[:2]))
    click.echo(f"wrote {outputs[0]} and {outputs[1]}", err=True)
    if results_path is not None:
        click.echo(f"wrote {outputs[2]} and {outputs[3]}", err=True)
    if not report.passed:
        ctx.exit(1)


def _validation_outputs(prefix: str, results_path: str | None, force: bool, inputs: dict) -> list[Path]:
    """The report (``PREFIX.md``, ``PREFIX.json``) and, with ``--save-results``, the run results and their data
    loader: refused in one line when one exists (without ``force``), is an input, or is another of them."""
    from prtk.core.errors import PrtkInputError
    from prtk.engines.validation import inputs_script_path

    outputs = [check_output(f"{prefix}{suffix}", force, inputs) for suffix in (".md", ".json")]
    if results_path is not None:
        if not results_path.endswith(".json"):
            raise PrtkInputError(f"--save-results must name a .json file, got {results_path!r}")
        written = {"report": str(outputs[0]), "report JSON": str(outputs[1])}
        outputs += [check_output(str(path), force, inputs | written)
                    for path in (results_path, inputs_script_path(results_path))]
    return outputs
