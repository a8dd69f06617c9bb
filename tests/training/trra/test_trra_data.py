"""TrRa data: both row forms, completion masks, truncation, loading, the length filter, batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trra_helpers import shared_path

from flexrealign.training.trra.data import (
    IGNORE,
    CompletionCollator,
    completion_positions,
    filter_by_completion_length,
    load_rows,
    prepare_dataset,
    save_rows,
    tokenize_example,
)


def completion_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE])


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "add 1 2", "completion": "3 done"},
        {
            "prompt": [{"role": "user", "content": "add 1 2"}],
            "completion": [{"role": "assistant", "content": "3 done"}],
        },
        {"messages": [{"role": "user", "content": "add 1 2"}, {"role": "assistant", "content": "3 done"}]},
    ],
)
def test_forms_tokenise_alike_with_the_prompt_masked(tokenizer, row: dict) -> None:
    out = tokenize_example(row, tokenizer, max_length=None)
    assert tokenizer.decode(out["input_ids"]) == "<|user|>add 1 2<|end|><|assistant|>3 done<|end|>"
    assert completion_text(tokenizer, out["input_ids"], out["labels"]) == "3 done<|end|>"


def test_reasoning_is_kept_with_the_real_qwen_template() -> None:
    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen3"))
    completion = "<think>\n1 + 1 is 2.\n</think>\n\nThe answer is 2."
    row = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": completion}]}
    out = tokenize_example(row, tok, max_length=None)
    assert completion_text(tok, out["input_ids"], out["labels"]) == completion + "<|im_end|>"
    assert tok.decode(out["input_ids"]).startswith(
        "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prepare_truncates_and_drops_rows_without_completion(tokenizer) -> None:
    rows = Dataset.from_list(
        [{"prompt": "x" * 40, "completion": "long answer"}, {"prompt": "hi", "completion": "yo"}]
    )
    out = prepare_dataset(rows, tokenizer, max_length=20)
    assert out["example_index"] == [1]  # row 0's prompt fills max_length; row numbers survive the filter
    assert all(len(ids) <= 20 for ids in out["input_ids"])


def test_messages_must_end_with_the_assistant(tokenizer) -> None:
    with pytest.raises(ValueError, match="last message must be the assistant"):
        tokenize_example({"messages": [{"role": "user", "content": "hi"}]}, tokenizer, None)


def test_collator_pads_and_masks(tokenizer) -> None:
    rows = prepare_dataset(
        Dataset.from_list([{"prompt": "a", "completion": "bb"}, {"prompt": "a", "completion": "b"}]),
        tokenizer,
        None,
    )
    batch = CompletionCollator(tokenizer.pad_token_id)([rows[0], rows[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1, -1] == 0 and batch["labels"][1, -1] == IGNORE
    assert torch.equal(batch["example_index"], torch.tensor([0, 1]))
    # positions predicting "bb<|end|>" and "b<|end|>": 3 and 2
    assert completion_positions(batch["labels"]).sum(1).tolist() == [3, 2]


def test_load_save_and_filter_by_length(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * n}]}
        for n in (2, 5, 9)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_rows(str(path))
    kept = filter_by_completion_length(loaded, tokenizer, min_tokens=3, max_tokens=5)
    assert [len(r["messages"][-1]["content"]) for r in kept] == [5]
    out = save_rows(kept, tmp_path / "kept.parquet")
    assert len(load_rows(str(out))) == 1
    with pytest.raises(FileNotFoundError):
        load_rows(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="columns"):
        load_rows(str(save_rows(Dataset.from_list([{"text": "x"}]), tmp_path / "text.jsonl")))
