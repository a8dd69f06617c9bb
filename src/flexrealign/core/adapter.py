"""The InRa layer adapter: copies of the bottom decoder layer, initialised as exact identities."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from flexrealign.core.families import ATTN_OUT, family_of
from flexrealign.core.keywords import refuse_unknown_keywords

AdapterInit = Literal["identity", "kaiming"]


@refuse_unknown_keywords
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
    """Raise a clear ValueError unless `model` is a decoder of a family in `flexrealign.core.families`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family_of(model_type, type(model).__name__)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{type(model).__name__} has no decoder layers at model.model.layers")


def identity_init_(layer: nn.Module, model_type: str) -> None:
    """Zero every residual branch's last projection (weights and biases): the layer becomes x -> x.

    Args:
        layer: a decoder layer of the family `model_type`.
        model_type: its family (`flexrealign.core.families`), which names the projections.

    Raises:
        ValueError: the layer lacks an attention or an MLP output of the family's list.
    """
    zeroed = []
    for name in family_of(model_type).residual_outputs:
        try:
            target = _resolve(layer, name)
        except AttributeError:
            continue  # e.g. the dense layers of an MoE model have no experts
        tensors = (
            [target] if isinstance(target, nn.Parameter) else [target.weight, getattr(target, "bias", None)]
        )
        for t in tensors:
            if t is not None:
                nn.init.zeros_(t)
        zeroed.append(name)
    if ATTN_OUT not in zeroed or len(zeroed) < 2:
        raise ValueError(
            f"{model_type}: a decoder layer's residual outputs were not all found (zeroed {zeroed})"
        )


def _resolve(layer: nn.Module, name: str) -> nn.Module | nn.Parameter:
    """The submodule or parameter `name` (dotted) of `layer`; AttributeError where it has none."""
    obj = layer
    for part in name.split("."):
        obj = getattr(obj, part)  # nn.Module.__getattr__ raises AttributeError for a missing name
    if not isinstance(obj, (nn.Module, nn.Parameter)):
        raise AttributeError(name)
    return obj


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
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = i
        if config.init == "identity":
            identity_init_(layer, model.config.model_type)
        else:
            kaiming_init_(layer)
        layer.requires_grad_(True)
        layers.append(layer)
    return layers


# Config fields that say something per decoder layer; `merged_model_config` shifts each of them.
LAYER_FIELDS: tuple[str, ...] = (
    "layer_types",
    "no_rope_layers",
    "max_window_layers",
    "mlp_only_layers",
    "decoder_sparse_step",
)


def _sparse_layers(config: PretrainedConfig) -> list[bool] | None:
    """Per layer, whether a Qwen-MoE-style config makes it a mixture-of-experts layer (None: not such a config)."""
    step = getattr(config, "decoder_sparse_step", None)
    if step is None:
        return None
    dense = set(getattr(config, "mlp_only_layers", None) or ())
    experts = getattr(config, "num_experts", 0) or 0
    return [i not in dense and experts > 0 and (i + 1) % step == 0 for i in range(config.num_hidden_layers)]


def _shift_layer_fields(cfg: PretrainedConfig, base: PretrainedConfig, n: int) -> None:
    """Give `cfg` (L + n layers) the per-layer settings of `base` (L layers) for layers n.., and layer 0's
    settings for the n adapter layers."""
    for name in ("layer_types", "no_rope_layers"):
        values = getattr(base, name, None)
        if values:
            setattr(cfg, name, [values[0]] * n + list(values))
    if getattr(base, "max_window_layers", None) is not None:
        cfg.max_window_layers = base.max_window_layers + n
    sparse = _sparse_layers(base)
    if sparse is not None:  # a modulus cannot shift: list the dense layers instead
        merged = [sparse[0]] * n + sparse
        cfg.decoder_sparse_step = 1
        cfg.mlp_only_layers = [i for i, is_sparse in enumerate(merged) if not is_sparse]


def adapter_model_config(base_config: PretrainedConfig, num_layers: int) -> PretrainedConfig:
    """A copy of the base config describing just the adapter stack: `num_layers` copies of the bottom layer
    (for its masks, rotary tables and KV cache)."""
    cfg = copy.deepcopy(base_config)
    _shift_layer_fields(cfg, base_config, num_layers)
    cfg.num_hidden_layers = num_layers
    for name in ("layer_types", "no_rope_layers"):
        if getattr(cfg, name, None):
            setattr(cfg, name, getattr(cfg, name)[:num_layers])
    if getattr(cfg, "mlp_only_layers", None) is not None and _sparse_layers(base_config) is not None:
        cfg.mlp_only_layers = [i for i in cfg.mlp_only_layers if i < num_layers]
    return cfg


def merged_model_config(base_config: PretrainedConfig, num_layers: int, meta: dict) -> PretrainedConfig:
    """The config of the fused (lam = 1) checkpoint: the adapter layers first, then the L original layers.

    The per-layer fields (`LAYER_FIELDS`) are shifted so that each original layer keeps its own settings;
    their original values are kept in the `inra` entry, so `base_model_config` restores them exactly.
    """
    cfg = copy.deepcopy(base_config)
    cfg.num_hidden_layers = base_config.num_hidden_layers + num_layers
    _shift_layer_fields(cfg, base_config, num_layers)
    base_fields = {k: copy.deepcopy(getattr(base_config, k)) for k in LAYER_FIELDS if hasattr(base_config, k)}
    cfg.inra = dict(meta, adapter_layers=num_layers, base_fields=base_fields)
    return cfg


def base_model_config(merged_config: PretrainedConfig) -> tuple[PretrainedConfig, int]:
    """Undo `merged_model_config`: the base config and the number of adapter layers.

    Raises:
        ValueError: the config has no valid `inra` entry.
    """
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
    base_fields = meta.get("base_fields")
    if isinstance(base_fields, dict):
        for key, value in base_fields.items():
            setattr(cfg, key, copy.deepcopy(value))
    else:  # written before base_fields existed (layer_types and max_window_layers were the only shifts)
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = list(cfg.layer_types[n:])
        if getattr(cfg, "max_window_layers", None) is not None:
            cfg.max_window_layers = max(0, cfg.max_window_layers - n)
    del cfg.inra
    return cfg, n
