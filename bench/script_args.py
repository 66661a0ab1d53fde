"""What every bench script shares with the ``prtk`` command line: the model and weights options, and bad input
reported as one line ``<script>: error: ...`` with exit status 2 instead of a usage block or a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from prtk.core.errors import PrtkInputError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line, as the ``prtk`` command line does."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser_for(description: str) -> OneLineParser:
    return OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """``--model``, ``--pretrained``, ``--checkpoint``, ``--model-config``, ``--random-weights``, ``--seed``:
    the options (and meanings) of every ``prtk`` command."""
    parser.add_argument("--model", default=default_model,
                        help="open_clip architecture or built-in model" + (f" (default {default_model})"
                                                                           if default_model else ""))
    parser.add_argument("--pretrained", metavar="TAG", default=None, help="open_clip hub weights tag")
    parser.add_argument("--checkpoint", metavar="FILE", default=None,
                        help="local weights: .safetensors, or a torch state dict (weights_only=True)")
    parser.add_argument("--model-config", metavar="FILE", default=None,
                        help="open_clip model config JSON for a custom architecture")
    parser.add_argument("--random-weights", action="store_true", help="seeded random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")


def load_model(args: argparse.Namespace, random_by_default: bool = False):
    """The model the options name. ``random_by_default``: without a weights option, seeded random weights
    (for speed, which does not depend on them) instead of a built-in model's shipped weights."""
    from prtk.models import load_clip

    if args.model is None and args.model_config is None:
        raise PrtkInputError("no model given: pass --model NAME or --model-config FILE")
    given = args.pretrained or args.checkpoint or args.random_weights
    return load_clip(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, config=args.model_config,
                     random_weights=args.random_weights or (random_by_default and not given), seed=args.seed)


def run(main: Callable[[], None]) -> None:
    """Run a script's ``main``; a ``PrtkInputError`` ends it with one line and exit status 2."""
    try:
        main()
    except PrtkInputError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)


def parse_batches(text: str) -> list[int]:
    """``--batches 1,32`` -> [1, 32]; anything but comma-separated integers is bad input."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise PrtkInputError(f"--batches must be comma-separated integers, got {text!r}") from None


def add_json_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", dest="json_path", metavar="FILE", default=None, help="also write the results as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")


def check_json(args: argparse.Namespace) -> None:
    """Refuse an unwritable or existing (without ``--force``) ``--json`` file before any work."""
    from prtk.core.files import check_writable

    if args.json_path:
        check_writable(args.json_path, args.force)


def write_json(args: argparse.Namespace, document: dict) -> None:
    from prtk.core.files import write_json_atomic

    if args.json_path:
        write_json_atomic(args.json_path, document)
