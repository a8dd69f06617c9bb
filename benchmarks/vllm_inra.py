"""vLLM-InRa vs plain vLLM on the lam = 1 checkpoint: output tokens/s, KV-cache capacity, projection cost.

Builds a random Qwen2-family InRa checkpoint (perturbed adapter) and its plain lam = 1 twin (the same folder
without the `inra` entry, which plain vLLM serves as an ordinary L + n layer model). Both engines run at
once, and every measurement is repeated with the variants interleaved (rotated order), so that the shared
machine's drift hits them alike; the table gives medians and the spread (min..max) of the ratio to plain.
Variants at each concurrency: plain vLLM; InRa with lam cycling -1, 0, 0.5, 1, 2 ("mixed"); InRa with every
request at lam = 1; at lam = 0; and the thinking dial (`DIAL`: budgets, minimums, think/answer schedules and
lam, whose target is >= 0.9x mixed lam). Every request generates exactly `--new-tokens` tokens (ignore_eos). Both
engines get the same KV-cache memory, so their token capacities compare directly.

`--projection-check` also times, on this machine, one projection over 2N stacked rows against two over N
rows (the stacked forward's saving): if the CPU kernels cost the same per row either way, stacking cannot
beat two passes, and the ratio is bounded by that measurement.

    python benchmarks/vllm_inra.py --enforce-eager --dtype float32   # hidden 1024, 8 layers, no compile
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
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
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every measurement")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--no-prefix-caching", action="store_true", help="serve with prefix caching off")
    p.add_argument("--projection-check", action="store_true", help="time 1 x (2N, D) vs 2 x (N, D) matmuls")
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
    plain = root / "lam1"  # the InRa checkpoint without its `inra` entry: the L + n layer lam = 1 model
    shutil.copytree(inra, plain)
    cfg = json.loads((plain / "config.json").read_text())
    del cfg["inra"]
    (plain / "config.json").write_text(json.dumps(cfg, indent=2))
    return plain, inra


def _cast_checkpoint(folder: Path, dtype) -> None:
    from safetensors.torch import load_file, save_file

    for f in folder.glob("*.safetensors"):
        save_file({k: v.to(dtype) for k, v in load_file(f).items()}, str(f), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def requests(args: argparse.Namespace, count: int, lam: str | None, offset: int) -> tuple[list, list]:
    """`count` prompts of random token ids (distinct, so no prefix-cache hits) and their sampling params.

    `lam`: None for plain vLLM, "mixed" to cycle through LAMS, or one value for every request.
    """
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
            extra_args=_extra_args(lam, offset + i),
        )  # fmt: skip
        for i in range(count)
    ]
    return prompts, params


def _extra_args(lam: str | None, i: int) -> dict | None:
    if lam is None:
        return None
    if lam == "dial":
        return DIAL[i % len(DIAL)]
    return {"lam": LAMS[i % len(LAMS)] if lam == "mixed" else float(lam)}


def timed_generate(llm, prompts: list, params: list) -> tuple[int, float]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens, seconds


def tokens_per_s(llm, args: argparse.Namespace, c: int, lam: str | None, seed: int) -> float:
    """Output tokens/s of `c` requests submitted together (c = 1: `--sequential-requests` in a row)."""
    batches = [
        requests(args, c, lam, offset=seed + 1000 * i)
        for i in range(args.sequential_requests if c == 1 else 1)
    ]
    tokens, seconds = map(sum, zip(*(timed_generate(llm, *b) for b in batches), strict=True))
    return tokens / seconds


# plain vLLM; InRa with mixed lam, all at 1, all at 0; and the thinking-dial mix (DIAL; target >= 0.9x mixed)
VARIANTS = (("plain", None), ("inra", "mixed"), ("inra", "1"), ("inra", "0"), ("inra", "dial"))


def measure(engines: dict, args: argparse.Namespace) -> dict[str, dict[int, list[float]]]:
    """tok/s of every variant at every concurrency, `--repeats` times, the variants' order rotated."""
    for name, llm in engines.items():  # warm-up: first-call allocations and caches
        timed_generate(llm, *requests(args, 2, None if name == "plain" else "mixed", offset=10**6))
    runs: dict[str, dict[int, list[float]]] = {_key(v): {c: [] for c in args.concurrency} for v in VARIANTS}
    for rep in range(args.repeats):
        for c in args.concurrency:
            order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
            for engine, lam in order:
                rate = tokens_per_s(engines[engine], args, c, lam, seed=10_000 * rep + 100 * c)
                runs[_key((engine, lam))][c].append(round(rate, 2))
                print(f"  rep {rep} c={c} {_key((engine, lam))}: {rate:.1f} tok/s", flush=True)
    return runs


def _key(variant: tuple[str, str | None]) -> str:
    engine, lam = variant
    return engine if lam is None else f"inra_lam_{lam}"


