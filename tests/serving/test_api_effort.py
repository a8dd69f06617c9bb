"""reasoning_effort as the explicit fields it stands for, on both endpoints: the effort's fields go through the
same checks as the body's (the server's lam range included), the body's fields win over them, and errors
about a value the effort supplied name reasoning_effort."""

from __future__ import annotations

import logging

import openai
import pytest

from flexrealign.decoding.calibration import Calibration
from flexrealign.decoding.dial import DialError, parse_dial
from flexrealign.decoding.generation import LamSchedule, generate
from flexrealign.serving import Engine, create_app
from flexrealign.serving.params import ServerConfig
from flexrealign.serving.server import BackgroundServer
from helpers import qwen3_inra, qwen3_thinking_tokenizer

MODEL = "qwen-tiny"
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
PROMPT = "What is 2 + 2?\n<think>\n"  # a raw prompt that opens the think block
N = 12
SKIP = {"enable_thinking": False}
# the reported examples: efforts of a lam (and a template argument) only
BASIC = {"none": {"lam": 2.0, "chat_template_kwargs": SKIP}, "low": {"lam": 1.0}, "wild": {"lam": 7.0}}
# efforts of the other fields a request may carry
FULL = {
    **BASIC,
    "wild_think": {"lam_think": -3.0, "lam_answer": 1.0},
    "paced": {
        "lam_think": -0.5,
        "lam_answer": 1.5,
        "thinking_token_budget": 5,
        "thinking_closing": "Time is up.",
    },
    "floor": {"lam": 1.0, "thinking_token_budget": 6, "min_thinking_tokens": 4},
    "wordy": {
        "lam": 1.0,
        "thinking_token_budget": 2,
        "thinking_closing": "Time is up; answering now, finally.",
    },
}
CURVE = [{"lam": 1.0, "mean_thinking_tokens": 30, "mean_tokens": 40, "pass_at_1": 65, "samples": 8}]


def calibration(efforts: dict) -> Calibration:
    return Calibration.from_json({"curve": CURVE, "efforts": efforts})


@pytest.fixture(scope="module")
def engine():
    """(engine, model, tokenizer): the chat template opens the think block, so both endpoints think unless
    told not to."""
    tok = qwen3_thinking_tokenizer()
    model = qwen3_inra(tok)
    engine = Engine(model, tok).start()
    yield engine, model, tok
    engine.stop()


def _client(engine: Engine, efforts: dict):
    app = create_app(engine, MODEL, lam_min=-1.0, lam_max=2.0, calibration=calibration(efforts))
    with BackgroundServer(app) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def served(engine):
    """(client, model, tokenizer): the BASIC efforts behind a server whose lam range is [-1, 2]."""
    for client in _client(engine[0], BASIC):
        yield client, *engine[1:]


@pytest.fixture(scope="module")
def full(engine):
    """A client of the same engine with the FULL efforts, and the same lam range."""
    yield from _client(engine[0], FULL)


def chat(client, **extra):
    return client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=N, temperature=0, extra_body=extra
    )


def complete(client, **extra):
    return client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=N, temperature=0, extra_body=extra
    )


def refused(call, client, **extra) -> dict:
    with pytest.raises(openai.BadRequestError) as err:
        call(client, **extra)
    return err.value.body


def test_completions_effort_none_thinks_not_at_all(served):
    """enable_thinking=False cannot render a raw prompt: it means a budget of 0, as the vLLM plugin does."""
    client, model, tok = served
    free = complete(client, lam=2.0)
    assert free.usage.completion_tokens_details.reasoning_tokens > 0  # this prompt thinks when let
    want = generate(model, tok, [PROMPT], lam=2.0, max_new_tokens=N, thinking_token_budget=0)
    for r in (
        complete(client, reasoning_effort="none"),
        complete(client, vllm_xargs={"reasoning_effort": "none"}),
    ):
        assert r.usage.completion_tokens_details.reasoning_tokens == want.reasoning_tokens[0] == 0
        assert r.choices[0].text == want.texts[0] and r.model_extra["lam"] == 2.0
    # an explicit budget wins over the effort's; its lam stays
    r = complete(client, reasoning_effort="none", thinking_token_budget=3)
    assert r.usage.completion_tokens_details.reasoning_tokens == 3 and r.model_extra["lam"] == 2.0
    # chat renders the prompt with the block closed (the budget of 0 then has nothing left to cut)
    want = generate(model, tok, [CHAT], lam=2.0, max_new_tokens=N, chat_template_kwargs=SKIP)
    r = chat(client, reasoning_effort="none")
    assert r.choices[0].message.content == want.texts[0]
    assert (
        r.usage.completion_tokens_details.reasoning_tokens
        == 0
        < chat(client, lam=2.0).usage.completion_tokens_details.reasoning_tokens
    )


