"""The ``prtk`` command line: thin subcommands over prtk's Python API, heavy imports deferred.

Bad input is reported as one line ``prtk <command>: error: ...`` with exit status 2, no traceback.
"""

from __future__ import annotations

import json
import shlex
import sys

import click

from . import __version__
from .allocator import reuse_freed_memory
from .artifacts import check_writable_folder
from .errors import PrtkInputError


class PrtkInputUsageError(click.ClickException):
    """A ``PrtkInputError`` raised inside a command, carrying the command's context for its name."""

    exit_code = 2

    def __init__(self, message: str, ctx: click.Context):
        super().__init__(message)
        self.ctx = ctx


class NamesItsInputErrors:
    """Mixed into a click command or group: its ``PrtkInputError`` becomes a ``PrtkInputUsageError`` that
    carries the command's context, reported as ``prtk <command>: error: ...`` (exit 2)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PrtkInputError as error:
            raise PrtkInputUsageError(str(error), ctx) from None


class PrtkCommand(NamesItsInputErrors, click.Command):
    """A command whose bad input is one line naming it."""


class PrtkGroup(NamesItsInputErrors, click.Group):
    """A click group that reports usage and input errors in one line (exit 2) instead of a traceback.

    Its subcommands are ``PrtkCommand`` (and its subgroups ``PrtkGroup``), so every error names the command.
    """

    command_class = PrtkCommand

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name or "prtk", complete_var, standalone_mode=False, **extra)
        except click.ClickException as error:
            where = error.ctx.command_path if getattr(error, "ctx", None) else "prtk"
            click.echo(f"{where}: error: {error.format_message()}", err=True)
            code = error.exit_code
        except click.exceptions.Abort:
            click.echo("prtk: aborted", err=True)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


@click.group("prtk", cls=PrtkGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="prtk")
def cli():
    """prtk: learn which CLIP patch tokens to drop and deploy static-shape pruned image towers.

    Pipeline: rank -> train -> export --keep r -> build-engine -> validate; quickstart runs it all on a
    test bed. Every command takes --help.
    """
    reuse_freed_memory()


def model_options(command):
    """Options that choose a model and its weights (exactly one weights source)."""
    options = [
        click.option("--model", "model_name", metavar="NAME", default=None,
                     help="open_clip architecture (e.g. ViT-B-16) or a built-in one (see `prtk models`)."),
        click.option("--pretrained", metavar="TAG", default=None,
                     help="open_clip hub weights tag (e.g. openai); needs the hub or a local cache."),
        click.option("--checkpoint", metavar="FILE", type=click.Path(dir_okay=False), default=None,
                     help="Local weights: .safetensors, or a torch state dict (loaded with weights_only=True)."),
        click.option("--model-config", metavar="FILE", type=click.Path(dir_okay=False), default=None,
                     help="open_clip model config JSON for a custom architecture; its file stem is the model name."),
        click.option("--random-weights", is_flag=True,
                     help="Use seeded random weights (shapes, speed and export checks only)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed for random weights and the random scorer."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed):
    from .models import load_clip

    if model_name is None and model_config is None:
        raise PrtkInputError("no model given: pass --model NAME (see `prtk models`) or --model-config FILE")
    return load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, config=model_config,
                     random_weights=random_weights, seed=seed)


def check_output(path: str, force: bool, inputs: dict[str, str | None]):
    """Refuse, before any work, an output file that cannot be written, exists without ``force``, or is one of
    the command's ``inputs`` (``{option: path}``); returns it as a Path."""
    from .artifacts import check_not_an_input, check_writable

    check_not_an_input(path, inputs)
    return check_writable(path, force)


def check_json_destination(destination: str | None, force: bool, inputs: dict[str, str | None] | None = None) -> None:
    """``check_output`` for a ``--json`` file (``-``, stdout, and None need no check)."""
    if destination not in (None, "-"):
        check_output(destination, force, inputs or {})


def weights_inputs(checkpoint: str | None, model_config: str | None) -> dict[str, str | None]:
    """The model options that name files, as ``check_output`` inputs."""
    return {"--checkpoint": checkpoint, "--model-config": model_config}


def emit_json(document: dict, destination: str, force: bool) -> None:
    """Write ``document`` to ``destination`` (``-`` = stdout), atomically, never over a file without force."""
    from .artifacts import check_writable, write_json_atomic

    if destination == "-":
        click.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    write_json_atomic(check_writable(destination, force), document)
    click.echo(f"wrote {destination}", err=True)


def invocation(ctx: click.Context) -> str:
    """The command as a shell line with every option's effective value, for artifact cards."""
    words = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif param.is_flag and value:
            words.append(param.opts[0])
        elif not param.is_flag and value is not None:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@cli.command("eval")
