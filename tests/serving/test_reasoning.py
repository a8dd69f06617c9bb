"""The thinking split out of a chat reply: `reasoning` / `reasoning_content` hold the think blocks' text,
`content` only the answer, streamed or not, decided by the tokens' thinking stage (`decoding.staged`);
`include_reasoning: false` drops it; `/v1/completions` keeps the raw text; no think markers: all content."""

from __future__ import annotations

import copy
import itertools

import httpx
import openai
import pytest
from servertools import chat_tokenizer
from tiny_checkpoints import CHAT_TEMPLATE, bpe_tokenizer

from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.generation import generate
from flexrealign.decoding.prompts import encode_prompts
from flexrealign.serving import Engine, create_app
from flexrealign.serving.server import BackgroundServer
from helpers import qwen3_inra, qwen3_thinking_tokenizer, reply_parts, scripted_model, split_text

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
N = 40
R1 = ("the hot word", "END", " it was so.")
TWO = (" a", "START", " b", "END", " c", "START", " d", "END", " e")  # a second block, opened by the model
# (the chat template ends with an open block, the markers are special tokens, the reply's pieces, the wanted
# (reasoning, content), the order of the stages: R for thinking, C for the answer)
SCENARIOS = {
    "prompt opens": (True, False, R1, ("the hot word", " it was so."), "RC"),
    "model opens": (False, False, ("START", " one two", "END", " done"), (" one two", " done"), "RC"),
    "special markers": (True, True, R1, ("the hot word", " it was so."), "RC"),
    "two blocks": (False, False, TWO, (" b d", " a c e"), "CRCRC"),
}


def _tokenizer(opens: bool, special: bool):
    tok = bpe_tokenizer(300)  # `<think>` / `</think>` are added tokens (decoded as text), as in Qwen's
    if special:  # skipped in decoding, as DeepSeek's: the split must still see them
        tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    if opens:  # DeepSeek-R1's template ends with "<think>\n": the reply starts inside the block
        tok.chat_template = CHAT_TEMPLATE.replace("assistant:", "assistant:<think>\n")
    return tok


def _script(tok, pieces) -> list[int]:
    """Token ids of text pieces and marker names ("START", "END")."""
    ids = {"START": tok.convert_tokens_to_ids("<think>"), "END": tok.convert_tokens_to_ids("</think>")}
    return [t for p in pieces for t in ([ids[p]] if p in ids else tok(p, add_special_tokens=False).input_ids)]


def _served(tok, base, script):
    """(engine, server) over a copy of `base` whose greedy reply to CHAT is `script`, then EOS."""
    prompt = encode_prompts(tok, [CHAT])[0]
    model = scripted_model(base, script, len(prompt))
    engine = Engine(model, tok).start()
    return model, engine, BackgroundServer(create_app(engine, "m")).start()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request):
    """(client, model, tokenizer, want, opens, special, stages) of one scenario, served."""
    opens, special, pieces, want, stages = SCENARIOS[request.param]
    tok = _tokenizer(opens, special)
    base = tiny_model("qwen3", seed=0, vocab_size=len(tok), hidden_size=32, num_layers=2)
    model, engine, server = _served(tok, base, _script(tok, pieces))
    yield _client(server), model, tok, want, opens, special, stages
    server.stop()
    engine.stop()


def _chat(client, stream: bool = False, **extra):
    return client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=N, temperature=0, stream=stream, extra_body=extra
    )


def _deltas(client, **extra) -> list[tuple]:
    """(reasoning, content, finish_reason) of each streamed choice, after the role chunk."""
    chunks = [c for c in _chat(client, stream=True, **extra) if c.choices][1:]
    return [(*reply_parts(c.choices[0].delta), c.choices[0].finish_reason) for c in chunks]


def test_non_streamed_split(scenario):
    client, model, tok, want, opens, special, _ = scenario
    r = _chat(client)
    message = r.choices[0].message
    assert reply_parts(message) == want and message.model_extra["reasoning_content"] == want[0]
    ref = generate(model, tok, [CHAT], max_new_tokens=N)
    assert r.usage.completion_tokens_details.reasoning_tokens == ref.reasoning_tokens[0] > 0
    if not special:  # the markers are in the raw text: splitting it there agrees with the tokens' split
        assert split_text(ref.texts[0], "<think>", "</think>", opens) == want
    else:
        assert "think>" not in ref.texts[0] and ref.texts[0] == "".join(want)