def start_engine(path: Path, args: argparse.Namespace) -> tuple[object, float]:
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(
        str(path), dtype=args.dtype, max_model_len=args.prompt_len + args.new_tokens + 64,
        max_num_seqs=max(args.concurrency), kv_cache_memory_bytes=int(args.kv_cache_gib * (1 << 30)),
        enforce_eager=args.enforce_eager, enable_prefix_caching=not args.no_prefix_caching, seed=0,
    )  # fmt: skip
    return llm, round(time.perf_counter() - start, 1)


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


def summarize(runs: dict, concurrency: list[int]) -> list[dict]:
    """Per concurrency and variant: median tok/s, and the ratio to plain (median, min, max over repeats)."""
    rows = []
    for c in concurrency:
        plain = runs["plain"][c]
        for key, by_c in runs.items():
            ratios = [x / p for x, p in zip(by_c[c], plain, strict=True)]  # same repeat: same conditions
            rows.append(
                {
                    "concurrency": c, "variant": key, "median_tok_s": statistics.median(by_c[c]),
                    "ratio_median": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
                    "ratio_max": round(max(ratios), 3), "tok_s": by_c[c],
                }
            )  # fmt: skip
    return rows


def print_table(result: dict) -> None:
    print(f"\n{'c':>3} | {'variant':<12} | {'tok/s (median)':>14} | {'ratio to plain':>14} | {'spread':>13}")
    print("-" * 68)
    for r in result["rows"]:
        spread = f"{r['ratio_min']:.2f}..{r['ratio_max']:.2f}"
        print(
            f"{r['concurrency']:>3} | {r['variant']:<12} | {r['median_tok_s']:>14.1f} | "
            f"{r['ratio_median']:>14.2f} | {spread:>13}"
        )
    plain, inra = result["engines"]["plain"], result["engines"]["inra"]
    for key, label in (("kv_cache_tokens", "KV tokens"), ("kv_cache_tokens_logged", "KV (logged)")):
        kv_p, kv_i = plain[key], inra[key]
        ratio = f"{kv_i / kv_p:.3f}" if kv_p and kv_i else "n/a"
        print(f"{label:>12}: plain {kv_p}, InRa {kv_i}, ratio {ratio}")
    print(f"  start-up s: plain {plain['startup_s']}, InRa {inra['startup_s']}")
    for row in result.get("projection_check", []):
        print(
            f"  projection {row['name']} N={row['rows']}: 1 x 2N {row['stacked_ms']:.3f} ms, "
            f"2 x N {row['two_ms']:.3f} ms, stacked / two = {row['ratio']:.2f}"
        )


def projection_check(args: argparse.Namespace) -> list[dict]:
    """Median time of one (2N, D) @ (D, F) projection vs two (N, D) ones, for this model's projections."""
    import torch

    D, F, hd = args.hidden_size, args.intermediate_size, args.hidden_size // args.num_heads
    shapes = {"qkv": (D, D + 2 * args.num_kv_heads * hd), "o": (D, D), "gate_up": (D, 2 * F), "down": (F, D)}
    dtype, rows, linear = getattr(torch, args.dtype), [], torch.nn.functional.linear
    for name, (d_in, d_out) in shapes.items():
        w = torch.randn(d_out, d_in, dtype=dtype) * 0.02
        for n in args.concurrency:
            x = torch.randn(2 * n, d_in, dtype=dtype)
            stacked = _median_ms(lambda x=x, w=w: linear(x, w))
            two = _median_ms(lambda x=x, w=w, n=n: (linear(x[:n], w), linear(x[n:], w)))
            rows.append(
                {"name": name, "rows": n, "stacked_ms": stacked, "two_ms": two, "ratio": stacked / two}
            )
    return rows


def _median_ms(fn, reps: int = 51) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vllm_inra_bench_") as tmp:
        plain_path, inra_path = build_checkpoints(args, Path(tmp))
        engines, info = {}, {}
        for name, path in (("plain", plain_path), ("inra", inra_path)):
            engines[name], startup = start_engine(path, args)
            info[name] = {"startup_s": startup, **kv_capacity(engines[name])}
        runs = measure(engines, args)
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()
        del engines
        gc.collect()
    L, n = args.num_layers, args.adapter_layers
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "lams": LAMS,
        "expected_kv_ratio": round((L + n) / (2 * L + n), 4),  # KV per token: L + n (plain) vs L + n + L
        "engines": info,
        "rows": summarize(runs, args.concurrency),
        "projection_check": projection_check(args) if args.projection_check else [],
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
    print(
        f"\nexpected KV ratio (L + n) / (2L + n) = {result['expected_kv_ratio']}; load {load_before} -> "
        f"{result['machine']['loadavg_after']}; JSON: {args.out}"
    )


if __name__ == "__main__":
    main()
