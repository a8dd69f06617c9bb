"""Adapter-only InRa training under `accelerate launch` on 2 CPU processes with FSDP2 (configs/accelerate/
fsdp_cpu.yaml) and DeepSpeed ZeRO-3 (deepspeed_zero3_cpu.yaml): the frozen base and the adapter are both sharded,
only the adapter trains, and the result matches 1 process at the same global batch, by SFT and by TrRa (where the
sharded base is also the reference teacher)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sharded_run
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from flexrealign.conversion.llama2c import convert_llama2c
from helpers import assert_same_updates, identity_adapter, shared_path

# `accelerate launch` binds its fixed rendezvous port: one such module at a time (tests/conftest.py)
pytestmark = pytest.mark.launch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
NO_DEEPSPEED = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
RUNS = {  # accelerate config -> the distributed type the run must report
    "fsdp_cpu.yaml": "DistributedType.FSDP",  # accelerate alone would run this as MULTI_CPU
    "deepspeed_zero3_cpu.yaml": "DistributedType.DEEPSPEED",
}
PAIRS = [
    ("Once upon a time", " there was a dog."),
    ("Lily", " went to the park."),
] * 6  # 3 global batches of 4
TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # TrRa renders prompts with a chat template
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """stories260K as the base, a copy with its last MLP moved as the aligned model, and SFT pairs."""
    root = tmp_path_factory.mktemp("inra-sharded")
    folder = shared_path("models", "stories260K")
    base = convert_llama2c(folder / "stories260K.bin", folder / "tok512.model", root / "base")
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(base)
    aligned = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in aligned.model.layers[-1].mlp.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    aligned.save_pretrained(root / "aligned")
    tok.save_pretrained(root / "aligned")
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    return {"base": base, "aligned": root / "aligned", "data": data}


@pytest.fixture(scope="module")
def one_process(inputs: dict, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """method -> the folder of its 1-process run (made on first use, shared by the sharded runs)."""
    runs: dict[str, Path] = {}

    def run(method: str) -> Path:
        if method not in runs:
            runs[method] = tmp_path_factory.mktemp(f"one-{method}")
            sharded_run.main(inputs["base"], inputs["data"], runs[method], 4, method, str(inputs["aligned"]))
        return runs[method]

    return run


def _launch(config: str, inputs: dict[str, Path], out: Path, method: str) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" / config),
           str(HERE / "sharded_run.py"), str(inputs["base"]), str(inputs["data"]), str(out), "2", method,
           str(inputs["aligned"])]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # From the repository root, where the DeepSpeed config finds its JSON file.
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "run.json").read_text())


def _assert_sharded(two: dict) -> None:
    for part in ("base", "adapter"):
        shares = [s[part] for s in two["shares"]]
        assert all(s["sharded"] == s["tensors"] > 0 for s in shares), part
        assert sum(s["local_numel"] for s in shares) == shares[0]["full_numel"], part  # no copies held
        assert max(s["local_numel"] for s in shares) < 0.6 * shares[0]["full_numel"], part
    for s in two["shares"]:
        assert s["trainable"] and all(name.startswith("adapter.") for name in s["trainable"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "method"),
    [
        ("fsdp_cpu.yaml", "sft"),
        ("fsdp_cpu.yaml", "trra"),
        # TrRa only: it also wraps the partitioned base as the reference teacher; SFT saves through the same path
        # `once`: DeepSpeed's partitioning is the same under either transformers; the FSDP cases run in both
        pytest.param("deepspeed_zero3_cpu.yaml", "trra", marks=[NO_DEEPSPEED, pytest.mark.once]),
    ],
)
def test_sharded_base_and_adapter_match_one_process(
    tmp_path: Path, inputs: dict, one_process: Callable[[str], Path], config: str, method: str
) -> None:
    two = _launch(config, inputs, tmp_path, method)
    assert two["distributed_type"] == RUNS[config]
    _assert_sharded(two)
    one_dir = one_process(method)
    one = json.loads((one_dir / "run.json").read_text())
    assert len(one["losses"]) == sharded_run.STEPS
    for step, loss in one["losses"].items():
        assert two["losses"][step] == pytest.approx(loss, rel=1e-5)  # measured <= 2.9e-6 on losses 1.2 to 4.1
    w1, w2 = (load_file(str(d / "adapter" / "inra_adapter.safetensors")) for d in (one_dir, tmp_path))
    # Element-wise, Adam turns the rounding of the reduced sums into whole steps for the zero-initialised adapter's
    # near-zero gradients (ZeRO-3 TrRa: 9.2e-4 here, every run, against steps of 3e-3), so compare each tensor's
    # update as a whole: measured <= 0.44% apart, while processes that trained apart differ by 150%.
    assert_same_updates(w2, w1, identity_adapter(inputs["base"], tmp_path / "start"))
    start, merged = (
        load_file(str(inputs["base"] / "model.safetensors")),
        load_file(str(tmp_path / "model.safetensors")),
    )
    for key, value in start.items():  # the base layers sit after the adapter layer in the merged checkpoint
        if key.startswith("model.layers."):
            i, rest = key[len("model.layers.") :].split(".", 1)
            key = f"model.layers.{int(i) + 1}.{rest}"
        assert torch.equal(merged[key], value), key
