"""The InRa layer adapter: copies of the bottom decoder layer, initialised as exact identities."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

# Decoder families whose layer is `x + attn(norm(x))` then `x + mlp(norm(x))` with `self_attn.o_proj` and
# `mlp.down_proj` as the last projections: zeroing those two makes a copied layer an exact identity.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral")

AdapterInit = Literal["identity", "kaiming"]


@dataclass
class AdapterConfig:
    """How to build the layer adapter (paper §3.2; `init="kaiming"` is the Table 4 ablation)."""

    num_layers: int = field(
        default=1, metadata={"help": "Copies of the bottom layer inserted before layer 0 (Table 7)."}
    )
    init: AdapterInit = field(
        default="identity",
        metadata={
            "help": "identity: zero o_proj/down_proj so the adapter changes nothing at first; kaiming: ablation."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"AdapterConfig.num_layers must be an int >= 1, got {self.num_layers!r}")
        if self.init not in ("identity", "kaiming"):
            raise ValueError(f"AdapterConfig.init must be 'identity' or 'kaiming', got {self.init!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def check_supported(model: PreTrainedModel) -> None:
    """Raise a clear error unless `model` is a decoder of a supported Llama-family architecture."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"InRa supports decoder-only models of the Llama family ({', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"got {type(model).__name__} with model_type={model_type!r}"
        )
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{type(model).__name__} has no decoder layers at model.model.layers")


def decoder_layer_type(config: PretrainedConfig, index: int = 0) -> str:
    """The attention type ('full_attention' or 'sliding_attention') of decoder layer `index`."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return layer_types[index]
    return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


def identity_init_(layer: nn.Module) -> None:
    """Zero the attention output and MLP down projections (weights and biases): the layer becomes x -> x."""
    for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
        nn.init.zeros_(proj.weight)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)


def kaiming_init_(layer: nn.Module, generator: torch.Generator | None = None) -> None:
    """Paper Table 4 ablation: Kaiming for 2-D tensors, standard normal for 1-D tensors."""
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() >= 2:
                bound = math.sqrt(6.0 / p.shape[1])  # kaiming_uniform_ with gain sqrt(2), fan_in
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            else:
                p.copy_(torch.randn(p.shape, generator=generator))


def make_adapter_layers(model: PreTrainedModel, config: AdapterConfig) -> nn.ModuleList:
    """Deep-copy the bottom decoder layer `config.num_layers` times and initialise the copies."""
    check_supported(model)
    bottom = model.model.layers[0]
    layers = nn.ModuleList()
    for i in range(config.num_layers):
        layer = copy.deepcopy(bottom)
        layer.self_attn.layer_idx = i  # index into the adapter's own KV cache
        if config.init == "identity":
            identity_init_(layer)
        else:
            kaiming_init_(layer)
        layer.requires_grad_(True)
        layers.append(layer)
    return layers


def adapter_model_config(base_config: PretrainedConfig, num_layers: int) -> PretrainedConfig:
    """A copy of the base config describing just the adapter stack (for masks and its KV cache)."""
    cfg = copy.deepcopy(base_config)
    layer_type = decoder_layer_type(base_config, 0)
    cfg.num_hidden_layers = num_layers
    if getattr(base_config, "layer_types", None):
        cfg.layer_types = [layer_type] * num_layers
    return cfg


def merged_model_config(base_config: PretrainedConfig, num_layers: int, meta: dict) -> PretrainedConfig:
    """The config of the fused (lam = 1) checkpoint: the adapter layers first, then the L original layers."""
    cfg = copy.deepcopy(base_config)
    L = base_config.num_hidden_layers
    cfg.num_hidden_layers = L + num_layers
    if getattr(base_config, "layer_types", None):
        cfg.layer_types = [decoder_layer_type(base_config, 0)] * num_layers + list(base_config.layer_types)
    if getattr(base_config, "max_window_layers", None) is not None:
        cfg.max_window_layers = base_config.max_window_layers + num_layers
    cfg.inra = dict(meta, adapter_layers=num_layers)
    return cfg


def base_model_config(merged_config: PretrainedConfig) -> tuple[PretrainedConfig, int]:
    """Undo `merged_model_config`: the base config and the number of adapter layers."""
    meta = getattr(merged_config, "inra", None)
    if not isinstance(meta, dict) or not isinstance(meta.get("adapter_layers"), int):
        raise ValueError("not an InRa checkpoint: config.json has no 'inra': {'adapter_layers': n} entry")
    n = meta["adapter_layers"]
    cfg = copy.deepcopy(merged_config)
    if not 1 <= n < cfg.num_hidden_layers:
        raise ValueError(
            f"corrupt InRa config: adapter_layers={n} with num_hidden_layers={cfg.num_hidden_layers}"
        )
    cfg.num_hidden_layers -= n
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types[n:])
    if getattr(cfg, "max_window_layers", None) is not None:
        cfg.max_window_layers = max(0, cfg.max_window_layers - n)
    del cfg.inra
    return cfg, n