@model_options
@click.option("--data", "data_root", metavar="DIR", required=True,
              help="ImageFolder: DIR/<class>/<image>; class names come from the folder names.")
@click.option("--keep", type=float, default=0.6, show_default=True,
              help="Fraction of patch tokens kept, in (0, 1]; k = max(1, round(keep * N)).")
@click.option("--layer", type=int, default=None,
              help="Prune at the input of this block, in [1, L-1]  [default: L // 4, 3 for ViT-B]")
@click.option("--scorer", type=click.Choice(["cls-attention", "random", "golden", "predictor"]),
              default="cls-attention", show_default=True,
              help="How patch tokens are ranked before pruning (golden: --ranking FILE; predictor: --pack FILE).")
@click.option("--ranking", metavar="FILE", default=None,
              help="Ranking file from `prtk rank` for --scorer golden (same model, weights and images).")
@click.option("--pack", metavar="FILE", default=None,
              help="Ranker pack from `prtk train` for --scorer predictor (its layer; its tokens for --keep).")
@click.option("--no-tokens", is_flag=True, help="With --scorer predictor: leave out the pack's learnable tokens.")
@click.option("--fuse-dropped", is_flag=True, help="Add one token averaging the dropped ones (EViT-style).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=int, default=1, show_default=True, help="Data loader worker processes (0: main).")
@click.option("--limit", type=int, default=None, metavar="N",
              help="Evaluate an evenly spaced subset of N images.")
@click.option("--skip-bad", is_flag=True, help="Count and skip images that cannot be decoded instead of stopping.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--json", "json_path", metavar="FILE", default=None, help="Also write the report as JSON (- for stdout).")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
def eval_command(model_name, pretrained, checkpoint, model_config, random_weights, seed, data_root, keep, layer,
                 scorer, ranking, pack, no_tokens, fuse_dropped, batch_size, workers, limit, skip_bad, device,
                 json_path, force):
    """Zero-shot top-1/top-5, images/s and GFLOPs of the unpruned and the pruned image tower."""
    from .console import progress_bar
    from .data import UnreadableImageError
    from .evaluation import EvalConfig, evaluate
    from .pruning import check_keep

    check_keep(keep)
    check_json_destination(json_path, force, weights_inputs(checkpoint, model_config)
                           | {"--ranking": ranking, "--pack": pack})
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    config = EvalConfig(keep=keep, layer=layer, scorer=scorer, ranking=ranking, pack=pack, tokens=not no_tokens,
                        seed=seed, fuse_dropped=fuse_dropped, batch_size=batch_size, workers=workers, limit=limit,
                        skip_bad=skip_bad, device=device)
    try:
        with progress_bar(f"eval {clip.name}") as update:
            report = evaluate(clip, data_root, config, progress=update)
    except UnreadableImageError as error:
        raise PrtkInputError(f"{error} (pass --skip-bad to count and skip unreadable images)") from None
    _print_eval_table(report, to_stderr=json_path == "-")
    if json_path is not None:
        emit_json(report, json_path, force)


def _print_eval_table(report: dict, to_stderr: bool) -> None:
    from .console import print_table, stderr, stdout

    pruning, results = report["pruning"], report["results"]
    patches = report["architecture"]["num_patches"]
    scorer = pruning["scorer"] + (f" + {pruning['learnable_tokens']} tokens" if pruning["learnable_tokens"] else "")
    rows = [["unpruned", "1", str(patches), "-"], [scorer, f"{pruning['keep']:g}",
                                                  str(pruning["keep_count"]), str(pruning["layer"])]]
    for row, result in zip(rows, (results["unpruned"], results["pruned"]), strict=True):
        row += [f"{result['top1']:.2f}", f"{result['top5']:.2f}", f"{result['images_per_s']:,.1f}",
                f"{result['gflops']:.3f}"]
    print_table(f"{report['model']} on {report['data']['root']} ({report['data']['images']} images)",
                ["model", "keep", "k", "layer", "top-1 %", "top-5 %", "images/s", "GFLOPs"], rows,
                console=stderr if to_stderr else stdout)
    if report["data"]["skipped_bad"]:
        stderr.print(f"skipped {len(report['data']['skipped_bad'])} unreadable images")


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the names as a JSON object.")
def models_command(as_json):
    """List the built-in models (test beds with their shipped weights) and the open_clip architectures."""
    from ._torchvision_compat import import_open_clip
    from .models import builtin_checkpoint, builtin_model_names, register_builtin_configs

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


@cli.command("make-shapes")
@click.argument("out", metavar="OUT_DIR")
@click.option("--count", type=int, default=1000, show_default=True, help="Number of images (classes cycle).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Data set seed; image i depends only on (seed, i). Seed 0 is prtk-testbed-shapes' training split.")
@click.option("--size", type=int, default=64, show_default=True, help="Image side in pixels.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
def make_shapes_command(out, count, seed, size, force):
    """Write the synthetic shapes data set (10 colour x shape classes) as an ImageFolder."""
    from .synthetic import write_shapes_folder

    write_shapes_folder(out, count, seed, size, force)
    click.echo(f"wrote {count} images in 10 classes to {out}", err=True)


@cli.command("train-testbed")
@click.argument("name", metavar="NAME", type=click.Choice(["prtk-testbed-cifar10", "prtk-testbed-shapes"]))
@click.option("--out", "out_dir", metavar="DIR", required=True,
              help="Folder for NAME.safetensors and NAME.card.json (the shipped ones live in toolkit/checkpoints).")
@click.option("--train-data", metavar="DIR", default=None, help="Training ImageFolder (CIFAR-10 test bed).")
@click.option("--test-data", metavar="DIR", default=None, help="Held-out ImageFolder (CIFAR-10 test bed).")
@click.option("--train-count", type=int, default=None, help="Generated training images (shapes)  [default: 30000]")
@click.option("--test-count", type=int, default=None, help="Generated held-out images (shapes)  [default: 2000]")
@click.option("--epochs", type=int, default=None, help="Passes over the training data  [default: 10]")
@click.option("--batch-size", type=int, default=None,
              help="Images per optimisation step  [default: 256 CIFAR-10, 128 shapes]")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW, cosine).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial weights, the shuffle, the augmentation and the caption templates.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast, for GPUs (slower than fp32 on the CPUs tested).")
@click.option("--device", default="cpu", show_default=True, help="Train on cpu, cuda or cuda:N.")
@click.option("--work-dir", metavar="DIR", default=None,
              help="Per-epoch training state; rerunning the same command resumes from it  [default: OUT/.NAME.work]")
@click.option("--force", is_flag=True, help="Overwrite existing outputs and discard a saved training state.")
@click.option("--model-name", metavar="NAME", default=None,
              help="Name of the trained model and its files  [default: NAME, on the test bed's own data]. Needed "
                   "when the CIFAR-10 test bed is trained on other classes; the architecture is then written "
                   "beside the weights as NAME.json (load with --model-config and --checkpoint).")
@click.option("--json", "json_path", metavar="FILE", default=None, help="Also write the card to FILE (- for stdout).")
def train_testbed_command(name, out_dir, train_data, test_data, train_count, test_count, epochs, batch_size, lr, seed,
                          bf16, device, work_dir, force, model_name, json_path):
    """Train a test-bed CLIP (both towers, contrastive on class captions) and write its weights and card."""
    from .clip_training import ClipTrainConfig
    from .console import progress_bar, stderr
    from .testbeds import build_testbed, recipe

    check_json_destination(json_path, force)
    check_writable_folder(out_dir)
    if work_dir is not None:
        check_writable_folder(work_dir)
    plan = recipe(name)
    config = ClipTrainConfig(epochs=plan.epochs if epochs is None else epochs, lr=lr, seed=seed, bf16=bf16,
                             batch_size=plan.batch_size if batch_size is None else batch_size)
    config.check()
    total = config.epochs

    def report_epoch(record: dict) -> None:
        stderr.print(f"epoch {record['epoch']}/{total}: loss {record['loss']:.4f}, "
                     f"held-out top-1 {record['held_out_top1']:.2f}%")

    card = build_testbed(name, out_dir, train_dir=train_data, test_dir=test_data, config=config,
                         train_count=train_count, test_count=test_count, work_dir=work_dir, force=force, device=device,
                         command=invocation(click.get_current_context()), progress=progress_bar, on_epoch=report_epoch,
                         model_name=model_name)
    accuracy = card["accuracy"]
    click.echo(f"{card['model']}: zero-shot top-1 {accuracy['top1']:.2f}% on {accuracy['held_out_images']} "
               f"held-out images (cls-attention@0.6 {accuracy['pruned']['cls-attention@0.6']['top1']:.2f}%, "
               f"random@0.3 {accuracy['pruned']['random@0.3']['top1']:.2f}%), trained in {card['wall_time_s']:.0f} s",
               err=json_path == "-")
    if json_path is not None:
        emit_json(card, json_path, force)


@cli.group("rank", cls=PrtkGroup, invoke_without_command=True, subcommand_metavar="[merge]")
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
@click.option("--json", "json_path", metavar="FILE", default=None,
              help="Also write a summary (images, layer, score, step, threads, seconds) as JSON (- for stdout).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs and discard a partial run.")
@click.pass_context
def rank_command(ctx, model_name, pretrained, checkpoint, model_config, random_weights, seed, data_root, out, layer,
                 score, step, min_keep, max_batch, chunk, limit, shard, device, threads, json_path, force):
    """Golden ranking of every image's patch tokens (greedy backward elimination at block --layer).

    A killed run restarted with the same command continues where it stopped. Under
    `torchrun --nproc-per-node N` the images are split across the processes and rank 0 writes the file.
    """
    if ctx.invoked_subcommand is not None:
        return
    import time

    from .console import progress_bar
    from .distributed import check_threads, intra_op_threads, work_partition
    from .evaluation import resolve_device
    from .rank_run import rank_folder
    from .ranking import RankingConfig

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
    start = time.perf_counter()
    description = f"rank {clip.name}" + (f" (part {part.index + 1}/{part.count})" if part.count > 1 else "")
    with intra_op_threads(threads) as used_threads, progress_bar(description) as update:
        ranking = rank_folder(clip, data_root, out, config, chunk=chunk, limit=limit, shard=part, force=force,
                              device=device, progress=update, gather=gather)
    if ranking is None:
        return
    seconds = time.perf_counter() - start
    summary = {key: ranking.meta[key] for key in ("model", "num_patches", "layer", "score", "step", "min_keep")}
    summary |= {"out": str(out), "images": len(ranking.images), "threads": used_threads, "seconds": round(seconds, 3)}
    click.echo(f"wrote {out}: {summary['images']} images x {summary['num_patches']} patches, layer "
               f"{summary['layer']}, score {score}, step {step}, {seconds:.1f} s", err=True)
    if json_path is not None:
        emit_json(summary, json_path, force)


@rank_command.command("merge")
@click.argument("out", metavar="OUT")
@click.argument("shards", metavar="SHARD...", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Overwrite an existing OUT.")
def rank_merge_command(out, shards, force):
    """Join the files of `prtk rank --shard i/n` (every i) into the file one run would write."""
    from .rank_run import merge_rankings
    from .ranking_file import load_ranking, save_ranking

    check_output(out, force, {f"SHARD {shard}": shard for shard in shards})
    merged = merge_rankings([load_ranking(path) for path in shards])
    save_ranking(out, merged)
    click.echo(f"wrote {out}: {merged.tensors['order'].shape[0]} images from {len(shards)} shards", err=True)


@cli.command("train")
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
@click.option("--json", "json_path", metavar="FILE", default=None,
              help="Also write the pack's metadata and metrics as JSON (- for stdout).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs and discard a partial run.")
def train_command(model_name, pretrained, checkpoint, model_config, random_weights, seed, ranking_path, data_root,
                  out, keeps, num_tokens, loss, predictor_epochs, token_epochs, batch_size, predictor_lr, token_lr,
                  val_fraction, device, json_path, force):
    """Train the predictor on a ranking file, then learnable tokens per keep ratio; write a ranker pack.

    A killed run restarted with the same command continues at the epoch where it stopped. Under
    `torchrun --nproc-per-node N` it trains with DistributedDataParallel and rank 0 writes the pack.
    """
    from .console import progress_bar
    from .distributed import torchrun_world
    from .ranker_training import TrainConfig, train_pack

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
    _print_pack_table(pack.meta)
    click.echo(f"wrote {out}", err=True)
    if json_path is not None:
        emit_json(pack.meta, json_path, force)


@cli.command("export")
@model_options
@click.option("--pack", metavar="FILE", default=None,
              help="Ranker pack from `prtk train`: its predictor scores the patches, its tokens are appended.")
@click.option("--scorer", type=click.Choice(["cls-attention", "fixed-random"]), default="cls-attention",
              show_default=True, help="Without --pack: the baseline scorer (fixed-random: one seeded random patch "
                                      "subset for every image, the random baseline a static graph can hold).")
@click.option("--keep", "keeps", default="0.6", show_default=True, metavar="R[,R...]",
              help="Keep ratios; one graph each, with k = max(1, round(R * N)) patches.")
@click.option("--layer", type=int, default=None,
              help="Without --pack: prune at the input of this block  [default: L // 4]")
@click.option("--out", "out_dir", metavar="DIR", required=True,
              help="Folder for <model>_keep<R>.onnx and its .json sidecar per ratio.")
@click.option("--full", is_flag=True, help="Also export the unpruned tower (<model>_full.onnx), the reference.")
@click.option("--classes", "classes_path", metavar="FILE", default=None,
              help="Class names, one per line: bake a zero-shot classifier into a 'logits' output [B, C].")
@click.option("--no-normalize", is_flag=True, help="Output the raw embedding instead of the L2-normalised one.")
@click.option("--no-kept-indices", is_flag=True, help="Leave out the 'kept_indices' output [B, k].")
@click.option("--no-tokens", is_flag=True, help="With --pack: leave out its learnable tokens.")
@click.option("--fp16", is_flag=True, help="fp16 weights and activations; LayerNorm, softmax and I/O stay fp32.")
@click.option("--opset", type=int, default=17, show_default=True,
              help="ONNX opset, from 17 (LayerNormalization as one op) to the newest the installed torch exports (20).")
@click.option("--data", "check_data", metavar="DIR", default=None,
              help="ImageFolder whose images feed the ONNX Runtime check  [default: generated shapes images]")
@click.option("--check-images", type=int, default=8, show_default=True,
              help="Images in the ONNX Runtime check (also run alone, at batch 1).")
@click.option("--no-check", is_flag=True, help="Skip the checks (onnx.checker, ONNX Runtime, TensorRT readiness).")
@click.option("--json", "json_path", metavar="FILE", default=None,
              help="Also write the sidecars and check results as JSON (- for stdout).")
@click.option("--force", is_flag=True, help="Overwrite existing exports.")
@click.pass_context
def export_command(ctx, model_name, pretrained, checkpoint, model_config, random_weights, seed, pack, scorer, keeps,
                   layer, out_dir, full, classes_path, no_normalize, no_kept_indices, no_tokens, fp16, opset,
                   check_data, check_images, no_check, json_path, force):
    """Export static-shape ONNX graphs, one per keep ratio, and check each.

    Each graph maps images [batch,3,H,W] to an embedding [batch,E] with the scorer, a constant-K TopK,
    the gather and the learnable tokens inside; only the batch dimension is dynamic. Checks (a table;
    any failure exits 1): onnx.checker full check, ONNX Runtime against PyTorch (max abs diff <= 1e-4
    in fp32, identical kept indices) and TensorRT readiness. The same inputs give byte-identical files.
    """
    from .console import progress_bar
    from prtk.export.checks import load_check_images
    from prtk.export.exporter import ExportConfig, check_export_outputs, export_models, read_class_names

    config = ExportConfig(keeps=parse_keeps(keeps), pack=pack, scorer=scorer, layer=layer, tokens=not no_tokens,
                          full=full, normalize=not no_normalize, kept_indices=not no_kept_indices,
                          classes=read_class_names(classes_path) if classes_path else (), fp16=fp16, opset=opset,
                          seed=seed, check=not no_check)
    config.check_values()
    inputs = weights_inputs(checkpoint, model_config) | {"--pack": pack, "--classes": classes_path}
    check_json_destination(json_path, force, inputs)
    check_writable_folder(out_dir)
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    check_export_outputs(clip.name, config, out_dir, force, inputs)
    images, source = (None, "") if no_check else load_check_images(clip.preprocess, clip.spec.image_size,
                                                                    check_data, check_images)
    with progress_bar(f"export {clip.name}", unit="graph") as update:
        records = export_models(clip, config, out_dir, images, force=force, progress=update)
    _print_export_table(records, source, to_stderr=json_path == "-")
    if json_path is not None:
        emit_json({"exports": [record.meta | {"path": str(record.path)} for record in records]}, json_path, force)
    if not all(record.passed for record in records):
        click.echo("prtk export: a check failed (see the table)", err=True)
        ctx.exit(1)


def _print_export_table(records, source: str, to_stderr: bool) -> None:
    from .console import print_table, stderr, stdout

    console = stderr if to_stderr else stdout
    names = [check.name for check in records[0].checks] if records and records[0].checks else []
    rows = []
    for record in records:
        pruning = record.meta["pruning"]
        size = sum(file.stat().st_size for file in record.files) / 2 ** 20
        rows.append(["full" if pruning is None else f"{pruning['keep']:g}",
                     "-" if pruning is None else str(pruning["keep_count"]), f"{record.meta['gflops']:.3f}",
                     f"{size:.1f}", *("pass" if check.passed else "FAIL" for check in record.checks)])
    print_table(f"ONNX exports (checks on {source})" if names else "ONNX exports (checks skipped)",
                ["keep", "k", "GFLOPs", "MiB", *names], rows, console=console)
    for record in records:
        for check in record.checks:
            console.print(f"{record.path.name}: {check.name}: {'pass' if check.passed else 'FAIL'}: {check.detail}",
                          soft_wrap=True)


@cli.command("build-engine")
@click.argument("target", metavar="DIR_OR_ONNX")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp16", show_default=True,
              help="Engine precision; under fp16/bf16 LayerNorm, softmax and reductions stay fp32.")
@click.option("--batch", "batch_profile", default="1:8:32", show_default=True, metavar="MIN:OPT:MAX",
              help="Optimisation profile of the batch dimension.")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="Builder workspace limit in GiB.")
