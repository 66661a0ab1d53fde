"""What every command shares: the click classes that turn bad input into one line ``prtk <command>: error: ...``
(exit 2), the model options, ``--json`` and ``--force``, output checks before any work, and JSON output."""

from __future__ import annotations

import json
import shlex
import sys

import click

from prtk.core.errors import PrtkInputError
from prtk.export.options import (CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD,
                                 DEFAULT_LEVEL, OPTIMIZE_LEVELS)


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
    from prtk.models import load_clip

    if model_name is None and model_config is None:
        raise PrtkInputError("no model given: pass --model NAME (see `prtk models`) or --model-config FILE")
    return load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, config=model_config,
                     random_weights=random_weights, seed=seed)


def check_output(path: str, force: bool, inputs: dict[str, str | None]):
    """Refuse, before any work, an output file that cannot be written, exists without ``force``, or is one of
    the command's ``inputs`` (``{option: path}``); returns it as a Path."""
    from prtk.core.files import check_not_an_input, check_writable

    check_not_an_input(path, inputs)
    return check_writable(path, force)


def check_json_destination(destination: str | None, force: bool, inputs: dict[str, str | None] | None = None) -> None:
    """``check_output`` for a ``--json`` file (``-``, stdout, and None need no check)."""
    if destination not in (None, "-"):
        check_output(destination, force, inputs or {})


stages_option = click.option(
    "--stages", metavar="B:KEEP[,B:KEEP...]", default=None,
    help="Prune in stages, e.g. 3:0.7,6:0.7,9:0.7: the first stage (its block and keep, instead of --layer and "
         "--keep) uses the scorer; each later one keeps KEEP of the patches entering block B, ranked by "
         "--stage-scorer in block B-1. Blocks ascend within [1, L-1].")


stage_scorer_option = click.option(
    "--stage-scorer", type=click.Choice(["cls-attention", "elip"]), default="cls-attention", show_default=True,
    help="What ranks the patches at the later --stages: the CLS token's attention (EViT), or ELIP's language-guided "
         "query (the CLS mixed with the zero-shot head's class embeddings weighted by the current prediction).")


def stage_schedule(ctx: click.Context, stages: str | None, layer: int | None, keep: float | None):
    """``(layer, keep, later_stages)`` from ``--stages`` (refusing ``--keep`` / ``--layer`` beside it), else the
    options as given with no later stage."""
    from prtk.pruning.spec import parse_stages

    if stages is None:
        return layer, keep, ()
    refuse_with(ctx, "--stages", ("keep", "keeps", "layer"), "give the first stage as its first BLOCK:KEEP")
    return parse_stages(stages)


def given_options(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """The options among ``names`` (parameter names) that the command line set, by their flags."""
    return [param.opts[0] for param in ctx.command.params if param.name in names
            and ctx.get_parameter_source(param.name) is not click.core.ParameterSource.DEFAULT]


def refuse_export_options(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Refuse, in one line, export options given to a command that reads artifacts already exported."""
    given = given_options(ctx, names)
    if given:
        raise PrtkInputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for exporting a model's graphs; "
                             "the artifacts given were exported already")


def refuse_unless(ctx: click.Context, names: tuple[str, ...], needed: bool, what: str) -> None:
    """Refuse, in one line, options among ``names`` given on the command line when ``needed`` is false: they do
    nothing without ``what``."""
    given = given_options(ctx, names)
    if given and not needed:
        raise PrtkInputError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} nothing without {what}")


def refuse_with(ctx: click.Context, option: str, names: tuple[str, ...], hint: str) -> None:
    """Refuse, in one line, options among ``names`` given together with ``option``, which replaces them."""
    given = given_options(ctx, names)
    if given:
        raise PrtkInputError(f"{option} replaces {' and '.join(given)}: {hint}")


def weights_inputs(checkpoint: str | None, model_config: str | None) -> dict[str, str | None]:
    """The model options that name files, as ``check_output`` inputs."""
    return {"--checkpoint": checkpoint, "--model-config": model_config}


def json_file(destination: str | None) -> str | None:
    """The file a ``--json`` destination writes (None for stdout, ``-``, or no ``--json``), for output checks."""
    return None if destination == "-" else destination


def emit_json(result, destination: str | None, force: bool) -> None:
    """Write ``result`` (a typed result with ``as_dict()``, or a JSON document) to ``destination`` (``-`` =
    stdout; None: nothing), atomically, never over a file without ``force``. Every ``--json`` goes through here."""
    from prtk.core.files import check_writable, write_json_atomic

    if destination is None:
        return
    document = result.as_dict() if hasattr(result, "as_dict") else result
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


def json_option(what: str, name: str = "json_path"):
    """``--json FILE``: also write ``what`` as JSON (``-`` for stdout, the table then on stderr)."""
    return click.option("--json", name, metavar="FILE", default=None,
                        help=f"Also write {what} as JSON (- for stdout).")


def force_option(what: str = "Overwrite an existing --json file."):
    """``--force``, with what it overwrites or discards."""
    return click.option("--force", is_flag=True, help=what)


optimize_option = click.option(
    "--optimize", type=click.Choice(list(OPTIMIZE_LEVELS)), default=DEFAULT_LEVEL, show_default=True,
    help="Graph optimisation level: " + "; ".join(f"{level.name} {level.summary}" for level in OPTIMIZE_LEVELS.values())
    + ". O2 runs on ONNX Runtime only.")

def calibration_options(command):
    """``--calib-data``, ``--calib-images``, ``--calib-method``: how an int8-static graph is calibrated;
    ``--before-pruning``: whether the blocks before the pruning layer are int8."""
    options = [
        click.option("--calib-data", metavar="DIR", default=None,
                     help="int8-static: ImageFolder whose images calibrate the activation scales (your training "
                          "images, not the ones you validate on)."),
        click.option("--calib-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, show_default=True,
                     help="int8-static: calibration images, a subset of --calib-data drawn with --seed."),
        click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default=DEFAULT_CALIBRATION_METHOD,
                     show_default=True, help="int8-static: activation range from the min and max, the 99.999th "
                                             "percentile, or the entropy (KL) criterion."),
        click.option("--before-pruning", type=click.Choice(["int8", "float"]), default=None,
                     help="int8 graphs: compute the blocks before the (last) pruning layer in int8 (faster) or float "
                          "(the kept patches follow the float model more closely)  [default: int8 for int8-dynamic, "
                          "float for int8-static and for staged graphs]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


pack_layer_option = click.option(
    "--layer", type=int, default=None,
    help="Prune at the input of this block; with --pack it must be the pack's  [default: the pack's, else L // 4]")


def parse_keeps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise PrtkInputError(f"--keep must be comma-separated ratios like 0.5,0.6,0.7, got {text!r}") from None


def parse_counts(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PrtkInputError(f"{option} must be comma-separated integers like 1,8,32, got {text!r}") from None
