"""A row's text split by the thinking stage of its tokens (`flexrealign.decoding.staged`), through `RowState`:
the parts stream in order, add up to the final `reasoning` / `content`, and leave the markers out, whether the
markers are added tokens (decoded), special tokens (skipped) or several tokens (held until resolved)."""

from __future__ import annotations

import copy

import pytest
from tiny_checkpoints import bpe_tokenizer

from flexrealign.decoding.rows import RowState
from flexrealign.decoding.thinking import ANSWERING, THINKING, ThinkingState, thinking_plan
from helpers import split_text

EOS = 2


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(300)  # `<think>` / `</think>` are added tokens, decoded as text


@pytest.fixture(scope="module")
def special(tok):
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    assert tok.decode(tok.convert_tokens_to_ids(["</think>"]), skip_special_tokens=True) == ""
    return tok


def words(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def run(tok, script: list[int], prompt: list[int], *, end: str | None = None, stop=(), max_tokens=None):
    """(row, parts) after decoding `script`: the parts of every step, as the engine takes them."""
    plan = thinking_plan(tok, 1.0, 1.0, eos={EOS}, end_marker=end)
    row = RowState(1.0, tok, stop, {EOS}, ThinkingState(plan, prompt), max_tokens)
    parts, streamed = [], ""
    for t in script:
        streamed += row.push(t)
        step = row.staged.take()
        assert all(
            a[0] != b[0] for a, b in zip(step, step[1:], strict=False)
        )  # one stage's neighbours joined
        parts += step
        if row.finished:
            break
    assert streamed == row.text  # the raw stream is untouched
    return row, parts


def joined(parts, stage: str) -> str:
    return "".join(text for s, text in parts if s == stage)


def script_of(tok, *pieces) -> list[int]:
    """Token ids of text pieces and marker names ("START", "END"), then EOS."""
    ids = {"START": tok.convert_tokens_to_ids("<think>"), "END": tok.convert_tokens_to_ids("</think>")}
    return [t for p in pieces for t in ([ids[p]] if p in ids else words(tok, p))] + [EOS]


@pytest.mark.parametrize("fixture", ["tok", "special"])
@pytest.mark.parametrize(
    ("opened", "pieces", "want"),
    [
        (True, ("the hot word", "END", " it was."), ("the hot word", " it was.")),  # the prompt opened it
        (False, ("START", "one two", "END", " done"), ("one two", " done")),  # the model opens it
        (False, (" no block",), ("", " no block")),
        (True, ("still thinking",), ("still thinking", "")),
        (False, ("a", "START", " b", "END", " c", "START", " d", "END", " e"), (" b d", "a c e")),
    ],
)
def test_split_by_tokens_matches_the_text_split(request, fixture, opened, pieces, want):
    tok = request.getfixturevalue(fixture)
    prompt = words(tok, "user: hi\nassistant:") + ([tok.convert_tokens_to_ids("<think>")] if opened else [])
    row, parts = run(tok, script_of(tok, *pieces), prompt)
    assert (row.staged.reasoning, row.staged.content) == want
    assert (joined(parts, THINKING), joined(parts, ANSWERING)) == want
    if fixture == "tok":  # markers decoded as text: the text split agrees
        assert split_text(row.text, "<think>", "</think>", opened) == want


def test_a_marker_of_several_tokens_is_held_until_resolved(tok):
    end = "</reasoning>"
    marker = list(thinking_plan(tok, 1.0, 1.0, end_marker=end).markers.end)
    assert len(marker) > 2
    false_start = marker[:2] + words(tok, "the")  # begins like the marker, then is thought
    script = words(tok, "hot") + false_start + marker + words(tok, " ok") + [EOS]
    row, parts = run(tok, script, words(tok, "user: hi\nassistant:"), end=end)
    assert row.text.count(end) == 1
    want = split_text(row.text, "", end, True)
    assert (row.staged.reasoning, row.staged.content) == want == (joined(parts, THINKING), " ok")
    assert "reason" not in "".join(text for _, text in parts)  # no piece of the marker streamed


def test_a_marker_cut_off_by_max_tokens_is_thought(tok):
    marker = list(thinking_plan(tok, 1.0, 1.0, end_marker="</reasoning>").markers.end)
    script = words(tok, "hot") + marker[:3]
    row, parts = run(tok, script, [5], end="</reasoning>", max_tokens=len(script))
    assert row.finish_reason == "length" and row.staged.reasoning == row.text == joined(parts, THINKING)


def test_a_stop_string_cuts_both_parts(tok):
    script = script_of(tok, "the hot word", "END", " it was so.")
    row, parts = run(tok, script, words(tok, "user: hi\nassistant:<think>"), stop=["was"])
    assert row.finish_reason == "stop"
    assert (row.staged.reasoning, row.staged.content) == ("the hot word", " it ")
    assert (joined(parts, THINKING), joined(parts, ANSWERING)) == ("the hot word", " it ")


def test_without_think_markers_all_is_content(tok):
    row = RowState(1.0, tok, (), {EOS}, None)
    for t in script_of(tok, "the", "END", " hot"):
        row.push(t)
    assert row.staged.reasoning == "" and row.staged.content == row.text == "the</think> hot"
    assert row.staged.take() == ((ANSWERING, row.text),)
