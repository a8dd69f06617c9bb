"""InRaTrainConfig: what `flexrealign inra-train` reads from YAML and flags (TRL style: one field per option)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from flexrealign.core.keywords import refuse_unknown_keywords

Method = Literal["sft", "dpo", "trra"]
AdapterType = Literal["layer", "lora"]

_CHOICES = {
    "method": ("sft", "dpo", "trra"),
    "adapter_init": ("identity", "kaiming"),
    "adapter_type": ("layer", "lora"),
    "dtype": ("float32", "bfloat16", "float16", "auto"),
}


@refuse_unknown_keywords
@dataclass
class InRaTrainConfig:
    """Train only an InRa layer adapter on a frozen base model (paper §3.2) by SFT, DPO or TrRa.

    With method="trra" the adapter's aligned path is distilled toward softmax(lam * h_aligned + (1 - lam) *
    h_base) (the paper's Eq. 5 teacher, Eq. 6 loss); the reference path is the frozen base itself.

    Args:
        base_model, dataset: the frozen base (folder, Hub name or .gguf) and the training data.
        method: "sft" (prompt/completion rows), "dpo" (prompt/chosen/rejected) or "trra" (needs aligned_model).
        num_adapter_layers, adapter_init, adapter_type, lora_r, lora_alpha: the adapter and how it trains.
        output_dir: where the InRa checkpoint (and `<output_dir>/adapter`) is saved; "" saves nothing.
        The other fields are the usual `TrainingArguments` (learning_rate, max_steps, batch sizes, ...).

    Raises:
        ValueError: on construction, for an unknown method/adapter_init/adapter_type/dtype, a count < 1,
            a learning_rate, beta or lora_alpha <= 0, warmup_ratio outside [0, 1), method="trra" without
            aligned_model, or neither num_train_epochs > 0 nor max_steps >= 1.
        TypeError: a keyword it does not take (a typo is named with its close match), never dropped.

    Example:
        ```python
        config = InRaTrainConfig(
            base_model="Qwen/Qwen2.5-0.5B", method="sft", dataset="data/sft.jsonl", output_dir="out/inra"
        )
        ```
    """

    base_model: str = field(
        default="",
        metadata={"help": "The base (reference) model: a local folder or a Hugging Face Hub name."},
    )
    method: Method = field(
        default="sft",
        metadata={
            "help": "sft: prompt/completion data; dpo: prompt/chosen/rejected pairs; trra: distillation."
        },
    )
    dataset: str = field(
        default="",
        metadata={"help": "Training data: a .json/.jsonl/.parquet file or a Hub dataset name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the dataset to train on."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Train on only the first N records (quick runs)."}
    )
    output_dir: str = field(
        default="",
        metadata={"help": "Where the InRa checkpoint goes; the adapter alone goes to <output_dir>/adapter."},
    )
    num_adapter_layers: int = field(
        default=1, metadata={"help": "Copies of the bottom layer inserted before layer 0 (paper Table 7)."}
    )
    adapter_init: Literal["identity", "kaiming"] = field(
        default="identity",
        metadata={"help": "identity: the adapter starts as x -> x (paper); kaiming: the Table 4 ablation."},
    )
    adapter_type: AdapterType = field(
        default="layer",
        metadata={
            "help": "layer: train the whole adapter layer; lora: freeze it and train rank-r updates of its linear "
            "weights (paper §3.2), merged into the layer when saving."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "Rank of the LoRA updates (adapter_type=lora)."})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scale numerator: updates are (alpha/r)·BA."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype to load the base model in: float32, bfloat16, float16 or auto (from its config)."
        },
    )
    learning_rate: float = field(
        default=2e-5, metadata={"help": "Peak learning rate (paper: 2e-5 SFT, 5e-7 DPO)."}
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the dataset."})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop after this many optimizer steps (-1: use epochs)."}
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Sequences per device per micro-step."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-steps per optimizer step: batch = per_device x processes x this."}
    )
    max_length: int = field(
        default=1024, metadata={"help": "Truncate tokenized sequences to this many tokens."}
    )
    warmup_ratio: float = field(
        default=0.1, metadata={"help": "Fraction of steps of linear warm-up (paper: 0.1)."}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO beta (paper: 0.005 for the dialogue models)."})
    lam: float = field(
        default=1.0, metadata={"help": "TrRa only: lam of the fused teacher the adapter is distilled toward."}
    )
    aligned_model: str | None = field(
        default=None,
        metadata={
            "help": "TrRa only: the aligned teacher (a folder or Hub name); the reference is the base."
        },
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPUs with bf16 support)."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute the frozen base layers' activations in backward to save memory."},
    )
    use_cpu: bool = field(
        default=False,
        metadata={
            "help": "Train on the CPU even when a GPU is present; needed for several CPU processes under "
            "`accelerate launch` (without it each process trains alone)."
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    seed: int = field(default=42, metadata={"help": "Random seed (data order, kaiming init)."})

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        positive = (
            "num_adapter_layers",
            "lora_r",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
        )
        for name in (*positive, "max_length", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 when given, got {self.max_samples}")
        if not self.learning_rate > 0 or not self.beta > 0 or not self.lora_alpha > 0:
            raise ValueError("learning_rate, beta and lora_alpha must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.method == "trra" and self.lam != 0 and not self.aligned_model:
            raise ValueError("method=trra needs aligned_model (the teacher the adapter is realigned toward)")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError("set num_train_epochs > 0 or max_steps >= 1")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1 or -1 (use epochs), got {self.max_steps}")
