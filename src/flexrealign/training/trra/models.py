"""Loading the three TrRa models with clear errors, checking they share a vocabulary, reading hidden states."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from flexrealign.core.checkpoint import CheckpointError
from flexrealign.core.vocab import check_same_vocab

# Config fields of model families whose logits are not plain `h @ W^T` (scaled or soft-capped heads).
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def _check_exists(name: str, role: str) -> None:
    """A name that looks like a local path must exist; anything else is left to the Hub."""
    path = Path(name).expanduser()
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise CheckpointError(f"{role} model not found: {name} is neither a local folder nor a Hub name")


def load_model(
    name: str, role: str, dtype: str | torch.dtype = "auto", trust_remote_code: bool = False, **hf_kwargs: Any
) -> PreTrainedModel:
    """Load a causal LM (safetensors only); a missing or unreadable model raises CheckpointError naming its role.

    `hf_kwargs` go to `from_pretrained` (e.g. attn_implementation, revision)."""
    from flexrealign.conversion.loading import load_causal_lm  # the one loader (safetensors only)

    _check_exists(name, role)
    try:
        return load_causal_lm(name, dtype, trust_remote_code, **hf_kwargs)
    except ValueError as e:  # CheckpointError included; HF raises ValueError for unknown architectures
        raise CheckpointError(f"could not load the {role} model {name!r}: {e}") from e


def check_loadable(name: str, role: str, trust_remote_code: bool = False) -> None:
    """Read only the model's config: a cheap early check that it exists, before any data or weights are loaded."""
    _check_exists(name, role)
    try:
        AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"could not load the {role} model {name!r}: {type(e).__name__}: {e}") from e


def load_tokenizer(name: str, role: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    _check_exists(name, role)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"could not load the tokenizer of the {role} model {name!r}: {e}") from e


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """A teacher: eval mode (no dropout) and no gradients."""
    return model.eval().requires_grad_(False)


def check_plain_head(model: nn.Module, role: str) -> None:
    """The chunked loss computes logits as h @ W^T: refuse heads with a bias, scaling or soft-capping."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError(f"the {role} model's output head must be a bias-free linear layer")
    config = model.config.get_text_config()
    transforms = [k for k in _LOGIT_TRANSFORMS if getattr(config, k, None) not in (None, 1, 1.0)]
    if transforms:
        raise ValueError(
            f"the {role} model transforms its logits ({', '.join(transforms)}), which TrRa does not support"
        )


def head_rows(model: nn.Module) -> int:
    """Rows of the output head; ZeRO-3 keeps a partitioned weight empty, with the real shape in `ds_shape`."""
    weight = model.get_output_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def check_vocabularies(
    models: Mapping[str, PreTrainedModel], tokenizers: Mapping[str, PreTrainedTokenizerBase]
) -> int | None:
    """Check every model and tokenizer share one vocabulary; return the number of real tokens.

    Rows of the heads past the tokenizer (Qwen pads to 151,936) are allowed, must be equal in number across the
    models, and are left out of the loss: the returned count (None when there are no such rows) is the loss's
    `num_tokens`.
    """
    for role, model in models.items():
        check_plain_head(model, role)
    rows = {role: head_rows(model) for role, model in models.items()}
    if len(set(rows.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in rows.items())
        raise ValueError(
            f"models have different vocabulary sizes ({listing}); TrRa needs one shared vocabulary"
        )
    check_same_vocab({}, list(tokenizers.values()))  # the tokenizers' token/id tables
    num_rows, tokens = next(iter(rows.values())), len(next(iter(tokenizers.values())))
    if tokens > num_rows:
        raise ValueError(f"the tokenizer has {tokens} tokens but the models' heads have only {num_rows} rows")
    return tokens if tokens < num_rows else None


def final_hidden_states(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Hidden states after the final norm, (B, T, D), without running the output head."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state  # (B, T, D)


def head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The output head's (V, D) weight as a plain tensor (FSDP2 shards it as a DTensor: gathered once here)."""
    weight = model.get_output_embeddings().weight
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
    return weight
