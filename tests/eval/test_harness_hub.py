"""`flexrealign eval --model org/an-inra-checkpoint` evaluates two paths: the kind comes from the config the
Hub serves (here: a Hugging Face cache laid out as the Hub's, offline), not from a local config.json."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from flexrealign.commands import eval as eval_cmd
from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.eval.harness import ModelSpec, load_model
from flexrealign.testbed.task import make_problems
from flexrealign.testbed.tokenizer import build_tokenizer
from helpers import hub_cache, perturb_adapter

REPO = "some-org/an-inra-checkpoint"


@pytest.fixture
def hub_inra(tmp_path, monkeypatch) -> InRaModel:
    """An InRa checkpoint (adapter far from identity) reachable only as the Hub name REPO."""
    tok = build_tokenizer()
    tiny_model("llama", seed=0, vocab_size=len(tok)).save_pretrained(tmp_path / "plain")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    model = perturb_adapter(InRaModel.from_base(base, AdapterConfig()), scale=0.5).eval()
    model.save_pretrained(tmp_path / "inra", tokenizer=tok)
    hub_cache(tmp_path, monkeypatch, REPO, tmp_path / "inra")
    return model


def test_spec_of_a_hub_name_is_two_path(hub_inra) -> None:
    spec = ModelSpec("m", path=REPO)
    assert spec.kind == "inra" and spec.fused
    model, _ = load_model(spec, device="cpu")
    ids = torch.tensor([[1, 7, 3, 9]])
    with torch.no_grad():
        assert torch.equal(model(ids, lam=0.0).logits, hub_inra(ids, lam=0.0).logits)


def test_eval_of_a_hub_inra_checkpoint_runs_both_paths(hub_inra, tmp_path) -> None:
    bench = tmp_path / "bench.jsonl"
    problems = make_problems(3, seed=11)
    bench.write_text("".join(json.dumps({"id": p.id, "question": p.question, "answer": str(p.answer)}) + "\n"
                             for p in problems))  # fmt: skip
    out = tmp_path / "out"
    argv = ["--model", REPO, "--benchmark", str(bench), "--lam", "0", "1", "--n-samples", "1",
            "--temperature", "0", "--max-new-tokens", "6", "--template", "{question}", "--out", str(out)]  # fmt: skip
    assert eval_cmd.run(argv) == 0
    rows = [(r["model"], r["lam"]) for r in csv.DictReader((out / "results.csv").open())]
    assert rows == [("an-inra-checkpoint", "0"), ("an-inra-checkpoint", "1")]
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    texts = {lam: [r["text"] for r in records if r["lam"] == lam] for lam in (0.0, 1.0)}
    assert all(r["kind"] == "inra" for r in records) and len(texts[0.0]) == len(texts[1.0]) == 3
    assert texts[0.0] != texts[1.0]  # two paths, not the lam = 1 model at every lam
