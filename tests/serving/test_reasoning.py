"""The thinking split out of a chat reply (`reasoning` / `reasoning_content`, `content` only the answer), and
`include_reasoning: false`."""

from __future__ import annotations

import itertools

import openai
import pytest

from flexrealign.decoding.generation import generate
from flexrealign.decoding.thinking import ThinkMarkers
from flexrealign.serving import Engine, create_app
from flexrealign.serving.reasoning import ReasoningSplit
from flexrealign.serving.server import BackgroundServer
from helpers import qwen3_inra, qwen3_thinking_tokenizer, reply_parts

TEXT = "Let me add.\n2 + 2 = 4</think>\n\nThe answer is 4."


def split(text: str, thinking: bool = True, start: str = "<think>", end: str = "</think>") -> tuple[str, str]:
    return ReasoningSplit(start, end, thinking).feed(text, final=True)


@pytest.mark.parametrize(
    ("text", "thinking", "want"),
    [
        (TEXT, True, ("Let me add.\n2 + 2 = 4", "\n\nThe answer is 4.")),  # the prompt opened the block
        ("<think>hmm</think>4", False, ("hmm", "4")),  # the model opens it (Qwen3)
        ("4", False, ("", "4")),  # no block: all answer
        ("still thinking", True, ("still thinking", "")),  # cut by max_tokens inside the block
        ("a</think>b<think>c</think>d</think>e", True, ("ac", "bd</think>e")),  # a second block; a stray end
    ],
)
def test_split(text, thinking, want):
    assert split(text, thinking) == want


def test_an_end_only_tokenizer_never_reopens():
    assert split("a</r>b<think>c", True, start="", end="</r>") == ("a", "b<think>c")


@pytest.mark.parametrize("cut", range(1, len(TEXT)))
def test_any_two_deltas_join_to_the_whole_split(cut):
    s = ReasoningSplit("<think>", "</think>", True)
    first, second = s.feed(TEXT[:cut]), s.feed(TEXT[cut:], final=True)
    assert tuple(a + b for a, b in zip(first, second, strict=True)) == split(TEXT)
    assert "<" not in first[0] + second[0]  # no piece of a marker leaks into either text


def test_character_by_character_and_a_held_false_start():
    s = ReasoningSplit("<think>", "</think>", True)
    pieces = [s.feed(c) for c in "x </thin y"] + [s.feed("", final=True)]
    assert "".join(p[0] for p in pieces) == "x </thin y"  # held while it could be the marker, then let go
    assert pieces[2] == ("", "")  # "<" was held back


def test_for_prompt_follows_the_state_machine_start():
    markers = ThinkMarkers(end=(2,), start=(1,), end_text="</think>", start_text="<think>")
    assert ReasoningSplit.for_prompt(markers, [5, 6, 1]).thinking  # "<think>" left open by the template
    assert not ReasoningSplit.for_prompt(markers, [5, 6]).thinking  # the model may open one itself


@pytest.fixture(scope="module")
def client():
    tok = qwen3_thinking_tokenizer()
    model = qwen3_inra(tok)
    with Engine(model, tok) as engine, BackgroundServer(create_app(engine, "m")) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120), model, tok


def test_server_splits_streamed_and_not_and_drops_on_request(client):
    client, model, tok = client
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    kw = dict(model="m", messages=chat, max_tokens=12, temperature=0, extra_body={"thinking_token_budget": 5})
    text = generate(model, tok, [chat], max_new_tokens=12, thinking_token_budget=5).texts[0]
    thinking, _, answer = text.partition("</think>")  # the template opened the block; the budget closed it
    whole = client.chat.completions.create(**kw).choices[0].message
    assert reply_parts(whole) == (thinking, answer) and "</think>" not in thinking + answer
    deltas = [c.choices[0].delta for c in client.chat.completions.create(**kw, stream=True) if c.choices]
    parts = [reply_parts(d) for d in deltas]
    assert "".join(p[0] or "" for p in parts) == thinking and "".join(p[1] or "" for p in parts) == answer
    first_answer = next(i for i, p in enumerate(parts) if p[1])
    assert not any(p[0] for p in itertools.islice(parts, first_answer, None))  # thinking streams first
    kw["extra_body"] = kw["extra_body"] | {"include_reasoning": False}
    dropped = client.chat.completions.create(**kw).choices[0].message
    assert reply_parts(dropped) == (None, answer) and "reasoning" not in (dropped.model_extra or {})
    chunks = [c for c in client.chat.completions.create(**kw, stream=True) if c.choices]
    deltas = [c.choices[0].delta for c in chunks[1:]]  # after the role chunk: answer pieces and the finish
    assert all(d.content or c.choices[0].finish_reason for d, c in zip(deltas, chunks[1:], strict=True))
    assert "".join(d.content or "" for d in deltas) == answer
