"""Adapter-only InRa training under `accelerate launch` with FSDP2 on 2 CPU processes (configs/accelerate/
fsdp_cpu.yaml): the frozen base and the adapter are both sharded, only the adapter trains, and the result matches
1 process at the same global batch, by SFT and by TrRa (where the sharded base is also the reference teacher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsdp_run
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from flexrealign.llama2c import convert_llama2c
from helpers import shared_path

HERE = Path(__file__).resolve().parent
FSDP_CONFIG = HERE.parents[1] / "configs" / "accelerate" / "fsdp_cpu.yaml"
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
    root = tmp_path_factory.mktemp("inra-fsdp")
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


def _launch(inputs: dict[str, Path], out: Path, method: str) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
           str(HERE / "fsdp_run.py"), str(inputs["base"]), str(inputs["data"]), str(out), "2", method,
           str(inputs["aligned"])]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "run.json").read_text())


def _assert_sharded(two: dict) -> None:
    assert two["distributed_type"] == "DistributedType.FSDP"  # accelerate alone would run this as MULTI_CPU
    for part in ("base", "adapter"):
        shares = [s[part] for s in two["shares"]]
        assert all(s["dtensors"] == s["tensors"] > 0 for s in shares), part
        assert sum(s["local_numel"] for s in shares) == shares[0]["full_numel"], part  # no copies held
        assert max(s["local_numel"] for s in shares) < 0.6 * shares[0]["full_numel"], part
    for s in two["shares"]:
        assert s["trainable"] and all(name.startswith("adapter.") for name in s["trainable"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "trra"])
def test_fsdp_shards_base_and_adapter_and_matches_one_process(
    tmp_path: Path, inputs: dict, method: str
) -> None:
    fsdp_run.main(inputs["base"], inputs["data"], tmp_path / "one", 4, method, str(inputs["aligned"]))
    two = _launch(inputs, tmp_path / "two", method)
    _assert_sharded(two)
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    assert len(one["losses"]) == fsdp_run.STEPS
    for step, loss in one["losses"].items():
        assert two["losses"][step] == pytest.approx(
            loss, rel=1e-5
        )  # measured <= 1.9e-6 on losses of 1.2 to 4.8
    w1, w2 = (load_file(str(tmp_path / r / "adapter" / "inra_adapter.safetensors")) for r in ("one", "two"))
    assert w1.keys() == w2.keys()
    for name in w1:
        # Adam turns the tiny gradients of the zero-initialised adapter's MLP into full-size steps, so the float
        # reduction order shows: measured <= 7.3e-5 for FSDP and 7.7e-5 for DDP (TrRa), 1.2e-5 and 6.5e-6 (SFT).
        # Processes that trained apart (each on half the batch) differ by 1.2e-2, so 2e-4 still catches that.
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=2e-4, msg=name)
    start, merged = (
        load_file(str(inputs["base"] / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    for key, value in start.items():  # the base layers sit after the adapter layer in the merged checkpoint
        if key.startswith("model.layers."):
            i, rest = key[len("model.layers.") :].split(".", 1)
            key = f"model.layers.{int(i) + 1}.{rest}"
        assert torch.equal(merged[key], value), key
