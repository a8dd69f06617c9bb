"""Decode speed and memory: HF generate vs our loop vs InRa (lam = 0, 0.5, 1) vs DeRa, in one run.

Speed: all variants live in one process (sharing the base weights) and each is timed `--repeats` times,
the variants interleaved in a rotated order, so that a shared machine's drift hits them alike. Each
variant's speed is reported as the ratio to our loop on the base model (`loop_base`) *within the same
repeat*: the median over repeats, its spread (min..max), and "within noise" when the spread straddles 1.
The targets the issue sets (InRa lam = 0 >= 0.97 and lam = 1 >= 0.93 of loop_base) are judged on the median.

Memory: each variant then runs once in a fresh subprocess, so its peak memory (max RSS) is its own
(`--no-memory` skips that pass). Prints a table and writes JSON.

    python benchmarks/decode.py                 # Qwen2.5-0.5B shape (random weights) and the tiny model
    python benchmarks/decode.py --shapes tiny   # quick
    python benchmarks/decode.py --shapes qwen3-moe-small   # a mixture-of-experts decoder
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {
    # Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads / 2 KV heads, 151,936-row vocabulary, tied embeddings
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                         num_kv_heads=2, intermediate_size=4864, tie_word_embeddings=True),
    # Qwen3-30B-A3B's layout scaled to a CPU: 64 experts (top 8) of width 256 per layer, qk-norm, head_dim 64
    "qwen3-moe-small": dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=1024, num_layers=12,
                            num_heads=16, num_kv_heads=4, head_dim=64, intermediate_size=3072, num_experts=64,
                            num_experts_per_tok=8, moe_intermediate_size=256, mlp_only_layers=[]),
    "tiny": dict(model_type="llama", vocab_size=512, hidden_size=64, num_layers=5, num_heads=8, num_kv_heads=4,
                 intermediate_size=172),
}  # fmt: skip
VARIANTS = [
    "hf_generate",
    "loop_base",
    "inra_lam0",
    "inra_lam1",
    "inra_lam0.5",
    "dera_lam0.5",
]
TARGETS = {"inra_lam0": 0.97, "inra_lam1": 0.93}  # of loop_base, on the median (issue 13)


def build(shape: str, variant: str, dtype: torch.dtype, device: str, base=None, inra=None):
    """The model a variant decodes with (random weights; the adapter perturbed so both paths differ).

    `base` / `inra` reuse models already built (the in-process timing pass shares one base model).
    """
    from flexrealign.core.dera import DeRa
    from flexrealign.core.inra import InRaModel
    from flexrealign.core.tiny import tiny_model

    if base is None:
        torch.manual_seed(0)
        base = tiny_model(**SHAPES[shape]).to(device=device, dtype=dtype)
    if variant in ("hf_generate", "loop_base"):
        return base
    if inra is None:
        inra = InRaModel.from_base(base)
        with torch.no_grad():
            for p in inra.adapter.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    if variant.startswith("dera"):
        return DeRa(base, inra.to_aligned_model())
    return inra.eval()


class FixedTokenizer:
    """Just enough tokenizer for token-level benchmarking: prompts are given as token ids."""

    eos_token_id = None
    pad_token_id = 0
    chat_template = None

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))

    def get_added_vocab(self) -> dict[str, int]:
        return {}  # no think markers: generate's thinking control finds none and stays off

    def get_vocab(self) -> dict[str, int]:
        return {}


def make_prompts(shape: str, batch: int, prompt_len: int) -> list[str]:
    gen = torch.Generator().manual_seed(1)
    vocab = SHAPES[shape]["vocab_size"]
    return [
        " ".join(map(str, torch.randint(3, vocab, (prompt_len,), generator=gen).tolist()))
        for _ in range(batch)
    ]


def decode_once(model, variant: str, prompts: list[str], n: int, device: str) -> float:
    """Seconds to generate `n` tokens for every prompt (greedy, EOS ignored)."""
    from flexrealign.decoding.generation import generate

    lam = None if variant in ("hf_generate", "loop_base") else float(variant.split("lam")[1].split("_")[0])
    start = time.perf_counter()
    if variant == "hf_generate":
        ids = torch.tensor([[int(t) for t in p.split()] for p in prompts], device=device)
        with torch.inference_mode():
            model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                pad_token_id=0,
            )  # fmt: skip
    else:
        vocab = model.config.vocab_size
        generate(model, FixedTokenizer(vocab), prompts, lam=lam, max_new_tokens=n, ignore_eos=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(shape: str, batch: int, variants: list[str], args: argparse.Namespace) -> dict:
    """variant -> seconds per repeat, all variants in this process, order rotated every repeat."""
    dtype = getattr(torch, args.dtype)
    base = build(shape, "loop_base", dtype, args.device)
    inra = build(shape, "inra_lam1", dtype, args.device, base=base)
    models = {v: build(shape, v, dtype, args.device, base=base, inra=inra) for v in variants}
    prompts = make_prompts(shape, batch, args.prompt_len)
    for v in variants:  # warm-up: allocator, kernels
        decode_once(models[v], v, prompts, 4, args.device)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
            seconds[v].append(decode_once(models[v], v, prompts, args.new_tokens, args.device))
        print(f"  {shape} b={batch} repeat {rep + 1}/{args.repeats}", flush=True)
    return seconds


def summarize(shape: str, batch: int, seconds: dict, new_tokens: int) -> list[dict]:
    """Per variant: median tok/s and its ratio to loop_base within each repeat (median, min, max)."""
    rows = []
    for v, secs in seconds.items():
        ratios = [b / s for s, b in zip(secs, seconds["loop_base"], strict=True)]  # speed ratio
        lo, med, hi = min(ratios), statistics.median(ratios), max(ratios)
        rows.append(
            {
                "shape": shape, "batch": batch, "variant": v, "tokens_per_s": batch * new_tokens / statistics.median(secs),
                "ratio_median": med, "ratio_min": lo, "ratio_max": hi, "within_noise": v != "loop_base" and lo <= 1 <= hi,
                "target": TARGETS.get(v), "meets_target": None if v not in TARGETS else med >= TARGETS[v], "seconds": secs,
            }
        )  # fmt: skip
    return rows


def peak_memory(
    shape: str, variant: str, batch: int, new_tokens: int, prompt_len: int, dtype: str, device: str
) -> dict:
    """Worker: build one variant in this fresh process, decode once, report max RSS growth (MB)."""
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build(shape, variant, getattr(torch, dtype), device).eval()
    decode_once(model, variant, make_prompts(shape, batch, prompt_len), new_tokens, device)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024
    return {"shape": shape, "variant": variant, "batch": batch, "peak_mb": peak_mb}


def run_in_subprocess(**kwargs) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(kwargs)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(rows: list[dict]) -> str:
    lines = [
        "| shape | batch | variant | tok/s (median) | ratio to loop_base: median | min..max | judged | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        judged = "within noise" if r["within_noise"] else ("" if r["variant"] == "loop_base" else "apart")
        if r["target"] is not None:
            judged += f"; target {r['target']}: {'met' if r['meets_target'] else 'NOT met'}"
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else "-"
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['variant']} | {r['tokens_per_s']:.1f} | {r['ratio_median']:.3f} | "
            f"{r['ratio_min']:.2f}..{r['ratio_max']:.2f} | {judged} | {peak} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats of every variant")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory pass")
    parser.add_argument("--out", default="benchmarks/results/decode.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(peak_memory(**json.loads(args.worker))))
        return
    variants = ["loop_base"] + [v for v in args.variants if v != "loop_base"]
    load_before, rows = os.getloadavg(), []
    for shape in args.shapes:
        for batch in args.batches:
            rows += summarize(shape, batch, time_interleaved(shape, batch, variants, args), args.new_tokens)
    if not args.no_memory:
        for r in rows:
            kw = dict(shape=r["shape"], variant=r["variant"], batch=r["batch"], new_tokens=4)
            r["peak_mb"] = run_in_subprocess(
                **kw, prompt_len=args.prompt_len, dtype=args.dtype, device=args.device
            )["peak_mb"]
    print(report(rows))
    meta = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
        "new_tokens": args.new_tokens, "prompt_len": args.prompt_len, "dtype": args.dtype, "repeats": args.repeats,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"load {load_before} -> {meta['loadavg_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
