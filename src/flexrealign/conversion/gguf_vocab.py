"""The tokenizer of a GGUF file, with its chat template, rebuilt without llama.cpp's placeholder tokens.

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

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from flexrealign.conversion.gguf_files import (
    fields_context_length,
    gguf_fields,
    need_gguf_package,
    resolve_gguf,
)
from flexrealign.core.checkpoint import CheckpointError, wrap_load_errors


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
    need_gguf_package()
    folder, name = str(path.parent), path.name
    tokenizer = wrap_load_errors(
        f"the tokenizer in GGUF file {path}", lambda: AutoTokenizer.from_pretrained(folder, gguf_file=name)
    )
    fields = None if layout is not None and config is not None else gguf_fields(path)  # one read of the file
    layout = layout or placeholder_layout(*fields_vocab(fields, path))
    tokenizer = without_placeholders(tokenizer, layout)
    context = (
        fields_context_length(fields) if config is None else getattr(config, "max_position_embeddings", None)
    )
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
    return fields_vocab(gguf_fields(path), path)


def fields_vocab(fields: dict, path: str | os.PathLike) -> tuple[list[str], list[int] | None]:
    if _TOKENS_KEY not in fields:
        raise CheckpointError(f"GGUF file {resolve_gguf(path)} has no tokenizer (no {_TOKENS_KEY})")
    types = fields.get(_TYPES_KEY)
    return list(fields[_TOKENS_KEY].contents()), None if types is None else list(types.contents())


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
        gone = edit_json(Path(tmp, "tokenizer.json"), lambda d: _strip_tokenizer_json(d, layout))
        edit_json(Path(tmp, "tokenizer_config.json"), lambda d: _unset_special(d, gone))
        edit_json(Path(tmp, "tokenizer_config.json"), backend_as_is)
        rebuilt = AutoTokenizer.from_pretrained(tmp)
    if len(rebuilt) != layout.num_real:
        raise CheckpointError(
            f"removing llama.cpp's placeholder tokens left {len(rebuilt)} tokens, not {layout.num_real}"
        )
    rebuilt.name_or_path = tokenizer.name_or_path
    return rebuilt


def edit_json(path: Path, edit) -> set[str]:
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


def backend_as_is(config: dict) -> None:
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
