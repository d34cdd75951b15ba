"""Every warehouse command has help, and the package runs standalone."""

from __future__ import annotations

import argparse
import subprocess
import sys

from central.warehouse.cli import build_parser, register


def walk(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, str | None]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((f"{path} {name}".strip(), helps.get(name)))
                found += walk(sub, f"{path} {name}")
    return found


def test_every_command_has_help() -> None:
    commands = walk(build_parser())
    names = {name for name, _ in commands}
    assert {
        "warehouse serve",
        "warehouse load",
        "warehouse dbt",
        "warehouse status",
        "warehouse report",
        "quality run",
    } <= names
    assert all(help_text for _, help_text in commands), commands


def test_register_adds_groups_to_another_cli() -> None:
    parser = argparse.ArgumentParser(prog="central")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["warehouse", "load", "--tables", "readings"])
    assert args.tables == ["readings"] and callable(args.func)


def test_module_help_runs_standalone() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "central.warehouse", "warehouse", "load", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "incremental" in done.stdout.lower() or "watermark" in done.stdout.lower()
