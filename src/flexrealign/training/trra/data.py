"""Training data for TrRa: loading, chat-template tokenisation with completion masks, batching, length filtering.

Accepted rows (local JSONL/JSON/Parquet files or any `datasets` name, e.g. a Hub dataset):
  * prompt/completion: `prompt` and `completion` columns, each a string or a list of chat messages;
  * messages: a `messages` column (list of {"role", "content"}) whose last message is the assistant's answer.

The prompt is rendered with the tokenizer's chat template and a generation prompt; the completion is appended as
its raw text plus the EOS token. Rendering the answer through the template instead would be wrong for reasoning
data: templates such as DeepSeek-R1-Distill's strip everything up to `</think>` from assistant turns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from flexrealign.core.atomic import atomic_file

IGNORE = -100
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TOKENIZED_COLUMNS = ("input_ids", "labels", "example_index")


@dataclass
class DataArguments:
    """Where the training data comes from (the `flexrealign trra` and `cache-teachers` commands)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a local .jsonl/.json/.parquet file or a `datasets` name (e.g. a Hub dataset), "
            "with prompt/completion or messages columns."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration (subset) name of the dataset."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use only the first N rows of the split (e.g. the 200 steps x 16 rows the paper trains on)."
        },
    )

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")


def load_rows(
    name: str, config: str | None = None, split: str = "train", max_samples: int | None = None
) -> Dataset:
    """Load a split from a local file (by extension) or through `datasets.load_dataset` (folders, Hub names)."""
    suffix = Path(name).suffix.lower()
    if suffix in LOCAL_FORMATS:
        if not Path(name).is_file():
            raise FileNotFoundError(f"dataset file not found: {name}")
        rows = load_dataset(LOCAL_FORMATS[suffix], data_files=name, split="train")
    else:
        if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
            raise FileNotFoundError(f"dataset folder not found: {name}")
        rows = load_dataset(name, config, split=split)
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    check_format(rows)
    return rows


def check_format(rows: Dataset) -> None:
    """Raise ValueError unless the rows are in prompt/completion or messages form."""
    cols = set(rows.column_names)
    if not ({"prompt", "completion"} <= cols or "messages" in cols):
        raise ValueError(
            f"training data needs 'prompt' and 'completion' columns or a 'messages' column; found {sorted(cols)}"
        )
    if len(rows) == 0:
        raise ValueError("the training data has no rows")


def split_example(example: dict[str, Any]) -> tuple[list[dict], str]:
    """(prompt messages, completion text) of one row in either accepted form."""
    if "prompt" in example and "completion" in example:
        prompt, completion = example["prompt"], example["completion"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not isinstance(completion, str):  # a list with the assistant message(s)
            completion = "".join(m["content"] for m in completion)
        return messages, completion
    messages = list(example["messages"])
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("in the messages form, the last message must be the assistant's (the completion)")
    return messages[:-1], messages[-1]["content"]


def tokenize_example(
    example: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> dict:
    """input_ids and labels (the prompt set to -100) of one row, truncated to `max_length` from the end."""
    prompt_msgs, completion = split_example(example)
    prompt_ids = list(
        tokenizer.apply_chat_template(
            prompt_msgs, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def prepare_dataset(
    rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None, num_proc: int | None = None
) -> Dataset:
    """Tokenise rows into input_ids / labels / example_index (the row number, which keys the teacher cache).

    Rows left without a completion token after truncation are dropped: they carry no loss.
    """
    check_format(rows)
    if tokenizer.chat_template is None:
        raise ValueError(
            "the tokenizer has no chat template; TrRa renders prompts with the tokenizer's template"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, which ends every completion")

    def _tokenize(example: dict, index: int) -> dict:
        return tokenize_example(example, tokenizer, max_length) | {"example_index": index}

    tokenized = rows.map(
        _tokenize, with_indices=True, remove_columns=rows.column_names, num_proc=num_proc, desc="Tokenizing"
    )
    return tokenized.filter(
        lambda ex: any(x != IGNORE for x in ex["labels"][1:]), num_proc=num_proc, desc="Dropping empty"
    )


def is_tokenized(rows: Dataset) -> bool:
    return set(TOKENIZED_COLUMNS) <= set(rows.column_names)


def completion_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) bool: positions whose hidden state predicts a completion token (the ones the loss covers)."""
    return labels[:, 1:] != IGNORE


@dataclass
class CompletionCollator:
    """Right-pads a batch of tokenised rows: input_ids, attention_mask, labels (-100 on padding), example_index."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), length), self.pad_token_id, dtype=torch.long),  # (B, T)
            "attention_mask": torch.zeros((len(features), length), dtype=torch.long),  # (B, T)
            "labels": torch.full((len(features), length), IGNORE, dtype=torch.long),  # (B, T)
        }
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][row, :n] = torch.as_tensor(f["input_ids"])
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = torch.as_tensor(f["labels"])
        batch["example_index"] = torch.as_tensor([int(f["example_index"]) for f in features])  # (B,)
        return batch


def completion_token_count(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens in the completion text alone (no template, no special tokens)."""
    return len(tokenizer(split_example(example)[1], add_special_tokens=False)["input_ids"])


def filter_by_completion_length(
    rows: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    min_tokens: int | None,
    max_tokens: int | None,
    num_proc: int | None = None,
) -> Dataset:
    """Keep the rows whose completion has min_tokens <= n <= max_tokens tokens (None: no bound on that side)."""
    check_format(rows)
    low, high = min_tokens or 0, max_tokens if max_tokens is not None else float("inf")
    if low > high:
        raise ValueError(f"min_tokens ({min_tokens}) exceeds max_tokens ({max_tokens})")
    return rows.filter(
        lambda ex: low <= completion_token_count(ex, tokenizer) <= high,
        num_proc=num_proc,
        desc="Filtering by length",
    )


def save_rows(rows: Dataset, path: str | os.PathLike) -> Path:
    """Write rows to .jsonl or .parquet (by extension) atomically: a temporary file renamed into place."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".parquet"):
        raise ValueError(f"output must end in .jsonl or .parquet, got {path.name}")
    with atomic_file(path) as tmp:
        if path.suffix.lower() == ".jsonl":
            rows.to_json(str(tmp), lines=True, force_ascii=False)
        else:
            rows.to_parquet(str(tmp))
    return path
