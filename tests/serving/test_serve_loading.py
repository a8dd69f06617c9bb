"""`flexrealign serve` loads what `generate` loads, through the one loader: a GGUF file and an adapter folder
(on its recorded base, or on a GGUF base given with --base). uvicorn is replaced by a test client that sends
one completion per lam, so each case runs `serve.run` end to end in this process."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from flexrealign.commands import serve
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.generation import generate
from helpers import perturb_adapter

gguf = pytest.importorskip("gguf")

from gguf_writer import write_gguf  # noqa: E402
from tiny_checkpoints import bpe_tokenizer  # noqa: E402

VOCAB = 300
PROMPT = "the cat sat on"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny Llama as a GGUF file and as a folder, and an adapter folder recording the folder as its base."""
    root = tmp_path_factory.mktemp("serve-loading")
    tok = bpe_tokenizer(VOCAB)
    model = tiny_model("llama", seed=0, vocab_size=VOCAB)
    write_gguf(model, tok, root / "tiny.gguf")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    inra = perturb_adapter(InRaModel.from_base(base), scale=0.5).eval()
    inra.save_adapter(root / "adapter")
    return {"root": root, "tok": tok, "model": model, "inra": inra}


def serve_once(monkeypatch, argv: list[str], lams: list[float | None]) -> dict:
    """Run `flexrealign serve ARGV` with uvicorn.run replaced: GET /health, then one greedy completion of
    PROMPT per lam (None: no lam in the request). Returns {lam: completion text}."""
    import uvicorn
    from starlette.testclient import TestClient

    texts = {}

    def fake_run(app, **_) -> None:
        with TestClient(app) as client:
            assert client.get("/health").status_code == 200
            for lam in lams:
                body = {"model": "m", "prompt": PROMPT, "max_tokens": 5, "temperature": 0}
                resp = client.post("/v1/completions", json=body | ({} if lam is None else {"lam": lam}))
                assert resp.status_code == 200, resp.text
                texts[lam] = resp.json()["choices"][0]["text"]

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert serve.run([*argv, "--served-model-name", "m", "--device", "cpu"]) == 0
    return texts


def reference(model, tok, lam: float | None) -> str:
    with torch.inference_mode():
        return generate(model, tok, [PROMPT], lam=lam, max_new_tokens=5).texts[0]


def test_serve_starts_from_a_gguf_file(files, monkeypatch) -> None:
    texts = serve_once(monkeypatch, ["--model", str(files["root"] / "tiny.gguf")], [None])
    assert texts[None] == reference(files["model"], files["tok"], None)


def test_serve_starts_from_an_adapter_folder(files, monkeypatch) -> None:
    texts = serve_once(monkeypatch, ["--model", str(files["root"] / "adapter")], [0.0, 1.0])
    want = {lam: reference(files["inra"], files["tok"], lam) for lam in (0.0, 1.0)}
    assert texts == want and want[0.0] != want[1.0]


def test_serve_an_adapter_on_a_gguf_base(files, monkeypatch) -> None:
    argv = ["--model", str(files["root"] / "adapter"), "--base", str(files["root"] / "tiny.gguf")]
    texts = serve_once(monkeypatch, argv, [0.0, 1.0])
    assert texts == {lam: reference(files["inra"], files["tok"], lam) for lam in (0.0, 1.0)}


def test_unreadable_model_names_the_path(files, monkeypatch, capsys) -> None:
    missing = files["root"] / "no-such-folder"
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("served a model that did not load"))
    assert serve.run(["--model", str(missing), "--device", "cpu"]) == 1
    assert str(missing) in capsys.readouterr().err
