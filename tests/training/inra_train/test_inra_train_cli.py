"""`flexrealign inra-train` end to end on stories260K from a YAML config, and the shipped paper configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from flexrealign.cli import main
from flexrealign.commands._args import parse
from flexrealign.conversion.llama2c import convert_llama2c
from flexrealign.core.inra import InRaModel
from flexrealign.training.inra_train import InRaTrainConfig
from helpers import shared_path

PAPER_CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "paper").glob("inra_*.yaml"))


@pytest.fixture(scope="module")
def stories_dir(tmp_path_factory):

    folder = shared_path("models", "stories260K")
    out = tmp_path_factory.mktemp("base") / "stories260K"
    return convert_llama2c(folder / "stories260K.bin", folder / "tok512.model", out)


def test_inra_train_command_from_yaml_saves_checkpoint_and_adapter(stories_dir, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Once upon a time", "completion": " there was a dog."}) + "\n")
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"base_model: {stories_dir}\nmethod: dpo\ndataset: {data}\noutput_dir: {out}\n"
        "max_steps: 2\nper_device_train_batch_size: 1\nlearning_rate: 1.0e-3\nwarmup_ratio: 0.0\n"
    )
    assert main(["inra-train", "--config", str(cfg), "--method", "sft"]) == 0  # the flag overrides the file
    assert "by sft" in capsys.readouterr().out
    model = InRaModel.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 400, 300, 200]])
    with torch.no_grad():
        assert torch.equal(model(ids, lam=0.0).logits, base(ids).logits.float())
    adapter = InRaModel.from_adapter(out / "adapter", base)
    with torch.no_grad():
        assert torch.allclose(adapter(ids, lam=1.0).logits, model(ids, lam=1.0).logits, atol=1e-5)


def test_inra_train_command_names_the_missing_fields(capsys):
    assert main(["inra-train", "--method", "sft"]) == 2
    assert "base_model, dataset, output_dir" in capsys.readouterr().err


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_parse(path):
    (config,) = parse([InRaTrainConfig], ["--config", str(path)], "inra-train", "")
    assert config.base_model and config.dataset and config.output_dir
    if config.method == "sft":
        assert (config.learning_rate, config.num_train_epochs) == (2e-5, 3)
    else:
        assert (config.method, config.learning_rate, config.beta) == ("dpo", 5e-7, 0.005)
        assert config.dataset == "HuggingFaceH4/ultrafeedback_binarized"
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps * 8 == 128


def test_four_paper_configs_ship():
    assert {p.stem for p in PAPER_CONFIGS} == {
        "inra_r1_1.5b_shortcot",
        "inra_r1_7b_shortcot",
        "inra_qwen2.5_7b_dpo",
        "inra_llama3.1_8b_dpo",
    }