@click.option("--timing-cache", metavar="FILE", default=None,
              help="Timing cache read before and updated after each build  [default: DIR/timing.cache]")
@click.option("--force", is_flag=True, help="Overwrite existing engines.")
def build_engine_command(target, precision, batch_profile, workspace, timing_cache, force):
    """Build a TensorRT engine from each exported ONNX (a file, or every .onnx in a folder).

    Writes <name>_<precision>.engine beside the ONNX with a .json sidecar: the ONNX sidecar plus the
    TensorRT version, GPU, compute capability, precision and profile. Needs TensorRT and an NVIDIA GPU.
    """
    from pathlib import Path

    from prtk.engines.tensorrt_build import (EngineConfig, build_engine, engine_path, parse_batch_profile,
                                             require_tensorrt)

    config = EngineConfig(precision, parse_batch_profile(batch_profile), workspace)
    config.check()
    target = Path(target)
    sources = sorted(target.glob("*.onnx")) if target.is_dir() else [target]
    if not sources or not all(path.is_file() for path in sources):
        raise PrtkInputError(f"no ONNX file at {target}")
    for source in sources:
        engine = engine_path(source, precision)
        for output in (engine, engine.with_suffix(".json")):
            check_output(output, force, {"ONNX": source, "ONNX sidecar": source.with_suffix(".json")})
    require_tensorrt()
    cache = timing_cache or str((target if target.is_dir() else target.parent) / "timing.cache")
    for source in sources:
        out = build_engine(source, EngineConfig(precision, config.batch, workspace, cache), force)
        click.echo(f"wrote {out}", err=True)


