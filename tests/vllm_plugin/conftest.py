"""Fixtures for the vLLM plugin tests: tiny InRa checkpoints (fp32, head_dim 128) built once per session.

Every test here is marked `vllm` and skipped when vLLM is not installed. Engines are started with a small
KV cache and `enforce_eager` (or dynamo without inductor, for `vllm serve`) so that start-up stays short;
one engine per module.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flexrealign.inra import InRaModel
from flexrealign.vllm_plugin.tiny import tiny_inra_checkpoint


@pytest.fixture(scope="session", autouse=True)
def _vllm_env() -> None:
    # Quieter engine processes; collective_rpc needs to send a function to the engine.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, InRaModel]]:
    """family -> (checkpoint folder, the InRaModel it was saved from)."""
    root = tmp_path_factory.mktemp("inra_ckpts")
    out = {}
    for family in ("qwen2", "llama"):
        model = tiny_inra_checkpoint(root / family, family)
        out[family] = (root / family, model)
    return out
