"""The thinking state machine on token ids, with the real Qwen3 tokenizer: markers from the tokenizer (special
or not, one token or several), the initial stage from the rendered prompt, budgets and minimums."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from flexrealign.decoding.thinking import (
    ANSWERING,
    MARKER_PAIRS,
    THINKING,
    MissingThinkMarker,
    ThinkingPlan,
    ThinkingState,
    initial_stage,
    think_markers,
    thinking_plan,
)
from helpers import shared_path

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def qwen3():
    return AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen3"))


@pytest.fixture(scope="module")
def qwen3_special(qwen3):
    """The same tokenizer with the think markers registered as special tokens (skipped when decoding)."""
    tok = copy.deepcopy(qwen3)
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    assert tok.decode(tok.convert_tokens_to_ids(["</think>"]), skip_special_tokens=True) == ""
    return tok


def prompt_ids(tok, **kwargs) -> list[int]:
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, **kwargs)
    return tok(text, add_special_tokens=False)["input_ids"]


def words(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def run(state: ThinkingState, tokens: list[int]) -> list[float]:
    """The lam each token was decoded at (read before pushing it, as the decode loops do)."""
    lams = []
    for t in tokens:
        lams.append(state.lam)
        state.push(t)
    return lams


def opened(tok) -> list[int]:
    """A prompt that opens the think block, as DeepSeek-R1's and Qwen3-Thinking-2507's templates do."""
    return prompt_ids(tok) + words(tok, "<think>\n")


@pytest.mark.parametrize("special", [False, True])
def test_switches_on_the_token_after_the_marker(qwen3, qwen3_special, special):
    tok = qwen3_special if special else qwen3
    markers = think_markers(tok)
    assert markers.end == (tok.convert_tokens_to_ids("</think>"),) and markers.start == (
        tok.convert_tokens_to_ids("<think>"),
    )
    plan = ThinkingPlan(markers, lam_think=-0.5, lam_answer=1.5)
    thoughts, answer = words(tok, "<think>\nfour, surely"), words(tok, "\n\nThe answer is 4.")
    state = ThinkingState(plan, prompt_ids(tok))  # Qwen3: the model opens the block itself
    assert state.stage == ANSWERING
    lams = run(state, thoughts + list(markers.end) + answer)
    k = len(thoughts)  # each marker is decoded at the lam of the stage it ends
    assert lams == [1.5] + [-0.5] * k + [1.5] * len(answer)
    assert state.spent == len(thoughts) - 1 and state.stage == ANSWERING  # `<think>` is no thought


def test_multi_token_marker_is_matched_as_a_sequence(qwen3):
    markers = think_markers(qwen3, end="</reasoning>")
    assert len(markers.end) > 1, markers
    state = ThinkingState(ThinkingPlan(markers, 0.0, 1.0), prompt_ids(qwen3))
    partial = list(markers.end[:-1])
    thoughts = words(qwen3, "hmm") + partial + words(qwen3, " no") + partial  # prefixes do not switch
    lams = run(state, thoughts + [markers.end[-1]] + words(qwen3, " 4"))
    k = len(thoughts) + 1
    assert lams[:k] == [0.0] * k and set(lams[k:]) == {1.0}
    assert state.spent == len(thoughts) - len(partial)


def test_initial_stage_follows_the_prompt(qwen3):
    markers = think_markers(qwen3)
    closed = prompt_ids(qwen3, enable_thinking=False)  # Qwen3: "...assistant\n<think>\n\n</think>\n\n"
    assert initial_stage(closed, markers) == ANSWERING
    assert initial_stage(opened(qwen3), markers) == THINKING
    assert initial_stage(prompt_ids(qwen3), markers) == ANSWERING  # no block open: the model may open one
    state = ThinkingState(ThinkingPlan(markers, -1.0, 2.0, budget=3), closed)
    assert run(state, words(qwen3, "Four is the answer.")) == [2.0] * 5 and state.spent == 0
    assert state.forced is None  # no budget forcing in the answer stage
    # an older turn's closed block far back does not close the new turn's block, opened by the prompt
    history = [
        *CHAT,
        {"role": "assistant", "content": "<think>x</think>4"},
        {"role": "user", "content": "and 3+3?" * 9},
    ]
    text = qwen3.apply_chat_template(history, tokenize=False, add_generation_prompt=True) + "<think>\n"
    assert initial_stage(qwen3(text, add_special_tokens=False)["input_ids"], markers) == THINKING
    # a tokenizer that knows only an end marker cannot see a block open: the model thinks first
    assert initial_stage(prompt_ids(qwen3), think_markers(qwen3, end="</reasoning>")) == THINKING


@pytest.mark.parametrize("closing", [None, "Time is up; answering now."])
def test_budget_forces_closing_text_then_marker_exactly_once(qwen3, closing):
    plan = thinking_plan(qwen3, 0.0, 1.0, budget=12, closing=closing, eos=[qwen3.eos_token_id])
    state = ThinkingState(plan, opened(qwen3))
    free = words(qwen3, " wait")[0]
    out: list[int] = []
    while state.thinking:
        token = state.forced if state.forced is not None else free  # the model would go on thinking
        out.append(token)
        state.push(token)
    closing_ids = list(plan.closing)
    assert out[-1:] == list(plan.markers.end) and out.count(plan.markers.end[0]) == 1
    assert out[-1 - len(closing_ids) : -1] == closing_ids
    assert state.spent == 12 == len(out) - 1


def test_minimum_bans_eos_and_the_end_marker(qwen3):
    eos = qwen3.convert_tokens_to_ids("<|im_end|>")
    plan = thinking_plan(qwen3, 0.0, 1.0, min_tokens=3, eos=[eos])
    state = ThinkingState(plan, opened(qwen3))
    end = plan.markers.end[0]
    for _ in range(3):
        assert set(state.banned) == {eos, end}
        state.push(words(qwen3, " so")[0])
    assert state.banned == ()
    multi = ThinkingState(thinking_plan(qwen3, 0.0, 1.0, min_tokens=4, end_marker="</reasoning>"), [])
    end = multi.plan.markers.end
    assert multi.banned == (end[0],)  # below the minimum a marker of several tokens cannot even begin
    multi.push_many(end[:-1])  # (an engine that did not ban it)
    assert multi.banned == (end[-1],)  # would end thinking at len(prefix) < 4 tokens
    idle = ThinkingState(plan, prompt_ids(qwen3))
    assert idle.banned == ()  # the minimum holds inside a block; a reply that never opens one may end


def test_missing_marker_is_named(stories260k):
    tok = stories260k[1]
    with pytest.raises(MissingThinkMarker, match=r"no think-end marker .*</think>.*--think-marker"):
        think_markers(tok)
    with pytest.raises(ValueError, match="above thinking_token_budget"):
        thinking_plan(
            AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen3")), 0, 1, budget=2, min_tokens=5
        )


def test_missing_marker_is_looked_up_once(stories260k):
    """Generation asks for every row's markers; a tokenizer without any must not rebuild its vocabulary per row."""
    tok = copy.deepcopy(stories260k[1])  # a fresh object: nothing cached for it yet
    calls = []
    get_vocab = tok.get_vocab
    tok.get_vocab = lambda: calls.append(1) or get_vocab()
    for _ in range(3):
        with pytest.raises(MissingThinkMarker):
            think_markers(tok)
    assert 0 < len(calls) <= len(MARKER_PAIRS)  # one per marker pair, the first time only (was that per row)
