"""Vocabulary checks: fused logits only mean something when every model indexes the same tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedModel


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the output head (may exceed the tokenizer: Qwen pads its matrices)."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def check_same_vocab(models: Mapping[str, PreTrainedModel], tokenizers: Sequence = ()) -> None:
    """Raise ValueError unless all models have the same output vocabulary (and all tokenizers the same tokens)."""
    sizes = {name: output_vocab_size(m) for name, m in models.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(
            f"models have different vocabulary sizes ({listing}); logit fusion needs one shared vocabulary"
        )
    vocabs = [tok.get_vocab() for tok in tokenizers if tok is not None]
    for other in vocabs[1:]:
        if other != vocabs[0]:
            diff = len(set(other.items()) ^ set(vocabs[0].items()))
            raise ValueError(
                f"tokenizers differ ({diff} token/id pairs differ); the models must share a tokenizer"
            )
