"""Test helpers shared by several test modules."""

from __future__ import annotations

import torch

from flexrealign.inra import InRaModel


def perturb_adapter(model: InRaModel, scale: float = 0.05, seed: int = 1) -> InRaModel:
    """Make the adapter look trained: random changes to every adapter tensor, including o_proj/down_proj."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)
    return model
