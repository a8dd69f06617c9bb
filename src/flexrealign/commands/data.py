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


@dataclass
class PrepArgs:
    input: str = field(
        metadata={"help": "Source records: a .json/.jsonl/.parquet file or a Hub dataset name."}
    )
    output: str = field(metadata={"help": "Output .jsonl file (written atomically)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset (e.g. train_prefs)."})
    max_samples: int | None = field(default=None, metadata={"help": "Read only the first N records."})


def _prep(argv: list[str], name: str, record_fn: str) -> int:
    from flexrealign.training import data_prep

    (args,) = parse([PrepArgs], argv, f"data {name}", data_prep.__doc__)
    records = data_prep.load_any_dataset(args.input, args.dataset_config, args.split, args.max_samples)
    stats = data_prep.PrepStats()
    data_prep.write_jsonl(data_prep.convert(records, getattr(data_prep, record_fn), stats), args.output)
    print(f"{name}: {stats.summary()}; wrote {args.output}")
    return 0


def short_cot(argv: list[str]) -> int:
    """Fast-thinking SFT data (paper §4.2): keep only what follows `</think>`; see flexrealign.training.data_prep.

    `flexrealign data short-cot --input open-r1/OpenR1-Math-220k --output short_cot.jsonl`
    """
    return _prep(argv, "short-cot", "short_cot_record")


def prefs(argv: list[str]) -> int:
    """DPO preference pairs in TRL's prompt/chosen/rejected form (paper §4.3); see flexrealign.training.data_prep.

    `flexrealign data prefs --input HuggingFaceH4/ultrafeedback_binarized --split train_prefs --output p.jsonl`
    """
    return _prep(argv, "prefs", "preference_record")


@dataclass
class ShortestArgs:
    generations: str = field(
        metadata={"help": "generations.jsonl written by `flexrealign eval --n_samples k`."}
    )
    problems: str = field(
        metadata={"help": "The problems that were sampled: a benchmark name or FILE.jsonl."}
    )
    output: str = field(metadata={"help": "Output .jsonl of prompt/completion records (written atomically)."})
    accept: str = field(
        default="answered", metadata={"help": "correct | answered | finished | any (see above)."}
    )
    model: str | None = field(
        default=None, metadata={"help": "Use only this model label's samples (default: all in the file)."}
    )
    template: str | None = field(
        default=None,
        metadata={"help": "The user-message template the samples were made with (default: eval's)."},
    )


def shortest(argv: list[str]) -> int:
    """Concise-answer SFT data: the shortest acceptable of k sampled answers per prompt; see
    flexrealign.training.data_select.

    `flexrealign data shortest --generations run/generations.jsonl --problems train.jsonl --output short.jsonl`
    """
    from flexrealign.eval.benchmarks import DEFAULT_TEMPLATE, load_benchmark
    from flexrealign.eval.generations import load_generations
    from flexrealign.training import data_select
    from flexrealign.training.data_prep import PrepStats, write_jsonl

    (args,) = parse([ShortestArgs], argv, "data shortest", data_select.__doc__)
    if args.accept not in data_select.ACCEPT_RULES:
        return fail(f"--accept must be one of {', '.join(data_select.ACCEPT_RULES)}, not {args.accept!r}")
    try:
        generations = load_generations(args.generations)
        if args.model is not None:
            generations = {k: r for k, r in generations.items() if r["model"] == args.model}
        if not generations:
            raise ValueError(
                f"no generations in {args.generations}" + (f" for {args.model}" if args.model else "")
            )
        problems = load_benchmark(args.problems)
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e))
    stats = PrepStats()
    template = DEFAULT_TEMPLATE if args.template is None else args.template
    records = data_select.shortest_records(generations, problems, args.accept, template, stats)
    write_jsonl(records, args.output)
    mean = sum(r["tokens"] for r in records) / max(1, len(records))
    print(f"shortest: {stats.summary()}; mean kept length {mean:.1f} tokens; wrote {args.output}")
    return 0


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
