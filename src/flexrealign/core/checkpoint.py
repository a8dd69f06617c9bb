"""The I/O primitives every loader and writer shares: safetensors state dicts, load errors that name the
path, the dtype and device names of the command line, and (from `flexrealign.core.atomic`) atomic writes.

Kept free of model code (only torch, safetensors and huggingface_hub), so every module may import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flexrealign.core.atomic import atomic_dir, atomic_file

__all__ = [  # atomic_dir and atomic_file live in the torch-free flexrealign.core.atomic; re-exported here
    "CheckpointError", "atomic_dir", "atomic_file", "load_state_dict", "read_json", "resolve_device",
    "resolve_dtype", "save_state_dict", "wrap_load_errors", "write_json",
]  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt."""


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """The one parser of dtype names (command lines, configs, `load_model`).

    Args:
        dtype: "auto" or None (keep the checkpoint's dtype), a floating torch dtype name such as "bfloat16",
            or a `torch.dtype`.

    Returns:
        "auto" or the `torch.dtype`.

    Raises:
        ValueError: not a floating-point torch dtype (names the value and the choices).
    """
    if dtype is None or dtype == "auto":
        return "auto"
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    return value


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The one reading of the "auto" device: the GPU when CUDA is available, else the CPU.

    Args:
        device: "auto" or None, or a device name such as "cpu", "cuda:1" (or a `torch.device`).

    Returns:
        The `torch.device`.

    Raises:
        RuntimeError: torch cannot parse the name.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def save_state_dict(state: dict[str, torch.Tensor], folder: Path, prefix: str = "model") -> None:
    """Write `state` as safetensors shards (HF naming and index) into an existing folder."""
    split = split_torch_state_dict_into_shards(state, filename_pattern=prefix + "{suffix}.safetensors")
    for filename, keys in split.filename_to_tensors.items():
        shard = {k: state[k].detach().contiguous().cpu() for k in keys}
        save_file(shard, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def load_state_dict(folder: str | os.PathLike, prefix: str = "model") -> dict[str, torch.Tensor]:
    """Read a (possibly sharded) safetensors state dict; missing or corrupt files raise CheckpointError."""
    folder = Path(folder)
    index = folder / f"{prefix}.safetensors.index.json"
    if index.exists():
        files = sorted(set(read_json(index)["weight_map"].values()))
    else:
        files = [f"{prefix}.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"checkpoint file missing: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"corrupt safetensors file {path}: {e}") from e
    return state


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt JSON in {path}: {e}") from e


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def wrap_load_errors(what: str, load: Callable[[], object]) -> object:
    """Run a Hugging Face loader and turn its low-level failures into one clear CheckpointError."""
    try:
        return load()
    except CheckpointError:
        raise
    except (OSError, SafetensorError, json.JSONDecodeError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"could not load {what}: {type(e).__name__}: {e}") from e
