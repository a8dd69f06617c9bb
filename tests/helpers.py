"""Test helpers shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from flexrealign.inra import InRaModel


def perturb_adapter(model: InRaModel, scale: float = 0.05, seed: int = 1) -> InRaModel:
    """Make the adapter look trained: random changes to every adapter tensor, including o_proj/down_proj."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)
    return model


REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_path(*parts: str) -> Path:
    """Path inside the shared assets folder; skips the calling test when it is absent."""
    root = Path(os.environ.get("FLEXREALIGN_SHARED", REPO_ROOT.parent / "shared"))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset {path} not found (set FLEXREALIGN_SHARED to the shared/ folder)")
    return path


def qwen3_tokenizer():
    """The real Qwen3 tokenizer from shared/ (skips when absent)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen3"))


def qwen3_inra(tok, seed: int = 0) -> InRaModel:
    """A tiny random Qwen3-family InRa model over the full Qwen3 vocabulary, adapter perturbed so lam matters."""
    from flexrealign.tiny import tiny_model

    base = tiny_model("qwen3", seed=seed, vocab_size=len(tok), hidden_size=32, num_layers=2)
    return perturb_adapter(InRaModel.from_base(base), scale=0.5, seed=3).eval()
