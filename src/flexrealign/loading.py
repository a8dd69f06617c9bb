"""Load what the user names (a local folder or a Hub name) as the right kind of model.

- an InRa checkpoint (config.json has an `inra` entry) -> InRaModel (two paths)
- an adapter-only folder (inra_config.json)             -> InRaModel on its recorded (or given) base
- a .gguf file (or `smollm2`)                           -> a plain model, dequantised and rebuilt in memory
- anything else                                         -> a plain Hugging Face causal LM
Weights load with safetensors only (or from a GGUF file), and remote code only when asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from flexrealign.checkpoint import wrap_load_errors
from flexrealign.dera import DeRa
from flexrealign.gguf_convert import gguf_tokenizer, is_gguf, load_gguf
from flexrealign.inra import ADAPTER_CONFIG_NAME, InRaModel


def resolve_dtype(dtype: str) -> torch.dtype | str:
    """'auto' keeps the checkpoint's dtype; otherwise a torch dtype name such as 'bfloat16'."""
    if dtype == "auto":
        return "auto"
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return value


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def is_inra_checkpoint(path: str, trust_remote_code: bool = False) -> bool:
    if is_gguf(path):
        return False
    config = wrap_load_errors(
        f"the config of {path}", lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    )
    return isinstance(getattr(config, "inra", None), dict)


def load_model(
    path: str,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    base: str | None = None,
) -> PreTrainedModel | InRaModel:
    """The model at `path` (see module doc), in eval mode on `device`."""
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if is_gguf(path):
        model, _ = load_gguf(path, kwargs["dtype"])
    elif is_adapter_dir(path):
        model = InRaModel.from_adapter(path, base=base, **kwargs)
    elif is_inra_checkpoint(path, trust_remote_code):
        model = InRaModel.from_pretrained(path, **kwargs)
    else:
        model = wrap_load_errors(
            f"model {path}",
            lambda: AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs),
        )
    return model.to(resolve_device(device)).eval()


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (or in a GGUF file); an adapter-only folder uses its base model's."""
    if is_gguf(path):
        return gguf_tokenizer(path)
    if is_adapter_dir(path):
        meta = json.loads((Path(path) / ADAPTER_CONFIG_NAME).read_text())
        path = meta.get("base_model") or path
    return wrap_load_errors(
        f"the tokenizer of {path}",
        lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code),
    )


def load_dera(
    ref: str, aligned: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> DeRa:
    """A DeRa pair; fails on a vocabulary or tokenizer mismatch before generating anything."""
    tokenizers = (load_tokenizer(ref, trust_remote_code), load_tokenizer(aligned, trust_remote_code))
    models = [load_model(p, dtype, device, trust_remote_code) for p in (ref, aligned)]
    if any(isinstance(m, InRaModel) for m in models):
        raise ValueError("DeRa takes two plain models; an InRa checkpoint already holds both paths")
    return DeRa(models[0], models[1], tokenizers=tokenizers).eval()
