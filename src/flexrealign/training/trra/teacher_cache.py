"""Offline teacher outputs for lam sweeps: both teachers' final hidden states, computed once, read by training.

The fused teacher logits are cat[h_aligned, h_ref] @ cat[lam W_aligned, (1 - lam) W_ref]^T, so caching the hidden
states (D numbers per token and model) and the two head weights serves every lam, at ~1/100 of the size that
logits would take (V = 151,936 vs D = 1,536).

Layout of a cache folder:
    cache_config.json         what was cached: models, dtype, max_length, dataset fingerprint, sizes
    heads.safetensors         {"ref": W_ref (V, D), "aligned": W_aligned (V, D)}
    shard-00000.safetensors   {"ref.<example_index>": (n, D), "aligned.<example_index>": (n, D)} for the rows
    shard-00001.safetensors   [s * examples_per_shard, (s + 1) * examples_per_shard) of the tokenised dataset
Each row keeps the n positions whose next token is a completion token, in order. Every file is written to a
temporary name and renamed, so an interrupted run leaves whole shards only and a rerun resumes after them.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from flexrealign.core.atomic import atomic_file
from flexrealign.core.checkpoint import CheckpointError, read_json, write_json
from flexrealign.training.trra.config import TrRaConfig
from flexrealign.training.trra.data import (
    CompletionCollator,
    completion_positions,
    is_tokenized,
    prepare_dataset,
)
from flexrealign.training.trra.loss import ALIGNED, REF
from flexrealign.training.trra.models import (
    check_loadable,
    check_vocabularies,
    final_hidden_states,
    freeze,
    head_rows,
    load_model,
    load_tokenizer,
)

CACHE_FORMAT = "flexrealign-trra-teacher-cache/1"
CONFIG_NAME = "cache_config.json"
HEADS_NAME = "heads.safetensors"
PARTS = (ALIGNED, REF)
# Must match between writing and reading; part of the recorded config.
MATCHED_KEYS = (
    "format",
    "ref_model",
    "aligned_model",
    "dtype",
    "max_length",
    "num_examples",
    "examples_per_shard",
    "fingerprint",
)


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 of every row's example_index, input_ids and labels: the cache is only valid for these exact tokens."""
    digest = hashlib.sha256()
    for batch in dataset.select_columns(["example_index", "input_ids", "labels"]).iter(batch_size=1024):
        for index, ids, labels in zip(
            batch["example_index"], batch["input_ids"], batch["labels"], strict=True
        ):
            digest.update(np.asarray([index, len(ids)], dtype=np.int64).tobytes())
            digest.update(
                np.asarray(ids, dtype=np.int64).tobytes() + np.asarray(labels, dtype=np.int64).tobytes()
            )
    return digest.hexdigest()


def _shard_path(cache_dir: Path, shard: int) -> Path:
    return cache_dir / f"shard-{shard:05d}.safetensors"


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})


