"""The continuous-batching engine without HTTP: outputs equal `generate` whatever the batch and arrival time."""

from __future__ import annotations

import copy
import math
import queue
import time

import pytest
import torch
from servertools import PROMPTS, References, perturbed, stories_inra

from flexrealign.core.dera import DeRa
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.generation import LamSchedule, generate
from flexrealign.serving import engine as engine_module
from flexrealign.serving.engine import Engine, Event, InvalidRequest, SamplingParams

N = 10  # new tokens per request: enough to span several merges, short enough for a loaded CPU


@pytest.fixture(scope="module")
def inra(stories260k) -> InRaModel:
    return stories_inra(stories260k)


@pytest.fixture(scope="module")
def refs(inra, stories260k) -> References:
    return References(inra, stories260k[1])


def _wait_tokens(events: queue.Queue[Event], n: int, timeout: float = 60.0) -> None:
    """Block until a streamed request has produced n tokens, so the next submit joins a running batch."""
    got = 0
    while got < n:
        event = events.get(timeout=timeout)
        assert event.output is None, f"finished after {got + 1} tokens, before the join under test"
        got += event.token_id is not None


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_output_is_independent_of_batch_composition_and_arrival(inra, refs, stories260k) -> None:
    tok = stories260k[1]
    combos = [(p, lam) for p in PROMPTS for lam in (0.0, 0.5, 1.5)][:8]
    greedy = SamplingParams(max_tokens=N)
    with Engine(inra, tok, max_batch_size=4) as engine:
        alone = {c: engine.generate(c[0], c[1], greedy) for c in combos[:2]}  # batch of one, nothing else
        first, events = engine.stream(
            engine.encode(combos[0][0]), combos[0][1], SamplingParams(max_tokens=3 * N)
        )
        _wait_tokens(events, 3)  # later arrivals merge into a batch whose cache is already longer
        handles = {c: engine.submit(engine.encode(c[0]), c[1], greedy) for c in combos}  # 8 > 4 slots: queue
        outputs = {c: h.result(120) for c, h in handles.items()}
        first.result(120)
        assert engine.stats["merged"] > 0
        _wait_until(lambda: engine.num_active == 0)  # slots are freed at the end of the step
    for c, out in outputs.items():
        text, ids = refs(c[0], c[1], N)
        assert (out.text, out.token_ids) == (text, ids), c
        assert out.finish_reason == "length" and out.prompt_tokens == len(tok(c[0])["input_ids"])
    for c, out in alone.items():
        assert (out.text, out.token_ids) == (outputs[c].text, outputs[c].token_ids)
    texts_per_prompt = [{out.text for c, out in outputs.items() if c[0] == p} for p in PROMPTS]
    assert any(len(texts) > 1 for texts in texts_per_prompt), "lam should change some output"


def _dera(stories) -> DeRa:
    aligned = copy.deepcopy(stories[0])
    perturbed(aligned, 0.01, seed=1)
    return DeRa(copy.deepcopy(stories[0]), aligned)


def _inra_concat(stories) -> InRaModel:
    return stories_inra(stories)  # both paths share one cache stacked on the batch axis: merged by halves


@pytest.mark.parametrize("kind", ["inra_concat", "dera", "plain"])
def test_every_model_kind_merges_exactly(kind, stories260k) -> None:
    model = {"inra_concat": _inra_concat, "dera": _dera, "plain": lambda s: s[0]}[kind](stories260k)
    tok = stories260k[1]
    lams = [None] * 3 if kind == "plain" else [0.5, 1.0, 0.0]
    with Engine(model, tok) as engine:
        first, events = engine.stream(engine.encode(PROMPTS[2]), lams[0], SamplingParams(max_tokens=N))
        _wait_tokens(events, 2)
        rest = [
            engine.submit(engine.encode(p), lam, SamplingParams(max_tokens=N))
            for p, lam in zip(PROMPTS[:2], lams[1:], strict=True)
        ]
        outs = [first.result(60)] + [h.result(60) for h in rest]
    for p, lam, out in zip([PROMPTS[2], *PROMPTS[:2]], lams, outs, strict=True):
        ref = generate(model, tok, p, lam=lam, max_new_tokens=N)
        assert (out.text, out.token_ids) == (ref.texts[0], ref.token_ids[0]), (kind, p, lam)


def test_seeded_sampling_and_stop_strings_match_generate(inra, stories260k) -> None:
    tok = stories260k[1]
    sampled = SamplingParams(max_tokens=N, temperature=0.9, top_k=40, top_p=0.95, seed=123)
    stopped = SamplingParams(max_tokens=3 * N, stop=(".", "!"))
    with Engine(inra, tok) as engine:
        a = engine.submit(engine.encode(PROMPTS[0]), 0.5, sampled)
        b = engine.submit(engine.encode(PROMPTS[1]), 0.5, stopped)
        c = engine.submit(engine.encode(PROMPTS[0]), 0.5, SamplingParams(max_tokens=N, temperature=0.9))
        outs = [h.result(60) for h in (a, b, c)]
    ref_a = generate(
        inra, tok, PROMPTS[0], lam=0.5, max_new_tokens=N, temperature=0.9, top_k=40, top_p=0.95, seed=123
    )
    ref_b = generate(inra, tok, PROMPTS[1], lam=0.5, max_new_tokens=3 * N, stop=[".", "!"])
    assert (outs[0].text, outs[0].token_ids) == (ref_a.texts[0], ref_a.token_ids[0])
    assert (
        (outs[1].text, outs[1].finish_reason)
        == (ref_b.texts[0], ref_b.finish_reasons[0])
        == (ref_b.texts[0], "stop")
    )
    assert outs[2].completion_tokens == N  # unseeded sampling runs too (from the global generator)


