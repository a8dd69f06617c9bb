"""Shared fixtures: locate ../shared (or $FLEXREALIGN_SHARED) and build tiny models in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_path(*parts: str) -> Path:
    """Path inside the shared assets folder; skips the calling test when it is absent."""
    root = Path(os.environ.get("FLEXREALIGN_SHARED", REPO_ROOT.parent / "shared"))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset {path} not found (set FLEXREALIGN_SHARED to the shared/ folder)")
    return path


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def stories260k() -> tuple:
    """(model, tokenizer): the real stories260K llama2.c checkpoint converted in memory, fp32 and eval mode.

    Shared by the whole session, so tests must not modify it. Skips when shared/ is absent.
    """
    from flexrealign.llama2c import load_llama2c

    folder = ("models", "stories260K")
    return load_llama2c(shared_path(*folder, "stories260K.bin"), shared_path(*folder, "tok512.model"))
