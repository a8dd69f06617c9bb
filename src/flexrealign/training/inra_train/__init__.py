"""InRa adapter training (paper §3.2): SFT, DPO or TrRa into the layer adapter of a frozen base model."""

from flexrealign.training.inra_train.config import InRaTrainConfig
from flexrealign.training.inra_train.lora import LoRALinear, add_lora_, merge_lora_
from flexrealign.training.inra_train.train import (
    InRaTrainResult,
    build_inra_model,
    check_optimizer_params,
    load_train_dataset,
    make_trainer,
    save_inra,
    train_inra,
)
from flexrealign.training.inra_train.views import InRaPathView

__all__ = [
    "InRaPathView",
    "InRaTrainConfig",
    "InRaTrainResult",
    "LoRALinear",
    "add_lora_",
    "build_inra_model",
    "check_optimizer_params",
    "load_train_dataset",
    "make_trainer",
    "merge_lora_",
    "save_inra",
    "train_inra",
]
