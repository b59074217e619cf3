"""Command lines as files: ``--config recipe.toml`` reads one, ``--print-config`` writes one.

A config file holds a subcommand's flags as TOML keys: each key is a long flag
without its dashes (``prune-ffn = 0.3`` is ``--prune-ffn 0.3``; ``per-tensor = true`` is
``--per-tensor``; a positional argument is its name: ``model = "m.onnx"``), so
``graphopt optimize --help`` lists every key. Values have the flag's type: a number,
a string from the flag's choices, ``true``/``false`` for switches, a list for a
repeatable flag or a comma-separated one (``passes``, ``ep``, ``batch``; ``batch = 8`` is one size); ``dim`` and
``tolerance`` may also be tables (``dim = { batch = 1, sequence = 128 }``,
``tolerance = { float32 = [1e-4, 1e-5] }``). Paths are as on the command line,
relative to the current directory. Flags on the command line override the file. An
unknown key, or a value of the wrong type, is a ``ConfigError`` naming the key.

``dump_config`` writes the settings of a parsed command line that differ from the
defaults back in this form, so ``--print-config`` then ``--config`` gives the same run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimizer.errors import OptionError

# Flags whose one value is a comma-separated list on the command line; a TOML list in a config.
COMMA_LISTS = frozenset({"passes", "ep", "batch"})
# Dests that are about this invocation, not the recipe: never read from or written to a config.
NOT_CONFIGURABLE = frozenset({"help", "version", "config", "print_config", "sub_verbose", "sub_quiet"})


class ConfigError(OptionError):
    """A config file that cannot be read, or a key in it that is unknown or has a value of the wrong type."""


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a config file for ``parser``'s subcommand may hold, and the argparse action it sets."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's arguments
        if action.dest in NOT_CONFIGURABLE or getattr(action, "old_spelling", False):
            continue
        if not action.option_strings:
            keys[action.dest] = action
            continue
        long = [flag for flag in action.option_strings if flag.startswith("--")]
        if long:
            keys[long[0][2:]] = action
    return keys


def _invocation_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The long flags of ``parser`` (without dashes) that are about one invocation (``NOT_CONFIGURABLE``)."""
    return {
        flag[2:]
        for action in parser._actions  # argparse keeps no public list of a parser's arguments
        if action.dest in NOT_CONFIGURABLE
        for flag in action.option_strings
        if flag.startswith("--")
    }


def _read_text(source: Path) -> str:
    """The file's text, at most ``MAX_CONFIG_BYTES``. Opened without blocking, then read as usual: a named
    pipe no one writes to is refused instead of hanging, while ``<(cat recipe.toml)`` and ``/dev/null``
    read as they are."""
    descriptor = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        pipe = stat.S_ISFIFO(os.fstat(descriptor).st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb") as handle:
            descriptor = -1
            data = handle.read(MAX_CONFIG_BYTES + 1)
    finally:
        if descriptor >= 0:
            os.close(descriptor)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {source}: longer than {MAX_CONFIG_BYTES // 1024} KiB: not a config file")
    if pipe and not data:
        raise ConfigError(f"--config {source}: a pipe that gave nothing (no one writing to it yet?)")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # PowerShell 5's `>` writes UTF-16 with a byte order mark
        raise ConfigError(f"--config {source}: UTF-16 text; save it as UTF-8 (TOML files are UTF-8)")
    # A UTF-8 byte order mark (Windows editors write one) is no TOML statement: "Invalid statement (line 1)".
    return data.decode("utf-8").removeprefix("\ufeff")


# A config file is a few lines; past this it is not one (/dev/zero would be read without end).
MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The argparse values (``{dest: value}``) of the config file at ``path`` for ``parser``'s subcommand."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    if not os.fspath(path):  # Path("") is the current folder
        raise ConfigError("--config '': an empty path; give a TOML file")
    source = Path(path)
    try:
        table = tomllib.loads(_read_text(source))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a folder, not a TOML file") from None
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: not valid TOML: {error}") from None
    keys = config_keys(parser)
    values: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    for key, value in table.items():
        if key in _invocation_flags(parser):
            # "a key no flag sets" was untrue of --verbose or --config: these flags are about one run, not a recipe.
            raise ConfigError(
                f"{source.name}: {key!r} is about one run, not a setting of the recipe; "
                f"give --{key} on the command line"
            )
        if key not in keys:
            near = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}?" if near else f"`graphopt {parser.prog.split()[-1]} --help` lists them"
            what = "a table" if isinstance(value, dict) else "a key"
            raise ConfigError(f"{source.name}: unknown key {key!r}, {what} no flag sets ({hint})")
        action = keys[key]
        if action.dest in set_by:
            raise ConfigError(f"{source.name}: {set_by[action.dest]!r} and {key!r} set the same option: keep one")
        set_by[action.dest] = key
        values[action.dest] = _value(source.name, key, action, value)
    return values


def _value(source: str, key: str, action: argparse.Action, value: Any) -> Any:
    shown = _toml(value) if _tomlable(value) else repr(value)
    where = f"{source}: {key} = {shown}"
    if isinstance(action, argparse.BooleanOptionalAction):
        return _bool(where, value)
    if action.nargs == 0:  # a switch: store_true, store_false, store_const
        return action.const if _bool(where, value) else action.default
    if isinstance(action, argparse._AppendAction):
        return _repeated(where, key, value)
    if action.dest in COMMA_LISTS and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # batch = 8: --batch 8
    if action.dest in COMMA_LISTS and isinstance(value, list):
        if not value or not all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in value):
            raise ConfigError(f"{where}: expected a list of names or numbers")
        return ",".join(str(item) for item in value)
    if action.type in (int, float):
        kinds = (int,) if action.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"{where}: expected {'an integer' if action.type is int else 'a number'}")
        value = action.type(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, action.choices))}")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false")
    return value


