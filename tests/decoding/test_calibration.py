"""The effort table chosen from a calibration curve, and its atomic JSON file."""

from __future__ import annotations

import json

import pytest

from flexrealign.decoding.calibration import (
    CALIBRATION_FILE,
    Calibration,
    CurvePoint,
    Effort,
    choose_efforts,
    load_calibration,
    save_calibration,
)

CURVE = [  # lam, thinking tokens, tokens, pass@1, samples: longer thinking helps up to a point
    CurvePoint(-0.5, 900.0, 950.0, 70.0, 50),
    CurvePoint(0.0, 700.0, 750.0, 66.0, 50),
    CurvePoint(0.5, 500.0, 550.0, 65.0, 50),
    CurvePoint(1.0, 300.0, 350.0, 64.5, 50),
    CurvePoint(1.5, 120.0, 170.0, 50.0, 50),
]


def test_default_efforts_follow_the_curve():
    e = choose_efforts(CURVE, can_skip_thinking=False)
    assert e["high"].lam == -0.5  # best Pass@1
    assert e["low"].lam == 1.0  # largest lam within 2 points of lam = 0 (66 - 64.5 = 1.5)
    assert e["medium"].lam == 0.0  # thinking tokens closest to (300 + 900) / 2 = 600, between low and high
    assert (e["none"].lam, e["none"].thinking_token_budget) == (1.5, 0)
    skip = choose_efforts(CURVE, can_skip_thinking=True)["none"]
    assert skip.chat_template_kwargs == {"enable_thinking": False} and skip.thinking_token_budget is None


def test_save_is_atomic_and_round_trips(tmp_path):
    cal = Calibration(CURVE, choose_efforts(CURVE, False), {"benchmark": "x.jsonl"})
    path = save_calibration(tmp_path, cal)
    assert path.name == CALIBRATION_FILE and [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILE]
    back = load_calibration(tmp_path)
    assert back.curve == CURVE and back.efforts == cal.efforts and back.meta == {"benchmark": "x.jsonl"}
    assert load_calibration(tmp_path / "nowhere") is None
    path.write_text("{not json")
    with pytest.raises(ValueError, match="rerun flexrealign calibrate"):
        load_calibration(tmp_path)


# ------------------------------------------------------------------------ the file, checked when it is loaded
POINT = {"lam": 0.0, "mean_thinking_tokens": 10, "mean_tokens": 12, "pass_at_1": 50, "samples": 4}
GOOD = {"curve": [POINT], "efforts": {"low": {"lam": 1.0}}, "benchmark": "x.jsonl"}


def _with_effort(**fields) -> dict:
    return {**GOOD, "efforts": {"low": fields}}


