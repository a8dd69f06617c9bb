"""`flexrealign inra-train` under `accelerate launch` with 2 CPU processes (DDP over gloo) trains the same adapter
as 1 process with the same global batch, and still leaves the base untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flexrealign.cli import main
from flexrealign.conversion.llama2c import convert_llama2c
from helpers import assert_same_updates, identity_adapter, shared_path

# `accelerate launch` binds its fixed rendezvous port: one such module at a time (tests/conftest.py)
pytestmark = pytest.mark.launch

ACCELERATE_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "accelerate" / "ddp_cpu.yaml"
PAIRS = [
    ("Once upon a time", " there was a dog."),
    ("Lily", " went to the park."),
    ("Tom", " had a ball."),
    ("Max", " ran fast."),
] * 3  # 12 rows: 3 full global batches of 4, so no process pads its last batch


def _args(base: Path, data: Path, out: Path, per_device: int) -> list[str]:
    return ["inra-train", "--base_model", str(base), "--dataset", str(data), "--output_dir", str(out),
            "--max_steps", "3", "--per_device_train_batch_size", str(per_device), "--learning_rate", "3e-3",
            "--warmup_ratio", "0", "--logging_steps", "1", "--use_cpu"]  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one(tmp_path: Path) -> None:
    folder = shared_path("models", "stories260K")
    base = convert_llama2c(folder / "stories260K.bin", folder / "tok512.model", tmp_path / "base")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    assert main(_args(base, data, tmp_path / "one", per_device=4)) == 0

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
           "-m", "flexrealign.cli", *_args(base, data, tmp_path / "two", per_device=2)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    one, two = (
        load_file(str(tmp_path / run / "adapter" / "inra_adapter.safetensors")) for run in ("one", "two")
    )
    start = load_file(str(base / "model.safetensors"))
    # gloo sums in another order than one process, which Adam can turn into whole steps for near-zero gradients
    # of the zero-initialised adapter: compare each tensor's update as a whole (helpers.assert_same_updates)
    assert_same_updates(two, one, identity_adapter(base, tmp_path / "identity"))
    merged = load_file(str(tmp_path / "two" / "model.safetensors"))
    for key, value in start.items():  # the base layers sit after the adapter layer in the merged checkpoint
        if key.startswith("model.layers."):
            i, rest = key[len("model.layers.") :].split(".", 1)
            key = f"model.layers.{int(i) + 1}.{rest}"
        assert torch.equal(merged[key], value), key
