"""Chat-format switches of the newer families, as the server and `generate` meet them.

* gpt-oss's template reads `reasoning_effort` itself ("Reasoning: high" in its system message). The server
  passes the request's level to it: without a calibration only there (as vLLM does), with one it also selects
  the calibrated lam and budget. A chat_template_kwargs level that disagrees is refused.
* SmolLM3 turns thinking off with `/no_think` in the system prompt (or enable_thinking=False): the template
  then closes an empty think block in the prompt, so a think/answer schedule answers from the first token.

The templates below are small stand-ins written for these tests with the switches the real ones have; the
real templates are not available offline.
"""

from __future__ import annotations

import json

import httpx
import pytest
from tiny_checkpoints import bpe_tokenizer

from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.calibration import Calibration, CurvePoint, choose_efforts
from flexrealign.decoding.generation import generate
from flexrealign.decoding.prompts import template_takes
from flexrealign.decoding.rows import LamSchedule
from flexrealign.serving import Engine, create_app
from flexrealign.serving.server import BackgroundServer
from helpers import perturb_adapter

GPT_OSS_LIKE = (
    "system: Reasoning: {{ reasoning_effort | default('medium') }}\n"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
SMOLLM3_LIKE = (
    "{% set think = not (messages[0]['role'] == 'system' and '/no_think' in messages[0]['content'])"
    " and enable_thinking | default(true) %}"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% if not think %}<think>\n\n</think>\n{% endif %}{% endif %}"
)
CURVE = [CurvePoint(0.0, 60.0, 70.0, 66.0, 8), CurvePoint(1.0, 30.0, 40.0, 65.0, 8)]


def model_and_tokenizer(family: str, template: str):
    tok = bpe_tokenizer(300)
    tok.chat_template = template
    base = tiny_model(family, vocab_size=300)
    return perturb_adapter(InRaModel.from_base(base), scale=0.5, seed=3).eval(), tok


def post(url: str, body: dict) -> httpx.Response:
    full = {"model": "m", "max_tokens": 4, "temperature": 0} | body
    return httpx.post(url + "/v1/chat/completions", json=full, timeout=120)


def test_gpt_oss_reasoning_effort_reaches_its_template_and_selects_the_calibrated_lam():
    model, tok = model_and_tokenizer("gpt_oss", GPT_OSS_LIKE)
    assert template_takes(tok, "reasoning_effort") and not template_takes(
        bpe_tokenizer(300), "reasoning_effort"
    )
    chat = [{"role": "user", "content": "the word of"}]

    def prompt_tokens(level: str) -> int:
        return len(tok(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                               reasoning_effort=level)).input_ids)  # fmt: skip

    calibration = Calibration(CURVE, choose_efforts(CURVE, can_skip_thinking=False))
    with Engine(model, tok) as engine:
        with BackgroundServer(create_app(engine, "m")) as server:  # no calibration: the template's level only
            for level in ("low", "high"):
                out = post(server.url, {"messages": chat, "reasoning_effort": level})
                assert out.status_code == 200 and out.json()["usage"]["prompt_tokens"] == prompt_tokens(level)
            bad = post(server.url, {"messages": chat, "reasoning_effort": "high",
                                    "chat_template_kwargs": {"reasoning_effort": "low"}})  # fmt: skip
            assert bad.status_code == 400 and "disagree" in bad.text
        with BackgroundServer(create_app(engine, "m", calibration=calibration)) as server:
            out = post(server.url, {"messages": chat, "reasoning_effort": "high"}).json()
            assert out["lam"] == calibration.efforts["high"].lam
            assert out["usage"]["prompt_tokens"] == prompt_tokens("high")


def test_a_template_without_the_level_still_needs_a_calibration():
    model, tok = model_and_tokenizer("qwen3_moe", SMOLLM3_LIKE)
    with Engine(model, tok) as engine, BackgroundServer(create_app(engine, "m")) as server:
        out = post(server.url, {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"})
    assert out.status_code == 400 and "calibrat" in out.text


@pytest.mark.parametrize("switch", [{"system": "/no_think"}, {"enable_thinking": False}])
def test_smollm3_no_think_answers_at_the_answer_lam_from_the_first_token(switch):
    model, tok = model_and_tokenizer("smollm3", SMOLLM3_LIKE)
    chat = [{"role": "user", "content": "the word of"}]
    if "system" in switch:
        chat = [{"role": "system", "content": switch["system"]}, *chat]
    kwargs = {"enable_thinking": False} if "enable_thinking" in switch else None
    sched = generate(model, tok, [chat], lam=LamSchedule.think_answer(-1.0, 1.0), max_new_tokens=8,
                     chat_template_kwargs=kwargs, thinking_token_budget=2)  # fmt: skip
    plain = generate(model, tok, [chat], lam=1.0, max_new_tokens=8, chat_template_kwargs=kwargs)
    assert sched.token_ids == plain.token_ids and sched.reasoning_tokens == [0]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **(kwargs or {}))
    assert rendered.endswith("<think>\n\n</think>\n")  # the switch closed the block in the prompt
    on = [{"role": "system", "content": "/think"}, chat[-1]]
    assert not tok.apply_chat_template(on, tokenize=False, add_generation_prompt=True).endswith("</think>\n")


def test_cli_generate_passes_chat_template_kwargs_to_the_template(tmp_path, capsys):
    from flexrealign.cli import main

    model, tok = model_and_tokenizer("gpt_oss", GPT_OSS_LIKE)
    model.save_pretrained(tmp_path, tokenizer=tok)
    chat = [{"role": "user", "content": "the word of"}]
    base = [
        "generate",
        "--model",
        str(tmp_path),
        "--prompt",
        "the word of",
        "--max-new-tokens",
        "4",
        "--json-output",
    ]
    assert main([*base, "--chat-template-kwargs", '{"reasoning_effort": "low"}']) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    want = generate(
        model, tok, [chat], lam=1.0, max_new_tokens=4, chat_template_kwargs={"reasoning_effort": "low"}
    )
    assert record["text"] == want.texts[0]
    with pytest.raises(SystemExit) as exit_:  # a usage error, before any model is loaded
        main([*base, "--chat-template-kwargs", '["low"]'])
    assert exit_.value.code == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_cli_chat_template_kwargs_without_a_template_is_refused(tmp_path, capsys):
    from flexrealign.cli import main

    model, tok = model_and_tokenizer("smollm3", SMOLLM3_LIKE)
    tok.chat_template = None
    model.save_pretrained(tmp_path, tokenizer=tok)
    argv = ["generate", "--model", str(tmp_path), "--prompt", "hi", "--chat-template-kwargs"]
    assert main([*argv, '{"enable_thinking": false}']) == 2  # would be dropped silently otherwise
    assert "needs a chat template" in capsys.readouterr().err