BAD_FILES = [  # (file contents, what the error must say: the key and the value)
    ([GOOD], "the file holds a JSON list"),
    ("text", "the file holds a JSON str"),
    ({**GOOD, "efforts": [{"lam": 1.0}]}, "efforts = [{'lam': 1.0}]: must be an object"),
    ({**GOOD, "efforts": {}}, "efforts = {}: must map at least one effort"),
    ({"curve": [POINT]}, "efforts: missing"),
    ({**GOOD, "curve": {"lam": 0}}, "curve = {'lam': 0}: must be a list"),
    ({**GOOD, "efforts": {"low": 1.0}}, "efforts.low = 1.0: must be an object"),
    ({**GOOD, "efforts": {"low": [1.0]}}, "efforts.low = [1.0]: must be an object"),
    (_with_effort(lam="1.0"), "efforts.low.lam = '1.0': must be a finite number"),
    (_with_effort(lam=float("nan")), "efforts.low.lam = nan: must be a finite number"),
    (_with_effort(lam=float("inf")), "efforts.low.lam = inf: must be a finite number"),
    (_with_effort(lam=True), "efforts.low.lam = True: must be a finite number"),
    (
        _with_effort(lam=10**400),
        "efforts.low.lam = 100000000000000000000",
    ),  # overflows a float: OverflowError
    (_with_effort(lam=None), "efforts.low = {}: an effort sets at least one"),
    (_with_effort(lam=1.0, lamda=2.0), "efforts.low.lamda = 2.0: unknown key"),
    (
        _with_effort(lam=1.0, thinking_token_budget=-5),
        "efforts.low.thinking_token_budget = -5: must be an int",
    ),
    (
        _with_effort(lam=1.0, thinking_token_budget=True),
        "efforts.low.thinking_token_budget = True: must be an",
    ),
    (_with_effort(lam=1.0, thinking_token_budget=2.5), "efforts.low.thinking_token_budget = 2.5: must be an"),
    (_with_effort(lam=1.0, thinking_token_budget="8"), "efforts.low.thinking_token_budget = '8': must be an"),
    (_with_effort(lam=1.0, min_thinking_tokens=-1), "efforts.low.min_thinking_tokens = -1: must be an int"),
    (
        _with_effort(lam=1.0, thinking_token_budget=3, min_thinking_tokens=4),
        "efforts.low.min_thinking_tokens = 4: min_thinking_tokens (4) is above thinking_token_budget (3)",
    ),
    (_with_effort(lam=1.0, thinking_token_budget=9, thinking_closing=5), "efforts.low.thinking_closing = 5:"),
    (
        _with_effort(lam=1.0, thinking_token_budget=9, thinking_closing=""),
        "efforts.low.thinking_closing = '':",
    ),
    (
        _with_effort(lam=1.0, thinking_closing="Stop."),
        "efforts.low.thinking_closing = 'Stop.': a thinking closing",
    ),
    (
        _with_effort(lam=1.0, thinking_token_budget=0, thinking_closing="Stop."),
        "efforts.low.thinking_closing = 'Stop.': the closing text cannot fit a thinking_token_budget of 0",
    ),
    (
        _with_effort(lam=1.0, lam_think=0.0, lam_answer=1.0),
        "efforts.low.lam = 1.0: give either lam or lam_think",
    ),
    (_with_effort(lam_think=0.0), "efforts.low.lam_think = 0.0: lam_think and lam_answer go together"),
    (_with_effort(lam_answer=1.0), "efforts.low.lam_answer = 1.0: lam_think and lam_answer go together"),
    (
        _with_effort(lam=1.0, lam_marker="</t>"),
        "efforts.low.lam_marker = '</t>': the end marker of a schedule",
    ),
    (
        _with_effort(lam_think=0, lam_answer=1, lam_marker=7),
        "efforts.low.lam_marker = 7: must be a non-empty",
    ),
    (
        _with_effort(lam=1.0, chat_template_kwargs=[1]),
        "efforts.low.chat_template_kwargs = [1]: must be an object",
    ),
    (
        _with_effort(lam=1.0, chat_template_kwargs={"enable_thinking": "no"}),
        "efforts.low.chat_template_kwargs.enable_thinking = 'no': must be true or false",
    ),
    (
        _with_effort(lam=1.0, chat_template_kwargs={"thinking": False}),
        "efforts.low.chat_template_kwargs.thinking = False: unknown key",
    ),
    (
        _with_effort(lam=1.0, chat_template_kwargs={"enable_thinking": False}, thinking_token_budget=5),
        "efforts.low.thinking_token_budget = 5: enable_thinking is false, which means a budget of 0",
    ),
    (
        _with_effort(lam=1.0, chat_template_kwargs={"enable_thinking": False}, min_thinking_tokens=2),
        "efforts.low.min_thinking_tokens = 2: min_thinking_tokens (2) is above thinking_token_budget (0)",
    ),
    ({**GOOD, "curve": [{**POINT, "lam": "0"}]}, "curve[0].lam = '0': must be a finite number"),
    ({**GOOD, "curve": [{**POINT, "pass_at_1": 150}]}, "curve[0].pass_at_1 = 150: must be within [0, 100]"),
    ({**GOOD, "curve": [{**POINT, "mean_tokens": -1}]}, "curve[0].mean_tokens = -1: must be within [0, inf]"),
    ({**GOOD, "curve": [{**POINT, "samples": 0}]}, "curve[0].samples = 0: must be an int >= 1"),
    ({**GOOD, "curve": [{**POINT, "samples": 2.0}]}, "curve[0].samples = 2.0: must be an int >= 1"),
    ({**GOOD, "curve": [{**POINT, "seed": 1}]}, "curve[0].seed = 1: unknown key"),
    ({**GOOD, "curve": [dict(list(POINT.items())[:4])]}, "curve[0].samples: missing"),
    ({**GOOD, "curve": ["x"]}, "curve[0] = 'x': must be an object"),
]


@pytest.mark.parametrize("data, said", BAD_FILES, ids=[said[:40] for _, said in BAD_FILES])
def test_a_bad_file_fails_at_load_naming_the_file_the_key_and_the_value(tmp_path, data, said):
    path = tmp_path / CALIBRATION_FILE
    path.write_text(json.dumps(data))  # json writes NaN and Infinity, as Python's json reads them
    with pytest.raises(ValueError) as err:
        load_calibration(tmp_path)
    assert type(err.value) is ValueError  # the documented contract: not AttributeError, TypeError, KeyError
    message = str(err.value)
    assert str(path) in message and said in message and "rerun flexrealign calibrate" in message


