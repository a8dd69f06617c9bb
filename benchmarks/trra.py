"""TrRa step time and peak memory against plain SFT, on a tiny model with Qwen's real 151,936-row vocabulary.

Variants, each in a fresh subprocess so its peak memory (max RSS) is its own:
    sft          TRL's SFTTrainer on the student (chunked cross-entropy; the baseline all ratios refer to)
    sft_hf       transformers' Trainer with the model's own cross-entropy on full logits (a second SFT reference)
    trra         TrRaTrainer, both teachers run on the fly
    trra_cache   TrRaTrainer reading the teachers' hidden states from a teacher cache (written once, timed apart)
    naive        TrRa with full (B, T, V) logits of all three models (what the chunked loss avoids)
All train the same rows (1,024-2,048 tokens, Qwen's tokenizer ids) in the same order; the first `--warmup` steps
are not timed. Prints a table of ratios to SFT and writes JSON.

    python benchmarks/trra.py                          # ~20 minutes on 2 busy CPU cores
    python benchmarks/trra.py --steps 8 --repeats 2    # steadier numbers
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "tokenizers" / "qwen3"
VARIANTS = ("sft", "sft_hf", "trra", "trra_cache", "naive")
PROMPT_TOKENS = 64
LAM = 2.0


def rss_mb() -> float:
    """Current resident set size of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_assets(workdir: Path, hidden: int, rows: int, seed: int) -> None:
    """Tiny Qwen3 reference + perturbed 'aligned' model with Qwen's tokenizer, and tokenised rows, on disk."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from flexrealign.core.tiny import tiny_model

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    shape = dict(vocab_size=151936, hidden_size=hidden, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=2 * hidden, head_dim=hidden // 4)  # fmt: skip
    for name, scale in (("ref", 0.0), ("aligned", 1.0)):
        model = tiny_model("qwen3", seed=0, **shape)
        with torch.no_grad():  # the aligned model: the reference with its head moved
            model.lm_head.weight.add_(
                torch.randn_like(model.lm_head.weight) * scale * model.lm_head.weight.std()
            )
        model.save_pretrained(workdir / name)
        tok.save_pretrained(workdir / name)
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(rows):
        length = int(torch.randint(1024, 2049, (1,), generator=g))
        ids = torch.randint(0, len(tok), (length,), generator=g).tolist()
        data.append(
            {"input_ids": ids, "labels": [-100] * PROMPT_TOKENS + ids[PROMPT_TOKENS:], "example_index": i}
        )
    Dataset.from_list(data).save_to_disk(str(workdir / "rows"))


def config(variant: str, workdir: Path, steps: int, batch: int):
    from flexrealign.training.trra import TrRaConfig

    return TrRaConfig(
        output_dir=str(workdir / f"out-{variant}"),
        ref_model=str(workdir / "ref"),
        aligned_model=str(workdir / "aligned"),
        lam=LAM,
        teacher_dtype="float32",
        teacher_cache=str(workdir / "cache") if variant == "trra_cache" else None,
        max_length=2048,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )


def naive_trainer_class():
    """TrRaTrainer whose loss builds the full (B, T, V) logits of the student and of both teachers."""
    from flexrealign.training.trra import TrRaTrainer
    from flexrealign.training.trra.data import completion_positions

    class NaiveTrRaTrainer(TrRaTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = completion_positions(inputs["labels"])  # (B, T-1)
            rows = slice(None, self._num_tokens)
            ids, attn = inputs["input_ids"], inputs["attention_mask"]
            student = model(input_ids=ids, attention_mask=attn).logits[:, :-1, rows].float()  # (B, T-1, V)
            with torch.no_grad():
                z = {
                    p: t(input_ids=ids, attention_mask=attn).logits[:, :-1, rows].float()
                    for p, t in self._teachers.items()
                }
                teacher = (LAM * z["aligned"] + (1 - LAM) * z["ref"]).log_softmax(-1)  # (B, T-1, V)
            log_ps = student.log_softmax(-1)  # (B, T-1, V)
            per_token = (log_ps.exp() * (log_ps - teacher)).sum(-1)  # (B, T-1)
            return per_token[mask].sum() / mask.sum()

    return NaiveTrRaTrainer


def make_trainer(variant: str, cfg, rows, callbacks):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from flexrealign.training.trra import TrRaTrainer
    from flexrealign.training.trra.data import CompletionCollator
    from flexrealign.training.trra.models import load_model, load_tokenizer

    if variant == "sft":
        sft_args = {k: getattr(cfg, k) for k in ("output_dir", "max_length", "per_device_train_batch_size",
                    "max_steps", "learning_rate", "logging_steps", "save_strategy", "report_to", "bf16",
                    "gradient_checkpointing", "use_cpu", "disable_tqdm", "seed")}  # fmt: skip
        student = load_model(cfg.ref_model, "student", "float32")
        data = Dataset.from_dict({"input_ids": rows["input_ids"], "labels": rows["labels"]})
        tok = load_tokenizer(cfg.ref_model, "ref")
        return SFTTrainer(
            student, SFTConfig(**sft_args), train_dataset=data, processing_class=tok, callbacks=callbacks
        )
    if variant == "sft_hf":
        from transformers import Trainer, TrainingArguments

        hf_args = {k: getattr(cfg, k) for k in ("output_dir", "per_device_train_batch_size", "max_steps",
                   "learning_rate", "logging_steps", "save_strategy", "report_to", "bf16", "gradient_checkpointing",
                   "use_cpu", "disable_tqdm", "seed")}  # fmt: skip
        student = load_model(cfg.ref_model, "student", "float32")
        pad = CompletionCollator(pad_token_id=0)

        def collate(features: list[dict]) -> dict:
            return {k: v for k, v in pad(features).items() if k != "example_index"}

        hf_args["remove_unused_columns"] = False  # the collator needs example_index, then drops it
        return Trainer(
            student,
            TrainingArguments(**hf_args),
            data_collator=collate,
            train_dataset=rows,
            callbacks=callbacks,
        )
    trainer_class = naive_trainer_class() if variant == "naive" else TrRaTrainer
    return trainer_class(args=cfg, train_dataset=rows, callbacks=callbacks)


def worker(variant: str, workdir: Path, steps: int, warmup: int, batch: int) -> dict:
    """Train `steps` steps of one variant in this process; time steps past `warmup`, report peak RSS."""
    from datasets import load_from_disk
    from transformers import TrainerCallback

    base = rss_mb()  # after imports, before models and data
    rows = load_from_disk(str(workdir / "rows"))
    if variant == "cache":  # the one-off teacher cache for trra_cache, timed on its own
        from flexrealign.training.trra.teacher_cache import build_teacher_cache

        start = time.perf_counter()
        build_teacher_cache(config("trra_cache", workdir, steps, batch), rows.select(range(steps * batch)))
        return {"variant": variant, "seconds": time.perf_counter() - start}

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    trainer = make_trainer(
        variant, config(variant, workdir, steps, batch), rows.select(range(steps * batch)), [StepTimer()]
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "variant": variant,
        "step_s": statistics.median(times[warmup:]),
        "step_times_s": times,
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base,
        "first_loss": losses[0],
    }


def run_worker(variant: str, args: argparse.Namespace, workdir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--workdir", str(workdir), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    sft = results["sft"]
    lines = [
        f"{'variant':<11} {'step s':>8} {'x SFT':>6} {'peak RSS MB':>12} {'x SFT':>6} {'above base MB':>14} {'x SFT':>6}"
    ]
    for name in VARIANTS:
        r = results[name]
        above, sft_above = r["peak_rss_mb"] - r["base_rss_mb"], sft["peak_rss_mb"] - sft["base_rss_mb"]
        lines.append(
            f"{name:<11} {r['step_s']:>8.2f} {r['step_s'] / sft['step_s']:>6.2f} {r['peak_rss_mb']:>12.0f} "
            f"{r['peak_rss_mb'] / sft['peak_rss_mb']:>6.2f} {above:>14.0f} {above / sft_above:>6.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=4, help="training steps per variant (rows = steps x batch)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument(
        "--batch", type=int, default=1, help="rows per step (the naive variant needs ~10 GB per row)"
    )
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny model")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per variant (interleaved); the fastest counts"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "trra.json"))
    parser.add_argument("--worker", choices=(*VARIANTS, "cache"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.workdir), args.steps, args.warmup, args.batch)))
        return
    if not TOKENIZER.exists():
        sys.exit(f"needs the Qwen tokenizer at {TOKENIZER}")
    with tempfile.TemporaryDirectory(prefix="trra-bench-") as tmp:
        workdir = Path(tmp)
        build_assets(workdir, args.hidden, args.steps * args.batch, seed=0)
        cache = run_worker("cache", args, workdir)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(
            args.repeats
        ):  # interleaved, so a burst of load on the machine hits every variant alike
            for variant in VARIANTS:
                runs[variant].append(run_worker(variant, args, workdir))
    results = {v: min(rs, key=lambda r: r["step_s"]) | {"runs": rs} for v, rs in runs.items()}
    print(table(results))
    print(
        f"teacher cache for {args.steps * args.batch} rows: {cache['seconds']:.1f} s (once per dataset, any lam)"
    )
    report = {
        "setup": vars(args) | {"vocab_rows": 151936, "tokenizer_tokens": 151669, "lam": LAM, "torch_threads": torch.get_num_threads()},
        "cache_seconds": cache["seconds"],
        "results": results,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
