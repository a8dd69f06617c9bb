"""Adaptive thinking (`flexrealign.decoding.adaptive`): the soft landing's plan and state, lam auto's policy in
the dial and in `generate`, and its fit (`flexrealign.decoding.autofit`).

`generate` runs a tiny random Qwen3-family InRa model over the real Qwen3 tokenizer, whose prompt opens the
think block; it never ends its thinking on its own, so a budget always ends it.
"""

from __future__ import annotations

import math

import pytest
import torch

from flexrealign.decoding.adaptive import SOFT_FILL, STEER_AT, AutoLam, AutoPolicy, Landing
from flexrealign.decoding.autofit import ProblemOutcome, choose_threshold, fit_auto_policy, prompt_states
from flexrealign.decoding.calibration import Calibration, CalibrationError, CurvePoint, Effort
from flexrealign.decoding.dial import DialError, parse_dial
from flexrealign.decoding.generation import LamSchedule, encode_prompts, generate
from flexrealign.decoding.thinking import ThinkingState, thinking_plan
from helpers import qwen3_inra, qwen3_thinking_tokenizer

CURVE = ((-0.5, 400.0), (0.0, 300.0), (1.0, 100.0), (1.5, 60.0))
CHATS = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a colour."}]]


@pytest.fixture(scope="module")
def tok():
    return qwen3_thinking_tokenizer()


@pytest.fixture(scope="module")
def inra(tok):
    return qwen3_inra(tok)


def calibration(auto: AutoPolicy | None = None) -> Calibration:
    curve = [CurvePoint(lam, t, t + 10, 50.0, 10) for lam, t in CURVE]
    return Calibration(curve, {"low": Effort(1.0), "high": Effort(-0.5)}, {}, auto)


def policy(weights=(0.0,), bias: float = 0.0, threshold: float = 0.5) -> AutoPolicy:
    return AutoPolicy(tuple(weights), bias, threshold, lam_easy=1.5, lam_hard=-0.5)


# ------------------------------------------------------------------------------------------ soft landing
def test_landing_interpolates_and_keeps_a_lam_that_fits() -> None:
    landing = Landing(CURVE)
    assert landing.shortest_lam == 1.5
    assert landing.thinking_at(0.5) == pytest.approx(200.0) and landing.thinking_at(9.0) == 60.0
    assert landing.plan(0.0, 1000) == (0.0, 1.5, math.ceil(STEER_AT * 1000))  # 300 fits in 0.8 * 1000


def test_landing_moves_lam_just_far_enough_or_to_the_shortest() -> None:
    landing = Landing(CURVE)
    start, _, _ = landing.plan(0.0, 250)  # 300 > 0.8 * 250 = 200: move toward 1.5 until the curve fits
    assert 0.0 < start <= 1.0 and landing.thinking_at(start) <= SOFT_FILL * 250
    assert landing.thinking_at(start - 1.5 / 40) > SOFT_FILL * 250  # one grid step back does not fit
    assert landing.plan(0.0, 10)[0] == 1.5  # nothing fits: the shortest-thinking lam
    with pytest.raises(ValueError, match="repeats a lam"):
        Landing(((0.0, 1.0), (0.0, 2.0)))


def test_soft_plan_steers_once_and_never_exceeds_the_budget(tok) -> None:
    plan = thinking_plan(tok, 0.0, 1.0, budget=40, landing=Landing(CURVE))
    assert plan.lam_steer == 1.5 and plan.steer_at == 30 and plan.lams == (1.5, 1.0, 1.5)
    prompt = encode_prompts(tok, [CHATS[0]])[0]
    state, thought = ThinkingState(plan, prompt), tok.convert_tokens_to_ids("a")
    changes = [state.push(thought) for _ in range(29)]
    assert not any(changes[:-1]) and state.lam == 1.5  # already at 1.5: nothing fits 0.8 * 40
    hard = ThinkingState(thinking_plan(tok, 0.0, 1.0, budget=40), prompt)
    for _ in range(60):
        hard.push(hard.forced if hard.forced is not None else thought)
    assert hard.spent == 40 and hard.cut and not hard.thinking


def test_steer_switches_lam_at_its_point(tok) -> None:
    landing = Landing(((0.0, 10.0), (1.0, 5.0)))  # 10 fits 0.8 * 100: think at 0, steer to 1 at 75
    prompt = encode_prompts(tok, [CHATS[0]])[0]
    state, thought = ThinkingState(thinking_plan(tok, 0.0, 0.5, budget=100, landing=landing), prompt), 64
    switched = [state.push(thought) for _ in range(80)]
    assert switched.index(True) == 74 and sum(switched) == 1 and state.lam == 1.0