def test_a_bad_effort_or_point_built_in_code_fails_too():
    from flexrealign.decoding.calibration import CalibrationError

    with pytest.raises(CalibrationError, match=r"lam = nan: must be a finite number"):
        Effort(float("nan"))
    with pytest.raises(CalibrationError, match=r"thinking_token_budget = -5: must be an int >= 0"):
        Effort(1.0, thinking_token_budget=-5)
    with pytest.raises(CalibrationError, match=r"pass_at_1 = 101.0: must be within"):
        CurvePoint(0.0, 1.0, 1.0, 101.0, 1)
    with pytest.raises(CalibrationError, match=r"efforts = {}: must map at least one effort"):
        Calibration(CURVE, {})


def test_every_field_of_an_effort_loads_and_round_trips(tmp_path):
    efforts = {
        "none": {"lam": 1.5, "chat_template_kwargs": {"enable_thinking": False}},
        "paced": {
            "lam_think": -0.5,
            "lam_answer": 1,
            "lam_marker": "</think>",
            "thinking_token_budget": 64,
            "min_thinking_tokens": 8,
            "thinking_closing": "Time is up.",
        },  # fmt: skip
        "capped": {"thinking_token_budget": 32},  # a budget alone: the server's default lam
    }
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({**GOOD, "efforts": efforts}))
    cal = load_calibration(tmp_path)
    assert {k: e.to_json() for k, e in cal.efforts.items()} == efforts
    assert isinstance(cal.efforts["paced"].lam_answer, float)  # JSON's 1 is the lam 1.0
    assert cal.efforts["paced"].dial() == {"lam_think": -0.5, "lam_answer": 1.0, "lam_marker": "</think>",
                                           "thinking_token_budget": 64, "min_thinking_tokens": 8,
                                           "thinking_closing": "Time is up."}  # fmt: skip
    assert load_calibration(save_calibration(tmp_path, cal).parent).efforts == cal.efforts


def test_an_effort_that_skips_thinking_stands_for_a_budget_of_0():
    skip = choose_efforts(CURVE, can_skip_thinking=True)["none"]
    assert skip.dial() == {"lam": 1.5, "thinking_token_budget": 0}
    assert choose_efforts(CURVE, can_skip_thinking=False)["none"].dial() == {
        "lam": 1.5,
        "thinking_token_budget": 0,
    }
    assert Effort(1.0, chat_template_kwargs={"enable_thinking": True}).dial() == {"lam": 1.0}


def test_expand_effort_puts_the_request_fields_over_the_effort():
    from flexrealign.decoding.calibration import expand_effort

    effort = Effort(
        lam_think=-0.5, lam_answer=1.0, lam_marker="</t>", thinking_token_budget=9, min_thinking_tokens=2
    )
    fields, taken = expand_effort({}, effort)
    assert fields == effort.dial() and taken == set(effort.dial())
    # any lam of the request replaces the effort's lam fields as a group; limits are replaced one by one
    fields, taken = expand_effort(
        {"lam": 0.3, "thinking_token_budget": 20, "min_thinking_tokens": None}, effort
    )
    assert fields == {"lam": 0.3, "thinking_token_budget": 20, "min_thinking_tokens": 2}
    assert taken == {"min_thinking_tokens"}
    fields, _ = expand_effort({"lam_turns": [0.0]}, effort)
    assert "lam_think" not in fields and "lam_marker" not in fields
    assert expand_effort({"lam": 2.0}, None) == ({"lam": 2.0}, frozenset())


def test_calibrate_reads_back_what_it_wrote_through_the_same_checks(tmp_path, monkeypatch, capsys):
    from flexrealign.commands import calibrate

    path = tmp_path / CALIBRATION_FILE
    monkeypatch.setattr(calibrate, "calibrate", lambda args: path)  # the measuring is another test's
    argv = ["--model", str(tmp_path), "--benchmark", "b.jsonl"]
    path.write_text(json.dumps({**GOOD, "efforts": [{"lam": 1.0}]}))
    assert calibrate.run(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "efforts = [{'lam': 1.0}]: must be an object" in err
    save_calibration(tmp_path, Calibration(CURVE, choose_efforts(CURVE, can_skip_thinking=True)))
    assert calibrate.run(argv) == 0
    out = capsys.readouterr().out
    assert "none={'lam': 1.5, 'chat_template_kwargs': {'enable_thinking': False}}" in out and str(path) in out
