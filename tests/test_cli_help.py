"""Every command and subcommand explains itself with --help."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

PARSERS = [
    "edge_agent.cli",
    "central.cli",
    "simulator.cli",
    "ml.cli",
    "central.dashboards.__main__",
]


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from walk(sub, (*path, name))


@pytest.mark.parametrize("module", PARSERS)
def test_every_command_has_help(module: str) -> None:
    mod = importlib.import_module(module)
    parser = mod.build_parser()
    assert parser.description, f"{module}: the top-level command has no description"
    commands = list(walk(parser))
    assert commands, f"{module}: no subcommands found"
    for path, sub, help_text in commands:
        assert help_text, f"{module} {' '.join(path)}: no help line in the command list"
        assert sub.format_help().strip()
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{module} {' '.join(path)} {action.option_strings}: no help"


@pytest.mark.parametrize(
    "command",
    [
        ["edge-agent", "--help"],
        ["central", "--help"],
        ["edge-agent", "status", "--help"],
        ["edge-agent", "clock", "reset", "--help"],
        ["python", "-m", "central.gateway_bundle", "--help"],
        ["python", "-m", "central.dashboards", "--help"],
        ["python", "-m", "simulator.modbus_meters", "--help"],
        ["python", "-m", "bench.meters", "--help"],
        ["python", "-m", "bench.fast_agent", "--help"],
    ],
)
def test_installed_entry_points_answer_help(command: list[str]) -> None:
    exe = f"{sys.prefix}/bin/{command[0]}"
    out = subprocess.run([exe, *command[1:]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage:" in out.stdout
