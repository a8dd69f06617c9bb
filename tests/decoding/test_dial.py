"""The dial module: each field's check, the parameter an error names, reasoning_effort's expansion, and the three
surfaces (server, vLLM plugin, CLI) refusing the same bad dial with the same message."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

import flexrealign.decoding.dial as dial_module
from flexrealign.decoding.calibration import Calibration
from flexrealign.decoding.dial import (
    FIELD_NAMES,
    Dial,
    DialError,
    LamSchedule,
    LamValue,
    ThinkingLimits,
    dial_fields,
    parse_dial,
)

CURVE = [{"lam": 1.0, "mean_thinking_tokens": 30, "mean_tokens": 40, "pass_at_1": 65, "samples": 8}]
EFFORTS = {
    "none": {"lam": 2.0, "chat_template_kwargs": {"enable_thinking": False}},
    "paced": {"lam_think": -0.5, "lam_answer": 1.5, "thinking_token_budget": 5, "thinking_closing": "Up."},
    "floor": {"lam": 1.0, "thinking_token_budget": 6, "min_thinking_tokens": 4},
    "wild": {"lam": 7.0},
}


def calibration() -> Calibration:
    return Calibration.from_json({"curve": CURVE, "efforts": EFFORTS})


def refused(values: dict, **kwargs) -> DialError:
    with pytest.raises(DialError) as err:
        parse_dial(values, **kwargs)
    assert isinstance(err.value, ValueError)
    return err.value


BAD_VALUES = [
    ("lam", "0.5", "must be a finite number"),
    ("lam", True, "must be a finite number"),
    ("lam", math.nan, "must be a finite number"),
    ("lam", 10**400, "must be a finite number"),
    ("lam", None, "must be a finite number"),
    ("lam_turns", [], "non-empty list"),
    ("lam_turns", [0.5, math.inf], "must be a finite number"),
    ("lam_think", -math.inf, "must be a finite number"),
    ("lam_answer", "1", "must be a finite number"),
    ("lam_marker", "", "non-empty string"),
    ("lam_marker", 3, "non-empty string"),
    ("thinking_token_budget", -1, "int >= 0"),
    ("thinking_token_budget", 2.0, "int >= 0"),
    ("min_thinking_tokens", False, "int >= 0"),
    ("thinking_closing", "", "non-empty string"),
    ("reasoning_effort", 5, "non-empty string"),
    ("thinking_landing", "gentle", "must be one of"),
    ("lam", "Auto", "must be a finite number"),
]


@pytest.mark.parametrize(("name", "value", "said"), BAD_VALUES)
def test_each_field_refuses_a_bad_value_naming_it(name, value, said):
    err = refused({name: value})
    assert err.param == name and said in err.message and err.message.startswith(name)
    if not isinstance(value, list):  # (a list names its bad entry)
        assert err.value is value or err.value == value


def test_every_field_is_declared_once_with_its_check_and_help():
    assert FIELD_NAMES == (
        "lam", "lam_turns", "lam_think", "lam_answer", "lam_start_marker", "lam_marker", "thinking_token_budget",
        "min_thinking_tokens", "thinking_closing", "thinking_landing", "reasoning_effort",
    )  # fmt: skip
    for _name, meta in dial_fields():
        assert (
            callable(meta["check"])
            and meta["help"]
            and meta["type"] in (float, int, str, list[float], LamValue)
        )
    assert LamValue("auto") == "auto" and LamValue(" 0.5") == 0.5
    assert dict(dial_fields())["lam_marker"]["flag"] == "think_marker"


def test_good_values_parse_into_the_lam_and_limits():
    d = parse_dial({"lam": 1, "thinking_token_budget": 4, "min_thinking_tokens": 2})
    assert d.lam_spec() == 1.0 and isinstance(d.lam_spec(), float)
    assert d.limits() == ThinkingLimits(4, 2)
    d = parse_dial({"lam_think": -0.5, "lam_answer": 1, "lam_marker": "</r>"})
    assert d.lam_spec() == LamSchedule.think_answer(-0.5, 1.0, "</r>")
    assert parse_dial({}).lam_spec(default=0.25) == 0.25
    turns = parse_dial({"lam_turns": [1.0, 0.0]})
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert turns.lam_turns == (1.0, 0.0) and turns.lam_spec(chat) == 0.0 and turns.lam_spec(chat[:1]) == 1.0


@pytest.mark.parametrize(
    ("values", "param", "said"),
    [
        ({"lam": 0.5, "lam_turns": [1.0]}, "lam", "give only one of lam"),
        ({"lam_think": 1.0}, "lam_think", "go together"),
        ({"lam_answer": 1.0}, "lam_answer", "go together"),
        ({"thinking_token_budget": 2, "min_thinking_tokens": 3}, "min_thinking_tokens", "above"),
        ({"thinking_closing": "Up."}, "thinking_closing", "give thinking_token_budget"),
        ({"thinking_closing": "Up.", "thinking_token_budget": 0}, "thinking_closing", "cannot fit"),
        ({"lam_thnik": 1.0}, "lam_thnik", "did you mean 'lam_think'"),
    ],
)
def test_fields_that_do_not_fit_together_name_the_first(values, param, said):
    err = refused(values)
    assert err.param == param and said in err.message


def test_the_surface_range_and_the_model_paths():
    err = refused({"lam_turns": [0.5, 9.0]}, lam_range=(-1.0, 2.0))
    assert (err.param, err.code) == ("lam_turns", "lam_out_of_range") and "[-1.0, 2.0]" in err.message
    with pytest.raises(DialError, match="plain model") as err:
        parse_dial({"lam_think": 0.0, "lam_answer": 1.0}).lam_spec(fused=False)
    assert err.value.param == "lam_think"
    assert parse_dial({"thinking_token_budget": 3}).lam_spec(fused=False) is None
    with pytest.raises(DialError, match="chat completions only"):
        parse_dial({"lam_turns": [1.0]}).lam_spec(None)


def test_unknown_keys_are_left_to_others_only_when_they_do_not_look_like_dial_keys():
    assert parse_dial({"lam": 0.5, "other_plugin": [1]}, ignore_unknown=True).lam == 0.5
    assert refused({"other_plugin": 1}).code == "unknown_field"
    assert refused({"thinking_budget": 1}, ignore_unknown=True).param == "thinking_budget"


def test_reasoning_effort_expands_under_the_request():
    cal = calibration()
    none = parse_dial({"reasoning_effort": "none"}, cal)
    assert none.lam_spec() == 2.0 and none.limits() == ThinkingLimits(0)
    assert none.template_kwargs == {"enable_thinking": False} and none.taken == {
        "lam",
        "thinking_token_budget",
    }
    paced = parse_dial({"reasoning_effort": "paced"}, cal)
    # a budget on a calibrated model lands softly unless the request says "hard" (flexrealign.decoding.adaptive)
    soft = cal.landing()
    assert paced.lam_spec() == LamSchedule.think_answer(-0.5, 1.5) and paced.limits() == ThinkingLimits(
        5, 0, "Up.", landing=soft
    )
    # the request's lam fields replace the effort's as a group, its limits one by one
    d = parse_dial({"reasoning_effort": "paced", "lam": 0.3, "thinking_token_budget": 9}, cal)
    assert d.lam_spec() == 0.3 and d.limits() == ThinkingLimits(9, 0, "Up.", landing=soft)
    assert parse_dial(
        {"reasoning_effort": "floor", "min_thinking_tokens": 0, "thinking_landing": "hard"}, cal
    ).limits() == ThinkingLimits(6)
    # without a calibration: refused, saying how to make one, unless the template reads the level (gpt-oss)
    err = refused({"reasoning_effort": "high"})
    assert (err.param, err.code) == ("reasoning_effort", "no_calibration") and "flexrealign calibrate" in str(
        err
    )
    native = parse_dial({"reasoning_effort": "high"}, native_effort=True)
    assert native.reasoning_effort == "high" and native.lam_spec() == 1.0 and not native.taken
    err = refused({"reasoning_effort": "xhigh"}, calibration=cal)
    assert err.param == "reasoning_effort" and "offers: none, paced, floor, wild" in err.message


def test_an_error_about_an_effort_value_names_the_effort():
    cal = calibration()
    err = refused({"reasoning_effort": "wild"}, calibration=cal, lam_range=(-1.0, 2.0))
    assert (err.param, err.code, err.value) == ("reasoning_effort", "lam_out_of_range", "wild")
    assert err.message.startswith("reasoning_effort 'wild' stands for lam=7.0, and lam=7.0 is outside")
    err = refused({"reasoning_effort": "floor", "thinking_token_budget": 2}, calibration=cal)
    assert err.param == "thinking_token_budget"  # the client's own field is named
    with pytest.raises(DialError) as e:
        parse_dial({"reasoning_effort": "floor"}, cal).lam_spec(fused=False)
    assert e.value.param == "reasoning_effort"


def test_the_limits_and_schedule_check_themselves_too():
    with pytest.raises(DialError, match="above thinking_token_budget") as err:
        ThinkingLimits(2, 3)
    assert err.value.param == "min_thinking_tokens"
    with pytest.raises(DialError, match="finite number") as err:
        LamSchedule.think_answer(0.0, math.nan)
    assert err.value.param == "lam_answer"
    with pytest.raises(ValueError, match="two lams"):
        LamSchedule((1.0,))


def test_a_start_marker_reaches_the_thinking_state_from_every_surface():
    from flexrealign.commands.generate import DialArgs
    from flexrealign.decoding.rows import row_thinking
    from flexrealign.serving.protocol import LamArgs
    from helpers import qwen3_tokenizer

    tok = qwen3_tokenizer()
    d = parse_dial({"lam_marker": "</r>", "lam_start_marker": "<r>", "thinking_token_budget": 2})
    state = row_thinking(tok, 0.5, d.limits(), tok("Hi")["input_ids"], set())
    assert (state.plan.markers.start_text, state.plan.markers.end_text) == ("<r>", "</r>")
    assert not state.thinking  # nothing opened a block yet: the start marker is seen
    d = parse_dial({"lam_marker": "</r>", "thinking_token_budget": 2})
    assert row_thinking(tok, 0.5, d.limits(), tok("Hi")["input_ids"], set()).thinking  # thinks from the start
    assert (
        "lam_start_marker" in LamArgs.model_fields and "think_start_marker" in DialArgs.__dataclass_fields__
    )


def test_the_module_is_pure_python():
    tree = ast.parse(Path(dial_module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"torch", "pydantic", "fastapi", "vllm", "transformers"}
    assert Dial.__dataclass_params__.frozen


# ------------------------------------------------------------------------------------ the three surfaces
SAME_BAD = [
    ({"lam_think": 0.5}, "lam_think and lam_answer go together"),
    ({"thinking_token_budget": 2, "min_thinking_tokens": 3}, "min_thinking_tokens (3) is above"),
    ({"thinking_closing": "Up."}, "a thinking closing text is forced when the budget runs out"),
]


@pytest.mark.parametrize(("values", "said"), SAME_BAD)
def test_server_vllm_and_cli_refuse_the_same_dial_alike(values, said, capsys):
    from flexrealign.commands._args import parse
    from flexrealign.commands.generate import DialArgs, GenerateArgs
    from flexrealign.serving.errors import APIError
    from flexrealign.serving.params import ServerConfig, request_dial
    from flexrealign.serving.protocol import CompletionRequest

    message = refused(values).message
    assert said in message
    with pytest.raises(APIError) as err:  # the server: a 400 naming the field
        request_dial(CompletionRequest(model="m", prompt="hi", vllm_xargs=values), ServerConfig("m"))
    assert (err.value.status, err.value.message) == (400, message)
    flags = [a for k, v in values.items() for a in (f"--{k}", str(v))]
    with pytest.raises(SystemExit):  # the CLI: a usage error
        parse([GenerateArgs, DialArgs], ["--model", "m", "--prompt", "hi", *flags], "generate", "")
    assert message in capsys.readouterr().err
    vllm_requests = pytest.importorskip("flexrealign.vllm_plugin.requests", exc_type=ImportError)
    with pytest.raises(Exception) as err:  # noqa: B017  (vLLM's VLLMValidationError)
        vllm_requests.dial_request(values)
    assert type(err.value).__name__ == "VLLMValidationError" and str(err.value).startswith(f"InRa: {message}")
