"""Thinking accounting over HTTP (issue 21, kind 1): `usage.completion_tokens_details.reasoning_tokens` and the
streamed text follow what the model wrote, streamed or not, chat or completions, with the same numbers as
`generate`: a second think block counts against the budget, a reply that never opens a block thinks 0 tokens
and no budget rewrites it."""

from __future__ import annotations

import openai
import pytest

from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.generation import generate
from flexrealign.decoding.thinking import think_markers
from flexrealign.serving import Engine, create_app
from flexrealign.serving.server import BackgroundServer
from helpers import qwen3_thinking_tokenizer, qwen3_tokenizer, reply_parts, scripted_model

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."


def _served(tok, script: list[int]):
    base = tiny_model("qwen3", seed=0, vocab_size=len(tok), hidden_size=32, num_layers=2)
    prompt_len = len(tok.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"])
    return scripted_model(base, script, prompt_len), tok


def _both(client, **kw) -> tuple[tuple, int, tuple, int]:
    """((reasoning, content), reasoning tokens) of the same chat request, not streamed and streamed (with
    usage); the streamed pieces joined."""
    kw = dict(model="m", messages=CHAT, max_tokens=40, temperature=0) | kw
    r = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    deltas = [reply_parts(c.choices[0].delta) for c in chunks if c.choices]
    streamed = ("".join(d[0] or "" for d in deltas) or None, "".join(d[1] or "" for d in deltas))
    usage = chunks[-1].usage
    return (reply_parts(r.choices[0].message), r.usage.completion_tokens_details.reasoning_tokens, streamed,
            usage.completion_tokens_details.reasoning_tokens)  # fmt: skip


@pytest.mark.parametrize("budget", [None, 0, 3])
def test_a_direct_answer_is_no_thinking_and_is_not_cut(budget):
    # Qwen3's template leaves opening the block to the model; this one answers at once
    tok = qwen3_tokenizer()
    model, tok = _served(tok, tok(ANSWER, add_special_tokens=False)["input_ids"])
    extra = {} if budget is None else {"thinking_token_budget": budget}
    with Engine(model, tok) as engine, BackgroundServer(create_app(engine, "m")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        assert _both(client, extra_body=extra) == ((None, ANSWER), 0, (None, ANSWER), 0)
        prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        c = client.completions.create(
            model="m", prompt=prompt, max_tokens=40, temperature=0, extra_body=extra
        )
        assert (c.choices[0].text, c.usage.completion_tokens_details.reasoning_tokens) == (ANSWER, 0)


def test_a_second_block_counts_against_the_budget():
    tok = qwen3_thinking_tokenizer()
    m = think_markers(tok)
    words = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    script = words(" one two three") + [*m.end] + words(" Wait") + [*m.start] + words(" four five six seven")
    model, tok = _served(tok, script + [*m.end] + words(" Paris."))
    want = generate(model, tok, [CHAT], max_new_tokens=40, thinking_token_budget=4)
    assert want.reasoning_tokens == [4]
    with Engine(model, tok) as engine, BackgroundServer(create_app(engine, "m")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        text, spent, streamed, streamed_spent = _both(client, extra_body={"thinking_token_budget": 4})
    # the thinking of both blocks is split out of the answer; the cut block's forced marker closes it
    assert want.texts[0] == " one two three</think> Wait<think> four</think> six seven</think> Paris."
    assert text == streamed == (" one two three four", " Wait six seven</think> Paris.")
    assert spent == streamed_spent == 4
