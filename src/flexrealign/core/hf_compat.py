"""What differs between the transformers versions flexrealign supports (5.16.1 up to the newest 5.x).

transformers 5.24 renamed the KV-cache keyword of model forwards, decoder layers and mask functions from
`past_key_values` to `cache` (and the output field likewise). The old name still works there but warns, and
its removal is announced for 5.40, after which a cache passed under it would be silently dropped into
`**kwargs`. So each call site asks the callee which name it takes, rather than trusting a version number.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

NEW, OLD = "cache", "past_key_values"


# What this transformers' own functions take: the answer for a callee that hides its keywords in **kwargs
# (a subclass or wrapper whose forward passes them on to the model's).
DEFAULT_CACHE_KW = NEW if NEW in inspect.signature(create_causal_mask).parameters else OLD


@functools.cache
def _cache_kw(fn: Callable) -> str:
    params = inspect.signature(fn).parameters  # follows functools.wraps (transformers' deprecation shims)
    return NEW if NEW in params else OLD if OLD in params else DEFAULT_CACHE_KW


def cache_kw(fn: Callable) -> str:
    """The cache keyword that `fn` (a function, or a module class's `forward`) takes: "cache" or
    "past_key_values"."""
    return _cache_kw(getattr(fn, "__func__", fn))


def with_cache(module: Any, cache: Any) -> dict[str, Any]:
    """{keyword: cache} for calling `module` (a Hugging Face model or decoder layer) with a KV cache."""
    return {cache_kw(type(module).forward): cache}


OUTPUT_CACHE_FIELD = NEW if NEW in CausalLMOutputWithPast.__dataclass_fields__ else OLD


def output_cache(output: Any) -> Any:
    """The KV cache a Hugging Face model output carries, under either field name."""
    return getattr(output, OUTPUT_CACHE_FIELD, None)


def _training_arguments_fields() -> set[str]:
    import dataclasses

    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


@functools.cache
def checkpointing_field() -> str:
    """The TrainingArguments field that switches activation (gradient) checkpointing: transformers 5.24 renamed
    `gradient_checkpointing` to `activation_checkpointing` and warns on the old name."""
    fields = _training_arguments_fields()
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
