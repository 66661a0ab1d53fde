"""The ``prtk`` command group: every subcommand, registered from its own module."""

from __future__ import annotations

import click

from prtk import __version__
from prtk.cli.base import PrtkGroup
from prtk.cli.catalog import make_shapes_command, models_command
from prtk.cli.cpp import cpp_group
from prtk.cli.engines import bench_command, build_engine_command, validate_command
from prtk.cli.evaluate import eval_command
from prtk.cli.export import export_command
from prtk.cli.quickstart import quickstart_command
from prtk.cli.rank import rank_command
from prtk.cli.structure import prune_structure_command
from prtk.cli.testbed import train_testbed_command
from prtk.cli.train import train_command
from prtk.core.allocator import reuse_freed_memory


@click.group("prtk", cls=PrtkGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="prtk")
def cli():
    """prtk: learn which CLIP patch tokens to drop and deploy static-shape pruned image towers.

    Pipeline: rank -> train -> export --keep r -> build-engine -> validate; quickstart runs it all on a
    test bed; prune-structure first makes the tower itself smaller (heads, MLP channels, blocks). Every
    command takes --help.
    """
    reuse_freed_memory()


for command in (bench_command, build_engine_command, cpp_group, eval_command, export_command, make_shapes_command,
                models_command, prune_structure_command, quickstart_command, rank_command, train_command,
                train_testbed_command, validate_command):
    cli.add_command(command)


def main() -> None:
    cli.main(prog_name="prtk")
