"""`flexrealign generate --prompt` on a chat tokenizer renders the prompt as one user message (like --messages);
--raw sends the text as it is; the thinking flags reach `generate`."""

from __future__ import annotations

import json

import pytest

from flexrealign.cli import main
from helpers import qwen3_inra, qwen3_thinking_tokenizer

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = qwen3_thinking_tokenizer()
    path = tmp_path_factory.mktemp("qwen_inra")
    qwen3_inra(tok).save_pretrained(path, tokenizer=tok)
    return path


def records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def run(ckpt, *args: str) -> int:
    return main(
        ["generate", "--model", str(ckpt), "--lam", "0.5", "--max-new-tokens", "8", "--json-output", *args]
    )


def test_prompt_uses_the_chat_template(ckpt, tmp_path, capsys):
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": PROMPT}]))
    assert run(ckpt, "--prompt", PROMPT) == 0
    (as_prompt,) = records(capsys)
    assert run(ckpt, "--messages", str(chat)) == 0
    (as_messages,) = records(capsys)
    assert run(ckpt, "--prompt", PROMPT, "--raw") == 0
    (raw,) = records(capsys)
    assert as_prompt["text"] == as_messages["text"] and as_prompt["prompt"] == PROMPT
    assert raw["text"] != as_prompt["text"]  # the raw text conditions the model differently


def test_thinking_flags(ckpt, capsys):
    assert run(ckpt, "--prompt", PROMPT, "--thinking-token-budget", "3", "--max-new-tokens", "8") == 0
    (rec,) = records(capsys)
    assert rec["reasoning_tokens"] == 3 and "</think>" in rec["text"]
    # --think-start-marker reaches the thinking state: with a start marker the prompt never opens, no block
    # is open, so nothing counts as thinking and nothing is forced (this flag was refused before)
    args = ("--prompt", PROMPT, "--thinking-token-budget", "3", "--think-start-marker", "<tool_call>")
    assert run(ckpt, *args) == 0
    (rec,) = records(capsys)
    assert rec["reasoning_tokens"] == 0
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "chat template" in capsys.readouterr().out


def test_lam_auto_and_the_landing_flags(ckpt, tmp_path, capsys):
    """--lam auto and --thinking-landing read the checkpoint's calibration, as the server does."""
    import shutil

    from flexrealign.decoding.adaptive import AutoPolicy
    from flexrealign.decoding.calibration import Calibration, CurvePoint, Effort, save_calibration

    assert main(["generate", "--model", str(ckpt), "--lam", "auto", "--prompt", PROMPT]) == 2
    assert "flexrealign calibrate" in capsys.readouterr().err  # no calibration: a usage error, not lam 1
    calibrated = tmp_path / "calibrated"
    shutil.copytree(ckpt, calibrated)
    curve = [CurvePoint(0.0, 30.0, 40.0, 50.0, 4), CurvePoint(1.5, 3.0, 9.0, 40.0, 4)]
    policy = AutoPolicy((0.0,) * 32, 1.0, 0.5, lam_easy=1.5, lam_hard=0.0)  # logit 1 >= 0: always lam_easy
    save_calibration(calibrated, Calibration(curve, {"low": Effort(1.5)}, {}, policy))
    args = ["--prompt", PROMPT, "--thinking-token-budget", "4"]
    assert main(["generate", "--model", str(calibrated), "--lam", "auto", "--max-new-tokens", "8",
                 "--json-output", *args]) == 0  # fmt: skip
    (auto,) = records(capsys)
    assert auto["lam"] == "auto" and auto["auto_lam"] == 1.5 and auto["reasoning_tokens"] <= 4
    assert run(calibrated, *args, "--thinking-landing", "hard") == 0
    (hard,) = records(capsys)
    assert run(calibrated, *args) == 0  # soft by default: thinks at the shortest lam, 1.5
    (soft,) = records(capsys)
    assert soft["text"] != hard["text"] and soft["reasoning_tokens"] <= 4
