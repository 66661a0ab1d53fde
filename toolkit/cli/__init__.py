"""Stage 9, the command line: one module per command group, each command parse -> one API call -> render.

Heavy imports (torch, open_clip, onnx) happen inside the commands, so ``prtk --help`` stays fast.
"""

from prtk.cli.app import cli, main

__all__ = ["cli", "main"]
