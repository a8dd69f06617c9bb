"""Issue 11, kind 1: the concatenated stream equals the final text, and the final text holds no stop string,
in `flexrealign.decoding.stopping` (the one shared rule), in `generate(stream=...)` and in the server's engine.
(The server's SSE is tested in tests/serving/test_api.py, the vLLM path in tests/vllm_plugin.)"""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from flexrealign.decoding.generation import RowState, generate
from flexrealign.decoding.stopping import StopStream, find_stop
from flexrealign.serving import Engine, SamplingParams
from helpers import expected_cut, scripted_model, shared_path

ANSWER = "The answer is forty two"
PROMPT = "Once upon a time"


def run_stream(pieces: list[str], stops: list[str]) -> tuple[str, str]:
    buf = StopStream(stops)
    streamed = "".join(buf.add(p) for p in pieces) + buf.flush()
    return streamed, buf.text


@pytest.mark.parametrize(
    ("pieces", "stops", "final"),
    [
        (["The", " answer", " is", " forty", " two"], ["answer is"], "The "),  # the example
        ([" ration"], ["on", "ti"], " ra"),  # the example: list order used to win
        ([" ration"], ["ti", "on"], " ra"),
        (["The answer is forty two"], ["two", "swer", "answer is f"], "The an"),  # "swer" completes first
        (["ab", "c", "d"], ["bcd", "abc"], ""),  # both end at different places: "abc" first
        (["x", "abc"], ["bc", "abc"], "x"),  # same end: the one starting first, whatever the list order
        (["an", "swer"], ["answers"], "answer"),  # a prefix never completed is released at the end
        (["fo", "rt", "y"], ["forty", "or"], "f"),
    ],
)
def test_stop_stream_examples(pieces, stops, final):
    assert run_stream(pieces, stops) == (final, final)
    assert expected_cut("".join(pieces), stops) == final


def test_stop_stream_holds_for_any_text_stops_and_split():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 24)))
        stops = [
            "".join(rng.choice("abc ") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))
        ]
        cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(0, len(text) + 1)))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        streamed, final = run_stream(pieces, stops)
        assert streamed == final == expected_cut(text, stops), (pieces, stops)
        assert not any(s in final for s in stops)


def test_find_stop_reports_the_first_to_complete():
    assert find_stop(" ration", ["on", "ti"]) == (3, "ti")
    assert find_stop("xabc", ["bc", "abc"]) == (1, "abc")
    assert find_stop("abcabc", ["ca"], start=3) == (2, "ca")  # a match ending in the new text
    assert find_stop("abcabc", ["ab"], start=3) == (3, "ab")  # the one before `start` was seen already


def test_row_state_single_token_with_a_real_tokenizer():
    """The issue's " ration": one Qwen token, stop=["on", "ti"] gave " rati"."""
    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen3"))
    for stops, final in ((["on", "ti"], " ra"), (["ration", "ra", "at"], " "), (["tion", "io"], " rat")):
        row = RowState(0.0, tok, stops, eos=set())
        streamed = row.push(tok.encode(" ration")[0]) + row.finish("length")
        assert (streamed, row.text, row.finish_reason) == (final, final, "stop")


STOPS = [["answer is"], ["two", "s f"], ["y t", "forty"], ["answer is forty two!"], ["n", "The a"], ["zzz"]]


@pytest.fixture(scope="module")
def answering(stories260k):
    """(model, tokenizer): stories260K forced to answer ANSWER greedily (real model, real KV cache)."""
    model, tok = stories260k
    script = tok.encode(ANSWER, add_special_tokens=False)
    prompt_len = len(tok(PROMPT)["input_ids"])
    return scripted_model(model, script, prompt_len), tok


@pytest.mark.parametrize("stops", STOPS)
def test_generate_stream_equals_final_text(answering, stops):
    model, tok = answering
    assert generate(model, tok, PROMPT, max_new_tokens=30).texts == [ANSWER]
    pieces: list[str] = []
    out = generate(model, tok, [PROMPT], max_new_tokens=30, stop=stops, stream=lambda i, d: pieces.append(d))
    assert "".join(pieces) == out.texts[0] == expected_cut(ANSWER, stops)
    assert out.finish_reasons == ["stop"]


@pytest.mark.parametrize("stops", STOPS)
def test_engine_events_equal_final_text(answering, stops):
    model, tok = answering
    with Engine(model, tok) as engine:
        for max_tokens in (30, 9):  # ends at a stop or EOS, and cut by the token budget mid-word
            _, events = engine.stream(engine.encode(PROMPT), None, SamplingParams(max_tokens, stop=stops))
            deltas = []
            while True:
                event = events.get(timeout=60)
                deltas.append(event.delta)
                if event.output is not None:
                    break
            full = (
                ANSWER if max_tokens == 30 else tok.decode(tok.encode(ANSWER, add_special_tokens=False)[:9])
            )
            assert "".join(deltas) == event.output.text == expected_cut(full, stops)
