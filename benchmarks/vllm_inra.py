"""vLLM-InRa vs plain vLLM on the lam = 1 checkpoint: output tokens/s, KV-cache capacity, and the matmul bound.

Builds a random Qwen2-family InRa checkpoint (perturbed adapter) and its plain lam = 1 twin (the same folder
without the `inra` entry, which plain vLLM serves as an ordinary L + n layer model). Both engines run at
once, and every measurement is repeated with the variants interleaved (rotated order), so that the shared
machine's drift hits them alike, and after a pause (`IDLE_S`) in which the other engine's worker stops
spinning; the table gives medians and the spread (min..max) of the ratio to plain.
Variants at each concurrency: plain vLLM; InRa with lam cycling -1, 0, 0.5, 1, 2 ("mixed"); InRa with every
request at lam = 1; at lam = 0; and the thinking dial (`DIAL`: budgets, minimums, think/answer schedules and
lam, whose target is >= 0.9x mixed lam); then adaptive thinking, on prompts that open a think block: every
request at lam 0.5 ("fixed"), at lam auto (a made-up calibration's random probe splits the requests between
its two lams), and with a thinking budget of half the new tokens landing "soft" or "hard" (targets: auto and
soft >= 0.9x fixed). Every request generates exactly `--new-tokens` tokens (ignore_eos). Both engines get the same KV-cache memory, so their token capacities compare directly.

Every run is also split into prefill and decode: the same variant's prompts (fresh ones, so the prefix cache
does not hit) are run once more with max_tokens = 1, and (full - that) / (new tokens - 1) is the decode step.

The matmul bound: stacking reads each weight once, but a matmul over 2N rows is cheaper than two over N rows
only where the kernel is bound by memory, not by compute. So the benchmark times, inside plain vLLM's own
worker (its oneDNN kernels and its CPU binding), one original layer's projections and the lm_head over N
and 2N rows. A mixed-lam step must do at least those extra matmuls: the plain step plus them is the fastest
any two-path forward with both paths' logits can be, and it bounds the attainable ratio (prefill, decode and
end to end, from the plain engine's measured times). Attention, per path, and fusion come on top.

    python benchmarks/vllm_inra.py --enforce-eager --dtype float32   # hidden 1024, 8 layers, no compile

Needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 (set here) to ship the bound's timing function to vLLM's worker.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import shutil
import statistics
import sys
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
ADAPTIVE = ("fixed", "auto", "soft", "hard")  # see `_extra_args`
CURVE = [(-1.0, 40.0), (0.0, 30.0), (0.5, 20.0), (1.0, 12.0), (2.0, 8.0)]  # made up: lam -> thinking tokens
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
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def build_checkpoints(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    """Save the base model and its InRa checkpoint (both with a small tokenizer) under `root`."""
    import torch

    # The tiny checkpoint builder is a test fixture (tests/tiny_checkpoints.py), kept out of the package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_checkpoints import tiny_inra_checkpoint

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
    save_calibration(inra, args.hidden_size)
    from transformers import AutoTokenizer

    args.think_id = AutoTokenizer.from_pretrained(inra).convert_tokens_to_ids("<think>")
    return plain, inra


def save_calibration(folder: Path, hidden_size: int) -> None:
    """A made-up calibration (CURVE) whose auto policy's random probe sends requests to both of its lams."""
    import torch

    from flexrealign.decoding import calibration as c
    from flexrealign.decoding.adaptive import AutoPolicy

    curve = [c.CurvePoint(lam, t, t + 8, 50.0, 8) for lam, t in CURVE]
    weights = tuple((torch.randn(hidden_size, generator=torch.Generator().manual_seed(0)) * 0.05).tolist())
    policy = AutoPolicy(weights, 0.0, 0.5, lam_easy=2.0, lam_hard=-1.0)
    c.save_calibration(folder, c.Calibration(curve, c.choose_efforts(curve, False), {}, policy))


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
    think = [args.think_id] if lam in ADAPTIVE else []  # the adaptive mixes think from the first token
    prompts = [
        {"prompt_token_ids": [rng.randrange(10, 500) for _ in range(args.prompt_len)] + think}
        for _ in range(count)
    ]
    params = [
        SamplingParams(
            max_tokens=args.new_tokens,
            temperature=0.0,
            ignore_eos=True,
            detokenize=False,
            extra_args=_extra_args(lam, offset + i, args.new_tokens),
        )  # fmt: skip
        for i in range(count)
    ]
    return prompts, params


