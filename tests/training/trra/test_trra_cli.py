"""`flexrealign trra` and `flexrealign trra cache-teachers`: YAML config plus flag overrides, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from flexrealign.cli import main


@pytest.fixture
def data_file(tmp_path: Path, rows: Dataset) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows.select(range(16))))
    return path


def write_config(tmp_path: Path, model_dirs: dict, data_file: Path, **fields) -> Path:
    config = {
        "ref_model": str(model_dirs["ref"]),
        "aligned_model": str(model_dirs["aligned"]),
        "dataset_name": str(data_file),
        "lam": 2.0,
        "max_length": 64,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1.0e-3,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "output_dir": str(tmp_path / "out"),
    } | fields
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_from_yaml_with_overrides(tmp_path: Path, model_dirs: dict, data_file: Path, capsys) -> None:
    cfg = write_config(tmp_path, model_dirs, data_file)
    out = tmp_path / "override"
    assert main(["trra", "--config", str(cfg), "--lam", "1.5", "--output_dir", str(out)]) == 0
    assert (out / "model" / "model.safetensors").is_file()
    assert not list(out.glob("checkpoint-*"))  # save_strategy "no" in the file: only the final model
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "qwen2"
    assert "realigned model written to" in capsys.readouterr().out


def test_cache_teachers_then_train_from_the_cache(tmp_path: Path, model_dirs: dict, data_file: Path) -> None:
    cache = tmp_path / "cache"
    cfg = write_config(tmp_path, model_dirs, data_file, teacher_cache=str(cache))
    assert main(["trra", "cache-teachers", "--config", str(cfg)]) == 0
    assert (cache / "cache_config.json").is_file()
    for lam in ("0.5", "5"):  # a sweep reads the same cache
        assert main(["trra", "--config", str(cfg), "--lam", lam, "--output_dir", str(tmp_path / lam)]) == 0
        assert (tmp_path / lam / "model" / "model.safetensors").is_file()


def test_non_finite_lam_is_a_usage_error(tmp_path: Path, model_dirs: dict, data_file: Path, capsys) -> None:
    cfg = write_config(tmp_path, model_dirs, data_file)
    with pytest.raises(SystemExit) as exit_info:
        main(["trra", "--config", str(cfg), "--lam", "nan"])
    assert exit_info.value.code == 2
    assert "finite" in capsys.readouterr().err


def test_missing_model_is_reported_before_any_work(
    tmp_path: Path, model_dirs: dict, data_file: Path, capsys
) -> None:
    cfg = write_config(tmp_path, model_dirs, data_file, ref_model=str(tmp_path / "nowhere"))
    assert main(["trra", "--config", str(cfg)]) == 2
    assert "ref model not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_mentions_lam(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["trra", "--help"])
    out = capsys.readouterr().out
    assert "--lam" in out and "--teacher_cache" in out and "--iterations" in out
