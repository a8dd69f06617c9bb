"""Pure sampling functions over a batch of next-token logits, with per-row parameters (as in gpt-fast)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    """One row's sampling settings: temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0


class Sampler:
    """How a batch samples its next tokens: per-row tensors (B,) and the host-side facts (which rows sample,
    the largest k, whether a row uses top-p) that the rows' settings fix. Built once when the rows change, so
    that `sample` never reads a tensor back from the device.

    generators: one per row for reproducible sampling (its request's seed) or None (the global RNG). Seeded
    rows draw one by one: a row's stream must not depend on its neighbours, and torch has no batched draw
    from several generators; the rows without a generator draw together.
    """

    def __init__(
        self,
        rows: Sequence[RowSampling],
        generators: Sequence[torch.Generator | None] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.rows = list(rows)
        gens = list(generators) if generators is not None else [None] * len(self.rows)
        sampled = [i for i, r in enumerate(self.rows) if r.temperature > 0]
        self.sampled = torch.tensor(sampled, dtype=torch.long, device=device) if sampled else None  # (B',)
        picked = [self.rows[i] for i in sampled]
        self.temperature = torch.tensor([r.temperature for r in picked], device=device).unsqueeze(
            -1
        )  # (B', 1)
        self.top_k = torch.tensor([r.top_k for r in picked], dtype=torch.long, device=device)  # (B',)
        self.top_p = torch.tensor([r.top_p for r in picked], device=device)  # (B',)
        self.uses_top_k = any(r.top_k > 0 for r in picked)
        self.max_k = max((r.top_k if r.top_k > 0 else sys.maxsize for r in picked), default=0)  # 0 < k <= V
        self.uses_top_p = any(r.top_p < 1 for r in picked)
        self.seeded = [(j, gens[i]) for j, i in enumerate(sampled) if gens[i] is not None]
        unseeded = [j for j, i in enumerate(sampled) if gens[i] is None]
        self.unseeded = torch.tensor(unseeded, dtype=torch.long, device=device) if unseeded else None

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token per row (B,) from fp32 logits (B, V); greedy rows take the argmax."""
        greedy = logits.argmax(dim=-1)  # (B,)
        if self.sampled is None:
            return greedy
        scaled = logits[self.sampled] / self.temperature  # (B', V)
        if self.uses_top_k:
            scaled = filter_top_k(scaled, self.top_k, self.max_k)
        if self.uses_top_p:
            scaled = filter_top_p(scaled, self.top_p)
        probs = scaled.softmax(dim=-1)  # (B', V)
        drawn = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)  # (B',)
        for j, gen in self.seeded:
            drawn[j] = torch.multinomial(probs[j], 1, generator=gen).squeeze(0)
        if self.unseeded is not None:
            drawn[self.unseeded] = torch.multinomial(probs[self.unseeded], 1).squeeze(-1)
        return greedy.index_copy(0, self.sampled, drawn)


def filter_top_k(logits: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """Keep each row's `top_k` largest logits (0 = keep all). logits (B, V), top_k (B,); max_k is the largest
    k any row keeps (V when a row keeps all), known to the caller, so no value is read back from the device."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))  # (B,)
    kth = logits.topk(min(max_k, vocab), dim=-1).values.gather(-1, (k - 1).unsqueeze(-1))  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches `top_p` (1 = keep all)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass of strictly better tokens
    drop_sorted = mass_before >= top_p.unsqueeze(-1)  # the top token is always kept (mass_before = 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def row_seed(seed: int, index: int = 0) -> int:
    """The generator seed of row `index` of a request seeded with `seed`: row 0 is what a single request
    with that seed gets (in `generate` and in the server), so a seeded request reproduces on its own."""
    return (int(seed) * 1_000_003 + index) % (2**63)


def seeded_generators(
    seeds: Sequence[int | None], device: torch.device | str = "cpu"
) -> list[torch.Generator | None] | None:
    """One generator per row from its own generator seed (None: that row uses the global RNG).

    A row's draws depend on its seed alone, never on its neighbours or the batch size. None if no row has one.
    """
    if all(s is None for s in seeds):
        return None
    return [None if s is None else torch.Generator(device=device).manual_seed(s) for s in seeds]


def row_generators(
    seed: int | None, batch_size: int, device: torch.device | str = "cpu", offset: int = 0
) -> list[torch.Generator | None] | None:
    """Generators of rows offset .. offset + batch_size - 1 of a request seeded with `seed` (None: no seed)."""
    if seed is None:
        return None
    return seeded_generators([row_seed(seed, offset + i) for i in range(batch_size)], device)


def constrain(
    logits: torch.Tensor,
    force: tuple[list[int], list[int]],
    ban: tuple[list[int], list[int]] = ([], []),
) -> torch.Tensor:
    """Force and ban tokens through the logits (as vLLM's thinking-budget processor does), in place.

    logits (B, V); force = (rows, tokens): those rows keep only their token (0, the rest -inf), so greedy
    and sampled decoding alike produce it; ban = (rows, tokens): -inf at each (row, token) pair.
    """
    ban_rows, ban_ids = ban
    if ban_rows:
        logits[torch.tensor(ban_rows), torch.tensor(ban_ids)] = float("-inf")
    rows, tokens = force
    if rows:
        r, t = torch.tensor(rows), torch.tensor(tokens)
        logits[r] = float("-inf")
        logits[r, t] = 0.0
    return logits
