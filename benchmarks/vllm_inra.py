"""vLLM-InRa (lam mixed across requests) vs plain vLLM on the base model: output tokens/s and KV-cache capacity.

Builds a random Qwen2-family model (the base) and an InRa checkpoint of it (perturbed adapter), then, in one
run and one engine at a time, serves each with the offline `LLM` API at 1 and 16 concurrent requests.
Every request generates exactly `--new-tokens` tokens (ignore_eos); the InRa requests cycle through
lam = -1, 0, 0.5, 1, 2. Both engines get the same KV-cache memory, so their token capacities compare
directly. Then, on the InRa engine at 16 concurrent requests, the thinking dial: requests mixing budgets,
minimums, think/answer schedules and lam (`DIAL`) against plain mixed lam, interleaved and repeated
(target: dial >= 0.9x plain). Prints tables and writes JSON.

    python benchmarks/vllm_inra.py                  # hidden 1024, 8 layers, vLLM's default compilation
    python benchmarks/vllm_inra.py --enforce-eager  # skips torch.compile: minutes less start-up on CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

LAMS = (-1.0, 0.0, 0.5, 1.0, 2.0)
DIAL = (  # extra_args of the dial mix (as benchmarks/serve.py): every kind of thinking control, and plain lam
    {"lam": 0.5},
    {"lam_think": -1.0, "lam_answer": 1.0, "thinking_token_budget": 16, "thinking_closing": "the end"},
    {"lam_think": 2.0, "lam_answer": 0.0, "min_thinking_tokens": 8},
    {"lam": 0.5, "thinking_token_budget": 8},
    {"lam_think": 0.0, "lam_answer": 1.0},
    {"lam": 1.0, "thinking_token_budget": 0},
)
RESULTS = Path(__file__).parent / "results" / "vllm_inra.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden-size", type=int, default=1024)
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument(
        "--num-heads", type=int, default=8, help="head_dim = hidden / heads; the CPU kernel wants 128"
    )
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=2816)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--adapter-layers", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument(
        "--sequential-requests", type=int, default=3, help="requests timed one after another at concurrency 1"
    )
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV-cache memory given to each engine")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--dial-repeats", type=int, default=3, help="interleaved repeats of dial vs plain lam")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def build_checkpoints(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    """Save the base model and its InRa checkpoint (both with a small tokenizer) under `root`."""
    import torch

    from flexrealign.vllm_plugin.tiny import tiny_inra_checkpoint

    config = dict(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
        num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, intermediate_size=args.intermediate_size,
        initializer_range=0.02, max_position_embeddings=4096,
    )  # fmt: skip
    torch_dtype = getattr(torch, args.dtype)
    base, inra = root / "base", root / "inra"
    model = tiny_inra_checkpoint(
        inra, "qwen2", base_path=base, adapter_layers=args.adapter_layers, perturb=0.02, **config
    )
    del model
    for folder in (base, inra):  # store in the serving dtype, as a real checkpoint would be
        _cast_checkpoint(folder, torch_dtype)
    return base, inra


def _cast_checkpoint(folder: Path, dtype) -> None:
    from safetensors.torch import load_file, save_file

    for f in folder.glob("*.safetensors"):
        save_file({k: v.to(dtype) for k, v in load_file(f).items()}, str(f), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def requests(
    args: argparse.Namespace, count: int, inra: bool, offset: int, dial: bool = False
) -> tuple[list, list]:
    """`count` prompts of random token ids (distinct, so no prefix-cache hits) and their sampling params."""
    import random

    from vllm import SamplingParams

    rng = random.Random(offset)
    prompts = [
        {"prompt_token_ids": [rng.randrange(10, 500) for _ in range(args.prompt_len)]} for _ in range(count)
    ]
    params = [
        SamplingParams(
            max_tokens=args.new_tokens,
            temperature=0.0,
            ignore_eos=True,
            detokenize=False,
            extra_args=(DIAL[(offset + i) % len(DIAL)] if dial else {"lam": LAMS[(offset + i) % len(LAMS)]})
            if inra
            else None,
        )  # fmt: skip
        for i in range(count)
    ]
    return prompts, params


def timed_generate(llm, prompts: list, params: list) -> tuple[int, float]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens, seconds


def measure(llm, args: argparse.Namespace, inra: bool) -> list[dict]:
    """Output tokens/s at each concurrency: `c` requests submitted together (c = 1: one after another)."""
    timed_generate(llm, *requests(args, 2, inra, offset=10_000))  # warm-up: first-call compilation, caches
    rows = []
    for c in args.concurrency:
        batches = [
            requests(args, c, inra, offset=1000 * c + i)
            for i in range(args.sequential_requests if c == 1 else 1)
        ]
        tokens, seconds = map(sum, zip(*(timed_generate(llm, *b) for b in batches), strict=True))
        rows.append(
            {
                "concurrency": c,
                "output_tokens": tokens,
                "seconds": round(seconds, 3),
                "output_tokens_per_s": round(tokens / seconds, 2),
            }
        )
    return rows


def measure_dial(llm, args: argparse.Namespace) -> dict:
    """Dial mix vs plain lam at 16 concurrent requests, interleaved; medians and their ratio."""
    import statistics

    rates: dict[str, list[float]] = {"plain": [], "dial": []}
    for rep in range(args.dial_repeats):
        for name in ("plain", "dial"):
            tokens, seconds = timed_generate(llm, *requests(args, 16, True, 50_000 + 100 * rep, dial=name == "dial"))
            rates[name].append(round(tokens / seconds, 2))
    plain, dial = statistics.median(rates["plain"]), statistics.median(rates["dial"])
    return {"plain_tok_s": rates["plain"], "dial_tok_s": rates["dial"], "dial_vs_plain": round(dial / plain, 3)}


def run_engine(path: Path, args: argparse.Namespace, inra: bool) -> dict:
    """Start one engine, measure it, report its KV-cache capacity and start-up time, shut it down."""
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(
        str(path), dtype=args.dtype, max_model_len=args.prompt_len + args.new_tokens + 64,
        max_num_seqs=max(args.concurrency), kv_cache_memory_bytes=int(args.kv_cache_gib * (1 << 30)),
        enforce_eager=args.enforce_eager, seed=0,
    )  # fmt: skip
    startup = time.perf_counter() - start
    kv = kv_capacity(llm)
    rows = measure(llm, args, inra)
    dial = measure_dial(llm, args) if inra else None
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return {"startup_s": round(startup, 1), **kv, "throughput": rows} | ({"dial": dial} if dial else {})


def kv_capacity(llm) -> dict:
    """KV-cache capacity: all blocks in tokens, and what vLLM logs ("KV cache size: N tokens").

    vLLM's log counts whole blocks per request: (blocks / blocks per max_model_len request) * max_model_len.
    """
    cfg = llm.llm_engine.vllm_config
    blocks, block_size = cfg.cache_config.num_gpu_blocks or 0, cfg.cache_config.block_size
    max_len = cfg.model_config.max_model_len
    per_request = -(-max_len // block_size)  # blocks one max_model_len request holds
    return {
        "kv_cache_blocks": blocks,
        "block_size": block_size,
        "kv_cache_tokens": blocks * block_size,
        "kv_cache_tokens_logged": int(blocks / per_request * max_len),
    }


def print_table(result: dict) -> None:
    base, inra = result["engines"]["base"], result["engines"]["inra"]
    print(f"\n{'concurrency':>11} | {'base tok/s':>10} | {'InRa tok/s':>10} | {'InRa/base':>9}")
    print("-" * 50)
    for b, i in zip(base["throughput"], inra["throughput"], strict=True):
        ratio = i["output_tokens_per_s"] / b["output_tokens_per_s"]
        print(
            f"{b['concurrency']:>11} | {b['output_tokens_per_s']:>10.1f} | {i['output_tokens_per_s']:>10.1f} | {ratio:>9.2f}"
        )
    for key, label in (("kv_cache_tokens", "KV tokens"), ("kv_cache_tokens_logged", "KV (logged)")):
        kv_b, kv_i = base[key], inra[key]
        ratio = f"{kv_i / kv_b:.3f}" if kv_b and kv_i else "n/a"
        print(f"{label:>11} | {kv_b!s:>10} | {kv_i!s:>10} | {ratio:>9}")
    print(f"{'start-up s':>11} | {base['startup_s']:>10} | {inra['startup_s']:>10} |")
    d = inra["dial"]
    print(f"\nthinking dial, InRa at 16 requests: plain lam {d['plain_tok_s']} tok/s, dial mix {d['dial_tok_s']} "
          f"tok/s -> {d['dial_vs_plain']}x (median; target >= 0.9x)")


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vllm_inra_bench_") as tmp:
        base_path, inra_path = build_checkpoints(args, Path(tmp))
        engines = {
            "base": run_engine(base_path, args, inra=False),
            "inra": run_engine(inra_path, args, inra=True),
        }
    L, n = args.num_layers, args.adapter_layers
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "lams": LAMS,
        "expected_kv_ratio": round(L / (2 * L + n), 4),  # KV per token: L layers (base) vs L + n + L (InRa)
        "engines": engines,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nexpected KV ratio L / (2L + n) = {result['expected_kv_ratio']}; JSON: {args.out}")


if __name__ == "__main__":
    main()
