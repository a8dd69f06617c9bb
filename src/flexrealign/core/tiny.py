"""Tiny randomly initialised decoders of the supported families, built in code (for tests and benchmarks)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from flexrealign.core.families import FAMILIES as _TABLE


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
    """A small config of a supported family (its quirks from `families.Family.tiny`); `overrides` go straight
    into the config."""
    if model_type not in _TABLE:
        raise ValueError(f"tiny_config: unknown model_type {model_type!r}; choose from {sorted(_TABLE)}")
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
    fields.update(_TABLE[model_type].tiny)
    fields.update(overrides)
    for name in ("layer_types", "no_rope_layers"):  # per-layer lists follow num_layers, repeating the pattern
        if name in fields and len(fields[name]) != num_layers:
            pattern = fields[name]
            fields[name] = [pattern[i % len(pattern)] for i in range(num_layers)]
    return AutoConfig.for_model(model_type, **fields)


def tiny_model(model_type: str = "llama", seed: int = 0, **config_kwargs) -> PreTrainedModel:
    """A tiny randomly initialised causal LM in fp32 and eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **config_kwargs), dtype=torch.float32)
    return model.eval()


FAMILIES: tuple[str, ...] = tuple(_TABLE)
