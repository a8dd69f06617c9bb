"""Shared fixtures: locate ../shared (or $FLEXREALIGN_SHARED) and build tiny models in code."""

from __future__ import annotations

import pytest
import torch

from helpers import REPO_ROOT, shared_path  # noqa: E402,F401  (re-exported for older imports)


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
