"""The LoRA variant of the layer adapter (paper §3.2): freeze the adapter layer, train W + (alpha/r)·B·A.

B starts at zero, so an identity-initialised adapter is still an exact identity. After training, `merge_lora_`
folds B·A into each weight and puts the plain nn.Linear back, so the saved InRa checkpoint and adapter have the
ordinary layer format and load without this module.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) · x Aᵀ Bᵀ with `base` frozen; A ~ kaiming-uniform, B = 0."""

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / r
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT/nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x @ self.lora_A.T) @ self.lora_B.T  # (..., r) -> (..., out)
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        """The base Linear with the update folded into its weight (in place)."""
        with torch.no_grad():
            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)  # (out, in)
        return self.base


def add_lora_(adapter: nn.ModuleList, r: int, alpha: float) -> None:
    """Freeze `adapter` and wrap every nn.Linear in it with a trainable LoRALinear."""
    adapter.requires_grad_(False)
    for parent in list(adapter.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, r, alpha))


def merge_lora_(adapter: nn.ModuleList) -> None:
    """Replace every LoRALinear in `adapter` by its merged nn.Linear; the adapter becomes trainable again."""
    for parent in list(adapter.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    adapter.requires_grad_(True)
