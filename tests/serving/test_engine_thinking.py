"""The engine runs the same thinking state machine as `generate`: budgets, minimums and schedules hold per row
for requests that join a running batch mid-flight, and the outputs equal `generate` alone."""

from __future__ import annotations

import queue

import pytest

from flexrealign.decoding.generation import LamSchedule, ThinkingLimits, generate
from flexrealign.serving.engine import Engine, Event, InvalidRequest, SamplingParams
from helpers import qwen3_inra, qwen3_thinking_tokenizer

CHATS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Name a colour."}],
]
CLOSING = "Time is up."
N = 14


@pytest.fixture(scope="module")
def tok():
    return qwen3_thinking_tokenizer()


@pytest.fixture(scope="module")
def inra(tok):
    return qwen3_inra(tok)


REQUESTS = [  # (chat, lam, limits)
    (0, LamSchedule.think_answer(-0.5, 1.5), ThinkingLimits(6, closing=CLOSING)),
    (1, 0.5, ThinkingLimits()),
    (1, LamSchedule.think_answer(1.0, -1.0), ThinkingLimits(3, min_thinking_tokens=2)),
    (0, 2.0, ThinkingLimits(0)),
]


def _wait_tokens(events: queue.Queue[Event], n: int) -> None:
    got = 0
    while got < n:
        event = events.get(timeout=60)
        assert event.output is None
        got += event.token_id is not None


def test_budgets_and_schedules_per_row_when_joining_mid_flight(inra, tok):
    end = tok.convert_tokens_to_ids("</think>")
    with Engine(inra, tok) as engine:
        first, events = engine.stream(engine.encode(CHATS[1]), 1.0, SamplingParams(max_tokens=3 * N))
        _wait_tokens(events, 3)  # the others join a running batch
        handles = [
            engine.submit(engine.encode(CHATS[c]), lam, SamplingParams(max_tokens=N, thinking=lim))
            for c, lam, lim in REQUESTS
        ]
        outs = [h.result(120) for h in handles]
        first.result(120)
    for (c, lam, lim), out in zip(REQUESTS, outs, strict=True):
        want = generate(inra, tok, [CHATS[c]], lam=lam, max_new_tokens=N, thinking_token_budget=lim.thinking_token_budget,
                        min_thinking_tokens=lim.min_thinking_tokens, thinking_closing=lim.closing)  # fmt: skip
        assert out.token_ids == want.token_ids[0] and out.reasoning_tokens == want.reasoning_tokens[0], (
            lam,
            lim,
        )
        if lim.thinking_token_budget is not None:
            assert out.token_ids.index(end) == out.reasoning_tokens == lim.thinking_token_budget
            assert out.token_ids.count(end) == 1


def test_missing_marker_is_a_clear_invalid_request(stories260k):
    model, tok = stories260k
    with Engine(model, tok) as engine:
        with pytest.raises(InvalidRequest, match="no think-end marker") as err:
            engine.submit(
                engine.encode("Once"), None, SamplingParams(max_tokens=2, thinking=ThinkingLimits(4))
            )
        assert err.value.param == "thinking_token_budget"
        assert engine.generate("Once", None, SamplingParams(max_tokens=2)).reasoning_tokens == 0
