"""The thinking dial over HTTP: budgets (body and vllm_xargs), usage.reasoning_tokens, reasoning_effort mapped
through a calibration (explicit lam wins; no calibration is a 400 that says how to calibrate), lam auto and the
soft landing of a budget (the default where the server has a calibration)."""

from __future__ import annotations

import openai
import pytest

from flexrealign.decoding.adaptive import AutoLam, AutoPolicy
from flexrealign.decoding.calibration import Calibration, CurvePoint, choose_efforts
from flexrealign.decoding.dial import parse_dial
from flexrealign.decoding.generation import LamSchedule, generate
from flexrealign.serving import Engine, create_app
from flexrealign.serving.server import BackgroundServer
from helpers import chat_reply, qwen3_inra, qwen3_thinking_tokenizer, reply_parts

MODEL = "qwen-tiny"
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
N = 12
CURVE = [CurvePoint(-0.5, 90.0, 99.0, 70.0, 8), CurvePoint(0.0, 60.0, 70.0, 66.0, 8),
         CurvePoint(1.0, 30.0, 40.0, 65.0, 8), CurvePoint(2.0, 10.0, 20.0, 40.0, 8)]  # fmt: skip


@pytest.fixture(scope="module")
def served():
    """(calibrated client, uncalibrated client, model, tokenizer): one engine behind two apps."""
    tok = qwen3_thinking_tokenizer()
    model = qwen3_inra(tok)
    engine = Engine(model, tok).start()
    # the auto policy's probe is constant: every request thinks at lam_easy (its logit 0 >= logit(0.5))
    auto = AutoPolicy((0.0,) * model.config.hidden_size, 0.0, 0.5, lam_easy=2.0, lam_hard=-0.5)
    calibration = Calibration(CURVE, choose_efforts(CURVE, can_skip_thinking=True), {}, auto)
    with (
        BackgroundServer(create_app(engine, MODEL, calibration=calibration)) as a,
        BackgroundServer(create_app(engine, MODEL)) as b,
    ):
        clients = [
            openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120) for s in (a, b)
        ]
        yield *clients, model, tok
    engine.stop()


def chat(client, **extra):
    return client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=N, temperature=0, extra_body=extra
    )


def test_budget_in_body_and_in_vllm_xargs(served):
    client, _, model, tok = served
    want = generate(model, tok, [CHAT], lam=LamSchedule.think_answer(-0.5, 1.5), max_new_tokens=N,
                    thinking_token_budget=5, thinking_closing="Time is up.")  # fmt: skip
    top = chat(client, lam_think=-0.5, lam_answer=1.5, thinking_token_budget=5, thinking_closing="Time is up.",
               thinking_landing="hard")  # fmt: skip
    xargs = chat(client, vllm_xargs={"lam_think": -0.5, "lam_answer": 1.5, "thinking_token_budget": 5,
                                     "thinking_closing": "Time is up.", "thinking_landing": "hard"})  # fmt: skip
    for r in (top, xargs):
        assert reply_parts(r.choices[0].message) == chat_reply(tok, CHAT, want.texts[0])
        assert r.usage.completion_tokens_details.reasoning_tokens == want.reasoning_tokens[0] == 5
        assert r.model_extra["lam"] == {"think": -0.5, "answer": 1.5, "marker": "</think>"}
    with pytest.raises(openai.BadRequestError, match="above thinking_token_budget"):
        chat(client, thinking_token_budget=2, min_thinking_tokens=3)


def test_reasoning_effort_picks_the_calibrated_lam(served):
    client, _, model, tok = served
    efforts = client.models.list().data[0].model_extra["reasoning_efforts"]
    assert set(efforts) == {"none", "low", "medium", "high", "auto"} and efforts["low"] == {"lam": 1.0}
    assert efforts["auto"] == {"lam": "auto"}
    r = chat(client, reasoning_effort="low")
    assert r.model_extra["lam"] == 1.0
    low = generate(model, tok, [CHAT], lam=1.0, max_new_tokens=N).texts[0]
    assert reply_parts(r.choices[0].message) == chat_reply(tok, CHAT, low)
    assert chat(client, reasoning_effort="low", lam=-0.5).model_extra["lam"] == -0.5  # explicit lam wins
    none = chat(client, reasoning_effort="none")  # renders with enable_thinking=False: no thinking at all
    assert none.model_extra["lam"] == 2.0 and none.usage.completion_tokens_details.reasoning_tokens == 0
    want = generate(
        model, tok, [CHAT], lam=2.0, max_new_tokens=N, chat_template_kwargs={"enable_thinking": False}
    )
    assert reply_parts(none.choices[0].message) == (None, want.texts[0])  # no block: all of it is the answer
    with pytest.raises(openai.BadRequestError, match="offers: none, low, medium, high"):
        chat(client, reasoning_effort="xhigh")


