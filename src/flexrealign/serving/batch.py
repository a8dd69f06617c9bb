"""The engine's unit of work: rows decoding together over one KV cache, merged and trimmed as requests come
and go. Per-row tensors (the sampler, lam) are rebuilt only when the rows change, not per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flexrealign.decoding.rows import RowState
from flexrealign.decoding.sampling import Sampler
from flexrealign.decoding.step import row_lams
from flexrealign.serving.kvcache import Cache, merge_rows, select_rows, trim_left
from flexrealign.serving.requests import RequestHandle


@dataclass
class Row:
    handle: RequestHandle
    state: RowState
    generator: torch.Generator | None


@dataclass
class Batch:
    """Rows decoding together with one KV cache, in the state before their next forward: the cache holds every
    token but the last sampled one (`next_ids`), which enters at position `next_pos`."""

    paths: tuple[str, ...]
    rows: list[Row]
    cache: Cache
    mask: torch.Tensor  # (B, T) 1 where a cache slot holds a real token of that row
    next_ids: torch.Tensor  # (B,)
    next_pos: torch.Tensor  # (B,)
    sampler: Sampler = field(init=False)
    _lam: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.refresh_sampling()

    def refresh_sampling(self) -> None:
        """The rows' sampler, and lam from scratch, rebuilt only when the rows change."""
        self._lam = None
        settings = [r.handle.params.sampling for r in self.rows]
        self.sampler = Sampler(settings, [r.generator for r in self.rows], self.mask.device)

    def lam(self) -> torch.Tensor:
        """(B,) lam per row, rebuilt only when the rows change or a row's thinking stage switched."""
        self._lam = row_lams([r.state for r in self.rows], self._lam, self.mask.device)
        return self._lam

    def merge(self, other: Batch) -> None:
        """Append `other`'s rows; the shorter side is left-padded with masked slots so both align."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        merge_rows(self.cache, other.cache, length)
        self.mask = torch.cat([pad_left(self.mask, length), pad_left(other.mask, length)])  # (B + B', length)
        self.next_ids = torch.cat([self.next_ids, other.next_ids])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.rows += other.rows
        self.refresh_sampling()

    def keep(self, keep: list[int], trim: bool) -> None:
        """Keep rows `keep` only; with `trim`, drop leading slots that are padding for every remaining row."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)  # (B',)
        select_rows(self.cache, idx)
        self.mask, self.next_ids, self.next_pos = self.mask[idx], self.next_ids[idx], self.next_pos[idx]
        self.rows = [self.rows[i] for i in keep]
        self.refresh_sampling()
        if trim:
            lead = int(self.mask.any(0).long().argmax())  # first slot some row attends to
            trim_left(self.cache, lead)
            self.mask = self.mask[:, lead:]  # (B', T - lead)


def pad_left(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (length - mask.shape[1], 0))  # (B, T) -> (B, length), zeros in front
