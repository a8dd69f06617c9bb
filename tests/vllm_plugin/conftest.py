"""Fixtures for the vLLM plugin tests: tiny InRa checkpoints (fp32, head_dim 128) built once per session.

Every test here is marked `vllm` and skipped when vLLM is not installed. Engines are started with a small
KV cache and `enforce_eager` (or dynamo without inductor, for `vllm serve`) so that start-up stays short;
one engine per module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_checkpoints import tiny_inra_checkpoint
from vllm_common import FAMILIES, PROMPTS

from flexrealign.decoding.adaptive import AutoPolicy
from flexrealign.decoding.calibration import Calibration, CurvePoint, choose_efforts, save_calibration

# a made-up curve: efforts none = lam 2 with budget 0, low = lam 1, medium = lam 0, high = lam -1
CURVE = [CurvePoint(-1.0, 90.0, 99.0, 70.0, 8), CurvePoint(0.0, 60.0, 70.0, 66.0, 8),
         CurvePoint(1.0, 30.0, 40.0, 65.0, 8), CurvePoint(2.0, 10.0, 20.0, 40.0, 8)]  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _vllm_env() -> Iterator[None]:
    """Quieter engine processes; collective_rpc needs to send a function to the engine. Restored after."""
    wanted = {"VLLM_LOGGING_LEVEL": "WARNING", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update({k: v for k, v in wanted.items() if saved[k] is None})
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> an InRa checkpoint folder (1 adapter layer on 2 layers, perturbed adapter, tokenizer)."""
    root = tmp_path_factory.mktemp("inra_ckpts")
    for family in FAMILIES:
        tiny_inra_checkpoint(root / family, family, **FAMILIES[family])
    save_calibration(root / "qwen2", Calibration(CURVE, choose_efforts(CURVE, can_skip_thinking=False), {},
                                                 separating_policy(root / "qwen2")))  # fmt: skip
    return {family: root / family for family in FAMILIES}  # only qwen2 is calibrated


def separating_policy(path: Path) -> AutoPolicy:
    """A lam auto policy that sends PROMPTS[0] to lam_easy (2.0) and PROMPTS[1] to lam_hard (-1.0): its probe
    is the difference of their states, its threshold halfway (a margin of half their distance)."""
    from transformers import AutoTokenizer

    from flexrealign.core.inra import InRaModel
    from flexrealign.decoding.autofit import prompt_states

    model, tok = InRaModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    h = prompt_states(model, tok, list(PROMPTS[:2]))  # (2, D)
    w = h[0] - h[1]
    return AutoPolicy(tuple(w.tolist()), -float(w @ (h[0] + h[1])) / 2, 0.5, lam_easy=2.0, lam_hard=-1.0)
