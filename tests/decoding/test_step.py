"""The decode step reads one thing back from the device per token: the token ids (issue 20, item 7).

Host syncs are counted by patching the tensor methods that copy a value to the host (`item`, `tolist`,
`__bool__`, `__int__`, `__float__`, `nonzero`, whose output size depends on the data) while `generate` runs,
and attributing each call to the first frame that is flexrealign's own. Transformers' attention-mask code
adds its own read per forward (`masking_utils`: is the padding mask all ones?), as it does in the base model's
plain loop; those are reported by the test's message but not counted against us.
"""

from __future__ import annotations

import collections
import sys

import pytest
import torch

from flexrealign.decoding.generation import LamSchedule, generate
from tests.helpers import qwen3_inra, qwen3_thinking_tokenizer

SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero")


def _count_syncs(monkeypatch, run) -> collections.Counter:
    """Host syncs by the file that made them: flexrealign's modules by name, everything else as 'other'."""
    calls: collections.Counter = collections.Counter()
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def patched(self, *args, __original=original, __name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            where = caller.rsplit("/", 1)[-1] if "/src/flexrealign/" in caller else "other"
            calls[(where, __name)] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, patched)
    run()
    monkeypatch.undo()
    return calls


@pytest.fixture(scope="module")
def tok():
    return qwen3_thinking_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return qwen3_inra(tok)


@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0.0), dict(temperature=0.9, top_k=20, top_p=0.8, seed=3)],
    ids=["greedy", "top_k_top_p"],
)
def test_one_host_sync_per_step(model, tok, monkeypatch, sampling):
    """Mixed lam and a think/answer schedule with a budget and a minimum (forced and banned tokens): the
    per-step cost is the difference between a 17-token and a 1-token run, so prefill and set-up cancel out."""
    prompts = [
        [{"role": "user", "content": "2+2?"}],
        [{"role": "user", "content": "Count to three, slowly."}],
    ]
    lam = [LamSchedule.think_answer(-0.5, 1.5), 0.5]

    def run(n):
        return lambda: generate(
            model, tok, prompts, lam=lam, max_new_tokens=n, ignore_eos=True,
            thinking_token_budget=6, min_thinking_tokens=2, **sampling,
        )  # fmt: skip

    one, many = _count_syncs(monkeypatch, run(1)), _count_syncs(monkeypatch, run(17))
    per_step = {k: (many[k] - one[k]) / 16 for k in many}
    ours = {k: v for k, v in per_step.items() if k[0] != "other" and v}
    assert ours == {("step.py", "tolist"): 1.0}, (
        f"host syncs per step in flexrealign's code: {ours} (all: {per_step})"
    )
