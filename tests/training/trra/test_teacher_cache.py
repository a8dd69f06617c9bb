"""Teacher cache: the loss read from the cache equals the on-the-fly loss, for several lam; resumable writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from trra_helpers import make_rows, trra_config

from flexrealign.core.checkpoint import CheckpointError
from flexrealign.training.trra import TeacherCache, TrRaTrainer, build_teacher_cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict, rows: Dataset) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "teachers"
    config = trra_config(folder.parent / "out", model_dirs, teacher_cache=str(folder))
    build_teacher_cache(config, rows, examples_per_shard=24)  # 64 rows -> 3 shards
    return folder


def loss_and_grad(trainer: TrRaTrainer, batch: dict) -> tuple[float, torch.Tensor]:
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), trainer.model.lm_head.weight.grad.clone()


@pytest.mark.parametrize("lam", [0.5, 2.0, 0.0])
def test_cached_loss_equals_on_the_fly_loss(
    tmp_path: Path, model_dirs: dict, rows: Dataset, cache_dir: Path, lam: float
) -> None:
    live = TrRaTrainer(args=trra_config(tmp_path / "a", model_dirs, lam=lam), train_dataset=rows)
    cached = TrRaTrainer(
        args=trra_config(tmp_path / "b", model_dirs, lam=lam, teacher_cache=str(cache_dir)),
        train_dataset=rows,
    )
    assert cached._teachers == {}  # no teacher is loaded when the cache serves them
    for batch in list(live.get_train_dataloader())[:2]:
        value, grad = loss_and_grad(live, batch)
        cached_value, cached_grad = loss_and_grad(cached, batch)
        assert value > 0 or lam == 0.0
        assert cached_value == pytest.approx(value, rel=1e-5, abs=1e-7)
        torch.testing.assert_close(cached_grad, grad, rtol=1e-5, atol=1e-8)


def test_interrupted_cache_is_refused_then_resumed(
    tmp_path: Path, model_dirs: dict, rows: Dataset, cache_dir: Path
) -> None:
    folder = tmp_path / "teachers"
    config = trra_config(tmp_path / "out", model_dirs, teacher_cache=str(folder))
    build_teacher_cache(config, rows, examples_per_shard=24)
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.safetensors")}
    (folder / "shard-00001.safetensors").unlink()  # as if killed while writing the second shard
    with pytest.raises(CheckpointError, match="incomplete"):
        TeacherCache(folder)
    build_teacher_cache(config, rows, examples_per_shard=24)  # resumes: writes the missing shard only
    assert (folder / "shard-00001.safetensors").exists()
    for name in ("shard-00000.safetensors", "shard-00002.safetensors"):
        assert (folder / name).stat().st_mtime_ns == kept[name]
    TeacherCache(folder)  # complete again
    resumed, original = (load_file(str(f / "shard-00001.safetensors")) for f in (folder, cache_dir))
    assert resumed.keys() == original.keys()
    assert all(torch.equal(resumed[k], original[k]) for k in original)


def test_cache_for_other_data_is_refused(tmp_path: Path, model_dirs: dict, cache_dir: Path) -> None:
    config = trra_config(tmp_path, model_dirs, teacher_cache=str(cache_dir))
    with pytest.raises(ValueError, match="other data"):
        TrRaTrainer(args=config, train_dataset=make_rows(64, seed=5))
    with pytest.raises(ValueError, match="different teacher cache"):
        build_teacher_cache(config, make_rows(64, seed=5))
