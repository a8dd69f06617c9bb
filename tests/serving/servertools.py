"""Helpers for the serving tests: models built from the stories260K fixture, a chat tokenizer, references."""

from __future__ import annotations

import copy
import functools

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flexrealign.core.inra import InRaModel
from flexrealign.decoding.generation import LamSpec, generate

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PROMPTS = [
    "Once upon a time",
    "Lily saw a big dog. She",
    "Tom had a red ball and a little blue car. One day he",
    "The sun was hot, so the children went to the",
]
LAMS = [0.0, 0.5, 1.0, 1.5, -0.5]


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Add seeded noise to the trainable (or all) weights so that lam visibly changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def stories_inra(stories: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> InRaModel:
    """An InRaModel over a copy of stories260K (the fixture is shared) whose adapter is nudged off identity."""
    model = InRaModel.from_base(copy.deepcopy(stories[0]))
    perturbed(model.adapter, 0.03, seed=0)
    return model.eval()


def chat_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    return tok


class References:
    """generate() outputs for single prompts, computed once each (they are the slow part of the tests)."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._get = functools.lru_cache(maxsize=None)(self._generate)

    def _generate(
        self, prompt: str | tuple, lam: LamSpec | None, max_new_tokens: int
    ) -> tuple[str, list[int]]:
        p = [dict(m) for m in prompt] if isinstance(prompt, tuple) else prompt
        out = generate(self.model, self.tokenizer, p, lam=lam, max_new_tokens=max_new_tokens)
        return out.texts[0], out.token_ids[0]

    def __call__(
        self, prompt: str | list[dict], lam: LamSpec | None, max_new_tokens: int
    ) -> tuple[str, list[int]]:
        key = tuple(tuple(sorted(m.items())) for m in prompt) if isinstance(prompt, list) else prompt
        return self._get(key, lam, max_new_tokens)
