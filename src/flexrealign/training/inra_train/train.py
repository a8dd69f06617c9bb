"""Train only the InRa layer adapter with TRL's SFTTrainer or DPOTrainer (or the TrRa trainer), then save.

The trainers receive `InRaPathView`s of one InRaModel: the policy is the aligned path (lam = 1) and, for DPO, the
reference is the adapter-less path (lam = 0) of the same object. The base weights are frozen (requires_grad is
False), so the optimizer only ever sees adapter tensors; `check_optimizer_params` proves it before training.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from flexrealign.conversion.loading import load_plain, load_tokenizer
from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.fusion import REF
from flexrealign.core.hf_compat import checkpointing_field
from flexrealign.core.inra import InRaModel
from flexrealign.training.distributed import fsdp_on_cpu
from flexrealign.training.inra_train.config import InRaTrainConfig
from flexrealign.training.inra_train.lora import add_lora_, merge_lora_
from flexrealign.training.inra_train.views import InRaPathView

if TYPE_CHECKING:  # `datasets` is imported only when data is loaded: building a model does not need it
    from datasets import Dataset

ADAPTER_SUBDIR = "adapter"


@dataclass
class InRaTrainResult:
    """The trained model (LoRA already merged), the trainer's final metrics and its log history."""

    model: InRaModel
    metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)


def load_base(config: InRaTrainConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `config.base_model` (a folder, a Hub name or a .gguf file) and its tokenizer, by the one loader."""
    return load_plain(config.base_model, config.dtype), load_tokenizer(config.base_model)


def load_train_dataset(config: InRaTrainConfig) -> Dataset:
    """`config.dataset`: a local .json/.jsonl/.parquet file or a Hub dataset (name, config, split)."""
    from flexrealign.training.data_prep import load_any_dataset

    return load_any_dataset(config.dataset, config.dataset_config, config.dataset_split, config.max_samples)


def build_inra_model(base: PreTrainedModel, config: InRaTrainConfig) -> InRaModel:
    """Wrap `base` with a fresh adapter; for adapter_type=lora only the rank-r updates are trainable."""
    torch.manual_seed(config.seed)  # the kaiming ablation draws its weights from the global generator
    model = InRaModel.from_base(base, AdapterConfig(config.num_adapter_layers, config.adapter_init))
    if config.adapter_type == "lora":
        add_lora_(model.adapter, config.lora_r, config.lora_alpha)
    if config.bf16:
        # Updates as small as lr 5e-7 vanish in bf16 weights, so the trainable tensors stay in fp32 (master
        # weights) while autocast runs the matmuls in bf16; `train_inra` casts them back to the base dtype to save.
        for p in model.adapter.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


# A mixture-of-experts adapter trains on the task loss alone (flexrealign.core.families, item 4): TRL would add the
# router's load-balancing loss, which balances expert use in pretraining, to a layer that starts as an
# identity and sees only the adapter's data.
NO_ROUTER_LOSS = 0.0


def trainer_kwargs(config: InRaTrainConfig) -> dict:
    """Arguments every TRL config gets; checkpoints are off because `save_inra` writes the result atomically."""
    return dict(
        output_dir=config.output_dir or tempfile.mkdtemp(prefix="inra-train-"),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        bf16=config.bf16,  # explicit: TRL turns bf16 on when it is left unset
        **{checkpointing_field(): config.gradient_checkpointing},
        use_cpu=config.use_cpu,
        logging_steps=config.logging_steps,
        seed=config.seed,
        save_strategy="no",
        report_to=[],
    )


def make_sft_trainer(
    model: InRaModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, config: InRaTrainConfig
) -> Trainer:
    """TRL's SFTTrainer on the aligned path; the loss is the lam = 1 model's (completion-only for pairs)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**trainer_kwargs(config), router_aux_loss_coef=NO_ROUTER_LOSS)
    with fsdp_on_cpu():  # after the config, which rebuilds accelerate's process state
        return SFTTrainer(
            model=InRaPathView(model), args=args, train_dataset=dataset, processing_class=tokenizer
        )


