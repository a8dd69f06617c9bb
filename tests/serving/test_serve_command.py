"""`flexrealign serve` end to end: a subprocess serving a saved InRa checkpoint, with an API key and lam bounds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from servertools import PROMPTS, chat_tokenizer, stories_inra
from transformers import LlamaForCausalLM

from flexrealign.commands.serve import run
from flexrealign.conversion.loading import load
from flexrealign.core.inra import InRaModel
from flexrealign.decoding.generation import generate


@pytest.fixture(scope="module")
def checkpoints(stories260k, tmp_path_factory) -> tuple[Path, Path, InRaModel]:
    """(inra_dir, plain_dir, model): the perturbed InRa model saved with a chat tokenizer, and plain stories."""
    root = tmp_path_factory.mktemp("serve")
    model, tok = stories_inra(stories260k), chat_tokenizer(stories260k[1])
    model.save_pretrained(root / "inra", tokenizer=tok)
    stories260k[0].save_pretrained(root / "plain")
    tok.save_pretrained(root / "plain")
    return root / "inra", root / "plain", model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited:\n{proc.stdout.read()}"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError("the server did not come up")


def test_serve_subprocess_with_api_key_and_lam_bounds(checkpoints, stories260k) -> None:
    inra_dir, _, model = checkpoints
    port = _free_port()
    argv = ["--model", str(inra_dir), "--served-model-name", "m", "--port", str(port), "--api-key", "k",
            "--lam-min", "0", "--lam-max", "1", "--max-tokens-limit", "32", "--device", "cpu"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flexrealign.cli", "serve", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)
        out = client.completions.create(
            model="m", prompt=PROMPTS[0], max_tokens=6, temperature=0, extra_body={"lam": 0.5}
        )
        with torch.inference_mode():
            ref = generate(model, chat_tokenizer(stories260k[1]), PROMPTS[0], lam=0.5, max_new_tokens=6)
        assert out.choices[0].text == ref.texts[0] and out.usage.completion_tokens == ref.num_tokens[0]
        with pytest.raises(openai.BadRequestError, match="lam"):
            client.completions.create(model="m", prompt="Hi", max_tokens=2, extra_body={"lam": 1.5})
        resp = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 2})
        assert resp.status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully, then the engine stops
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stdout.read()


def test_load_model_picks_inra_or_plain(checkpoints) -> None:
    inra_dir, plain_dir, _ = checkpoints
    model, tok = load(str(inra_dir), device="cpu")
    assert isinstance(model, InRaModel) and tok.chat_template is not None
    model, _ = load(str(plain_dir), device="cpu")
    assert isinstance(model, LlamaForCausalLM)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--model", "x", "--dera-ref", "y"],
        ["--model", "x", "--lam-min", "1", "--lam-max", "0"],
        ["--model", "x", "--lam-default", "3", "--lam-max", "2"],
        ["--model", "x", "--lam-min", "nan"],
        ["--model", "x", "--max-batch-size", "0"],
    ],
)
def test_bad_flags_are_usage_errors(argv) -> None:
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert e.value.code == 2
