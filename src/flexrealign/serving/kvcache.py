"""Row surgery on KV caches for continuous batching: merge two batches, drop rows, trim shared left padding.

Caches hold keys/values of shape (B, H, T, D) per layer. A batch's rows are left-aligned to a common length T;
slots before a row's first token are padding that its attention mask hides, so inserting or removing such
slots changes nothing a row computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from flexrealign.core.fused import BOTH, FusedCausalLM, PathCache

Cache = DynamicCache | PathCache


def new_cache(model: torch.nn.Module, paths: Iterable[str]) -> Cache:
    """An empty cache for `model`: a PathCache over `paths` for two-path models, else a DynamicCache."""
    if isinstance(model, FusedCausalLM):
        return model.new_cache(paths)
    return DynamicCache(config=model.config)


def _parts(cache: Cache) -> Iterator[tuple[DynamicCache, bool]]:
    """Each underlying DynamicCache, and whether it stacks two paths on the batch axis ([aligned; ref])."""
    if isinstance(cache, PathCache):
        for name, part in cache.caches.items():
            yield part, name == BOTH
    else:
        yield cache, False


def is_mergeable(cache: Cache) -> bool:
    """Sliding-window layers keep only the last window of slots and count the window in slots, not tokens,
    so padding slots inserted by a merge would change what a row sees; only full-attention caches merge."""
    return not any(getattr(layer, "is_sliding", False) for part, _ in _parts(cache) for layer in part.layers)


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(t, (0, 0, length - t.shape[-2], 0))  # (B, H, T, D) -> (B, H, length, D), zeros in front


def _cat_rows(a: torch.Tensor, b: torch.Tensor, stacked: bool) -> torch.Tensor:
    if not stacked:
        return torch.cat([a, b])  # (Ba + Bb, H, T, D)
    (a_aligned, a_ref), (b_aligned, b_ref) = a.chunk(2), b.chunk(2)
    return torch.cat([a_aligned, b_aligned, a_ref, b_ref])  # keeps the [aligned; ref] layout


def merge_rows(into: Cache, other: Cache, length: int) -> None:
    """Append the rows of `other` after those of `into`, in place; both are left-padded to `length` slots.

    Both caches must be of the same kind, built for the same paths, and hold at least one token.
    """
    for (dst, stacked), (src, _) in zip(_parts(into), _parts(other), strict=True):
        for la, lb in zip(dst.layers, src.layers, strict=True):
            la.keys = _cat_rows(_left_pad(la.keys, length), _left_pad(lb.keys, length), stacked)
            la.values = _cat_rows(_left_pad(la.values, length), _left_pad(lb.values, length), stacked)


def select_rows(cache: Cache, rows: torch.Tensor) -> None:
    """Keep only batch rows `rows` (B',) in place."""
    if isinstance(cache, PathCache):
        cache.select_rows(rows)
    else:
        cache.batch_select_indices(rows)


def trim_left(cache: Cache, slots: int) -> None:
    """Drop the first `slots` sequence slots of every layer (padding that no remaining row attends to)."""
    if slots <= 0:
        return
    for part, _ in _parts(cache):
        for layer in part.layers:
            layer.keys = layer.keys[:, :, slots:]  # (B, H, T - slots, D)
            layer.values = layer.values[:, :, slots:]