def _repeated(where: str, key: str, value: Any) -> list[str]:
    """A repeatable flag's values as the command line spells them: ``["batch=1"]``, ``["float32=1e-4,1e-5"]``."""
    if isinstance(value, dict):
        if key == "dim":
            if not all(isinstance(size, int) and not isinstance(size, bool) for size in value.values()):
                raise ConfigError(f"{where}: expected integer sizes, e.g. {{ batch = 1 }}")
            return [f"{name}={size}" for name, size in value.items()]
        if key == "tolerance":
            pairs = []
            for dtype, pair in value.items():
                if not (isinstance(pair, list) and len(pair) == 2 and all(_number(x) for x in pair)):
                    raise ConfigError(
                        f"{where}: expected [rtol, atol] for each dtype, e.g. {{ float32 = [1e-4, 1e-5] }}"
                    )
                pairs.append(f"{dtype}={pair[0]!r},{pair[1]!r}")
            return pairs
        raise ConfigError(f"{where}: expected a list of strings")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return list(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def dump_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """``args`` (parsed by ``parser``'s subcommand) as a config file: every setting that is not the default."""
    lines = [
        f"# graphopt {parser.prog.split()[-1]} --config FILE: these settings; flags on the command line override them"
    ]
    keys = config_keys(parser)
    titles = {id(action): group.title for group in parser._action_groups for action in group._group_actions}
    # The run's own settings first, then each argument group's under its title.
    sections: dict[str | None, list[str]] = {None: []}
    for key, action in keys.items():
        value = getattr(args, action.dest, None)
        if value is None or value is argparse.SUPPRESS or value == parser.get_default(action.dest):
            continue
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            if value != action.const:
                continue  # another switch of the same option says it, or none is given
            value = True
        title = titles.get(id(action))
        title = None if title in ("positional arguments", "options") else title
        sections.setdefault(title, []).append(f"{key} = {_toml_value(key, value)}")
    for title, section in sections.items():
        if title is not None and section:
            lines += ["", f"# {title}"]
        lines += section
    return "\n".join(lines) + "\n"


def _toml_value(key: str, value: Any) -> str:
    if key in COMMA_LISTS and isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
        return _toml([int(item) if re.fullmatch(r"[0-9]+", item) else item for item in items])
    if key == "dim" and isinstance(value, list):
        pairs = [item.split("=", 1) for item in value]
        if all(len(pair) == 2 and re.fullmatch(r"[0-9]+", pair[1].strip()) for pair in pairs):
            return _inline_table({name.strip(): int(size) for name, size in pairs})
    if key == "tolerance" and isinstance(value, list):
        table = {}
        for item in value:
            dtype, _, pair = item.partition("=")
            numbers = [_float(x) for x in pair.split(",")]
            if len(numbers) != 2 or None in numbers:
                return _toml(value)
            table[dtype.strip()] = numbers
        return _inline_table(table)
    return _toml(value)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _inline_table(table: Mapping[str, Any]) -> str:
    return "{ " + ", ".join(f"{_key(name)} = {_toml(value)}" for name, value in table.items()) + " }"


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml(name)


def _tomlable(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, list, tuple, dict))


def _toml(value: Any) -> str:
    """One TOML value: JSON's string escapes are TOML's too (basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a path's bytes that are not UTF-8 (read with surrogateescape)
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise OptionError(
                f"{shown}: not UTF-8 text, which a TOML file cannot hold (it printed as '?' and named another "
                "file); rename it, or give it on the command line"
            ) from None
        # JSON leaves DEL (U+007F) as it is; a TOML basic string must escape it (tomllib: "Illegal character").
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return _inline_table(value)
    raise TypeError(f"no TOML form for {type(value).__name__}")


def print_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Write ``dump_config`` to stdout."""
    sys.stdout.write(dump_config(args, parser))
