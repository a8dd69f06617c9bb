"""Thinking accounting follows what the model really wrote (issue 21, kind 1), in the state machine and in
`generate`: a token is a thinking token only while a think block is open (opened by the prompt or by the
model), every block counts against one budget, and a forced close never restarts, duplicates or splits a marker.

The examples of the issue (a second think block; a budget that ends inside a multi-token end marker; a reply that
never opens a block) with the real Qwen3 tokenizer, and random token streams of my own checked against an
independent recount of the finished output.
"""

from __future__ import annotations

import random

import pytest

from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.generation import generate
from flexrealign.decoding.thinking import (
    ThinkingPlan,
    ThinkingState,
    ThinkMarkers,
    think_markers,
    thinking_plan,
)
from helpers import qwen3_thinking_tokenizer, qwen3_tokenizer, scripted_model

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tok():
    return qwen3_tokenizer()


def words(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tok) -> list[int]:
    return tok.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]


def drive(state: ThinkingState, wants: list[int]) -> tuple[list[int], list[bool]]:
    """What a model that wants to write `wants` produces under the machine: each step emits the forced token if
    there is one (the wanted token of that step is lost), else the next wanted token. Returns (tokens, forced)."""
    out, forced = [], []
    for want in wants:
        token = state.forced if state.forced is not None else want
        forced.append(state.forced is not None)
        out.append(token)
        state.push(token)
    while state.forced is not None:  # a close still under way when the model has nothing more to say
        forced.append(True)
        out.append(state.forced)
        state.push(out[-1])
    return out, forced


def recount(
    tokens: list[int], markers: ThinkMarkers, open_at_start: bool, eos: frozenset[int] = frozenset()
) -> int:
    """Thinking tokens of a finished output, read independently of the machine: the tokens between a start
    marker (or the start, when the prompt opened a block) and the next end marker, the markers and EOS excluded."""
    tokens = [t for t in tokens if t not in eos]
    text = "".join(chr(0x1000 + t % 60000) for t in tokens)  # one character per token, to search as text
    start, end = ("".join(chr(0x1000 + t % 60000) for t in m) for m in (markers.start, markers.end))
    count, i, inside = 0, 0, open_at_start
    while i < len(text):
        if inside:
            j = text.find(end, i)
            count += (len(text) if j < 0 else j) - i
            i, inside = (len(text), True) if j < 0 else (j + len(end), False)
        else:
            j = text.find(start, i) if start else -1
            i, inside = (len(text), False) if j < 0 else (j + len(start), True)
    return count


def test_a_second_think_block_counts_against_the_same_budget(tok):
    """The issue's example: 3 thoughts, `</think>`, " Wait", `<think>`, 8 more thoughts, with a budget of 4."""
    plan = thinking_plan(tok, 1.0, 1.0, budget=4)
    state = ThinkingState(plan, prompt_ids(tok) + words(tok, "<think>\n"))
    first, second = words(tok, " one two three"), words(tok, " four five six seven eight nine ten eleven")
    assert (len(first), len(second)) == (3, 8)
    wants = first + list(plan.markers.end) + words(tok, " Wait") + list(plan.markers.start) + second
    out, _ = drive(state, wants)
    assert state.spent == recount(out, plan.markers, open_at_start=True) == 4
    k = len(first) + 1 + 1 + 1  # the second block: one thought fits, then it is closed
    assert out[k : k + 2] == [second[0], plan.markers.end[0]] and not state.thinking
    assert out.count(plan.markers.end[0]) == 2


def test_a_budget_inside_a_multi_token_end_marker_completes_it_once(tok):
    """The issue's example: `</reasoning>` is 4 tokens; the budget runs out after the model wrote "</" "reason"."""
    markers = think_markers(tok, end="</reasoning>")
    assert len(markers.end) == 4, markers
    plan = ThinkingPlan(markers, 0.0, 1.0, budget=6)
    state = ThinkingState(plan, prompt_ids(tok))  # no start marker for this override: thinking from the start
    thoughts = words(tok, " a b c d")
    out, forced = drive(state, thoughts + list(markers.end[:2]) + words(tok, " then more"))
    text = tok.decode(out)
    assert text.count("</reasoning>") == 1 and "</reason</" not in text, text
    assert out[: len(thoughts) + 4] == thoughts + list(markers.end) and forced[-2:] == [True, True]
    assert state.spent == recount(out, markers, open_at_start=True) == len(thoughts) == 4
    assert not state.thinking