def test_reasoning_effort_without_calibration_is_a_400(served):
    _, bare, _, _ = served
    with pytest.raises(openai.BadRequestError, match="flexrealign calibrate --model") as err:
        chat(bare, reasoning_effort="high")
    assert err.value.body["param"] == "reasoning_effort"
    assert bare.models.list().data[0].model_extra["reasoning_efforts"] == {}
    assert bare.models.retrieve(MODEL).model_extra["reasoning_efforts"] == {}


def test_a_marker_without_a_schedule_is_the_limits_marker(served):
    """lam_marker with a plain lam names the end marker the budget forces, as in the vLLM plugin (it was a 400
    blaming lam_think, a field the client never sent)."""
    client, _, model, tok = served
    want = generate(
        model, tok, [CHAT], lam=0.5, max_new_tokens=N, thinking_token_budget=4, think_marker="</reasoning>"
    )
    r = chat(client, lam=0.5, lam_marker="</reasoning>", thinking_token_budget=4, thinking_landing="hard")
    assert "</reasoning>" in want.texts[0]
    assert reply_parts(r.choices[0].message) == chat_reply(tok, CHAT, want.texts[0], end="</reasoning>")
    assert r.usage.completion_tokens_details.reasoning_tokens == want.reasoning_tokens[0] == 4


def test_lam_auto_is_the_calibrated_policy(served):
    client, bare, model, tok = served
    want = generate(model, tok, [CHAT], lam=AutoLam(client_policy(served)), max_new_tokens=N)
    assert want.auto_lams == [2.0]
    for r in (
        chat(client, lam="auto"),
        chat(client, reasoning_effort="auto"),
        chat(client, vllm_xargs={"lam": "auto"}),
    ):
        assert r.model_extra["lam"] == {"auto": 2.0}
        assert reply_parts(r.choices[0].message) == chat_reply(tok, CHAT, want.texts[0])
    stream = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=N, temperature=0, stream=True,
                                            extra_body={"lam": "auto"})  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].model_extra["lam"] == {"auto": 2.0} and chunks[0].model_extra["lam"] == {"auto": None}
    for bad in ({"lam": "auto"}, {"reasoning_effort": "auto"}):
        with pytest.raises(openai.BadRequestError, match="flexrealign calibrate") as err:
            chat(bare, **bad)
        assert err.value.body["code"] == "no_auto_policy" and err.value.body["param"] == next(iter(bad))


def client_policy(served) -> AutoPolicy:
    return AutoPolicy((0.0,) * served[2].config.hidden_size, 0.0, 0.5, lam_easy=2.0, lam_hard=-0.5)


def test_a_budget_lands_softly_where_the_server_is_calibrated(served):
    client, bare, model, tok = served
    cal = Calibration(CURVE, choose_efforts(CURVE, can_skip_thinking=True))
    dial = parse_dial({"lam": 0.0, "thinking_token_budget": 6}, cal)  # the default landing: soft
    want = generate(model, tok, [CHAT], lam=dial.lam_spec(), thinking=dial.limits(), max_new_tokens=N)
    hard = generate(model, tok, [CHAT], lam=0.0, thinking_token_budget=6, max_new_tokens=N)
    assert want.texts != hard.texts  # the landing steered lam
    for r, text in ((chat(client, lam=0.0, thinking_token_budget=6), want.texts[0]),
                    (chat(client, lam=0.0, thinking_token_budget=6, thinking_landing="hard"), hard.texts[0]),
                    (chat(bare, lam=0.0, thinking_token_budget=6), hard.texts[0])):  # fmt: skip
        assert reply_parts(r.choices[0].message) == chat_reply(tok, CHAT, text)
        assert r.usage.completion_tokens_details.reasoning_tokens <= 6
    for body, client_ in (({"thinking_landing": "soft", "thinking_token_budget": 6}, bare),
                          ({"thinking_landing": "gentle", "thinking_token_budget": 6}, client),
                          ({"thinking_landing": "soft"}, client)):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as err:
            chat(client_, **body)
        assert err.value.body["param"] == "thinking_landing"


def test_a_probe_of_another_hidden_size_is_refused_when_the_app_starts(served):
    from flexrealign.serving.api import create_app

    _, _, model, tok = served
    engine = Engine(model, tok)  # not started: create_app only checks
    wrong = AutoPolicy((0.0,) * (model.config.hidden_size + 1), 0.0, 0.5, lam_easy=2.0, lam_hard=-0.5)
    with pytest.raises(ValueError, match="hidden size of 33; this model's is 32"):
        create_app(engine, MODEL, calibration=Calibration(CURVE, choose_efforts(CURVE, True), {}, wrong))
