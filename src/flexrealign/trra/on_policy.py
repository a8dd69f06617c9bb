"""On-policy TrRa: a share `lmbda` of each batch's rows gets its completion sampled from the current student.

Off-policy TrRa trains on the data's completions only, so at lam > 1 the student can learn to leave a path
early (say, close its think block) and then find itself in states it never saw in training (exposure bias).
Sampling a share of the completions from the student and scoring them with the fused teacher, token by token,
trains it on its own states, as TRL's GKD does with `lmbda` (Agarwal et al., 2024, "On-policy distillation").

Per optimizer step, each row is drawn on-policy with probability `lmbda` from a generator seeded by
(seed, step, micro-batch), and the sampling itself runs under the same seed with the global RNG state restored
afterwards: a run is deterministic, and lmbda = 0 draws nothing, so it is exactly the off-policy run.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from flexrealign.trra.data import IGNORE


def prompt_lengths(labels: torch.Tensor) -> list[int]:
    """Per row of right-padded (B, T) labels, the number of prompt tokens (those before the first label)."""
    has = labels != IGNORE  # (B, T)
    if not bool(has.any(dim=1).all()):
        raise ValueError("every row needs at least one completion token to find where its prompt ends")
    return has.int().argmax(dim=1).tolist()


def pick_rows(batch_size: int, lmbda: float, seed: int) -> list[int]:
    """The rows sampled on-policy: each with probability `lmbda`, from a generator seeded by `seed`."""
    if lmbda <= 0.0:
        return []
    draws = torch.rand(batch_size, generator=torch.Generator().manual_seed(seed))  # (B,)
    return torch.nonzero(draws < lmbda).flatten().tolist()


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    prompts: list[list[int]],
    pad_token_id: int,
    eos_token_id: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[int]]:
    """Sample one completion per prompt from `model` (pure sampling at `temperature`), each ending with EOS
    unless it ran out of `max_new_tokens`. The global RNG state is the same afterwards as before."""
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    ids = torch.full(
        (len(prompts), width), pad_token_id, dtype=torch.long, device=device
    )  # (n, P) left-padded
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(p, device=device)
        mask[i, width - len(p) :] = 1
    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)  # (n, P + N)
    finally:
        model.train(was_training)
    completions = []
    for row in out[:, width:].tolist():
        end = row.index(eos_token_id) + 1 if eos_token_id in row else len(row)
        completions.append(row[:end])
    return completions


def with_completions(
    batch: dict[str, torch.Tensor], rows: list[int], completions: list[list[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """A copy of the right-padded `batch` whose `rows` keep their prompts and take `completions` (labelled)."""
    lengths = prompt_lengths(batch["labels"])
    real = batch["attention_mask"].sum(dim=1).tolist()
    seqs = [batch["input_ids"][i, : real[i]].tolist() for i in range(len(real))]
    labels = [batch["labels"][i, : real[i]].tolist() for i in range(len(real))]
    for i, completion in zip(rows, completions, strict=True):
        prompt = seqs[i][: lengths[i]]
        seqs[i], labels[i] = prompt + completion, [IGNORE] * len(prompt) + completion
    width, device = max(map(len, seqs)), batch["input_ids"].device
    out = {
        "input_ids": torch.full((len(seqs), width), pad_token_id, dtype=torch.long),  # (B, T)
        "attention_mask": torch.zeros((len(seqs), width), dtype=torch.long),  # (B, T)
        "labels": torch.full((len(seqs), width), IGNORE, dtype=torch.long),  # (B, T)
    }
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        out["input_ids"][i, : len(s)] = torch.as_tensor(s)
        out["attention_mask"][i, : len(s)] = 1
        out["labels"][i, : len(s)] = torch.as_tensor(lab)
    out = {k: v.to(device) for k, v in out.items()}
    return {**batch, **out}
