"""The newer families (Qwen3-MoE, Gemma-3, gpt-oss, SmolLM3) through every surface that takes a checkpoint:
`flexrealign generate`, `export`, the server, lm-eval and `calibrate`, on tiny InRa checkpoints saved to disk.

The older four families go through the same surfaces in their own test modules; the maths of every family
is in tests/core/test_families.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from tiny_checkpoints import tiny_inra_checkpoint
from transformers import AutoModelForCausalLM

from flexrealign.cli import main
from flexrealign.conversion.loading import load_model, load_tokenizer
from flexrealign.decoding.generation import generate
from flexrealign.decoding.rows import LamSchedule

NEW = ["qwen3_moe", "gemma3_text", "gpt_oss", "smollm3"]
SMALL = dict(vocab_size=300, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)
PROMPTS = ["the word of his time <think>", "you said that he was"]


@pytest.fixture(scope="module", params=NEW)
def ckpt(request, tmp_path_factory) -> Path:
    """An InRa checkpoint (perturbed adapter, BPE tokenizer with think markers) and its plain base beside it."""
    root = tmp_path_factory.mktemp(request.param)
    tiny_inra_checkpoint(root / "inra", request.param, base_path=root / "base", perturb=0.5, **SMALL)
    return root / "inra"


def test_cli_generate_with_a_schedule_and_a_budget_equals_the_python_api(ckpt, capsys):
    args = ["generate", "--model", str(ckpt), "--raw", "--prompt", *PROMPTS, "--lam-think", "-1", "--lam-answer", "1",
            "--thinking-token-budget", "3", "--max-new-tokens", "8", "--json-output"]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    model, tok = load_model(str(ckpt), device="cpu"), load_tokenizer(str(ckpt))
    lam = LamSchedule.think_answer(-1.0, 1.0)
    want = generate(model, tok, PROMPTS, lam=lam, max_new_tokens=8, thinking_token_budget=3)
    assert [r["text"] for r in records] == want.texts
    assert want.reasoning_tokens[0] == 3  # the first prompt opens a block, which the budget closes


def test_export_writes_the_plain_lam1_model(ckpt, tmp_path):
    assert main(["export", "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "plain")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    ids = torch.tensor([[5, 60, 70, 80, 90]])
    assert torch.equal(plain(ids).logits, load_model(str(ckpt), device="cpu")(ids, lam=1.0).logits)
    assert "inra" not in plain.config.to_dict()


def test_server_completion_equals_generate(ckpt):
    from flexrealign.serving import Engine, create_app
    from flexrealign.serving.server import BackgroundServer

    model, tok = load_model(str(ckpt), device="cpu"), load_tokenizer(str(ckpt))
    with Engine(model, tok) as engine, BackgroundServer(create_app(engine, "m", lam_min=-2.0)) as server:
        body = {"model": "m", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0, "lam_think": -1.0,
                "lam_answer": 1.0, "thinking_token_budget": 3}  # fmt: skip
        out = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    want = generate(model, tok, PROMPTS[:1], lam=LamSchedule.think_answer(-1.0, 1.0), max_new_tokens=8,
                    thinking_token_budget=3)  # fmt: skip
    assert out["choices"][0]["text"] == want.texts[0], out
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == want.reasoning_tokens[0]


def test_lm_eval_scores_lam0_as_the_base_and_lam1_as_the_merged_model(ckpt):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed")
    from lm_eval.api.instance import Instance

    from flexrealign.eval.lm_eval_model import FlexRealignLM

    reqs = [Instance("loglikelihood", {}, ("the word of", " his time"), 0)]
    for lam, plain_dir in ((0.0, ckpt.parent / "base"), (1.0, ckpt)):
        ((got, _),) = FlexRealignLM(
            pretrained=str(ckpt), lam=lam, device="cpu", dtype="float32"
        ).loglikelihood(reqs)
        plain = AutoModelForCausalLM.from_pretrained(plain_dir, dtype=torch.float32).eval()
        tok = load_tokenizer(str(ckpt))
        ctx, cont = tok("the word of").input_ids, tok(" his time").input_ids
        logp = plain(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1].log_softmax(-1)
        want = logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
        assert abs(got - want) < 1e-4, (lam, got, want)


def test_calibrate_writes_an_effort_table(ckpt, tmp_path):
    problems = tmp_path / "p.jsonl"
    problems.write_text(
        "".join(json.dumps({"problem": f"add {i} {i}", "answer": str(2 * i)}) + "\n" for i in range(2))
    )
    args = ["calibrate", "--model", str(ckpt), "--benchmark", str(problems), "--lam", "0", "1",
            "--n-problems", "2", "--max-new-tokens", "6", "--work_dir", str(tmp_path / "work")]  # fmt: skip
    assert main(args) == 0
    table = json.loads((ckpt / "flexrealign_calibration.json").read_text())
    assert table["efforts"] and [p["lam"] for p in table["curve"]] == [0.0, 1.0]
