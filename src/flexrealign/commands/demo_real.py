"""`flexrealign demo --real`: the real-model demo (see flexrealign.testbed.realdemo), kept apart from the testbed demo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flexrealign.commands._args import fail


def shared_dir() -> Path:
    """../shared beside the checkout, or $FLEXREALIGN_SHARED (the GSM8K questions come from there)."""
    if os.environ.get("FLEXREALIGN_SHARED"):
        return Path(os.environ["FLEXREALIGN_SHARED"])
    return Path(__file__).resolve().parents[3].parent / "shared"


def run_real(args) -> int:
    from flexrealign.commands.demo import quiet_hf_progress
    from flexrealign.conversion.gguf_convert import INSTALL_HINT, smollm2_gguf
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
    text = run_real_demo(out, cfg, shared)
    print(f"\n{text}\nResults folder: {out}")
    return 0
