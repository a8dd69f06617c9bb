"""The evaluation harness: resumable JSONL (no redo, no duplicates, crash-tolerant), metrics, outputs, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.eval import harness
from flexrealign.eval.benchmarks import Problem
from flexrealign.eval.generations import GENERATIONS, load_generations, record_key
from flexrealign.eval.harness import EvalConfig, ModelSpec, evaluate
from flexrealign.eval.results import Row, add_token_reduction
from flexrealign.testbed.task import make_problems
from flexrealign.testbed.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def specs(tok) -> list[ModelSpec]:
    plain = tiny_model("llama", seed=0, vocab_size=len(tok))
    inra = InRaModel.from_base(tiny_model("llama", seed=1, vocab_size=len(tok)), AdapterConfig()).eval()
    return [ModelSpec("plain", loaded=(plain, tok)), ModelSpec("inra", kind="inra", loaded=(inra, tok))]


def problems(n: int) -> list[Problem]:
    return [Problem(p.id, p.question, str(p.answer)) for p in make_problems(n, seed=11)]


CFG = EvalConfig(
    lams=(0.0, 1.0), n_samples=2, max_new_tokens=5, batch_size=3, template="{question}", progress=False
)


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Counts the prompts the engine is asked to generate (each call appends its batch size)."""
    calls: list[int] = []
    real = harness.flexrealign_engine

    def engine(model, tokenizer, cfg):
        run = real(model, tokenizer, cfg)

        def counting(prompts, lam, seed):
            calls.append(len(prompts))
            return run(prompts, lam, seed)

        return counting

    monkeypatch.setattr(harness, "flexrealign_engine", engine)
    return calls


def lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / GENERATIONS).read_text().splitlines()]


def test_resume_skips_finished_generations(tmp_path, specs, counted) -> None:
    per_problem = CFG.n_samples * (1 + len(CFG.lams))  # plain once, InRa per lam
    evaluate(specs, problems(3), CFG, tmp_path)
    assert sum(counted) == len(lines(tmp_path)) == 3 * per_problem
    counted.clear()
    evaluate(specs, problems(5), CFG, tmp_path)  # a bigger run: only the 2 new problems are generated
    assert sum(counted) == 2 * per_problem
    recs = lines(tmp_path)
    assert len(recs) == 5 * per_problem == len({record_key(r) for r in recs})
    counted.clear()
    rows = evaluate(specs, problems(5), CFG, tmp_path)  # nothing left to do
    assert counted == [] and len(lines(tmp_path)) == 5 * per_problem
    assert [r.name for r in rows] == ["plain", "inra@0", "inra@1"]
    assert all(r.samples == 5 * CFG.n_samples and r.problems == 5 for r in rows)


def test_crash_mid_run_then_resume(tmp_path, specs, monkeypatch, counted) -> None:
    real = harness.flexrealign_engine

    def crashing(model, tokenizer, cfg):
        run = real(model, tokenizer, cfg)
        state = {"n": 0}

        def once(prompts, lam, seed):
            state["n"] += 1
            if state["n"] > 1:
                raise RuntimeError("simulated crash")
            return run(prompts, lam, seed)

        return once

    monkeypatch.setattr(harness, "flexrealign_engine", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(specs, problems(4), CFG, tmp_path)
    assert len(lines(tmp_path)) == CFG.batch_size  # the first batch was written before the crash
    with (tmp_path / GENERATIONS).open("a") as f:
        f.write('{"model": "plain", "lam": null, "problem_id": "p3", "sam')  # killed mid-write
    monkeypatch.setattr(harness, "flexrealign_engine", real)
    evaluate(specs, problems(4), CFG, tmp_path)
    recs = lines(tmp_path)  # every line parses: the partial one was dropped
    assert len(recs) == 4 * CFG.n_samples * 3 == len({record_key(r) for r in recs})


def test_load_generations_tolerates_partial_last_line(tmp_path) -> None:
    path = tmp_path / GENERATIONS
    rec = {"model": "m", "lam": 0.5, "problem_id": "1", "sample": 0, "tokens": 3}
    path.write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n" + '{"model": "m", "la')
    done = load_generations(path)
    assert list(done) == [("m", 0.5, "1", 0)]
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 2


def test_records_and_outputs(tmp_path, specs) -> None:
    cfg = EvalConfig(**{**CFG.__dict__, "baseline": "plain"})
    rows = evaluate(specs, problems(2), cfg, tmp_path)
    rec = lines(tmp_path)[0]
    assert {"model", "lam", "problem_id", "sample", "text", "tokens", "correct", "finish_reason"} <= set(rec)
    assert rec["finish_reason"] in ("stop", "length") and isinstance(rec["correct"], bool)
    assert rows[0].token_reduction_pct == 0.0
    with (tmp_path / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [t["model"] for t in table] == ["plain", "inra", "inra"] and table[1]["lam"] == "0"
    assert "| inra | 1 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "accuracy_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics() -> None:
    rows = [
        Row("ref", "ref", None, 10, 80, 50.0, 200.0, 5.0),
        Row("inra", "inra", 1.0, 10, 80, 40.0, 50.0, 0.0),
    ]
    add_token_reduction(rows, "ref")
    assert rows[0].token_reduction_pct == 0.0 and rows[1].token_reduction_pct == 75.0
    add_token_reduction(rows, "inra@1")
    assert rows[0].token_reduction_pct == -300.0
    with pytest.raises(ValueError, match="baseline"):
        add_token_reduction(rows, "nope")


def test_cli_and_inra_detection(tmp_path, tok) -> None:
    from flexrealign.commands import eval as eval_cmd

    plain_dir, inra_dir = tmp_path / "plain", tmp_path / "inra"
    model = tiny_model("llama", seed=0, vocab_size=len(tok))
    model.save_pretrained(plain_dir)
    tok.save_pretrained(plain_dir)
    InRaModel.from_base(model, AdapterConfig()).save_pretrained(inra_dir, tokenizer=tok)
    assert (ModelSpec("p", path=str(plain_dir)).kind, ModelSpec("i", path=str(inra_dir)).kind) == (
        "plain",
        "inra",
    )
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": p.id, "question": p.question, "answer": p.answer}) + "\n"
                             for p in problems(3)))  # fmt: skip
    out = tmp_path / "out"
    argv = ["--model", f"base={plain_dir}", str(inra_dir), "--benchmark", str(bench), "--lam", "-0.5", "1",
            "--n-samples", "1", "--max-new-tokens", "4", "--template", "{question}", "--limit", "2",
            "--baseline", "base", "--out", str(out)]  # fmt: skip
    assert eval_cmd.run(argv) == 0
    names = [(r["model"], r["lam"]) for r in csv.DictReader((out / "results.csv").open())]
    assert names == [("base", "-"), ("inra", "-0.5"), ("inra", "1")]
    assert len(lines(out)) == 2 * 3


