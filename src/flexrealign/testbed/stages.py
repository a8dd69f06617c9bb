"""The testbed's training stages, each run by the product's own trainer, exactly as a user would run it.

- reference, aligned: plain SFT with TRL's `SFTTrainer` (flexrealign adds nothing to plain SFT);
- TrRa students and TrRa-iter: `TrRaConfig` + `TrRaTrainer`, saved with `flexrealign.training.trra.iterate.save_model`
  (what `flexrealign trra` runs);
- the InRa adapter: `InRaTrainConfig` + `train_inra` (what `flexrealign inra-train` runs).

The testbed only supplies the data (as prompt/completion rows), the step counts and the learning rates. Every
trainer is seeded (`seed`, `data_seed`), so a stage is a pure function of its inputs on a given machine.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from flexrealign.core.hf_compat import checkpointing_field
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_config

Example = tuple[str, str]  # (question, completion text)


def trainer_fields(steps: int, batch_size: int, lr: float, seed: int, show: bool) -> dict:
    """What every stage's Trainer config shares: seeded data order, a warm-up then cosine decay to 10% of `lr`,
    no checkpoints (the recipe saves each finished model itself) and the Trainer's progress bar."""
    return dict(
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0.1,  # a float in [0, 1): a share of max_steps
        weight_decay=0.0,
        adam_beta2=0.98,
        max_grad_norm=1.0,
        seed=seed,
        data_seed=seed,
        bf16=False,  # explicit: TRL turns bf16 on when it is left unset
        # TRL's default recomputes every layer: pure cost for a model this small (the field's name depends on
        # the transformers version)
        **{checkpointing_field(): False},
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, steps // 4),
        disable_tqdm=not show,
        dataloader_num_workers=0,
    )


def sft_rows(tokenizer: PreTrainedTokenizerFast, examples: Sequence[Example]) -> Dataset:
    """prompt/completion rows for TRL's SFTTrainer: the prompt already rendered by the chat template (with the
    generation prompt), so the tokens are exactly those TrRa trains on: template(prompt) + completion + EOS."""
    render = lambda q: tokenizer.apply_chat_template(  # noqa: E731
        [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
    )
    return Dataset.from_dict(
        {"prompt": [render(q) for q, _ in examples], "completion": [c for _, c in examples]}
    )


def trra_rows(examples: Sequence[Example]) -> Dataset:
    """prompt/completion rows as `flexrealign trra` reads them (the prompt is the user's message)."""
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": q}] for q, _ in examples],
            "completion": [c for _, c in examples],
        }
    )


def new_model(tokenizer, hidden: int, layers: int, heads: int, seed: int) -> PreTrainedModel:
    """A tiny Llama with a seeded initialisation."""
    torch.manual_seed(seed)
    config = tiny_config(
        "llama", vocab_size=len(tokenizer), hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=256,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def train_sft(
    model: PreTrainedModel, tokenizer, examples: Sequence[Example], fields: dict, out: Path
) -> PreTrainedModel:
    """Full-weight SFT with TRL's SFTTrainer (completion tokens only); saves the model and tokenizer to `out`."""
    from trl import SFTConfig, SFTTrainer

    from flexrealign.core.checkpoint import atomic_dir

    with tempfile.TemporaryDirectory(prefix="sft-") as work:
        args = SFTConfig(output_dir=work, **fields)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=sft_rows(tokenizer, examples), processing_class=tokenizer
        )
        trainer.train()
    model = trainer.model.eval()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
    # as `from_pretrained(out)` would name it, so that what is built on it (an InRa checkpoint records its base)
    # is the same whether this run trained the model or a later run loads it
    model.config.name_or_path = str(out)
    return model


def train_trra(
    ref: PreTrainedModel,
    aligned: PreTrainedModel,
    tokenizer,
    examples: Sequence[Example],
    lam: float,
    fields: dict,
    out: Path,
    trra_options: dict | None = None,
) -> PreTrainedModel:
    """TrRa (paper §3.1, Eq. 6): a fresh copy of `ref` distilled toward softmax(lam * z_aligned + (1 - lam) * z_ref)
    by `TrRaTrainer`; saved to `out` like `flexrealign trra` saves it. `trra_options` are extra TrRaConfig fields."""
    from flexrealign.training.trra import TrRaConfig, TrRaTrainer
    from flexrealign.training.trra.iterate import save_model

    with tempfile.TemporaryDirectory(prefix="trra-") as work:
        args = TrRaConfig(output_dir=work, lam=lam, **fields, **(trra_options or {}))
        trainer = TrRaTrainer(
            # The student starts as the reference (paper §3.1); the copy is trainable even when `ref` was frozen
            # as a teacher by an earlier stage.
            model=copy.deepcopy(ref).train().requires_grad_(True),
            ref_model=ref,
            aligned_model=aligned,
            args=args,
            train_dataset=trra_rows(examples),
            processing_class=tokenizer,
        )
        trainer.train()
        save_model(trainer, out)
    return trainer.model.eval()


def train_inra_adapter(
    ref: PreTrainedModel,
    tokenizer,
    examples: Sequence[Example],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    out: Path,
    adapter_init: str = "identity",
) -> InRaModel:
    """An InRa layer adapter (paper §3.2) on a frozen copy of `ref`, SFT through the aligned path by `train_inra`
    (what `flexrealign inra-train --method sft` runs); the checkpoint and `adapter/` are written to `out`."""
    from flexrealign.training.inra_train import InRaTrainConfig, train_inra

    config = InRaTrainConfig(
        base_model="", method="sft", output_dir=str(out), adapter_init=adapter_init, learning_rate=lr,
        max_steps=steps, per_device_train_batch_size=batch_size, warmup_ratio=0.1, seed=seed,
        use_cpu=not torch.cuda.is_available(), logging_steps=max(1, steps // 4), max_length=1024,
    )  # fmt: skip
    base = copy.deepcopy(ref)
    return train_inra(
        config, base=base, tokenizer=tokenizer, train_dataset=sft_rows(tokenizer, examples)
    ).model
