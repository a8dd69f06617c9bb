"""Argument parsing shared by the commands: dataclass fields are the flags, and `--config file.yaml` sets the
same fields (flags given on the command line override the file), as in TRL's scripts."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from trl import TrlParser

from flexrealign.cli import LAM_HELP


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
        return tuple(parser.parse_args_and_config(list(argv)))
    except ValueError as e:  # raised by __post_init__ checks: show as a usage error, not a traceback
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