@pytest.mark.vllm
def test_vllm_engine_generates(tmp_path, tok) -> None:
    pytest.importorskip("vllm")
    path = tmp_path / "m"
    # vLLM's CPU attention needs a real head size (head_dim 8 is refused): 1 head of 128
    base = tiny_model("llama", vocab_size=len(tok), hidden_size=128, num_heads=1, num_kv_heads=1)
    InRaModel.from_base(base, AdapterConfig()).save_pretrained(path, tokenizer=tok)
    engine_args = dict(dtype="float32", max_model_len=256, max_num_seqs=16, kv_cache_memory_bytes=64 << 20)
    cfg = EvalConfig(
        **{
            **CFG.__dict__,
            "engine": "vllm",
            "n_samples": 1,
            "vllm_kwargs": {"enforce_eager": True, **engine_args},
        }
    )
    rows = evaluate([ModelSpec("m", kind="inra", path=str(path))], problems(2), cfg, tmp_path / "out")
    assert [r.name for r in rows] == ["m@0", "m@1"] and all(r.samples == 2 for r in rows)
    assert len(lines(tmp_path / "out")) == 4


def test_a_seeded_sample_depends_on_its_key_only(tmp_path, specs, monkeypatch) -> None:
    """Issue 11, kind 4. The example: an interrupted-and-resumed seeded run gave other texts for some
    (problem, sample) keys than an uninterrupted one. Own inputs: other batch sizes and a bigger run."""
    cfg = dataclasses.replace(CFG, temperature=1.0, max_new_tokens=6, lams=(0.5,))
    texts = lambda folder: {record_key(r): r["text"] for r in lines(folder)}  # noqa: E731
    evaluate(specs, problems(3), cfg, tmp_path / "whole")
    whole = texts(tmp_path / "whole")
    real = harness.flexrealign_engine

    def crashing(model, tokenizer, c):
        run, state = real(model, tokenizer, c), {"n": 0}

        def once(prompts, lam, seeds):
            state["n"] += 1
            if state["n"] == 2:
                raise RuntimeError("simulated crash")
            return run(prompts, lam, seeds)

        return once

    monkeypatch.setattr(harness, "flexrealign_engine", crashing)
    with pytest.raises(RuntimeError):
        evaluate(specs, problems(3), cfg, tmp_path / "resumed")
    monkeypatch.setattr(harness, "flexrealign_engine", real)
    evaluate(specs, problems(3), cfg, tmp_path / "resumed")
    assert texts(tmp_path / "resumed") == whole
    assert len(set(whole.values())) > len(whole) // 2  # sampled, not all alike
    for size in (1, 4):
        evaluate(specs, problems(3), dataclasses.replace(cfg, batch_size=size), tmp_path / f"b{size}")
        assert texts(tmp_path / f"b{size}") == whole
    evaluate(specs, problems(5), cfg, tmp_path / "bigger")  # other neighbours in every batch
    texts_of = texts(tmp_path / "bigger")
    assert {k: texts_of[k] for k in whole} == whole


def test_plot_keeps_a_label_on_the_baseline_apart_from_one_on_the_same_point(tmp_path, monkeypatch) -> None:
    """InRa at lam=0 is the reference itself: both points coincide, and their labels must not be drawn on top of
    each other (the demo's plot had "reference" and "lam=0" printed in one place)."""
    import matplotlib.axes

    from flexrealign.eval.results import plot_accuracy_vs_tokens

    offsets: dict[str, tuple] = {}
    real = matplotlib.axes.Axes.annotate

    def spy(self, text, xy, *args, **kwargs):
        offsets[text] = kwargs.get("xytext")
        return real(self, text, xy, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", spy)
    rows = [
        Row("reference", "ref", None, 10, 10, 80.0, 60.0, 0.0),
        Row("inra", "InRa", 0.0, 10, 10, 80.0, 60.0, 0.0),
    ]
    out = plot_accuracy_vs_tokens(rows, tmp_path / "p.png", baseline="reference")
    assert out.is_file() and out.stat().st_size > 0
    assert offsets["reference"] != offsets["lam=0"]
