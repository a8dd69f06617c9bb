"""Bad input gives a clear error before any training: vocabularies, missing models, lam, config fields."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from datasets import Dataset
from trra_helpers import make_model, make_tokenizer, trra_config

from flexrealign.core.checkpoint import CheckpointError
from flexrealign.training.trra import DataArguments, TrRaConfig, TrRaTrainer, run_trra


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_vocabulary_size_mismatch(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    other = save(make_model(0, vocab_size=300), make_tokenizer(), tmp_path / "wide")
    config = trra_config(tmp_path / "out", {"ref": model_dirs["ref"], "aligned": other})
    with pytest.raises(ValueError, match="different vocabulary sizes"):
        TrRaTrainer(args=config, train_dataset=rows)


def test_tokenizer_mismatch(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    other = save(make_model(0), tok, tmp_path / "other-tok")
    config = trra_config(tmp_path / "out", {"ref": model_dirs["ref"], "aligned": other})
    with pytest.raises(ValueError, match="tokenizers differ"):
        TrRaTrainer(args=config, train_dataset=rows)


def test_tokenizer_larger_than_the_heads(tmp_path: Path, rows: Dataset) -> None:
    small = save(make_model(0, vocab_size=200), make_tokenizer(), tmp_path / "small")
    config = trra_config(tmp_path / "out", {"ref": small, "aligned": small})
    with pytest.raises(ValueError, match="tokens but the models' heads have only 200 rows"):
        TrRaTrainer(args=config, train_dataset=rows)


def test_missing_model(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    config = trra_config(tmp_path / "out", {"ref": model_dirs["ref"], "aligned": tmp_path / "no-such-model"})
    with pytest.raises(CheckpointError, match="aligned model not found"):
        TrRaTrainer(args=config, train_dataset=rows)
    # run_trra checks the models before it touches the (here also missing) data
    with pytest.raises(CheckpointError, match="aligned model not found"):
        run_trra(config, DataArguments(dataset_name=str(tmp_path / "missing.jsonl")))


def test_aligned_model_required_unless_lam_is_0(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    config = trra_config(tmp_path, {"ref": model_dirs["ref"], "aligned": model_dirs["aligned"]}, lam=2.0)
    config.aligned_model = None
    with pytest.raises(ValueError, match="needs the aligned model"):
        TrRaTrainer(args=config, train_dataset=rows)
    config.lam = 0.0
    TrRaTrainer(args=config, train_dataset=rows)  # the reference alone is the teacher


@pytest.mark.parametrize("lam", [math.nan, math.inf, -math.inf])
def test_non_finite_lam(tmp_path: Path, lam: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        TrRaConfig(output_dir=str(tmp_path), lam=lam, use_cpu=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"divergence": "kl"}, "divergence must be one of"),
        ({"divergence": "jsd", "jsd_beta": 0.0}, "jsd_beta"),
        ({"teacher_dtype": "int8"}, "teacher_dtype"),
        ({"loss_chunk_size": 0}, "loss_chunk_size"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2, "teacher_cache": "cache"}, "TrRa-iter"),
        ({"packing": True}, "packing"),
        ({"prediction_loss_only": False}, "loss only"),
    ],
)
def test_bad_config_fields(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrRaConfig(output_dir=str(tmp_path), use_cpu=True, **fields)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed")
def test_liger_loss_without_liger(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    with pytest.raises(ValueError, match="liger-kernel"):
        TrRaTrainer(args=trra_config(tmp_path, model_dirs, use_liger_loss=True), train_dataset=rows)


def test_rows_in_an_unknown_format(tmp_path: Path, model_dirs: dict) -> None:
    with pytest.raises(ValueError, match="'prompt' and 'completion' columns or a 'messages' column"):
        TrRaTrainer(
            args=trra_config(tmp_path, model_dirs), train_dataset=Dataset.from_list([{"text": "hello"}])
        )
