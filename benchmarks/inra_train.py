"""Training cost of the InRa layer adapter vs full fine-tuning and PEFT LoRA (the paper's Table 6, in small).

One run, one model (a randomly initialised Qwen2: hidden 512, 8 layers, vocab 8k), one batch shape: for each
method, the median wall time of a full training step (forward, backward, AdamW step) and the number of trainable
parameters. LoRA follows the paper's baseline: PEFT LoRA on every linear layer of the base. The methods take
their steps in turn (round-robin), so a busy shared CPU slows them alike.

    python benchmarks/inra_train.py                          # CPU: batch 4 x 128, about 2-3 minutes
    python benchmarks/inra_train.py --seq_len 256 --steps 20 # GPU

Prints a table and writes benchmarks/results/inra_train.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from flexrealign.core.tiny import tiny_model
from flexrealign.training.inra_train import InRaTrainConfig, build_inra_model

MODEL = dict(
    vocab_size=8192, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408
)
RESULTS = Path(__file__).parent / "results" / "inra_train.json"
Method = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]


def fresh_base(device: str) -> nn.Module:
    return tiny_model("qwen2", seed=0, **MODEL).to(device).train()


def full_finetune(device: str) -> Method:
    model = fresh_base(device).requires_grad_(True)
    return model, lambda ids: model(ids, labels=ids).loss


def peft_lora(device: str, r: int) -> Method:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(fresh_base(device), LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    return model, lambda ids: model(input_ids=ids, labels=ids).loss


def inra(device: str, adapter_type: str, r: int = 8) -> Method:
    config = InRaTrainConfig(adapter_type=adapter_type, lora_r=r, lora_alpha=2 * r)
    model = build_inra_model(fresh_base(device), config).train()
    return model, lambda ids: model(ids, lam=1.0, labels=ids).loss  # lam = 1: the path being trained


METHODS: dict[str, Callable[[str], Method]] = {
    "full fine-tuning": full_finetune,
    "LoRA r=8 (all linear)": lambda d: peft_lora(d, 8),
    "LoRA r=128 (all linear)": lambda d: peft_lora(d, 128),
    "InRa layer adapter (1 layer)": lambda d: inra(d, "layer"),
    "InRa LoRA adapter r=8": lambda d: inra(d, "lora", 8),
}


def step_fn(model: nn.Module, loss_fn: Callable, device: str) -> Callable[[torch.Tensor], float]:
    """One timed training step: forward + backward + AdamW update of the trainable tensors only."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(ids: torch.Tensor) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss_fn(ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def measure(args: argparse.Namespace) -> list[dict]:
    """Round-robin over the methods, one step each per round, so background load hits every method alike."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, MODEL["vocab_size"], (args.batch, args.seq_len), generator=gen).to(args.device)
    built = {name: make(args.device) for name, make in METHODS.items()}
    steps = {name: step_fn(model, loss_fn, args.device) for name, (model, loss_fn) in built.items()}
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for round_ in range(args.warmup + args.steps):
        for name, step in steps.items():
            seconds = step(ids)
            if round_ >= args.warmup:
                times[name].append(seconds)
        print(f"  round {round_ + 1}/{args.warmup + args.steps} done", flush=True)
    rows = []
    for name, (model, _) in built.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(dict(method=name, trainable_params=trainable, step_s_median=statistics.median(times[name]),
                         step_s_all=times[name]))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (allocator, caches)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128, help="tokens per sequence (256 on a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    total_base = sum(p.numel() for p in fresh_base("cpu").parameters())
    rows = measure(args)
    for row in rows:
        row["trainable_pct"] = 100.0 * row["trainable_params"] / total_base
        row["speedup_vs_full"] = rows[0]["step_s_median"] / row["step_s_median"]
    print_table(rows, total_base, args)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    report = dict(
        benchmark="inra_train",
        model=dict(model_type="qwen2", **MODEL, base_params=total_base),
        batch=args.batch,
        seq_len=args.seq_len,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        device_name=device_name,
        torch_threads=torch.get_num_threads(),
        platform=platform.platform(),
        torch=torch.__version__,
        rows=rows,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


def print_table(rows: list[dict], total_base: int, args: argparse.Namespace) -> None:
    print(f"\nTraining step on {args.device}: qwen2 hidden 512, 8 layers, vocab 8k ({total_base:,} params), "
          f"batch {args.batch} x {args.seq_len} tokens, median of {args.steps} steps")  # fmt: skip
    head = f"{'method':<30} {'trainable':>12} {'% of base':>10} {'s/step':>8} {'vs full':>8}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['method']:<30} {r['trainable_params']:>12,} {r['trainable_pct']:>9.2f}% "
            f"{r['step_s_median']:>8.3f} {r['speedup_vs_full']:>7.2f}x"
        )


if __name__ == "__main__":
    main()
