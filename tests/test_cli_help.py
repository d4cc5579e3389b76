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


def test_the_parser_builds_without_the_ui_stack():
    """Training machines (the lent GPU) have torch and diffusers but no plotly / gradio / streamlit: the CLI's
    parser, and with it `finetune` and `evaluate`, must not import them."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('plotly', 'gradio', 'streamlit'): sys.modules[m] = None\n"
            "from backend.__main__ import build_parser\n"
            "build_parser().parse_args(['evaluate', '--variant', '{}'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
