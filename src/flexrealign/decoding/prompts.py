"""Prompts into token ids: chat templates, left padding, pad and EOS ids, and the lam of a chat's next turn."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, str]]
Prompt = str | Messages | list[int]  # text, chat messages, or token ids (used as they are, like vLLM's)


def lam_for_next_turn(messages: Messages, lam_turns: Sequence[float]) -> float:
    """The lam of the assistant turn about to be generated: one value per assistant turn (paper App. F.3)."""
    if not lam_turns:
        raise ValueError("lam_turns must hold at least one lam")
    done = sum(1 for m in messages if m.get("role") == "assistant")
    return float(lam_turns[min(done, len(lam_turns) - 1)])


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], template_kwargs: dict) -> str:
    """The prompt text the chat template makes of `messages`, with the generation prompt.

    Raises:
        jinja2.exceptions.TemplateError: the template refuses the conversation.
        TypeError, ValueError: apply_chat_template refuses the arguments (tokenize=..., continue_final_message).
    """
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    return str(text)


def template_takes(tokenizer: PreTrainedTokenizerBase, name: str) -> bool:
    """Whether the tokenizer's chat template reads the variable `name` (gpt-oss's reads `reasoning_effort`)."""
    template = tokenizer.chat_template
    sources = template.values() if isinstance(template, dict) else [template] if template else []
    return any(name in _template_variables(src) for src in sources)


# A server asks once per request, and parsing a large template takes milliseconds.
@functools.lru_cache(maxsize=16)
def _template_variables(source: str) -> frozenset[str]:
    import jinja2
    import jinja2.meta

    return frozenset(jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source)))


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], chat_template_kwargs: dict | None = None
) -> list[list[int]]:
    """Token ids per prompt; message lists go through the tokenizer's chat template, as in HF; lists of token
    ids are taken as they are (a harness that tokenised the prompt itself, such as lm-eval)."""
    ids = []
    for p in prompts:
        if isinstance(p, str):
            ids.append(tokenizer(p, add_special_tokens=True)["input_ids"])
            continue
        if isinstance(p, list) and all(isinstance(t, int) for t in p):
            ids.append(list(p))
            continue
        if not isinstance(p, list) or not all(isinstance(m, dict) and "role" in m for m in p):
            raise ValueError(
                f"a prompt must be a string or a list of {{'role', 'content'}} messages, got {p!r:.80}"
            )
        if tokenizer.chat_template is None:
            raise ValueError("prompts given as messages need a tokenizer with a chat_template")
        text = render_chat(tokenizer, p, chat_template_kwargs or {})
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    if any(len(x) == 0 for x in ids):
        raise ValueError("empty prompt: at least one token is needed to condition on")
    return ids


def left_pad(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a (B, T) batch; returns input_ids and attention_mask."""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return input_ids.to(device), mask.to(device)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills left padding (masked out, so any valid id works): pad, else EOS, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


def eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """EOS ids from the generation config (chat models list several) and the tokenizer."""
    gen_cfg = getattr(_hf_model(model), "generation_config", None)
    found = getattr(gen_cfg, "eos_token_id", None)
    ids = set(found if isinstance(found, list) else [found] if found is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def suppressed_ids(model: torch.nn.Module, device: torch.device) -> torch.Tensor | None:
    """(K,) ids of `generation_config.suppress_tokens`, which are never sampled (as Hugging Face `generate`
    honours them): a GGUF vocabulary's placeholders inside the tokenizer (`flexrealign.conversion.gguf_vocab`). None when empty."""
    found = getattr(getattr(_hf_model(model), "generation_config", None), "suppress_tokens", None) or []
    return torch.tensor(sorted(set(found)), dtype=torch.long, device=device) if found else None


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    for attr in ("base", "ref_model"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model
