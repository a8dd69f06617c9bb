"""Decode speed and memory: HF generate vs our loop vs InRa (lam = 0, 0.5, 1) vs DeRa, in one run.

Each variant runs in a fresh subprocess so its peak memory (max RSS) is its own. Results are printed as a
table of ratios to Hugging Face `generate` on the base model and written as JSON.

    python benchmarks/decode.py                 # Qwen2.5-0.5B shape (random weights) and the tiny model
    python benchmarks/decode.py --shapes tiny   # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {
    # Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads / 2 KV heads, 151,936-row vocabulary, tied embeddings
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                         num_kv_heads=2, intermediate_size=4864, tie_word_embeddings=True),
    "tiny": dict(model_type="llama", vocab_size=512, hidden_size=64, num_layers=5, num_heads=8, num_kv_heads=4,
                 intermediate_size=172),
}  # fmt: skip
VARIANTS = [
    "hf_generate",
    "loop_base",
    "inra_lam0",
    "inra_lam1",
    "inra_lam0.5_sequential",
    "inra_lam0.5_concat",
    "dera_lam0.5",
]


def build(shape: str, variant: str, dtype: torch.dtype, device: str):
    """The model a variant decodes with (random weights; the adapter perturbed so both paths differ)."""
    from flexrealign.dera import DeRa
    from flexrealign.inra import InRaModel
    from flexrealign.tiny import tiny_model

    base = tiny_model(**SHAPES[shape]).to(device=device, dtype=dtype)
    if variant in ("hf_generate", "loop_base"):
        return base
    inra = InRaModel.from_base(base)
    with torch.no_grad():
        for p in inra.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    if variant.startswith("dera"):
        return DeRa(base, inra.to_aligned_model())
    inra.path_batching = "concat" if variant.endswith("concat") else "sequential"
    return inra


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


def time_variant(
    shape: str, variant: str, batch: int, new_tokens: int, prompt_len: int, dtype: str, device: str
) -> dict:
    from flexrealign.generation import generate

    torch.manual_seed(0)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build(shape, variant, getattr(torch, dtype), device).eval()
    vocab = SHAPES[shape]["vocab_size"]
    prompts = [
        " ".join(str(t) for t in torch.randint(3, vocab, (prompt_len,)).tolist()) for _ in range(batch)
    ]
    lam = None if variant in ("hf_generate", "loop_base") else float(variant.split("lam")[1].split("_")[0])

    def once(n: int) -> float:
        start = time.perf_counter()
        if variant == "hf_generate":
            ids = torch.tensor([[int(t) for t in p.split()] for p in prompts], device=device)
            with torch.inference_mode():
                model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )
        else:
            generate(model, FixedTokenizer(vocab), prompts, lam=lam, max_new_tokens=n, ignore_eos=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once(4)  # warm-up: allocator, kernels
    seconds = min(once(new_tokens) for _ in range(2))
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024
    return {
        "shape": shape,
        "variant": variant,
        "batch": batch,
        "tokens_per_s": batch * new_tokens / seconds,
        "seconds": seconds,
        "peak_mb": peak_mb,
    }


def run_in_subprocess(**kwargs) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(kwargs)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(rows: list[dict]) -> str:
    lines = [
        "| shape | batch | variant | tok/s | ratio to hf_generate | peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = next(
            x
            for x in rows
            if x["shape"] == r["shape"] and x["batch"] == r["batch"] and x["variant"] == "hf_generate"
        )
        r["ratio_to_hf_generate"] = r["tokens_per_s"] / ref["tokens_per_s"]
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['variant']} | {r['tokens_per_s']:.1f} | {r['ratio_to_hf_generate']:.2f} | {r['peak_mb']:.0f} |"
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
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--out", default="benchmarks/results/decode.json")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(time_variant(**json.loads(args.worker))))
        return
    rows = []
    for shape in args.shapes:
        for batch in args.batches:
            for variant in ["hf_generate"] + [v for v in args.variants if v != "hf_generate"]:
                rows.append(
                    run_in_subprocess(
                        shape=shape,
                        variant=variant,
                        batch=batch,
                        new_tokens=args.new_tokens,
                        prompt_len=args.prompt_len,
                        dtype=args.dtype,
                        device=args.device,
                    )
                )
                print(
                    f"  {shape} b={batch} {variant}: {rows[-1]['tokens_per_s']:.1f} tok/s, {rows[-1]['peak_mb']:.0f} MB",
                    flush=True,
                )
    table = report(rows)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "new_tokens": args.new_tokens,
        "prompt_len": args.prompt_len,
        "dtype": args.dtype,
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