def _start(cache_dir: Path, meta: dict[str, Any]) -> None:
    """Create the folder and its config, or check an existing one describes the same cache (a resume)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    config_path = cache_dir / CONFIG_NAME
    if config_path.exists():
        old = read_json(config_path)
        diff = [k for k in MATCHED_KEYS if old.get(k) != meta.get(k)]
        if diff:
            raise ValueError(
                f"{cache_dir} holds a different teacher cache (differs in {', '.join(diff)}); use another folder"
            )
        return
    with atomic_file(config_path) as tmp:
        write_json(tmp, meta)


@torch.no_grad()
def _shard_hidden(
    rows: Dataset, teachers: dict[str, PreTrainedModel], pad_token_id: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """{"<part>.<example_index>": (n, D)} for the rows of one shard."""
    collate, out = CompletionCollator(pad_token_id), {}
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        mask = completion_positions(batch["labels"])  # (B, T-1)
        for part, model in teachers.items():
            ids, attn = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
            with torch.autocast(model.device.type, enabled=False):  # as the trainer runs its teachers
                hidden = final_hidden_states(model, ids, attn)[:, :-1].cpu()  # (B, T-1, D)
            for row, index in enumerate(batch["example_index"].tolist()):
                out[f"{part}.{index}"] = hidden[row][mask[row]]  # (n, D)
    return out


def cache_teachers(
    dataset: Dataset,
    ref: PreTrainedModel,
    aligned: PreTrainedModel,
    cache_dir: str | os.PathLike,
    meta: dict[str, Any],
    pad_token_id: int,
    batch_size: int = 1,
    examples_per_shard: int = 64,
) -> Path:
    """Write (or resume writing) a teacher cache for a tokenised dataset (`prepare_dataset`'s output).

    `meta` records where the data and models came from (ref_model, aligned_model, max_length, ...); a rerun with
    the same meta continues after the shards already written.
    """
    cache_dir = Path(cache_dir)
    teachers = {ALIGNED: aligned, REF: ref}
    meta = meta | {
        "format": CACHE_FORMAT,
        "dtype": str(ref.dtype).removeprefix("torch."),
        "num_examples": len(dataset),
        "examples_per_shard": examples_per_shard,
        "fingerprint": dataset_fingerprint(dataset),
        "hidden_size": {p: int(m.config.get_text_config().hidden_size) for p, m in teachers.items()},
        "vocab_rows": head_rows(ref),
    }
    _start(cache_dir, meta)
    if not (cache_dir / HEADS_NAME).exists():
        _save_atomic(
            {p: m.get_output_embeddings().weight.detach().cpu() for p, m in teachers.items()},
            cache_dir / HEADS_NAME,
        )
    num_shards = math.ceil(len(dataset) / examples_per_shard)
    todo = [s for s in range(num_shards) if not _shard_path(cache_dir, s).exists()]
    done = len(dataset) - sum(min(examples_per_shard, len(dataset) - s * examples_per_shard) for s in todo)
    with tqdm(total=len(dataset), initial=done, desc="cache-teachers", unit="ex") as bar:
        for shard in todo:
            rows = dataset.select(
                range(shard * examples_per_shard, min((shard + 1) * examples_per_shard, len(dataset)))
            )
            _save_atomic(
                _shard_hidden(rows, teachers, pad_token_id, batch_size), _shard_path(cache_dir, shard)
            )
            bar.update(len(rows))
    return cache_dir


class TeacherCache:
    """Read side of a teacher cache: head weights and, per batch, the hidden states of the completion positions."""

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.dir = Path(cache_dir)
        if not (self.dir / CONFIG_NAME).exists():
            raise CheckpointError(
                f"no teacher cache at {self.dir}: write it first with `flexrealign trra cache-teachers`"
            )
        self.meta = read_json(self.dir / CONFIG_NAME)
        if self.meta.get("format") != CACHE_FORMAT:
            raise CheckpointError(f"{self.dir} is not a teacher cache of format {CACHE_FORMAT}")
        num_shards = math.ceil(self.meta["num_examples"] / self.meta["examples_per_shard"])
        missing = [s for s in range(num_shards) if not _shard_path(self.dir, s).exists()]
        if missing or not (self.dir / HEADS_NAME).exists():
            raise CheckpointError(
                f"teacher cache {self.dir} is incomplete ({len(missing)} of {num_shards} shards missing); "
                "rerun `flexrealign trra cache-teachers` with the same settings to finish it"
            )
        self._files = [safe_open(str(_shard_path(self.dir, s)), framework="pt") for s in range(num_shards)]
        self._where = {key: f for f in self._files for key in f.keys()}

    def heads(self) -> dict[str, torch.Tensor]:
        """{"ref": (V, D), "aligned": (V, D)} in the teachers' dtype."""
        return load_file(str(self.dir / HEADS_NAME))

    def check_dataset(self, dataset: Dataset) -> None:
        """Raise unless `dataset` is, token for token, the one the cache was written for."""
        if (
            len(dataset) != self.meta["num_examples"]
            or dataset_fingerprint(dataset) != self.meta["fingerprint"]
        ):
            raise ValueError(
                f"the teacher cache {self.dir} was written for other data (a different dataset, tokenizer, "
                "max_length or max_samples); rerun cache-teachers for this configuration"
            )

    def hidden(self, part: str, example_index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The cached hidden states of `part` for a batch, concatenated in row order: (sum(counts), D)."""
        rows = []
        for index, count in zip(example_index.tolist(), counts.tolist(), strict=True):
            key = f"{part}.{index}"
            if key not in self._where:
                raise KeyError(f"example {index} is not in the teacher cache {self.dir}")
            h = self._where[key].get_tensor(key)  # (n, D)
            if h.shape[0] != count:
                raise ValueError(
                    f"the teacher cache has {h.shape[0]} positions for example {index}, the batch {count}"
                )
            rows.append(h)
        return torch.cat(rows)  # (N, D)


def build_teacher_cache(config: TrRaConfig, rows: Dataset, examples_per_shard: int = 64) -> Path:
    """`flexrealign trra cache-teachers`: load both teachers of `config`, tokenise `rows` (unless they already
    are), cache their hidden states (or resume an interrupted cache).

    The cache is written to `config.teacher_cache`; batches of `per_device_train_batch_size` rows run on
    `config.device`. Training with the same config then reads it for any lam.
    """
    if not config.teacher_cache or config.ref_model is None or config.aligned_model is None:
        raise ValueError(
            "cache-teachers needs teacher_cache (the folder to write), ref_model and aligned_model"
        )
    for role, name in ((REF, config.ref_model), (ALIGNED, config.aligned_model)):
        check_loadable(name, role, config.trust_remote_code)
    tokenizer = load_tokenizer(config.ref_model, REF, config.trust_remote_code)
    dtype = config.teacher_dtype  # parsed by the one loader (flexrealign.core.checkpoint.resolve_dtype)
    ref = freeze(load_model(config.ref_model, REF, dtype, config.trust_remote_code)).to(config.device)
    aligned = freeze(load_model(config.aligned_model, ALIGNED, dtype, config.trust_remote_code)).to(
        config.device
    )
    aligned_tokenizer = load_tokenizer(config.aligned_model, ALIGNED, config.trust_remote_code)
    check_vocabularies({REF: ref, ALIGNED: aligned}, {REF: tokenizer, ALIGNED: aligned_tokenizer})
    dataset = (
        rows
        if is_tokenized(rows)
        else prepare_dataset(rows, tokenizer, config.max_length, config.dataset_num_proc)
    )
    meta = {
        "ref_model": config.ref_model,
        "aligned_model": config.aligned_model,
        "max_length": config.max_length,
        "num_tokens": len(tokenizer),
    }
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return cache_teachers(
        dataset,
        ref,
        aligned,
        config.teacher_cache,
        meta,
        pad_id,
        config.per_device_train_batch_size,
        examples_per_shard,
    )
