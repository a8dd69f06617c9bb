"""Where a decode step's time goes, inside vLLM's worker: plain vLLM vs InRa at mixed lam.

`vllm_inra.py` bounds a mixed-lam step by the extra matmuls alone. This script shows the rest: it wraps, in
the worker of each engine (run one at a time, so neither shares its core with the other's idle worker), the
model's `forward` and `compute_logits`, every `Attention` layer, and the InRa logits processor's `apply`
(the fusion), then times decode steps (a step with more tokens than the largest concurrency is a prefill,
not counted).

    python benchmarks/vllm_step_profile.py --enforce-eager --dtype float32   # the same flags as vllm_inra.py

Prints, per concurrency, ms per decode step: the whole step (from outside, as vllm_inra.py measures it),
the model forward, the attention inside it, compute_logits (the lm_head), the fusion, and the rest (the
sampler, the scheduler and the engine's own loop). Needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 (set here).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
from pathlib import Path

from vllm_inra import RESULTS as INRA_RESULTS
from vllm_inra import build_checkpoints, parse_args, requests, run_variant, start_engine, timed_generate

PARTS = ("forward", "attention", "compute_logits", "fusion")
RESULTS = Path(__file__).parent / "results" / "vllm_step_profile.json"


def install_timers(model, max_rows: int) -> None:
    """Run in the worker: add each PARTS call's time while the step is a decode step (at most `max_rows`
    scheduled tokens; a prefill step has more)."""
    import time
    from collections import defaultdict

    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

    from flexrealign.vllm_plugin import logits

    model._step_ms, model._decoding = defaultdict(float), False

    def wrap(obj, attr: str, part: str) -> None:
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            if part == "forward":  # positions: (N,), one per scheduled token
                positions = kwargs["positions"] if "positions" in kwargs else args[1]
                model._decoding = positions.shape[-1] <= max_rows
                model._step_ms["calls"] += model._decoding
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            if model._decoding:
                model._step_ms[part] += 1000 * (time.perf_counter() - start)
            return out

        setattr(obj, attr, timed)

    wrap(model, "forward", "forward")
    wrap(model, "compute_logits", "compute_logits")
    for module in model.modules():
        if isinstance(module, AttentionLayerBase):
            wrap(module, "forward", "attention")
    if logits._live_processor is not None and logits._live_processor() is not None:
        wrap(logits._live_processor(), "apply", "fusion")


def read_timers(model) -> dict[str, float]:
    """Run in the worker: ms per decode forward of each part since the last read; resets."""
    got, calls = dict(model._step_ms), model._step_ms.get("calls", 0) or 1
    model._step_ms.clear()
    return {part: got.get(part, 0.0) / calls for part in PARTS}


def profile_engine(path: Path, args, lam: str | None) -> dict[int, dict[str, float]]:
    """Medians over `--repeats` runs per concurrency of the step and its parts, ms per decode step."""
    llm, _ = start_engine(path, args)
    timed_generate(llm, *requests(args, 2, lam, offset=10**6))  # warm-up
    llm.apply_model(functools.partial(install_timers, max_rows=max(args.concurrency)))  # a decode step's rows
    out = {}
    for c in args.concurrency:
        runs = []
        for rep in range(args.repeats):
            llm.apply_model(functools.partial(read_timers))
            step = run_variant(llm, args, c, lam, seed=10_000 * rep + 100 * c)["step_ms"]
            parts = llm.apply_model(functools.partial(read_timers))[0]
            runs.append({"step": step, **parts})
        out[c] = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        shown = out[c]
        shown["other"] = round(
            shown["step"] - shown["forward"] - shown["compute_logits"] - shown["fusion"], 2
        )
    llm.llm_engine.engine_core.shutdown()
    return out


def main() -> None:
    args = parse_args()
    if args.prompt_len <= max(args.concurrency):
        raise SystemExit(
            "--prompt-len must exceed the largest --concurrency (that is how prefill steps are told apart)"
        )
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # apply_model ships the timers to the worker
    with tempfile.TemporaryDirectory(prefix="vllm_step_profile_") as tmp:
        plain_path, inra_path = build_checkpoints(args, Path(tmp))
        result = {
            "plain": profile_engine(plain_path, args, None),
            "inra_mixed": profile_engine(inra_path, args, "mixed"),
        }
    cols = ("step", "forward", "attention", "compute_logits", "fusion", "other")
    print(
        f"\n{'c':>3} | {'engine':<10} | " + " | ".join(f"{c:>14}" for c in cols) + "   (ms per decode step)"
    )
    for c in args.concurrency:
        for name, by_c in result.items():
            print(f"{c:>3} | {name:<10} | " + " | ".join(f"{by_c[c][k]:>14.2f}" for k in cols))
    out = RESULTS if args.out == INRA_RESULTS else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, **result}, indent=2))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
