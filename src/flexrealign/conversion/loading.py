"""The one loader: every command and API that takes a model by name goes through `load` (or `load_model`).

What a name is, decided here and nowhere else (`model_kind`):

- a .gguf file (or `smollm2`)                              -> "gguf":    a plain model, dequantised in memory
- a local folder with inra_config.json                     -> "adapter": InRaModel on its recorded (or given) base
- a folder or Hub name whose config has an `inra` entry    -> "inra":    InRaModel (two paths)
- anything else a config can be read for                   -> "plain":   a Hugging Face causal LM

An InRa checkpoint is recognised by its config (`AutoConfig`), so a Hub name, a local folder and a Hub cache
all give the same answer. A DeRa pair is two names (`load(ref, aligned=...)`). Weights load from safetensors
only (or a GGUF file): a folder with only `pytorch_model.bin` is refused, because unpickling runs code. Remote
code runs only when `trust_remote_code=True` is passed. Bad input raises `CheckpointError` naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from flexrealign.conversion.gguf_convert import load_gguf
from flexrealign.conversion.gguf_files import is_gguf
from flexrealign.conversion.gguf_vocab import gguf_tokenizer
from flexrealign.core.checkpoint import (
    CheckpointError,
    read_json,
    resolve_device,
    resolve_dtype,
    wrap_load_errors,
)
from flexrealign.core.dera import DeRa
from flexrealign.core.inra import ADAPTER_CONFIG_NAME, InRaModel

__all__ = [
    "ModelKind", "is_adapter_dir", "is_inra_checkpoint", "is_two_path", "load", "load_causal_lm",
    "load_config", "load_dera", "load_model", "load_plain", "load_tokenizer", "model_kind", "resolve_device",
    "resolve_dtype",
]  # fmt: skip

ModelKind = Literal["gguf", "adapter", "inra", "plain"]
LoadedModel = PreTrainedModel | InRaModel | DeRa


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """True for a local folder written by `InRaModel.save_adapter` (it holds inra_config.json)."""
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def load_config(path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model config of a local folder or a Hub name (the Hub cache and HF_HUB_OFFLINE are honoured).

    Raises:
        CheckpointError: no config can be read for `path` (the message names it).
    """
    return wrap_load_errors(
        f"the config of {path}",
        lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code),
    )


def model_kind(path: str | os.PathLike, trust_remote_code: bool = False) -> ModelKind:
    """What `path` names (see the module doc); reads at most the config, never weights.

    Args:
        path: a .gguf file, a local folder or a Hub name.
        trust_remote_code: allow a config class from the checkpoint's own code.

    Returns:
        "gguf", "adapter", "inra" or "plain".

    Raises:
        CheckpointError: `path` is none of these (no config can be read).
    """
    path = str(path)
    if is_gguf(path):
        return "gguf"
    if is_adapter_dir(path):
        return "adapter"
    config = load_config(path, trust_remote_code)
    return "inra" if isinstance(getattr(config, "inra", None), dict) else "plain"


def is_two_path(kind: ModelKind) -> bool:
    """True for the kinds that load as an InRaModel, which takes a lam."""
    return kind in ("inra", "adapter")


def is_inra_checkpoint(path: str | os.PathLike, trust_remote_code: bool = False) -> bool:
    """True when the config of `path` (a folder or a Hub name) has an `inra` entry."""
    return model_kind(path, trust_remote_code) == "inra"


def load_causal_lm(
    path: str, dtype: str | torch.dtype = "auto", trust_remote_code: bool = False, **hf_kwargs
) -> PreTrainedModel:
    """A plain Hugging Face causal LM from safetensors weights (a folder or a Hub name), on the CPU.

    Args:
        path: a local folder or a Hub name.
        dtype: "auto" (the checkpoint's) or a dtype name such as "bfloat16".
        trust_remote_code: allow the checkpoint's own model code.
        **hf_kwargs: more `from_pretrained` arguments (e.g. revision, attn_implementation).

    Raises:
        CheckpointError: the weights are missing, corrupt or only in a pickle (`.bin`) file.
    """
    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors*")) and any(folder.glob("*.bin")):
        raise CheckpointError(
            f"{path} holds only pickled .bin weights; flexrealign loads safetensors only (unpickling runs "
            "code). Convert it: AutoModelForCausalLM.from_pretrained(path).save_pretrained(new_path)"
        )
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code, **hf_kwargs}
    return wrap_load_errors(
        f"model {path}",
        lambda: AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs),
    )


