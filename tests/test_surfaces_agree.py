"""One request, every surface, the same tokens (issue 20): a seeded, sampled request with a think/answer lam
schedule and a thinking budget, through `generate`, `flexrealign generate`, the server (plain and streamed)
and lm-eval's `generate_until`. They all run one decode step (`flexrealign.decoding.step`), so they must agree."""

from __future__ import annotations

import json

import httpx
import pytest
from tiny_checkpoints import tiny_inra_checkpoint

from flexrealign.cli import main
from flexrealign.conversion.loading import load_model, load_tokenizer
from flexrealign.decoding.generation import generate
from flexrealign.decoding.rows import LamSchedule
from flexrealign.serving import Engine, create_app
from flexrealign.serving.server import BackgroundServer

PROMPT = "the word of his time <think>"
THINK, ANSWER, BUDGET, N, SEED = -1.0, 1.5, 4, 12, 7
SAMPLING = dict(temperature=0.9, top_k=40, top_p=0.95)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("agree")
    tiny_inra_checkpoint(root / "inra", "qwen3", vocab_size=300, hidden_size=32, num_heads=4, num_kv_heads=2)
    return root / "inra"


@pytest.fixture(scope="module")
def want(ckpt):
    model, tok = load_model(str(ckpt), device="cpu"), load_tokenizer(str(ckpt))
    out = generate(model, tok, [PROMPT], lam=LamSchedule.think_answer(THINK, ANSWER), max_new_tokens=N,
                   thinking_token_budget=BUDGET, seed=[SEED], **SAMPLING)  # fmt: skip
    assert out.reasoning_tokens[0] == BUDGET and len(set(out.token_ids[0])) > 3, out  # sampled, and capped
    return out


def test_cli(ckpt, want, capsys):
    args = ["generate", "--model", str(ckpt), "--raw", "--prompt", PROMPT, "--lam-think", str(THINK),
            "--lam-answer", str(ANSWER), "--thinking-token-budget", str(BUDGET), "--max-new-tokens", str(N),
            "--seed", str(SEED), "--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "--json-output"]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["text"] for r in records] == want.texts


def test_server_plain_and_streamed(ckpt, want):
    model, tok = load_model(str(ckpt), device="cpu"), load_tokenizer(str(ckpt))
    body = {"model": "m", "prompt": PROMPT, "max_tokens": N, "lam_think": THINK, "lam_answer": ANSWER,
            "thinking_token_budget": BUDGET, "seed": SEED, **SAMPLING}  # fmt: skip
    with Engine(model, tok) as engine, BackgroundServer(create_app(engine, "m", lam_min=-2.0)) as server:
        out = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
        with httpx.stream(
            "POST", server.url + "/v1/completions", json=body | {"stream": True}, timeout=120
        ) as r:
            lines = [
                line[6:] for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"
            ]
    assert out["choices"][0]["text"] == want.texts[0], out
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == BUDGET
    streamed = "".join(c["text"] for chunk in map(json.loads, lines) for c in chunk["choices"])
    assert streamed == want.texts[0]


def test_lm_eval_generate_until(ckpt, want):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed")
    from lm_eval.api.instance import Instance

    from flexrealign.eval.lm_eval_model import FlexRealignLM

    lm = FlexRealignLM(pretrained=str(ckpt), lam=ANSWER, lam_think=THINK, thinking_token_budget=BUDGET,
                       device="cpu", dtype="float32", max_length=64)  # fmt: skip
    kwargs = {"until": ["@@never@@"], "max_gen_toks": N, "do_sample": True, "seed": SEED, **SAMPLING}
    [text] = lm.generate_until([Instance("generate_until", {}, (PROMPT, kwargs), 0)], disable_tqdm=True)
    assert text == want.texts[0]