@pytest.mark.parametrize("call", [chat, complete], ids=["chat", "completions"])
def test_an_effort_lam_outside_the_server_range_is_refused_as_an_explicit_one(served, call):
    client, _, _ = served
    explicit = refused(call, client, lam=7.0)
    assert explicit["param"] == "lam" and explicit["code"] == "lam_out_of_range"
    body = refused(call, client, reasoning_effort="wild")
    assert body["param"] == "reasoning_effort" and body["code"] == "lam_out_of_range"
    assert "reasoning_effort 'wild' stands for lam=7.0" in body["message"]
    assert "outside this server's range [-1.0, 2.0]" in body["message"]
    assert call(client, reasoning_effort="wild", lam=0.5).model_extra["lam"] == 0.5  # an explicit lam wins


@pytest.mark.parametrize("call", [chat, complete], ids=["chat", "completions"])
def test_an_effort_schedule_outside_the_server_range_is_refused(full, call):
    body = refused(call, full, reasoning_effort="wild_think")
    assert body["param"] == "reasoning_effort" and body["code"] == "lam_out_of_range"
    assert "reasoning_effort 'wild_think' stands for lam_think=-3.0" in body["message"]
    assert (
        call(full, reasoning_effort="wild_think", lam_think=0.0, lam_answer=1.0).model_extra["lam"]["think"]
        == 0.0
    )


@pytest.mark.parametrize("call", [chat, complete], ids=["chat", "completions"])
def test_an_effort_means_exactly_its_explicit_fields(full, call):
    client = full
    fields = {
        "lam_think": -0.5,
        "lam_answer": 1.5,
        "thinking_token_budget": 5,
        "thinking_closing": "Time is up.",
    }
    for effort, explicit in (("paced", fields), ("floor", {"lam": 1.0, "thinking_token_budget": 6,
                                                          "min_thinking_tokens": 4})):  # fmt: skip
        got, want = call(client, reasoning_effort=effort), call(client, **explicit)
        assert got.model_extra["lam"] == want.model_extra["lam"]
        assert (
            got.usage.completion_tokens_details.reasoning_tokens
            == want.usage.completion_tokens_details.reasoning_tokens
        )
        text = (lambda r: r.choices[0].message.content) if call is chat else (lambda r: r.choices[0].text)
        assert text(got) == text(want)
    assert call(client, reasoning_effort="paced").model_extra["lam"] == {"think": -0.5, "answer": 1.5,
                                                                          "marker": "</think>"}  # fmt: skip


@pytest.mark.parametrize("call", [chat, complete], ids=["chat", "completions"])
def test_errors_name_the_field_the_client_sent_or_the_effort(full, call):
    client = full
    # the body's budget under the effort's minimum: the client's field is named
    body = refused(call, client, reasoning_effort="floor", thinking_token_budget=2)
    assert body["param"] == "thinking_token_budget" and "above thinking_token_budget (2)" in body["message"]
    r = call(client, reasoning_effort="floor", thinking_token_budget=10)  # the effort's minimum stays
    want = call(client, lam=1.0, thinking_token_budget=10, min_thinking_tokens=4)
    assert r.usage == want.usage and r.choices[0] == want.choices[0]
    # a closing text longer than the effort's budget (a tokenizer check): the effort is named
    body = refused(call, client, reasoning_effort="wordy")
    assert body["param"] == "reasoning_effort" and "'wordy'" in body["message"]
    assert "closing text" in body["message"]
    # the body's closing text needs a budget; the effort gives one
    assert call(client, reasoning_effort="wordy", thinking_closing="Ok.").model_extra["lam"] == 1.0


def test_resolution_without_a_server():
    cal = calibration(FULL)
    rng = {"lam_range": (-1.0, 2.0)}
    with pytest.raises(DialError) as err:
        parse_dial({"reasoning_effort": "wild"}, cal, **rng)
    assert err.value.param == "reasoning_effort" and "lam=7.0" in err.value.message
    assert parse_dial({"reasoning_effort": "paced"}, cal, **rng).lam_spec() == LamSchedule.think_answer(
        -0.5, 1.5
    )
    with pytest.raises(DialError) as err:  # a single-path model has no lam: the effort's lam is refused
        parse_dial({"reasoning_effort": "low"}, cal, **rng).lam_spec(fused=False)
    assert err.value.param == "reasoning_effort" and "single path" in err.value.message
    assert parse_dial({"reasoning_effort": "none"}, cal).limits().thinking_token_budget == 0
    limits = parse_dial({"reasoning_effort": "floor", "min_thinking_tokens": 0}, cal).limits()
    assert (limits.thinking_token_budget, limits.min_thinking_tokens) == (6, 0)


def test_the_server_warns_at_start_about_efforts_outside_its_range(caplog):
    with caplog.at_level(logging.WARNING, logger="flexrealign.serve"):
        cfg = ServerConfig(MODEL, lam_min=-1.0, lam_max=2.0, calibration=calibration(FULL))
    assert cfg.efforts_out_of_range() == [("wild", "lam", 7.0), ("wild_think", "lam_think", -3.0)]
    assert "'wild' has lam=7.0, outside this server's lam range" in caplog.text