def _extra_args(lam: str | None, i: int, new_tokens: int) -> dict | None:
    if lam is None:
        return None
    if lam == "dial":
        return DIAL[i % len(DIAL)]
    if lam in ADAPTIVE:
        budget = (
            {"thinking_token_budget": new_tokens // 2, "thinking_landing": lam}
            if lam in ("soft", "hard")
            else {}
        )
        return {"lam": "auto" if lam == "auto" else 0.5} | budget
    return {"lam": LAMS[i % len(LAMS)] if lam == "mixed" else float(lam)}


def timed_generate(llm, prompts: list, params: list) -> tuple[int, float]:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens, seconds


def run_variant(llm, args: argparse.Namespace, c: int, lam: str | None, seed: int) -> dict[str, float]:
    """`c` requests submitted together (c = 1: `--sequential-requests` in a row): output tok/s, and the split
    into prefill (per batch, s) and decode (ms per step), from a second run of fresh prompts at max_tokens 1."""
    runs = args.sequential_requests if c == 1 else 1
    tokens = full_s = first_s = 0.0
    for i in range(runs):
        n, s = timed_generate(llm, *requests(args, c, lam, offset=seed + 1000 * i))
        prompts, params = requests(args, c, lam, offset=seed + 1000 * i + 500)  # new prompts: no cache hit
        for p in params:
            p.max_tokens = 1
        tokens, full_s, first_s = tokens + n, full_s + s, first_s + timed_generate(llm, prompts, params)[1]
    step_ms = 1000 * (full_s - first_s) / (runs * (args.new_tokens - 1))
    return {"tok_s": tokens / full_s, "prefill_s": first_s / runs, "step_ms": step_ms}


# plain vLLM; InRa with mixed lam, all at 1, all at 0; and the thinking-dial mix (DIAL; target >= 0.9x mixed)
VARIANTS = (("plain", None), ("inra", "mixed"), ("inra", "1"), ("inra", "0"), ("inra", "dial"),
            *(("inra", m) for m in ADAPTIVE))  # fmt: skip
METRICS = ("tok_s", "prefill_s", "step_ms")
# vLLM's workers spin (sched_yield) for 1 s after their last step before they sleep, and both engines' workers
# are bound to the same core: a variant timed at once after the other engine's would share its core.
IDLE_S = 1.5


def measure(engines: dict, args: argparse.Namespace) -> dict[str, dict[int, dict[str, list[float]]]]:
    """Every variant at every concurrency, `--repeats` times, the variants' order rotated."""
    for name, llm in engines.items():  # warm-up: first-call allocations and caches
        timed_generate(llm, *requests(args, 2, None if name == "plain" else "mixed", offset=10**6))
    runs = {_key(v): {c: {m: [] for m in METRICS} for c in args.concurrency} for v in VARIANTS}
    for rep in range(args.repeats):
        for c in args.concurrency:
            order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
            for engine, lam in order:
                time.sleep(IDLE_S)  # the other engine's worker busy-waits this long after its last step
                got = run_variant(engines[engine], args, c, lam, seed=10_000 * rep + 100 * c)
                for m in METRICS:
                    runs[_key((engine, lam))][c][m].append(round(got[m], 4))
                print(f"  rep {rep} c={c} {_key((engine, lam))}: {got['tok_s']:.1f} tok/s, prefill "
                      f"{got['prefill_s']:.3f} s, step {got['step_ms']:.1f} ms", flush=True)  # fmt: skip
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


# ----------------------------------------------------------------------------------------- matmul bound
def _matmul_ms(model, rows: list[int], reps: int = 21) -> dict[int, dict[str, float]]:
    """Run in plain vLLM's worker: median ms of one decoder layer's projections and of the lm_head, per row
    count. Self-contained (shipped to the worker by value)."""
    import statistics
    import time

    import torch

    layer = model.model.layers[-1]
    projs = (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
    dtype = next(model.parameters()).dtype

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    out = {}
    with torch.inference_mode():
        for n in rows:
            xs = [torch.randn(n, p.input_size, dtype=dtype) for p in projs]  # (n, in) per projection
            h = torch.randn(n, model.config.hidden_size, dtype=dtype)  # (n, D)
            out[n] = {
                "layer": median_ms(lambda xs=xs: [p(x) for p, x in zip(projs, xs, strict=True)]),
                "lm_head": median_ms(lambda h=h: model.compute_logits(h)),
            }
    return out


def matmul_bound(plain_llm, args: argparse.Namespace, runs: dict) -> list[dict]:
    """Per concurrency c: the extra matmul time of a mixed step (prefill and decode) over a plain one, and the
    ratios to plain it bounds. Plain: L + n layers over N rows and the lm_head over the c sampled rows. Mixed:
    n adapter layers over N, L layers over 2N (stacked), the lm_head over 2c rows (both paths' logits)."""
    L = args.num_layers
    want = {r for c in args.concurrency for r in (c, 2 * c, c * args.prompt_len, 2 * c * args.prompt_len)}
    timer = functools.partial(_matmul_ms, rows=sorted(want))  # picklable, unlike a lambda
    ms = plain_llm.apply_model(timer)[0]
    T, rows = args.new_tokens, []
    for c in args.concurrency:
        N = c * args.prompt_len
        extra_lm_head = ms[2 * c]["lm_head"] - ms[c]["lm_head"]  # prefill and decode sample c rows alike
        extra_step = L * (ms[2 * c]["layer"] - ms[c]["layer"]) + extra_lm_head
        extra_prefill = L * (ms[2 * N]["layer"] - ms[N]["layer"]) + extra_lm_head
        S = statistics.median(runs["plain"][c]["step_ms"])  # plain decode step, ms
        P = 1000 * statistics.median(runs["plain"][c]["prefill_s"])  # plain prefill, ms
        rows.append(
            {
                "concurrency": c, "layer_ms": {"N": ms[c]["layer"], "2N": ms[2 * c]["layer"]},
                "lm_head_ms": {"N": ms[c]["lm_head"], "2N": ms[2 * c]["lm_head"]},
                "extra_step_ms": round(extra_step, 2), "extra_prefill_ms": round(extra_prefill, 1),
                "bound_step": round(S / (S + extra_step), 3),
                "bound_prefill": round(P / (P + extra_prefill), 3),
                "bound_tok_s": round((P + (T - 1) * S) / (P + extra_prefill + (T - 1) * (S + extra_step)), 3),
            }
        )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------- report
def summarize(runs: dict, concurrency: list[int]) -> list[dict]:
    """Per concurrency and variant: medians, and ratios to plain (median, min, max over repeats) of tok/s
    (end to end), of the prefill speed and of the decode speed (plain time / variant time)."""
    rows = []
    for c in concurrency:
        plain = runs["plain"][c]
        for key, by_c in runs.items():
            row = {"concurrency": c, "variant": key}
            for m in METRICS:
                mine = by_c[c][m]
                ratios = [x / p if m == "tok_s" else p / x for x, p in zip(mine, plain[m], strict=True)]
                row[m] = {"median": round(statistics.median(mine), 4), "runs": mine}
                row[f"ratio_{m}"] = {
                    "median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                    "max": round(max(ratios), 3),
                }  # fmt: skip
            rows.append(row)
    return rows


def adaptive_ratios(runs: dict, concurrency: list[int]) -> list[dict]:
    """Per concurrency: tok/s of lam auto and of the soft and hard landings over the fixed lam's, per repeat
    (the same rotation of variants), as median (min..max)."""
    rows = []
    for c in concurrency:
        fixed = runs[_key(("inra", "fixed"))][c]["tok_s"]
        for mix in ("auto", "soft", "hard"):
            ratios = [x / f for x, f in zip(runs[_key(("inra", mix))][c]["tok_s"], fixed, strict=True)]
            rows.append({"concurrency": c, "variant": f"{mix} / fixed", "median": round(statistics.median(ratios), 3),
                         "min": round(min(ratios), 3), "max": round(max(ratios), 3)})  # fmt: skip
    return rows


def print_table(result: dict) -> None:
    print(
        f"\n{'c':>3} | {'variant':<15} | {'tok/s':>7} | {'ratio (min..max)':>17} | {'prefill':>7} | {'decode':>7}"
    )
    print("-" * 72)
    for r in result["rows"]:
        t = r["ratio_tok_s"]
        spread = f"{t['median']:.2f} ({t['min']:.2f}..{t['max']:.2f})"
        print(
            f"{r['concurrency']:>3} | {r['variant']:<15} | {r['tok_s']['median']:>7.1f} | {spread:>17} | "
            f"{r['ratio_prefill_s']['median']:>7.2f} | {r['ratio_step_ms']['median']:>7.2f}"
        )
    for b in result["bound"]:
        print(
            f"matmul bound c={b['concurrency']}: a mixed step needs +{b['extra_step_ms']} ms of matmuls (layer "
            f"{b['layer_ms']['N']:.2f} -> {b['layer_ms']['2N']:.2f} ms, lm_head {b['lm_head_ms']['N']:.2f} -> "
            f"{b['lm_head_ms']['2N']:.2f} ms), prefill +{b['extra_prefill_ms']} ms: mixed ratio <= "
            f"{b['bound_tok_s']} (prefill <= {b['bound_prefill']}, decode <= {b['bound_step']})"
        )
    for r in result["adaptive"]:
        print(f"adaptive c={r['concurrency']}: {r['variant']} tok/s {r['median']:.3f} ({r['min']:.3f}..{r['max']:.3f}) "
              "(target for auto and soft: >= 0.9)")  # fmt: skip
    plain, inra = result["engines"]["plain"], result["engines"]["inra"]
    for key, label in (("kv_cache_tokens", "KV tokens"), ("kv_cache_tokens_logged", "KV (logged)")):
        kv_p, kv_i = plain[key], inra[key]
        ratio = f"{kv_i / kv_p:.3f}" if kv_p and kv_i else "n/a"
        print(f"{label:>12}: plain {kv_p}, InRa {kv_i}, ratio {ratio}")
    print(f"  start-up s: plain {plain['startup_s']}, InRa {inra['startup_s']}")


def main() -> None:
    args = parse_args()
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # apply_model ships `_matmul_ms` to the worker
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vllm_inra_bench_") as tmp:
        plain_path, inra_path = build_checkpoints(args, Path(tmp))
        engines, info = {}, {}
        for name, path in (("plain", plain_path), ("inra", inra_path)):
            engines[name], startup = start_engine(path, args)
            info[name] = {"startup_s": startup, **kv_capacity(engines[name])}
        runs = measure(engines, args)
        bound = matmul_bound(engines["plain"], args, runs)
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
        "adaptive": adaptive_ratios(runs, args.concurrency),
        "bound": bound,
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
