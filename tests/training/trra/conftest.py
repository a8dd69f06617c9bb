"""Session fixtures of the TrRa tests (helpers live in trra_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset
from transformers import PreTrainedTokenizerFast
from trra_helpers import make_rows, make_tokenizer, save_models


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny reference and aligned models on disk, made once per session; tests must not modify them."""
    return save_models(tmp_path_factory.mktemp("trra-models"))


@pytest.fixture(scope="session")
def rows() -> Dataset:
    return make_rows(64)
