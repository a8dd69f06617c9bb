"""The I/O primitives every loader and writer shares: atomic files and folders, safetensors state dicts,
load errors that name the path, and the dtype and device names of the command line.

Kept free of model code (only torch, safetensors and huggingface_hub), so every module may import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


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


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write; on success it is fsynced and renamed over `target`.

    Readers see the old file or the new one, never a half-written one; on an error the temporary file is
    removed and `target` is left as it was. The temporary name ends in `target`'s suffix, for writers that
    pick a format by extension.

    Args:
        target: the file to write (its folder is created).

    Example:
        >>> with atomic_file("out/results.md") as tmp:
        ...     tmp.write_text("# Results\n")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}{target.suffix}")
    try:
        yield tmp
        with tmp.open("rb") as f:  # the data reaches the disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    A crash mid-save leaves the previous `target` untouched (the temporary folder is removed).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
