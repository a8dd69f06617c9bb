"""Tiny randomly initialised decoders of the supported families, built in code (for tests and benchmarks)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

# model_type -> extra config fields that make the tiny model exercise the family's quirks
_FAMILY_EXTRAS: dict[str, dict] = {
    "llama": {},
    "qwen2": {},  # q/k/v carry biases
    "qwen3": {"head_dim": 16},  # q/k norms, explicit head_dim
    "mistral": {"sliding_window": 8},  # sliding-window attention
}


def tiny_config(
    model_type: str = "llama",
    vocab_size: int = 96,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    **overrides,
) -> PretrainedConfig:
    """A small config of a supported family; `overrides` go straight into the config."""
    if model_type not in _FAMILY_EXTRAS:
        raise ValueError(
            f"tiny_config: unknown model_type {model_type!r}; choose from {sorted(_FAMILY_EXTRAS)}"
        )
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    fields.update(_FAMILY_EXTRAS[model_type])
    fields.update(overrides)
    return AutoConfig.for_model(model_type, **fields)


def tiny_model(model_type: str = "llama", seed: int = 0, **config_kwargs) -> PreTrainedModel:
    """A tiny randomly initialised causal LM in fp32 and eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **config_kwargs), dtype=torch.float32)
    return model.eval()


FAMILIES: tuple[str, ...] = tuple(_FAMILY_EXTRAS)