# ----------------------------------------------------------------------------------------------- the dial
def test_auto_and_soft_need_a_calibration() -> None:
    with pytest.raises(DialError, match="flexrealign calibrate") as e:
        parse_dial({"lam": "auto"})
    assert (e.value.param, e.value.code) == ("lam", "no_auto_policy")
    with pytest.raises(DialError) as e:
        parse_dial({"reasoning_effort": "auto"}, calibration())  # a calibration without a policy
    assert (e.value.param, e.value.code) == ("reasoning_effort", "no_auto_policy")
    with pytest.raises(DialError) as e:
        parse_dial({"thinking_token_budget": 50, "thinking_landing": "soft"})
    assert (e.value.param, e.value.code) == ("thinking_landing", "no_calibration")
    for bad in ({"thinking_landing": "gentle", "thinking_token_budget": 5}, {"thinking_landing": "soft"},
                {"lam": "AUTO"}):  # fmt: skip
        with pytest.raises(DialError):
            parse_dial(bad, calibration(policy()))


def test_auto_and_landing_parse_against_a_calibration() -> None:
    cal = calibration(policy())
    assert parse_dial({"lam": "auto"}, cal).lam_spec() == AutoLam(cal.auto)
    assert parse_dial({"reasoning_effort": "auto"}, cal).lam_spec() == AutoLam(cal.auto)
    assert parse_dial({"thinking_token_budget": 50}, cal).limits().landing == cal.landing()  # the default
    assert parse_dial({"thinking_token_budget": 50, "thinking_landing": "hard"}, cal).limits().landing is None
    assert parse_dial({"thinking_token_budget": 50}).limits().landing is None  # no calibration: hard
    with pytest.raises(DialError) as e:
        parse_dial({"lam": "auto"}, cal, lam_range=(0.0, 2.0))  # lam_hard = -0.5 is outside
    assert e.value.code == "lam_out_of_range"
    with pytest.raises(DialError, match="plain model"):
        parse_dial({"thinking_token_budget": 5, "thinking_landing": "soft"}, cal).lam_spec(fused=False)


def test_calibration_file_keeps_and_checks_the_policy() -> None:
    cal = calibration(policy((0.5, -1.0), 0.25, 0.7))
    again = Calibration.from_json(cal.to_json())
    assert again.auto == cal.auto and again.landing() == cal.landing()
    data = cal.to_json()
    data["auto"]["threshold"] = 2.0
    with pytest.raises(CalibrationError, match="auto"):
        Calibration.from_json(data)
    with pytest.raises(CalibrationError, match="efforts.auto"):
        Calibration([CurvePoint(0.0, 1.0, 2.0, 50.0, 1)], {"auto": Effort(1.0)})


# ------------------------------------------------------------------------------------------ lam auto runs
def fixed(inra, tok, lam: float, **kw):
    return generate(inra, tok, CHATS, lam=lam, max_new_tokens=12, temperature=0.8, seed=[3, 4], **kw)


def test_auto_decodes_exactly_as_the_lam_it_chose(inra, tok) -> None:
    """A probe that separates the two prompts: each row decodes token for token as at its chosen fixed lam."""
    h = prompt_states(inra, tok, CHATS)  # (2, D)
    w = h[0] - h[1]
    bias = -float(w @ (h[0] + h[1]) / 2)  # logit > 0 for prompt 0, < 0 for prompt 1
    out = generate(inra, tok, CHATS, lam=AutoLam(policy(w.tolist(), bias)), max_new_tokens=12, temperature=0.8,
                   seed=[3, 4])  # fmt: skip
    easy, hard = fixed(inra, tok, 1.5), fixed(inra, tok, -0.5)
    assert out.auto_lams == [1.5, -0.5]
    assert out.token_ids == [easy.token_ids[0], hard.token_ids[1]]
    assert easy.token_ids[0] != hard.token_ids[0]  # the lam mattered


