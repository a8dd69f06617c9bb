"""Pure sampling functions over a batch of next-token logits, with per-row parameters (as in gpt-fast)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def filter_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep each row's `top_k` largest logits (0 = keep all). logits (B, V), top_k (B,)."""
    if not bool((top_k > 0).any()):
        return logits
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))  # (B,)
    kth = logits.topk(int(k.max()), dim=-1).values.gather(-1, (k - 1).unsqueeze(-1))  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches `top_p` (1 = keep all)."""
    if not bool((top_p < 1).any()):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass of strictly better tokens
    drop_sorted = mass_before >= top_p.unsqueeze(-1)  # the top token is always kept (mass_before = 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generators: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Next token per row. logits (B, V) fp32; rows with temperature 0 are greedy (argmax).

    generators: one per row for reproducible sampling (a request's seed); None uses the global RNG.
    """
    greedy = logits.argmax(dim=-1)  # (B,)
    sampled_rows = (temperature > 0).nonzero().flatten().tolist()
    if not sampled_rows:
        return greedy
    out = greedy.clone()
    scaled = logits[sampled_rows] / temperature[sampled_rows].unsqueeze(-1)  # (B', V)
    scaled = filter_top_p(filter_top_k(scaled, top_k[sampled_rows]), top_p[sampled_rows])
    probs = scaled.softmax(dim=-1)
    for j, row in enumerate(sampled_rows):
        gen = generators[row] if generators is not None else None
        out[row] = torch.multinomial(probs[j], 1, generator=gen).squeeze(0)
    return out


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
