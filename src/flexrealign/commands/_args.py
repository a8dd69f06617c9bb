"""Argument parsing shared by the commands: dataclass fields are the flags, and `--config file.yaml` sets the
same fields (flags given on the command line override the file), as in TRL's scripts."""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from collections.abc import Sequence
from typing import Any

from trl import TrlParser

from flexrealign.cli import LAM_HELP
from flexrealign.core.keywords import close_match_hint


def parse(
    dataclass_types: Sequence[type], argv: Sequence[str], prog: str, description: str
) -> tuple[Any, ...]:
    """Parse `argv` into instances of `dataclass_types`; `--config` reads a YAML file of the same fields."""
    parser = TrlParser(
        list(dataclass_types),
        prog=f"flexrealign {prog}",
        description=f"{description}\n\n{LAM_HELP}",
    )
    try:
        *parsed, from_file, from_flags = parser.parse_args_and_config(
            list(argv), return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as e:  # raised by __post_init__ checks: show as a usage error, not a traceback
        parser.error(str(e))
        raise  # unreachable: parser.error exits
    unknown = unknown_options(parser, from_file, from_flags)
    if unknown:
        parser.error(unknown)
    return tuple(parsed)


def unknown_options(parser: ArgumentParser, from_file: list[str], from_flags: list[str]) -> str | None:
    """The usage error for keys of the --config file or flags that no field takes, naming the close match.

    Args:
        parser: the parser (its option names are the fields).
        from_file: what TRL left of the YAML file, as ["--key", "value", ...].
        from_flags: the command-line strings no option took.

    Returns:
        The message, or None when everything was taken.
    """
    names = [a.dest for a in parser._actions if a.option_strings and a.dest != "help"]
    if from_file:
        key = from_file[0].removeprefix("--")
        return f"unknown key {key!r} in the --config file{close_match_hint(key, names)}"
    if from_flags:
        flag = next((s for s in from_flags if s.startswith("--")), from_flags[0])
        key = flag.removeprefix("--").split("=", 1)[0]
        return f"unrecognized arguments: {' '.join(from_flags)}{close_match_hint(key, names)}"
    return None


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
