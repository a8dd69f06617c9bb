"""The effort table chosen from a calibration curve, and its atomic JSON file."""

from __future__ import annotations

import pytest

from flexrealign.calibration import (
    CALIBRATION_FILE,
    Calibration,
    CurvePoint,
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