def load_plain(
    path: str, dtype: str | torch.dtype = "auto", trust_remote_code: bool = False
) -> PreTrainedModel:
    """A plain causal LM on the CPU from a GGUF file, a folder or a Hub name (a base model to train or wrap).

    Raises:
        CheckpointError: as `load_causal_lm`, or an unreadable GGUF file.
    """
    if is_gguf(path):
        return load_gguf(path, resolve_dtype(dtype))[0]
    return load_causal_lm(path, dtype, trust_remote_code)


def _load_adapter(
    path: str, base: str | None, dtype: str | torch.dtype, trust_remote_code: bool
) -> InRaModel:
    """An adapter folder on `base` (default: the base model it records), which may be a GGUF file."""
    name = base or read_json(Path(path) / ADAPTER_CONFIG_NAME).get("base_model")
    if not name:
        raise CheckpointError(f"{path}: the adapter records no base model; pass the base model (--base)")
    return InRaModel.from_adapter(path, base=load_plain(name, dtype, trust_remote_code))


def load_model(
    path: str,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
    base: str | None = None,
) -> PreTrainedModel | InRaModel:
    """The model `path` names (see the module doc), in eval mode on `device`.

    Args:
        path: a .gguf file, an adapter folder, an InRa checkpoint or a plain model (folder or Hub name).
        dtype: "auto" (the checkpoint's; fp32 for GGUF) or a dtype name such as "bfloat16".
        device: "auto" (CUDA when available), "cpu", "cuda:1", ...
        trust_remote_code: allow the checkpoint's own code (off unless asked for).
        base: the base model of an adapter folder (default: the one it records).

    Returns:
        An InRaModel for InRa checkpoints and adapter folders, else a plain `PreTrainedModel`.

    Raises:
        CheckpointError: `path` cannot be read (the message names it). ImportError: a GGUF file without the
        `gguf` package. ValueError: an unknown dtype.
    """
    path = str(path)
    kind = model_kind(path, trust_remote_code)
    if kind == "adapter":
        model = _load_adapter(path, base, dtype, trust_remote_code)
    elif kind == "inra":
        model = InRaModel.from_pretrained(
            path, trust_remote_code=trust_remote_code, dtype=resolve_dtype(dtype)
        )
    else:
        model = load_plain(path, dtype, trust_remote_code)
    return model.to(resolve_device(device)).eval()


def load_tokenizer(
    path: str, trust_remote_code: bool = False, base: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (or in a GGUF file); an adapter folder uses its base model's.

    Raises:
        CheckpointError: no tokenizer can be read (the message names the path).
    """
    path = str(path)
    if is_adapter_dir(path):
        path = base or read_json(Path(path) / ADAPTER_CONFIG_NAME).get("base_model") or path
    if is_gguf(path):
        return gguf_tokenizer(path)
    return wrap_load_errors(
        f"the tokenizer of {path}",
        lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code),
    )


def load_dera(
    ref: str,
    aligned: str,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
) -> DeRa:
    """A DeRa pair (reference at lam = 0, aligned at lam = 1); checks vocabularies and tokenizers first.

    Raises:
        ValueError: either side is an InRa model (it holds both paths already), or the two disagree.
    """
    tokenizers = (load_tokenizer(ref, trust_remote_code), load_tokenizer(aligned, trust_remote_code))
    models = [load_model(p, dtype, device, trust_remote_code) for p in (ref, aligned)]
    if any(isinstance(m, InRaModel) for m in models):
        raise ValueError("DeRa takes two plain models; an InRa checkpoint already holds both paths")
    return DeRa(models[0], models[1], tokenizers=tokenizers).eval()


def load(
    path: str,
    aligned: str | None = None,
    base: str | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
) -> tuple[LoadedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a command: `load_model(path)`, or with `aligned` the DeRa pair (path, aligned).

    Args:
        path: the model (see `load_model`), or the reference model of a DeRa pair.
        aligned: the aligned model of a DeRa pair.
        base: the base model of an adapter folder.
        dtype, device, trust_remote_code: as in `load_model`.

    Returns:
        The model in eval mode on `device`, and the tokenizer of `path` (a DeRa pair's two must agree).

    Raises:
        CheckpointError, ValueError, ImportError: as `load_model` and `load_dera`.

    Example:
        >>> model, tok = load("org/an-inra-checkpoint", device="cpu")   # an InRaModel: it takes a lam
    """
    if aligned is not None:
        model = load_dera(path, aligned, dtype, device, trust_remote_code)
    else:
        model = load_model(path, dtype, device, trust_remote_code, base)
    return model, load_tokenizer(path, trust_remote_code, base)
