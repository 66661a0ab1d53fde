"""The README's examples: every Python snippet runs as written, and every ``prtk`` command line in it is accepted
by the real command-line parser (options exist, values convert, required ones are there). The command lines
name data sets and hub weights absent here (ImageNet, CIFAR-10 folders, OpenAI weights), so they are parsed,
not run; the pipeline they describe runs in the other tests."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from prtk.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def command_lines() -> list[str]:
    lines = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|\|", line):
                words = shlex.split(part.strip())
                if words and words[0].endswith("bin/prtk"):
                    lines.append(" ".join(shlex.quote(word) for word in words[1:]))
    return lines


def parse(args: list[str]) -> None:
    """Resolve ``args`` to the command they name (``rank merge`` included) and parse its options."""
    context = click.Context(cli, info_name="prtk")
    name, command, rest = cli.resolve_command(context, args)
    if isinstance(command, click.Group) and rest and rest[0] in command.commands:
        context = click.Context(command, info_name=name, parent=context)
        name, command, rest = command.resolve_command(context, rest)
    command.make_context(name, rest, parent=context)


def test_the_readme_has_examples():
    assert len(command_lines()) >= 15 and len(code_blocks("python")) >= 4


@pytest.mark.parametrize("line", command_lines())
def test_readme_command_line_parses(line):
    parse(shlex.split(line))


def test_a_wrong_command_line_does_not_parse():
    with pytest.raises(click.UsageError):
        parse(["export", "--model", "prtk-tiny", "--keep-ratio", "0.6", "--out", "x"])


def test_readme_python_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, snippet in enumerate(code_blocks("python"), start=1):
        exec(compile(snippet, f"README.md python block {number}", "exec"), namespace)
    assert namespace["report"].passed and namespace["summary"].images == 60
