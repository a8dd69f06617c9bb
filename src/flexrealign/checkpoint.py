"""Atomic safetensors checkpoints and loading with clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt."""


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
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
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