def test_auto_with_a_budget_lands_softly(inra, tok) -> None:
    cal = calibration(policy((0.0,) * 32, threshold=1.0))  # always lam_hard
    dial = parse_dial({"lam": "auto", "thinking_token_budget": 8}, cal)
    out = generate(inra, tok, CHATS, lam=dial.lam_spec(), thinking=dial.limits(), max_new_tokens=16)
    assert out.auto_lams == [-0.5, -0.5] and max(out.reasoning_tokens) <= 8 and all(out.thinking_cut)
    same = generate(inra, tok, CHATS, lam=LamSchedule.think_answer(1.5, -0.5), thinking_token_budget=8,
                    max_new_tokens=16)  # fmt: skip
    assert (
        out.token_ids == same.token_ids
    )  # nothing fits 8 tokens: it thinks at the shortest lam, answers at -0.5


def test_generate_auto_needs_a_calibrated_checkpoint(inra, tok) -> None:
    with pytest.raises(ValueError, match="flexrealign calibrate"):
        generate(inra, tok, CHATS, lam="auto", max_new_tokens=2)
    with pytest.raises(ValueError, match="hidden size of 3; this model's is 32"):
        generate(inra, tok, CHATS, lam=AutoLam(policy((1.0, 2.0, 3.0))), max_new_tokens=2)


# ------------------------------------------------------------------------------------------------ the fit
def test_threshold_keeps_pass_within_tolerance_at_fewest_tokens() -> None:
    outcomes = [ProblemOutcome(1.0, 1.0, 10, 50)] * 6 + [ProblemOutcome(0.0, 1.0, 10, 50)] * 4
    p = torch.tensor([0.9] * 6 + [0.2] * 4, dtype=torch.float64)
    assert choose_threshold(p, outcomes, tolerance=0.5) == 0.9  # the easy six only
    assert choose_threshold(p, outcomes, tolerance=100.0) == 0.2  # any loss allowed: all easy


def test_fit_finds_the_easy_problems_out_of_fold() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(60, 8, generator=g)
    easy = h[:, 0] > 0  # what the state says: the short lam answers these
    outcomes = [ProblemOutcome(float(e), 1.0, 10.0, 50.0) for e in easy.tolist()]
    pol, stats = fit_auto_policy(h, outcomes, 1.5, -0.5)
    chosen = torch.sigmoid(h @ torch.tensor(pol.weights) + pol.bias) >= pol.threshold
    assert (chosen == easy).float().mean() > 0.9 and stats["out_of_fold_pass_at_1"] >= 99.0
    with pytest.raises(ValueError, match="problems"):
        fit_auto_policy(h[:3], outcomes[:3], 1.5, -0.5)


def test_a_calibrated_checkpoint_serves_auto_and_soft_landings_from_its_folder(inra, tok, tmp_path) -> None:
    """`generate` reads the calibration of the folder the model came from, as the server and vLLM do."""
    from flexrealign.core.inra import InRaModel
    from flexrealign.decoding.calibration import save_calibration

    inra.save_pretrained(tmp_path, tokenizer=tok)
    cal = calibration(policy((0.0,) * 32, threshold=1.0))
    save_calibration(tmp_path, cal)
    model = InRaModel.from_pretrained(tmp_path).eval()
    dial = parse_dial({"lam": "auto", "thinking_token_budget": 8}, cal)
    want = generate(model, tok, CHATS, lam=dial.lam_spec(), thinking=dial.limits(), max_new_tokens=16)
    got = generate(model, tok, CHATS, lam="auto", thinking_token_budget=8, max_new_tokens=16)
    hard = generate(
        model, tok, CHATS, lam="auto", thinking_token_budget=8, thinking_landing="hard", max_new_tokens=16
    )
    assert got.token_ids == want.token_ids != hard.token_ids and got.auto_lams == [-0.5, -0.5]
    with pytest.raises(ValueError, match="no calibration"):
        generate(inra, tok, CHATS, thinking_token_budget=8, thinking_landing="soft", max_new_tokens=2)


def test_auto_is_refused_where_no_hidden_state_is_probed(inra, tok) -> None:
    """DeRa's two models expose no shared reference state, and a plain model has one path: never a fallback."""
    from flexrealign.core.dera import DeRa
    from flexrealign.core.tiny import tiny_model

    ref = tiny_model("qwen3", seed=0, vocab_size=len(tok), hidden_size=32, num_layers=2)
    dera = DeRa(ref, tiny_model("qwen3", seed=1, vocab_size=len(tok), hidden_size=32, num_layers=2))
    with pytest.raises(ValueError, match="served for InRa models"):
        generate(dera, tok, CHATS, lam=AutoLam(policy((0.0,) * 32)), max_new_tokens=2)
    with pytest.raises(ValueError, match="single path"):
        generate(ref, tok, CHATS, lam="auto", max_new_tokens=2)