@pytest.mark.parametrize("budget", [None, 0, 3])
def test_a_reply_that_never_opens_a_block_is_no_thinking(tok, budget):
    """The issue's example: Qwen3's template leaves the block closed and the model answers at once."""
    plan = thinking_plan(tok, 1.0, 1.0, budget=budget)
    answer = words(tok, "The capital of France is Paris.")
    state = ThinkingState(plan, prompt_ids(tok))
    out, forced = drive(state, answer)
    assert out == answer and not any(forced) and state.spent == 0


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_match_an_independent_recount(seed):
    """Streams of my own over a small alphabet full of marker pieces: the count is the recount of the finished
    output, never above the budget; every forced run is the closing text and the end marker, the end marker, or
    the rest of an end marker the model had begun; no block closes below the minimum, forced or not."""
    rng = random.Random(seed)
    end = tuple(rng.sample(range(10, 14), rng.choice([1, 2, 3])))
    start = () if rng.random() < 0.2 else (20,) if rng.random() < 0.5 else (20, 21)
    pieces = [30, 31] + ([end[0]] if len(end) > 1 else [])  # a closing text never holds the whole marker
    closing = tuple(rng.choice(pieces) for _ in range(rng.choice([0, 0, 2])))
    budget = rng.choice([None, len(closing), len(closing) + 1, len(closing) + 5])
    minimum = rng.choice([0, 0, 2]) if budget is None else rng.randint(0, budget)
    plan = ThinkingPlan(ThinkMarkers(end, start), 0.0, 1.0, budget, minimum, closing, frozenset({99}))
    open_at_start = not start or rng.random() < 0.5
    state = ThinkingState(plan, list(start) if open_at_start else [1])
    alphabet = [1, 2, 99, *end, *end, *start, *start]
    wants = [rng.choice(alphabet) for _ in range(80)]
    out, forced = [], []
    for want in wants:
        if state.thinking and state.spent < minimum and state.forced is None:
            assert 99 in state.banned  # EOS cannot end the reply below the minimum
        token = state.forced if state.forced is not None else want
        if token in state.banned:
            token = 1
        forced.append(state.forced is not None)
        out.append(token)
        if state.push(token) and not state.thinking:  # this token closed a block
            assert state.spent >= minimum, "a block closed below the minimum"
        assert budget is None or state.spent <= budget
    while state.forced is not None:  # let a close under way finish: a cut marker is not text to recount
        forced.append(True)
        out.append(state.forced)
        state.push(out[-1])
    assert state.spent == recount(out, plan.markers, open_at_start, plan.eos)
    _assert_forced_runs(out, forced, plan)


def _assert_forced_runs(out: list[int], forced: list[bool], plan: ThinkingPlan) -> None:
    end, i = list(plan.markers.end), 0
    while i < len(out):
        if not forced[i]:
            i += 1
            continue
        j = i
        while j < len(out) and forced[j]:
            j += 1
        if j == len(out):
            break  # cut by the end of the stream
        run = out[i:j]
        begun = any(run == end[k:] and out[i - k : i] == end[:k] for k in range(1, len(end)))
        assert run in (list(plan.closing) + end, end) or begun, (run, out[max(0, i - 3) : i])
        i = j


def test_generate_counts_only_open_blocks(tok):
    """The same three cases through `generate`'s decode loop, with a real model whose greedy output is scripted."""
    thinking_tok = qwen3_thinking_tokenizer()
    base = tiny_model("qwen3", seed=0, vocab_size=len(tok), hidden_size=32, num_layers=2)
    end, start = think_markers(tok).end[0], think_markers(tok).start[0]
    first, second = words(tok, " one two three"), words(tok, " four five six seven eight nine ten eleven")
    script = first + [end] + words(tok, " Wait") + [start] + second + [end] + words(tok, " Paris.")
    p = len(prompt_ids(thinking_tok))
    out = generate(
        scripted_model(base, script, p), thinking_tok, [CHAT], max_new_tokens=40, thinking_token_budget=4
    )
    ids = out.token_ids[0]
    assert out.reasoning_tokens == [4] == [recount(ids, think_markers(tok), open_at_start=True)]
    answer = words(tok, "The capital of France is Paris.")
    direct = scripted_model(base, answer, len(prompt_ids(tok)))
    for budget in (None, 3):
        out = generate(direct, tok, [CHAT], max_new_tokens=20, thinking_token_budget=budget)
        assert out.texts == ["The capital of France is Paris."] and out.reasoning_tokens == [0]


@pytest.mark.parametrize(
    ("marker", "closing"),
    [
        (None, "Time is up </think>"),
        ("</reasoning>", "Time is up.</reasoning>"),
        ("</reasoning>", "up. </reasoning> ok"),
    ],
)
def test_a_closing_text_that_holds_the_end_marker_is_refused(tok, marker, closing):
    """Encoded in context the marker may not match its own ids (`up.</reasoning>`), so the text is checked too."""
    with pytest.raises(ValueError, match="must not contain the think-end marker"):
        thinking_plan(tok, 0.0, 1.0, budget=20, closing=closing, end_marker=marker)
