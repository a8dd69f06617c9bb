"""Per-step cost of the product's trainers against a bare PyTorch loop, on the testbed's tiny model (CPU).

The demo once trained with private loops because the Hugging Face Trainer was thought too slow per step. This
measures it: the same model, data, batch size and optimiser, run N steps (a) by a bare loop (collate, forward,
backward, clip, AdamW), (b) by TRL's SFTTrainer and (c) by TrRaTrainer against a bare TrRa loop using the
same loss function. Repeats are interleaved, so machine load hits both sides alike; the ratio is what counts.

    python benchmarks/trainer_overhead.py [--steps 40] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flexrealign.testbed.stages import new_model, sft_rows, trainer_fields, trra_rows
from flexrealign.testbed.task import make_problems
from flexrealign.testbed.tokenizer import build_tokenizer
from flexrealign.training.trra.data import CompletionCollator, completion_positions, prepare_dataset
from flexrealign.training.trra.loss import trra_loss


def bare_loop(model, batches, lr: float, loss_fn) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    for b in batches:
        loss = loss_fn(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


def sft_loss(model, b):
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def make_trra_loss(ref, aligned, lam):
    def loss(student, b):
        mask = torch.zeros_like(b["labels"], dtype=torch.bool)  # (B, T)
        mask[:, :-1] = completion_positions(b["labels"])
        with torch.no_grad():
            h_r = ref.model(b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            h_a = aligned.model(b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        h_s = student.model(b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        w = (student.lm_head.weight, aligned.lm_head.weight, ref.lm_head.weight)
        return trra_loss(h_s, w[0], h_a, w[1], h_r, w[2], lam, mask)

    return loss


def timed_trainer(make) -> float:
    trainer = make()
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--keep-freed-memory", action="store_true", help="raise glibc's mmap/trim thresholds")
    ap.add_argument(
        "--json",
        default=str(Path(__file__).resolve().parents[1] / "benchmarks/results/trainer_overhead.json"),
    )
    a = ap.parse_args()
    if a.keep_freed_memory:
        from flexrealign.testbed.malloc import keep_freed_memory

        print(f"keep_freed_memory: {keep_freed_memory()}")
    from trl import SFTConfig, SFTTrainer

    from flexrealign.training.trra import TrRaConfig, TrRaTrainer

    tok = build_tokenizer()
    probs = make_problems(a.steps * a.batch_size, 1)
    examples = [(p.question, p.long) for p in probs]
    ds = prepare_dataset(trra_rows(examples), tok, None)
    coll = CompletionCollator(tok.pad_token_id)
    batches = [coll([ds[i] for i in range(s * a.batch_size, (s + 1) * a.batch_size)]) for s in range(a.steps)]
    base, aligned = new_model(tok, 64, 2, 4, 0), new_model(tok, 64, 2, 4, 1)
    fields = trainer_fields(a.steps, a.batch_size, 1e-3, 0, False) | {"logging_steps": a.steps}
    times: dict[str, list[float]] = {k: [] for k in ("bare_sft", "SFTTrainer", "bare_trra", "TrRaTrainer")}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(a.repeats):
            times["bare_sft"].append(bare_loop(copy.deepcopy(base).train(), batches, 1e-3, sft_loss))
            times["SFTTrainer"].append(timed_trainer(lambda: SFTTrainer(
                model=copy.deepcopy(base), args=SFTConfig(output_dir=work, **fields),
                train_dataset=sft_rows(tok, examples), processing_class=tok)))  # fmt: skip
            ref = copy.deepcopy(base).eval().requires_grad_(False)
            loss = make_trra_loss(ref, aligned.eval().requires_grad_(False), 2.0)
            times["bare_trra"].append(bare_loop(copy.deepcopy(base).train(), batches, 1e-3, loss))
            times["TrRaTrainer"].append(timed_trainer(lambda ref=ref: TrRaTrainer(
                model=copy.deepcopy(base).train().requires_grad_(True), ref_model=ref, aligned_model=aligned,
                args=TrRaConfig(output_dir=work, lam=2.0, **fields), train_dataset=ds, processing_class=tok)))  # fmt: skip
    ms = {k: 1000 * statistics.median(v) / a.steps for k, v in times.items()}
    print(f"| loop | ms/step (median of {a.repeats}) |\n|---|---|")
    for k, v in ms.items():
        print(f"| {k} | {v:.1f} |")
    print(f"SFTTrainer / bare: {ms['SFTTrainer'] / ms['bare_sft']:.2f}x; "
          f"TrRaTrainer / bare: {ms['TrRaTrainer'] / ms['bare_trra']:.2f}x")  # fmt: skip
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"ms_per_step": ms, "raw_s": times, "args": vars(a)}, f, indent=2)


if __name__ == "__main__":
    main()
