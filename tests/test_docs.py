"""The README documents every option and environment variable of every command (datasette-style)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from infraetl.cli_daemons import consumer_cli, producer_cli
from infraetl.ctl import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and p.name != "help"]


COMMANDS = [("infraetl-consumer", consumer_cli), ("infraetl-producer", producer_cli), ("infraetl-ctl", cli)] + [
    (f"infraetl-ctl {name}", c) for name, c in cli.commands.items()
]


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_is_in_the_readme(name: str, cmd: click.Command) -> None:
    for opt in _options(cmd):
        for flag in opt.opts:
            assert f"`{flag}" in README or f"{flag} " in README, f"{name} {flag} is not in the README"
        if isinstance(opt.envvar, str):
            assert opt.envvar in README, f"{name} {opt.envvar} is not in the README"
        assert opt.help, f"{name} {opt.opts[0]} has no help text"


def test_every_command_is_in_the_readme() -> None:
    for name in cli.commands:
        assert f"`{name}" in README, f"infraetl-ctl {name} is not in the README"


def test_readme_names_the_two_commands() -> None:
    assert "./bin/demo" in README and "./bin/test" in README
