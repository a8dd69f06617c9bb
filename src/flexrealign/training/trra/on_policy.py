"""On-policy TrRa: a share `lmbda` of each batch's rows gets its completion sampled from the current student.

Off-policy TrRa trains on the data's completions only, so at lam > 1 the student can learn to leave a path
early (say, close its think block) and then find itself in states it never saw in training (exposure bias).
Sampling a share of the completions from the student and scoring them with the fused teacher, token by token,
trains it on its own states, as TRL's GKD does with `lmbda` (Agarwal et al., 2024, "On-policy distillation").

Everything here is a function of (seed, optimizer step, micro-batch, process) and of the declared settings:
each row is drawn on-policy with probability `lmbda` from a generator seeded by `on_policy_seed(...)`, and the
completions are sampled by our own loop from a generator with the same seed. Neither the model's mode, nor the
global RNG state, nor the model's `generation_config` takes part, so a run is deterministic, a resumed run
samples what the uninterrupted run sampled, and lmbda = 0 draws nothing (exactly the off-policy run).
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from flexrealign.core.hf_compat import output_cache, with_cache
from flexrealign.decoding.prompts import left_pad
from flexrealign.training.trra.data import IGNORE


def prompt_lengths(labels: torch.Tensor) -> list[int]:
    """Per row of right-padded (B, T) labels, the number of prompt tokens (those before the first label)."""
    has = labels != IGNORE  # (B, T)
    if not bool(has.any(dim=1).all()):
        raise ValueError("every row needs at least one completion token to find where its prompt ends")
    return has.int().argmax(dim=1).tolist()


def on_policy_seed(seed: int, step: int, micro: int = 0, process: int = 0) -> int:
    """The seed of one micro-batch's on-policy draws: a function of the run's seed and the batch's place only.

    Args:
        seed: the run's seed (`TrRaConfig.seed`).
        step: the optimizer step the micro-batch trains (completed steps before it: `TrainerState.global_step`).
        micro: the micro-batch's index within the step (gradient accumulation), from 0.
        process: the process index (each process draws for its own shard of the batch).

    Returns:
        A non-negative int for `torch.Generator.manual_seed`.
    """
    if min(step, micro, process) < 0:
        raise ValueError(f"step, micro and process must be >= 0, got {step}, {micro}, {process}")
    return seed + 1_000_003 * step + 7919 * micro + process


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
    eos_token_id: int | None,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    num_tokens: int | None = None,
    synced: bool = False,
) -> list[list[int]]:
    """Sample one completion per prompt from `model`, each ending with EOS unless it ran out of `max_new_tokens`.

    Where each setting comes from (nothing else is read):
      - the distribution: softmax(logits / `temperature`) over the head's first `num_tokens` rows (all rows when
        None), pure sampling: no top-k, top-p, min-p, typical-p, epsilon cutoff, penalties, n-gram or word bans,
        forced or suppressed tokens, watermarking or other logits processors;
      - `temperature`, `max_new_tokens`: `TrRaConfig.temperature`, `TrRaConfig.max_new_tokens`;
      - `num_tokens`: the tokenizer's size when the head has padding rows (the rows the loss trains);
      - stopping: the tokenizer's `eos_token_id` (one id; None: none) or `max_new_tokens`; padding: its
        `pad_token_id`;
      - randomness: a `torch.Generator` seeded with `seed` (see `on_policy_seed`); the global RNG is not used.
    The model's `generation_config` is never read, and its `generate()` never called: transformers fills every
    field a passed GenerationConfig leaves unset from the model's (TRL #6337), so any field there would leak in.

    Args:
        model: a Hugging Face causal LM; sampled in eval mode, its mode restored afterwards.
        prompts: token ids of each prompt, without padding.
        pad_token_id, eos_token_id: the tokenizer's padding and end-of-sequence ids (no EOS when None).
        temperature: > 0; logits are divided by it.
        max_new_tokens: >= 1, the longest completion.
        seed: the seed of this call's generator.
        num_tokens: sample only among the first `num_tokens` head rows; None for all.
        synced: the model is sharded over the processes by FSDP: every forward gathers its weights
            with the other processes, so each process runs as many forwards as the slowest (they stop together,
            as transformers' `synced_gpus` does).

    Returns:
        One list of token ids per prompt, in order, ending at its first EOS (included) or at `max_new_tokens`.

    Raises:
        ValueError: on no prompts, an empty prompt, temperature <= 0 or max_new_tokens < 1.
    """
    _check_sampling(prompts, temperature, max_new_tokens)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)  # (n, P), (n, P)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        sampled = _sample_loop(
            model, ids, mask, eos_token_id, temperature, max_new_tokens, num_tokens, generator, synced
        )  # (n, N)
    finally:
        model.train(was_training)
    completions = []
    for row in sampled.tolist():
        end = row.index(eos_token_id) + 1 if eos_token_id in row else len(row)
        completions.append(row[:end])
    return completions


def _check_sampling(prompts: list[list[int]], temperature: float, max_new_tokens: int) -> None:
    if not prompts or min(map(len, prompts)) == 0:
        raise ValueError("sample_completions needs at least one prompt, and every prompt at least one token")
    if not temperature > 0 or max_new_tokens < 1:
        raise ValueError(
            f"temperature must be > 0 and max_new_tokens >= 1, got {temperature}, {max_new_tokens}"
        )


def _sample_loop(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    eos_token_id: int | None,
    temperature: float,
    max_new_tokens: int,
    num_tokens: int | None,
    generator: torch.Generator,
    synced: bool = False,
) -> torch.Tensor:
    """(n, N <= max_new_tokens) sampled tokens; stops early once every row has sampled EOS (with `synced`,
    once every row of every process has)."""
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (n, P): left padding shifts no position
    out = _forward(model, ids, mask, positions, None)
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)  # (n,)
    tokens = []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :num_tokens].float()  # (n, V')
        probs = torch.softmax(logits / temperature, dim=-1)  # (n, V')
        token = torch.multinomial(probs, 1, generator=generator)  # (n, 1)
        tokens.append(token)
        if eos_token_id is not None:
            done |= token[:, 0] == eos_token_id
        if len(tokens) == max_new_tokens or _all_done(done, synced):  # one host sync per token
            break
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)  # (n, P + t)
        positions = positions[:, -1:] + 1  # (n, 1)
        out = _forward(model, token, mask, positions, output_cache(out))
    return torch.cat(tokens, dim=1)  # (n, N)


def _all_done(done: torch.Tensor, synced: bool) -> bool:
    """Whether every row is done: here, or (synced) on every process, so that all stop at the same step."""
    flag = done.all().int()  # ()
    if synced:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag)


def _forward(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: object | None,
) -> CausalLMOutputWithPast:
    """One cached forward (a fresh cache when `cache` is None); only the last position's logits are built when
    the model can skip the others."""
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    if cache is not None:
        kwargs |= with_cache(model, cache)  # `cache=` from transformers 5.24, `past_key_values=` before
    if "logits_to_keep" in inspect.signature(type(model).forward).parameters:
        kwargs["logits_to_keep"] = 1
    return model(**kwargs)


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
