"""On-policy sampling is configured by TrRaConfig alone: nothing leaks in from the student's generation_config
(transformers fills every field a passed GenerationConfig leaves unset from the model's, TRL #6337)."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, WatermarkingConfig
from trra_helpers import make_model, make_tokenizer, trra_config

from flexrealign.training.trra import TrRaTrainer
from flexrealign.training.trra.data import IGNORE
from flexrealign.training.trra.on_policy import sample_completions

# Every kind of generation setting a checkpoint can carry: penalties, cut-offs, bans, forced and suppressed
# tokens, other EOS and padding ids, lengths, greedy decoding, watermarking (ids are the test tokenizer's).
LEAKY = dict(
    repetition_penalty=1.3, min_p=0.3, no_repeat_ngram_size=2, do_sample=False, temperature=0.2, top_k=3,
    top_p=0.5, typical_p=0.4, epsilon_cutoff=3e-4, eta_cutoff=3e-4, max_new_tokens=2, min_new_tokens=6,
    bad_words_ids=[[97], [98, 99]], suppress_tokens=[100, 101], begin_suppress_tokens=[102], forced_bos_token_id=70,
    forced_eos_token_id=256, eos_token_id=[256, 65], pad_token_id=3, sequence_bias={(66,): 8.0},
    renormalize_logits=True, exponential_decay_length_penalty=(2, 1.5),
    watermarking_config=WatermarkingConfig(bias=8.0, seeding_scheme="lefthash"),
)  # fmt: skip


def student(model_dirs: dict, generation: dict | None) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dirs["ref"], dtype=torch.float32)
    if generation is not None:
        model.generation_config = GenerationConfig(**generation)
    return model


def completions(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    return [row[row != IGNORE].tolist() for row in batch["labels"]]


def test_the_students_generation_config_does_not_change_on_policy_tokens(
    tmp_path: Path, model_dirs: dict, rows: Dataset
) -> None:
    config = trra_config(tmp_path, model_dirs, lmbda=1.0, max_new_tokens=12, per_device_train_batch_size=8)
    plain = TrRaTrainer(model=student(model_dirs, None), args=config, train_dataset=rows)
    leaky = TrRaTrainer(model=student(model_dirs, LEAKY), args=config, train_dataset=rows)
    batch = next(iter(plain.get_train_dataloader()))
    want, got = completions(plain.on_policy_batch(batch)), completions(leaky.on_policy_batch(batch))
    assert sum(map(len, want)) >= 24  # enough sampled tokens for a leak to show
    assert got == want


class Tripwire:
    """A generation_config that fails the test on any read."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"on-policy sampling read generation_config.{name}")


def test_sampling_never_reads_generation_config_nor_calls_generate() -> None:
    tok, model = make_tokenizer(), make_model(0)
    prompts = [
        tok.encode("<|user|>add 1 2<|end|><|assistant|>"),
        tok.encode("<|user|>add 30 4<|end|><|assistant|>"),
    ]
    args = (prompts, tok.pad_token_id, tok.eos_token_id, 0.7, 10, 3)
    want = sample_completions(model, *args)

    def no_generate(*_: object, **__: object) -> None:
        raise AssertionError("on-policy sampling called generate()")

    model.generation_config, model.generate = Tripwire(), no_generate
    assert sample_completions(model, *args) == want
