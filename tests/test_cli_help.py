"""`--help` works for every sub-command and sub-sub-command of the CLI, discovered from its argparse parser."""

from __future__ import annotations

import argparse

import pytest

from backend.__main__ import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``parser`` (the root is the empty path), found by walking its sub-parsers."""
    out = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _commands(child, path + (name,))
    return out


COMMANDS = _commands(build_parser())


def test_the_walk_finds_nested_commands():
    assert ("finetune", "efficientdm") in COMMANDS and ("bench", "docs") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: "help-" + ("-".join(p) or "root"))
def test_help(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m backend") and " ".join(path) in out