def test_streamed_split_adds_up_to_the_non_streamed_one(scenario):
    client, _, _, want, _, _, stages = scenario
    deltas = _deltas(client)
    assert "".join(d[0] or "" for d in deltas) == want[0] and "".join(d[1] or "" for d in deltas) == want[1]
    assert all(not (d[0] and d[1]) for d in deltas)  # a delta is thinking or answer, never both
    assert deltas[-1][2] == "stop" and all(d[0] or d[1] for d in deltas[:-1])  # no empty chunks
    order = "".join(k for k, _ in itertools.groupby("R" if d[0] else "C" for d in deltas if d[0] or d[1]))
    assert order == stages  # each piece streams in its place: thinking before the answer that follows it


def test_include_reasoning_false_drops_the_thinking(scenario):
    client, _, _, want, _, _, _ = scenario
    message = _chat(client, include_reasoning=False).choices[0].message
    assert message.content == want[1] and not {"reasoning", "reasoning_content"} & set(message.model_extra)
    deltas = _deltas(client, include_reasoning=False)
    assert not any(d[0] for d in deltas) and "".join(d[1] or "" for d in deltas) == want[1]
    assert all(d[1] or d[2] for d in deltas)  # no empty chunks while the model thinks


def test_completions_keep_the_raw_text(scenario):
    client, model, tok, *_ = scenario
    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    c = client.completions.create(model="m", prompt=prompt, max_tokens=N, temperature=0)
    assert c.choices[0].text == generate(model, tok, [CHAT], max_new_tokens=N).texts[0]
    assert not {"reasoning", "reasoning_content"} & set(c.choices[0].model_extra or {})


@pytest.fixture(scope="module")
def no_markers(stories260k):
    """(client, url, reply text) of a model whose tokenizer has no think markers."""
    tok = chat_tokenizer(stories260k[1])
    script = tok("Once upon a time </think> there", add_special_tokens=False)["input_ids"]
    model, engine, server = _served(tok, copy.deepcopy(stories260k[0]), script)
    yield _client(server), server.url, generate(model, tok, [CHAT], max_new_tokens=N).texts[0]
    server.stop()
    engine.stop()


def test_without_think_markers_all_is_content(no_markers):
    client, _, text = no_markers
    message = _chat(client).choices[0].message
    assert message.content == text and "</think>" in text  # text that looks like a marker is no marker
    assert message.model_extra["reasoning"] is None and message.model_extra["reasoning_content"] is None
    deltas = _deltas(client)
    assert not any(d[0] for d in deltas) and "".join(d[1] or "" for d in deltas) == text


@pytest.mark.parametrize("value", ["yes", "false", 1, None])
def test_include_reasoning_must_be_a_bool(no_markers, value):
    _, url, _ = no_markers
    body = {"model": "m", "messages": CHAT, "max_tokens": 2, "include_reasoning": value}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "include_reasoning"
    completion = {"model": "m", "prompt": "Hi", "max_tokens": 2, "include_reasoning": True}
    r = httpx.post(url + "/v1/completions", json=completion, timeout=60)  # a chat field: unknown there
    assert r.status_code == 400 and r.json()["error"]["param"] == "include_reasoning"


@pytest.fixture(scope="module")
def qwen3_client():
    tok = qwen3_thinking_tokenizer()
    model = qwen3_inra(tok)
    with Engine(model, tok) as engine, BackgroundServer(create_app(engine, "m")) as server:
        yield _client(server), model, tok


def test_qwen3_splits_a_budget_cut_block(qwen3_client):
    client, model, tok = qwen3_client
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    kw = dict(model="m", messages=chat, max_tokens=12, temperature=0, extra_body={"thinking_token_budget": 5})
    text = generate(model, tok, [chat], max_new_tokens=12, thinking_token_budget=5).texts[0]
    thinking, _, answer = text.partition("</think>")  # the template opened the block; the budget closed it
    whole = client.chat.completions.create(**kw).choices[0].message
    assert reply_parts(whole) == (thinking, answer) and "</think>" not in thinking + answer
    parts = [reply_parts(c.choices[0].delta) for c in client.chat.completions.create(**kw, stream=True)]
    assert "".join(p[0] or "" for p in parts) == thinking and "".join(p[1] or "" for p in parts) == answer
