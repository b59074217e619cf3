"""The README's usage block names every flag of every command, and only flags that exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from optimizer.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# Flags every command takes, shown once on the first line of the usage block.
_COMMON = {"-h", "--help", "-v", "--verbose", "-q", "--quiet"}


def _usage_block() -> dict[str, set[str]]:
    """Flags per command, as the README's ```text usage block spells them (``--[no-]x`` names both)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("```text\ngraphopt [--version]")
    block = text[start : text.index("```", start + 3)]
    commands: dict[str, set[str]] = {}
    current = "top"
    for line in block.splitlines()[1:]:
        match = re.match(r"graphopt ([a-z-]+)", line)
        if match:
            current = match.group(1)
        flags = commands.setdefault(current, set())
        for negatable in re.findall(r"--\[no-\]([a-z0-9-]+)", line):
            flags |= {f"--{negatable}", f"--no-{negatable}"}
        flags |= set(re.findall(r"(?<![\w\]-])(-[a-z]|--[a-z][a-z0-9-]*)", line))
    return commands


def _parser_flags() -> dict[str, list[tuple[str, ...]]]:
    """Per subcommand of the real parser, each documented (not suppressed) flag's spellings (``-o``, ``--output``)."""
    flags: dict[str, list[tuple[str, ...]]] = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                flags[name] = [
                    tuple(sub_action.option_strings)
                    for sub_action in parser._actions
                    if sub_action.help != argparse.SUPPRESS and sub_action.option_strings
                ]
    return flags


def test_every_flag_of_every_command_is_in_the_readme_usage_block_and_no_other():
    usage, parser = _usage_block(), _parser_flags()
    compare_flags = usage["compare"] - {"--config", "--print-config", "--json", "--html", "--min-cosine", "--max-ratio"}
    for command in ("optimize", "compare", "make-inputs", "passes"):
        # optimize's "--compare [comparison flags]" takes compare's timing flags.
        documented = usage[command] | (compare_flags if command == "optimize" else set())
        # A flag is documented when one of its spellings is; a --no-x beside a documented --x is its default's name.
        missing = [
            spellings
            for spellings in parser[command]
            if not set(spellings) & (documented | _COMMON)
            and not any(spelling.startswith("--") and f"--no-{spelling[2:]}" in documented for spelling in spellings)
        ]
        assert missing == [], f"{command}: flags missing from README's usage block"
        existing = {spelling for spellings in parser[command] for spelling in spellings}
        assert documented - existing == set(), f"{command}: README's usage block names flags that do not exist"


def _pass_table() -> list[tuple[str, str]]:
    """(name, default column) of each row of the README's pass table, in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Passes\n") : text.index("\n## Fusion\n")]
    return re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+?) \|", section, flags=re.MULTILINE)


def test_the_readme_pass_table_lists_every_registered_pass_in_order_with_its_default_targets():
    from optimizer.registry import all_passes

    expected = []
    for spec in all_passes():
        targets = set(spec.default_for)
        default = "default" if targets == {"cpu", "cuda"} else "default on CPU" if targets == {"cpu"} else "opt-in"
        expected.append((spec.name, default))
    rows = [(name, "opt-in" if column.startswith("opt-in") else column) for name, column in _pass_table()]
    assert rows == expected
