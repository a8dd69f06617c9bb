"""TrRa-iter: k rounds, each with (reference, previous student) as teachers, every round's model saved; resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset
from safetensors.torch import load_file
from trra_helpers import trra_config

from flexrealign.training.trra import iterate
from flexrealign.training.trra.iterate import run_trra


def test_iterations_chain_the_rounds(
    tmp_path: Path, model_dirs: dict, rows: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    teachers = []

    class Spy(iterate.TrRaTrainer):
        def __init__(self, *args, **kwargs):
            teachers.append(
                (kwargs["args"].ref_model, kwargs["args"].aligned_model, kwargs["args"].output_dir)
            )
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(iterate, "TrRaTrainer", Spy)
    config = trra_config(tmp_path, model_dirs, iterations=2, max_steps=2)
    final = run_trra(config, rows)

    round1, round2 = tmp_path / "round-1", tmp_path / "round-2"
    assert final == round2 / "model"
    assert teachers == [
        (str(model_dirs["ref"]), str(model_dirs["aligned"]), str(round1)),
        (str(model_dirs["ref"]), str(round1 / "model"), str(round2)),  # (reference, previous student)
    ]
    for folder in (round1, round2):
        assert (folder / "model" / "model.safetensors").is_file()
        assert (folder / "model" / "tokenizer_config.json").is_file()
    w1, w2 = (load_file(str(f / "model" / "model.safetensors")) for f in (round1, round2))
    assert any(not (w1[k] == w2[k]).all() for k in w1)

    class MustNotTrain(iterate.TrRaTrainer):
        def __init__(self, *args, **kwargs):
            raise AssertionError("finished rounds must be skipped on resume")

    monkeypatch.setattr(iterate, "TrRaTrainer", MustNotTrain)
    config.resume_from_checkpoint = "true"
    assert run_trra(config, rows) == round2 / "model"


def test_single_round_writes_output_dir_model(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    final = run_trra(trra_config(tmp_path, model_dirs, max_steps=1), rows)
    assert final == tmp_path / "model"
    assert (final / "config.json").is_file() and not list(tmp_path.glob(".model.tmp-*"))