def make_dpo_trainer(
    model: InRaModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, config: InRaTrainConfig
) -> Trainer:
    """TRL's DPOTrainer; the reference policy is the lam = 0 view of the same model, so no second base copy."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**trainer_kwargs(config), beta=config.beta, router_aux_loss_coef=NO_ROUTER_LOSS)
    with fsdp_on_cpu():
        return DPOTrainer(
            model=InRaPathView(model),
            ref_model=InRaPathView(model, REF),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )


def make_trra_trainer(
    model: InRaModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, config: InRaTrainConfig
) -> Trainer:
    """The TrRa trainer with the adapter as student and the base itself as the reference teacher."""
    from flexrealign.training.inra_train.trra import InRaTrRaTrainer
    from flexrealign.training.trra import TrRaConfig

    args = TrRaConfig(**trainer_kwargs(config), lam=config.lam, aligned_model=config.aligned_model)
    return InRaTrRaTrainer(model, args, dataset, tokenizer, aligned_model=config.aligned_model)


def check_optimizer_params(trainer: Trainer, model: InRaModel) -> None:
    """Build the optimizer now and fail unless every tensor it updates is an adapter tensor."""
    optimizer = trainer.create_optimizer()
    adapter_ids = {id(p) for p in model.adapter.parameters()}
    updated = [p for group in optimizer.param_groups for p in group["params"]]
    stray = [p for p in updated if id(p) not in adapter_ids]
    if stray or not updated:
        raise RuntimeError(
            f"optimizer must update only adapter tensors; {len(stray)} others of {len(updated)}"
        )


def make_trainer(
    model: InRaModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, config: InRaTrainConfig
) -> Trainer:
    makers = {"sft": make_sft_trainer, "dpo": make_dpo_trainer, "trra": make_trra_trainer}
    return makers[config.method](model, tokenizer, dataset, config)


def train_inra(
    config: InRaTrainConfig,
    base: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    train_dataset: Dataset | None = None,
) -> InRaTrainResult:
    """Wrap the base with an adapter, train only the adapter, and save when `config.output_dir` is set.

    `base`, `tokenizer` and `train_dataset` default to loading `config.base_model` and `config.dataset`.
    The base model object is used in place (frozen, never copied).

    Args:
        config: the `InRaTrainConfig` (method, adapter, optimisation, output_dir).
        base: the base model to wrap (default: loaded from `config.base_model` in `config.dtype`).
        tokenizer: its tokenizer (default: loaded from `config.base_model` or the base's name).
        train_dataset: the rows for `config.method` (default: loaded from `config.dataset`).

    Returns:
        `InRaTrainResult` with the trained `InRaModel` (LoRA merged, eval mode), the final `metrics` and the
        trainer's `log_history`. With `output_dir`, the checkpoint is saved as `InRaModel.save_pretrained`
        writes it, and the adapter alone in `<output_dir>/adapter`.

    Raises:
        ValueError: no base model or dataset is given, in `config` or as arguments.
        RuntimeError: the optimizer would update tensors outside the adapter.

    Example:
        ```python
        config = InRaTrainConfig(base_model="Qwen/Qwen2.5-0.5B", dataset="data/sft.jsonl", output_dir="out/inra")
        result = train_inra(config)
        fused = result.model(input_ids, lam=0.5).logits  # input_ids (B, T) -> (B, T, V)
        ```
    """
    if base is None:
        if not config.base_model:
            raise ValueError("set base_model (a folder or a Hub name) or pass base=")
        base, tokenizer = load_base(config)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.base_model or base.config.name_or_path)
    if train_dataset is None:
        if not config.dataset:
            raise ValueError("set dataset (a .jsonl file or a Hub name) or pass train_dataset=")
        train_dataset = load_train_dataset(config)
    model = build_inra_model(base, config)
    trainer = make_trainer(model, tokenizer, train_dataset, config)
    check_optimizer_params(trainer, model)
    output = trainer.train()
    if config.adapter_type == "lora":
        merge_lora_(model.adapter)
    # One dtype per checkpoint: the fp32 master weights of a bf16 run go back to the base's dtype here.
    model.adapter.to(model.base.dtype)
    model.eval()
    state = gathered_state(trainer) if config.output_dir else None  # collective: every process gathers
    if config.output_dir and trainer.is_world_process_zero():
        save_inra(model, config.output_dir, tokenizer, state)
    return InRaTrainResult(model, dict(output.metrics), list(trainer.state.log_history))


def gathered_state(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """The InRaModel's full state dict gathered from FSDP or DeepSpeed shards; None under DDP or one process.

    Every process must call it (it all-gathers); the main process receives the tensors.
    """
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return None
    # Keys of the view ("inra.base.*", ...); ZeRO-3 returns None on the other processes.
    full = trainer.accelerator.get_state_dict(trainer.model_wrapped) or {}
    return {k[len("inra.") :]: v for k, v in full.items() if k.startswith("inra.")}


def save_inra(
    model: InRaModel,
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """The merged InRa checkpoint in `output_dir` and the adapter alone in `output_dir/adapter` (both atomic);
    `state_dict` (the model's full state, e.g. gathered from shards) is written instead of its own tensors."""
    model.save_pretrained(output_dir, tokenizer=tokenizer, state_dict=state_dict)
    model.save_adapter(Path(output_dir) / ADAPTER_SUBDIR, state_dict=state_dict)