def test_lam_schedule_switches_at_the_marker_like_generate(inra, stories260k) -> None:
    tok = stories260k[1]
    schedule = LamSchedule.think_answer(
        0.0, 1.5, marker="."
    )  # stories end sentences early: the switch happens
    with Engine(inra, tok) as engine:
        other = engine.submit(engine.encode(PROMPTS[3]), 1.0, SamplingParams(max_tokens=2 * N))
        out = engine.generate(PROMPTS[0], schedule, SamplingParams(max_tokens=2 * N))
        other.result(60)
    ref = generate(inra, tok, PROMPTS[0], lam=schedule, max_new_tokens=2 * N)
    assert "." in out.text and (out.text, out.token_ids) == (ref.texts[0], ref.token_ids[0])
    assert out.lam == schedule


def test_cancel_frees_the_slot_of_running_and_queued_requests(inra, stories260k) -> None:
    long = SamplingParams(max_tokens=400, ignore_eos=True)
    with Engine(inra, stories260k[1], max_batch_size=1) as engine:
        running, events = engine.stream(engine.encode(PROMPTS[0]), 0.5, long)
        queued = engine.submit(engine.encode(PROMPTS[1]), 0.5, long)  # no slot: waits
        _wait_tokens(events, 2)
        assert engine.num_active == 1 and engine.num_pending == 1
        queued.cancel()
        running.cancel()
        _wait_until(lambda: engine.num_active == 0 and engine.num_pending == 0)
        out = running.result(10)
        assert out.finish_reason == "cancelled" and 2 <= out.completion_tokens < 400
        assert queued.result(10).finish_reason == "cancelled" and queued.result().completion_tokens == 0
        assert engine.generate(PROMPTS[2], 0.5, SamplingParams(max_tokens=2)).completion_tokens == 2


def test_sliding_window_model_only_batches_unpadded_prompts(stories260k) -> None:
    """Mistral-style sliding windows count padding slots, so the engine never pads them; outputs stay exact."""
    tok = stories260k[1]
    model = InRaModel.from_base(tiny_model("mistral", vocab_size=len(tok), sliding_window=6))
    perturbed(model.adapter, 0.05, seed=2)
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    with Engine(model, tok) as engine:
        handles = [engine.submit(engine.encode(p), 0.5, SamplingParams(max_tokens=N)) for p in prompts]
        outs = [h.result(60) for h in handles]
        assert engine.stats["merged"] == 0
    for p, out in zip(prompts, outs, strict=True):
        ref = generate(model, tok, p, lam=0.5, max_new_tokens=N)
        assert out.token_ids == ref.token_ids[0], p


def test_invalid_requests_are_refused_before_queueing(inra, stories260k) -> None:
    tok = stories260k[1]
    with Engine(inra, tok) as engine, Engine(stories260k[0], tok) as plain:
        ids = engine.encode(PROMPTS[0])
        for lam in (math.nan, math.inf, "x"):
            with pytest.raises(InvalidRequest, match="lam"):
                engine.submit(ids, lam)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="empty prompt"):
            engine.submit([], 0.5)
        with pytest.raises(InvalidRequest, match="maximum context length") as e:
            engine.submit(ids * 200, 0.5, SamplingParams(max_tokens=1))
        assert e.value.code == "context_length_exceeded"
        with pytest.raises(InvalidRequest, match="token ids"):
            engine.submit([10_000], 0.5)
        with pytest.raises(InvalidRequest, match="top_p"):
            SamplingParams(top_p=0.0)
        with pytest.raises(InvalidRequest, match="single path"):
            plain.submit(ids, 0.5)
        assert (
            engine.num_pending == 0
            and engine.generate(ids, 0.5, SamplingParams(max_tokens=1)).completion_tokens == 1
        )


def test_a_failing_forward_fails_its_requests_and_the_engine_keeps_serving(
    inra, stories260k, monkeypatch
) -> None:
    real, calls = engine_module.next_logits, []

    def flaky(*args, **kwargs) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated device error")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "next_logits", flaky)
    with Engine(inra, stories260k[1]) as engine:
        failed = engine.generate(PROMPTS[0], 0.5, SamplingParams(max_tokens=N))
        assert failed.finish_reason == "error" and "simulated device error" in failed.error
        assert engine.is_alive and engine.num_active == 0
        assert engine.generate(PROMPTS[0], 0.5, SamplingParams(max_tokens=3)).finish_reason == "length"
