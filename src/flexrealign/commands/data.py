"""`flexrealign data <subcommand>`: data preparation.

    flexrealign data filter-length --dataset_name open-r1/OpenR1-Math-220k \
        --tokenizer deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --min_tokens 4096 --max_tokens 8192 \
        --output data/openr1-math-4k-8k.parquet

Each subcommand is a function taking its own argv; add new ones (e.g. short-cot, prefs) to SUBCOMMANDS.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from flexrealign.commands._args import fail, parse
from flexrealign.core.checkpoint import CheckpointError


@dataclass
class FilterLengthArguments:
    tokenizer: str = field(
        metadata={"help": "Tokenizer that counts the tokens (a local folder or a Hub name)."}
    )
    output: str = field(
        metadata={"help": "Where to write the kept rows: a .jsonl or .parquet file (atomically)."}
    )
    min_tokens: int | None = field(
        default=None, metadata={"help": "Keep completions of at least this many tokens."}
    )
    max_tokens: int | None = field(
        default=None, metadata={"help": "Keep completions of at most this many tokens."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenising."})

    def __post_init__(self) -> None:
        if self.min_tokens is None and self.max_tokens is None:
            raise ValueError("give --min_tokens and/or --max_tokens")
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")


def filter_length(argv: list[str]) -> int:
    """Keep rows whose completion (the last assistant message, or `completion`) has a token count in range.

    The paper (§4.1) trains on OpenR1-Math-220k rows with generations of 4k to 8k tokens.
    """
    from flexrealign.training.trra.data import (
        DataArguments,
        filter_by_completion_length,
        load_rows,
        save_rows,
    )
    from flexrealign.training.trra.models import load_tokenizer

    data, args = parse(
        [DataArguments, FilterLengthArguments], argv, "data filter-length", filter_length.__doc__
    )
    if data.dataset_name is None:
        return fail("--dataset_name is required")
    try:
        tokenizer = load_tokenizer(args.tokenizer, "tokenizer")
        rows = load_rows(data.dataset_name, data.dataset_config, data.dataset_split, data.max_samples)
        kept = filter_by_completion_length(rows, tokenizer, args.min_tokens, args.max_tokens, args.num_proc)
        path = save_rows(kept, args.output)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        return fail(str(e))
    print(f"kept {len(kept)} of {len(rows)} rows -> {path}")
    return 0


def short_cot(argv: list[str]) -> int:
    """Fast-thinking SFT data (paper §4.2): keep only what follows `</think>`; see flexrealign.training.data_prep."""
    from flexrealign.training.data_prep import run_short_cot

    return run_short_cot(argv)


def prefs(argv: list[str]) -> int:
    """DPO preference pairs in TRL's prompt/chosen/rejected form (paper §4.3); see flexrealign.training.data_prep."""
    from flexrealign.training.data_prep import run_prefs

    return run_prefs(argv)


def shortest(argv: list[str]) -> int:
    """Concise-answer SFT data: the shortest acceptable of k sampled answers per prompt; see flexrealign.training.data_select."""
    from flexrealign.training.data_select import run_shortest

    return run_shortest(argv)


# name -> (function, one-line summary)
SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "filter-length": (filter_length, "keep rows whose completion length (in tokens) lies in a range"),
    "short-cot": (short_cot, "fast-thinking SFT data: keep only what follows </think> (skips are counted)"),
    "shortest": (shortest, "concise SFT data: the shortest acceptable of k sampled answers per prompt"),
    "prefs": (prefs, "DPO preference pairs in TRL's prompt/chosen/rejected form"),
}


def _usage() -> str:
    lines = ["usage: flexrealign data <subcommand> [options]", "", "subcommands:"]
    return "\n".join(lines + [f"  {name:<15} {summary}" for name, (_, summary) in SUBCOMMANDS.items()])


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"flexrealign data: unknown subcommand {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]][0](argv[1:])
