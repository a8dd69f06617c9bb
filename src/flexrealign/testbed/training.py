"""Minimal CPU training loops for the testbed: causal-LM SFT (plain models and InRa adapters) and TrRa.

They are deliberately small and self-contained so the demo runs anywhere in a few minutes; the full-featured
trainers live in `flexrealign.trra` and `flexrealign.inra_train`. TrRa here is the paper's Eq. 6: the student
minimises KL(student || softmax(lam * h_aligned + (1 - lam) * h_ref)) on completion tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from flexrealign.generation import encode_prompts

Example = tuple[str, str]  # (question, completion text)
Progress = Callable[[int, float], None]  # (step, loss) after each optimiser step


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup: float = 0.1  # share of steps with a linear warm-up, then cosine decay to 10%
    seed: int = 0


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) -100 on prompt and padding


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]) -> list[tuple]:
    """(prompt ids, completion ids + EOS) per example; the prompt goes through the chat template."""
    prompts = encode_prompts(tokenizer, [[{"role": "user", "content": q}] for q, _ in examples])
    out = []
    for p, (_, completion) in zip(prompts, examples, strict=True):
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p, c))
    return out


def collate(rows: Sequence[tuple], pad_id: int) -> Batch:
    """Right-pad prompt + completion rows; only completion tokens carry labels."""
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(c)
    return Batch(ids, mask, labels)


def lr_at(step: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(rows: Sequence[tuple], cfg: TrainConfig, pad_id: int):
    """`cfg.steps` shuffled batches, cycling over the rows (epochs reshuffle)."""
    rng, order = random.Random(cfg.seed), []
    for _ in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        take, order = order[: cfg.batch_size], order[cfg.batch_size :]
        yield collate([rows[i] for i in take], pad_id)


def train_loop(
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[Batch], torch.Tensor],
    rows: Sequence[tuple],
    cfg: TrainConfig,
    pad_id: int,
    progress: Progress | None = None,
) -> float:
    """AdamW over `params` minimising `loss_fn(batch)`; returns the mean loss of the last 10% of steps."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    torch.manual_seed(cfg.seed)
    tail: list[float] = []
    for step, batch in enumerate(batches(rows, cfg, pad_id)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tail = (tail + [float(loss.detach())])[-max(1, cfg.steps // 10) :]
        if progress is not None:
            progress(step, tail[-1])
    return sum(tail) / len(tail)


def sft_loss(model: torch.nn.Module, lam: float | None = None) -> Callable[[Batch], torch.Tensor]:
    """Cross-entropy on completion tokens; `lam` is passed for InRa models (lam = 1: the adapter path)."""
    extra = {} if lam is None else {"lam": lam}

    def loss(b: Batch) -> torch.Tensor:
        return model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, **extra).loss

    return loss


def trra_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over completion tokens of KL(student || teacher), from fp32 log-softmax over the vocabulary."""
    keep = labels[:, 1:] != -100  # (B, T-1): positions that predict a completion token
    s = F.log_softmax(student_logits[:, :-1][keep].float(), dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits[:, :-1][keep].float(), dim=-1)  # (N, V)
    return (s.exp() * (s - t)).sum(-1).mean()


def _hidden(model: torch.nn.Module, b: Batch) -> torch.Tensor:
    return model.model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state  # (B, T, D)


def trra_loss(
    student: torch.nn.Module, ref: torch.nn.Module, aligned: torch.nn.Module, lam: float
) -> Callable[[Batch], torch.Tensor]:
    """TrRa's Eq. 6 with the teacher softmax(lam * h_aligned + (1 - lam) * h_ref) from two frozen models.

    Uses the chunked loss of `flexrealign.trra` (no (B, T, V) logits) when that package is present, else the
    direct fp32 computation `trra_kl`; both are the same reverse KL over completion tokens.
    """
    try:
        from flexrealign.trra import trra_loss as chunked
    except ImportError:  # the TrRa package is optional for the testbed
        chunked = None

    def loss(b: Batch) -> torch.Tensor:
        with torch.no_grad():
            h_ref, h_al = _hidden(ref, b), _hidden(aligned, b)  # (B, T, D) each
        h_s = _hidden(student, b)  # (B, T, D)
        if chunked is not None:
            mask = torch.zeros_like(b.labels, dtype=torch.bool)  # (B, T): positions predicting a completion
            mask[:, :-1] = b.labels[:, 1:] != -100
            w = (student.lm_head.weight, aligned.lm_head.weight, ref.lm_head.weight)
            return chunked(h_s, w[0], h_al, w[1], h_ref, w[2], lam, mask)
        teacher = lam * aligned.lm_head(h_al).float() + (1 - lam) * ref.lm_head(h_ref).float()  # (B, T, V)
        return trra_kl(student.lm_head(h_s), teacher, b.labels)

    return loss