@cli.command("bench")
@model_options
@click.option("--pack", metavar="FILE", default=None, help="Ranker pack (its predictor and tokens); else --scorer.")
@click.option("--no-tokens", is_flag=True, help="With --pack: leave out its learnable tokens.")
@click.option("--scorer", type=click.Choice(["cls-attention", "fixed-random"]), default="cls-attention",
              show_default=True, help="Without --pack: the baseline scorer.")
@click.option("--keep", "keeps", default="0.5,0.6,0.7", show_default=True, metavar="R[,R...]", help="Keep ratios.")
@click.option("--layer", type=int, default=None, help="Without --pack: the pruning block  [default: L // 4]")
@click.option("--backend", "backends", default="torch,onnxruntime", show_default=True, metavar="B[,B...]",
              help="Among torch, onnxruntime, tensorrt (TensorRT needs a GPU and the tensorrt package).")
@click.option("--batch", "batches", default="1,8,32", show_default=True, metavar="N[,N...]", help="Batch sizes.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda[:N]; on cuda onnxruntime uses its CUDA provider.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="torch and TensorRT precision (fp16/bf16 on a GPU only).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs per case.")
@click.option("--iterations", type=int, default=10, show_default=True, help="Timed runs per case, at least.")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Timed seconds per case, at least.")
@click.option("--json", "json_path", metavar="FILE", default=None, help="Also write the rows as JSON (- for stdout).")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
def bench_command(model_name, pretrained, checkpoint, model_config, random_weights, seed, pack, no_tokens, scorer,
                  keeps, layer, backends, batches, device, precision, warmup, iterations, seconds, json_path, force):
    """Latency (median, p90, p99), images/s, GFLOPs and speedup over the unpruned tower per backend, keep, batch.

    The unpruned tower is measured on every backend and batch too; the speedup is beside the cost-model
    bound. Backends are timed through one runner interface: CUDA events on a GPU, wall time on CPU.
    """
    from .console import progress_bar
    from .evaluation import resolve_device
    from prtk.engines.benchmark import BenchConfig, Timing, run_bench

    config = BenchConfig(keeps=parse_keeps(keeps), pack=pack, tokens=not no_tokens, scorer=scorer, layer=layer,
                         backends=tuple(b.strip() for b in backends.split(",")),
                         batches=parse_counts(batches, "--batch"), device=device, precision=precision, seed=seed,
                         timing=Timing(warmup, iterations, seconds))
    config.check()
    resolve_device(device)
    check_json_destination(json_path, force, weights_inputs(checkpoint, model_config) | {"--pack": pack})
    clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    with progress_bar(f"bench {clip.name}", unit="case") as update:
        rows = run_bench(clip, config, progress=update)
    _print_bench_table(clip.name, config, rows, to_stderr=json_path == "-")
    if json_path is not None:
        emit_json({"model": clip.name, "device": device, "precision": precision, "rows": rows}, json_path, force)


def parse_counts(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PrtkInputError(f"{option} must be comma-separated integers like 1,8,32, got {text!r}") from None


def _print_bench_table(model: str, config, rows: list[dict], to_stderr: bool) -> None:
    from .console import print_table, stderr, stdout

    table = [[row["backend"], "full" if row["keep"] is None else f"{row['keep']:g}", str(row["batch"]),
              *(f"{row[key]:.2f}" for key in ("median_ms", "p90_ms", "p99_ms")), f"{row['images_per_s']:,.1f}",
              f"{row['gflops']:.2f}", f"{row['speedup']:.2f}x", f"{row['bound']:.2f}x"] for row in rows]
    print_table(f"{model} on {config.device} ({config.precision})",
                ["backend", "keep", "batch", "median ms", "p90 ms", "p99 ms", "images/s", "GFLOPs", "speedup", "bound"],
                table, console=stderr if to_stderr else stdout)


@cli.command("validate")
@click.argument("artifact", metavar="ARTIFACT")
@model_options
@click.option("--data", "data_root", metavar="DIR", required=True, help="Labelled ImageFolder to validate on.")
@click.option("--pack", metavar="FILE", default=None, help="The pack the artifact was exported from (if any).")
@click.option("--limit", type=int, default=None, metavar="N", help="Validate on an evenly spaced subset of N images.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per run.")
@click.option("--min-agreement", type=float, default=None,
              help="Smallest prediction agreement with the pruned reference, %  [default: 99.9 fp32, 99.5 fp16]")
@click.option("--min-cosine", type=float, default=None,
              help="Smallest embedding cosine to the pruned reference  [default: 0.9999 fp32, 0.999 fp16]")
@click.option("--max-accuracy-delta", type=float, default=None,
              help="Largest |top-1 difference| to the pruned reference, points  [default: 0.1]")
@click.option("--max-abs-diff", type=float, default=None,
              help="Largest |artifact - pruned reference| of any embedding element  [default: 1e-4 fp32, 1e-2 fp16]")
@click.option("--max-relative-error", type=float, default=None,
              help="Largest per-image ||artifact - reference|| / ||reference|| of the embedding  "
                   "[default: 1e-4 fp32, 1e-2 fp16]")
@click.option("--report", "report_prefix", metavar="PREFIX", default=None,
              help="Write PREFIX.md and PREFIX.json  [default: the artifact's path + .validation]")
@click.option("--force", is_flag=True, help="Overwrite existing reports.")
@click.pass_context
def validate_command(ctx, artifact, model_name, pretrained, checkpoint, model_config, random_weights, seed,
                     data_root, pack, limit, batch_size, min_agreement, min_cosine, max_accuracy_delta, max_abs_diff,
                     max_relative_error, report_prefix, force):
    """Prove an exported .onnx (or .engine) gives its PyTorch reference's answers; exit 0 pass, 1 fail.

    The sidecar must be the graph's own description (the one embedded in the ONNX metadata) and agree
    with the graph's inputs, outputs and precision; the thresholds follow the graph's precision. The
    references are the unpruned tower and the tower pruned with the same pack, scorer and keep ratio,
    loaded from the weights the sidecar names (or the model options given, which must match them).
    """
    from .artifacts import write_bytes_atomic, write_json_atomic
    from .console import progress_bar
    from prtk.engines.validation import Artifact, Thresholds, markdown_report, validate

    target = Artifact.read(artifact)
    thresholds = Thresholds.for_precision(target.precision, min_agreement=min_agreement, min_cosine=min_cosine,
                                          max_accuracy_delta=max_accuracy_delta, max_abs_diff=max_abs_diff,
                                          max_relative_error=max_relative_error)
    prefix = report_prefix or f"{target.path}.validation"
    inputs = {**target.inputs, "--pack": pack, **weights_inputs(checkpoint, model_config)}
    markdown_path, json_path = (check_output(f"{prefix}{suffix}", force, inputs) for suffix in (".md", ".json"))
    if model_name is None and model_config is None:
        from .models import load_clip

        clip = load_clip(target.sidecar["model"], **target.load_options())
    else:
        clip = load_model_from_options(model_name, pretrained, checkpoint, model_config, random_weights, seed)
    with progress_bar(f"validate {target.path.name}") as update:
        report = validate(clip, target, data_root, thresholds, pack, limit, batch_size, progress=update)
    text = markdown_report(report)
    write_bytes_atomic(markdown_path, text.encode())
    write_json_atomic(json_path, report)
    click.echo(text)
    click.echo(f"wrote {markdown_path} and {json_path}", err=True)
    if not report["passed"]:
        ctx.exit(1)


@cli.command("quickstart")
@click.option("--model", "model_name", default="prtk-testbed-shapes", show_default=True,
              help="A built-in model with shipped weights (see `prtk models`).")
@click.option("--data", "data_root", metavar="DIR", default=None,
              help="Labelled ImageFolder to rank and evaluate on  [default: generated shapes images]")
@click.option("--out", "out_dir", metavar="DIR", default="out/quickstart", show_default=True,
              help="Folder for the ranking, pack, exports, reports, summary and plots.")
@click.option("--keep", "keeps", default="0.5,0.6,0.7", show_default=True, metavar="R[,R...]", help="Keep ratios.")
@click.option("--rank-images", type=int, default=256, show_default=True, help="Images ranked (the training set).")
@click.option("--eval-images", type=int, default=500, show_default=True, help="Images validated and evaluated.")
@click.option("--json", "json_path", metavar="FILE", default=None,
              help="Also write the summary as JSON (- for stdout).")
@click.option("--force", is_flag=True, help="Empty a non-empty --out folder and start over.")
def quickstart_command(model_name, data_root, out_dir, keeps, rank_images, eval_images, json_path, force):
    """The whole pipeline on a test bed, on a CPU, in minutes: rank -> train -> export -> engines (where
    TensorRT is present) -> validate -> accuracy -> bench, then a summary table and PNG plots in --out."""
    from .console import progress_bar, stderr
    from .models import builtin_checkpoint, builtin_model_names, load_clip
    from .quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(keeps=parse_keeps(keeps), rank_images=rank_images, eval_images=eval_images)
    shipped = [name for name in builtin_model_names() if builtin_checkpoint(name) is not None]
    if model_name not in shipped:
        raise PrtkInputError(f"quickstart runs on a built-in model with shipped weights ({', '.join(shipped)}), "
                             f"got {model_name!r}")
    check_json_destination(json_path, force, {"--out": out_dir})
    check_writable_folder(out_dir)
    clip = load_clip(model_name)
    summary = run_quickstart(clip, out_dir, config, data_root, force, progress=progress_bar,
                             say=lambda line: stderr.print(line, markup=False, highlight=False))
    _print_quickstart_table(summary, to_stderr=json_path == "-")
    click.echo(f"wrote {out_dir}/summary.md, summary.json, accuracy_vs_keep.png, speedup_vs_keep.png, "
               f"kept_patches.png in {summary['seconds']:.0f} s", err=True)
    if json_path is not None:
        emit_json({key: value for key, value in summary.items() if key != "bench"}, json_path, force)


def _print_quickstart_table(summary: dict, to_stderr: bool) -> None:
    from .console import print_table, stderr, stdout

    keeps = [f"{k:g}" for k in summary["config"]["keeps"]]
    rows = [[name, *(f"{points[k]:.2f}" for k in keeps)] for name, points in summary["accuracy"].items()]
    rows += [[f"{backend} speedup (batch {summary['speedup_batch']})", *(f"{points[k]:.2f}x" for k in keeps)]
             for backend, points in summary["speedup"].items()]
    rows.append(["cost-model bound", *(f"{summary['bound'][k]:.2f}x" for k in keeps)])
    rows.append(["validate", *("pass" if summary["validation"][k]["passed"] else "FAIL" for k in keeps)])
    print_table(f"{summary['model']} quickstart (unpruned top-1 {summary['unpruned_top1']:.2f}%)",
                ["top-1 % / speed", *(f"keep {k}" for k in keeps)], rows, console=stderr if to_stderr else stdout)


def parse_keeps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise PrtkInputError(f"--keep must be comma-separated ratios like 0.5,0.6,0.7, got {text!r}") from None


def _print_pack_table(meta: dict) -> None:
    from .console import print_table, stderr

    metrics, cost = meta["metrics"], meta["predictor_cost"]
    rows = []
    for keep in (f"{k:g}" for k in meta["keep_ratios"]):
        tokens = metrics["tokens"][keep]
        rows.append([keep, str(tokens["keep_count"]), f"{metrics['predictor']['top_k_overlap'][keep]:.3f}",
                     f"{tokens['val_top1_no_tokens']:.2f}",
                     f"{tokens['val_top1']:.2f}" if "val_top1" in tokens else "-"])
    title = f"{meta['model']} pack: layer {meta['layer']}, {meta['training_data']['held_out']} held-out images"
    print_table(title, ["keep", "k", "top-k overlap", "top-1 %", f"top-1 % + {meta['num_tokens']} tokens"], rows,
                console=stderr)
    stderr.print(f"unpruned top-1 {metrics['unpruned_val_top1']:.2f}%, Kendall tau "
                 f"{metrics['predictor']['kendall_tau']:.3f}; predictor {cost['params']:,} parameters "
                 f"({100 * cost['params_ratio']:.2f}% of the tower's), {100 * cost['macs_ratio']:.2f}% of its MACs")


def main() -> None:
    cli.main(prog_name="prtk")


if __name__ == "__main__":
    main()
