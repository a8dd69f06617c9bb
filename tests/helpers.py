"""Test helpers shared by several test modules."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from flexrealign.core.inra import InRaModel


def perturb_adapter(model: InRaModel, scale: float = 0.05, seed: int = 1) -> InRaModel:
    """Make the adapter look trained: random changes to every adapter tensor, including o_proj/down_proj."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)
    return model


REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_path(*parts: str) -> Path:
    """Path inside the shared assets folder; skips the calling test when it is absent."""
    root = Path(os.environ.get("FLEXREALIGN_SHARED", REPO_ROOT.parent / "shared"))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset {path} not found (set FLEXREALIGN_SHARED to the shared/ folder)")
    return path


def scripted_model(model: torch.nn.Module, script: list[int], prompt_len: int) -> torch.nn.Module:
    """A copy of a plain HF model whose greedy output is `script`, then EOS: a real model and KV cache, with
    the logits of its last position overridden. Every prompt it serves must have `prompt_len` tokens."""
    base = type(model)

    class Scripted(base):
        def forward(self, *args, attention_mask=None, **kwargs):
            out = super().forward(*args, attention_mask=attention_mask, **kwargs)
            step = attention_mask.sum(-1) - prompt_len  # (B,) tokens generated before this position
            table = torch.tensor([*script, self.config.eos_token_id], device=step.device)
            nxt = table[step.clamp(max=len(script))]  # (B,)
            logits = torch.full_like(out.logits[:, -1], -100.0).scatter_(-1, nxt[:, None], 100.0)
            out.logits = logits[:, None]  # (B, 1, V): callers read the last position only
            return out

    copy_ = copy.deepcopy(model)
    copy_.__class__ = Scripted
    return copy_.eval()


def expected_cut(text: str, stops: list[str]) -> str:
    """Brute force over every occurrence of every stop: cut at the match completing first (then starting
    first), i.e. what reading the text one character at a time finds."""
    hits = [(i + len(s), i) for s in stops if s for i in range(len(text)) if text.startswith(s, i)]
    return text[: min(hits)[1]] if hits else text


def qwen3_tokenizer():
    """The real Qwen3 tokenizer from shared/ (skips when absent)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen3"))


# Qwen3-Thinking-2507's generation prompt opens the think block itself (DeepSeek-R1's does too); the Qwen3
# template in shared/ leaves opening it to the model, which a random test model never does.
_QWEN3_PROMPT = "{{- '<|im_start|>assistant\\n' }}"
_OPEN_THINKING = (
    "{%- if not (enable_thinking is defined and enable_thinking is false) %}{{- '<think>\\n' }}{%- endif %}"
)


def qwen3_thinking_tokenizer():
    """The real Qwen3 tokenizer with Qwen3-Thinking-2507's chat template: the prompt opens `<think>`, so the
    model is thinking from its first token (`enable_thinking=False` still closes the block in the prompt)."""
    tok = qwen3_tokenizer()
    assert tok.chat_template.count(_QWEN3_PROMPT) == 1, "the Qwen3 template changed"
    tok.chat_template = tok.chat_template.replace(_QWEN3_PROMPT, _QWEN3_PROMPT + _OPEN_THINKING)
    return tok


def qwen3_inra(tok, seed: int = 0) -> InRaModel:
    """A tiny random Qwen3-family InRa model over the full Qwen3 vocabulary, adapter perturbed so lam matters."""
    from flexrealign.core.tiny import tiny_model

    base = tiny_model("qwen3", seed=seed, vocab_size=len(tok), hidden_size=32, num_layers=2)
    return perturb_adapter(InRaModel.from_base(base), scale=0.5, seed=3).eval()


# Measured: the ZeRO-3 TrRa adapter's largest relative update gap is 0.44% (while its elements differ by up to
# 9.2e-4, a third of a step); one process trained on half the batch differs by 150%. 5% sits between both.
SAME_UPDATES_REL = 0.05


def identity_adapter(base: str | os.PathLike, out: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The adapter InRa training starts from on the base checkpoint `base`, as `inra_adapter.safetensors` keys."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    InRaModel.from_base(AutoModelForCausalLM.from_pretrained(base)).save_adapter(out)
    return load_file(str(Path(out) / "inra_adapter.safetensors"))


def assert_same_updates(
    got: dict[str, torch.Tensor],
    want: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    rel: float = SAME_UPDATES_REL,
) -> None:
    """Two trainings from `start` that differ only in the order of their float sums (more processes, sharded
    reductions, other kernels) reached the same weights.

    Adam divides each element's gradient by its own running magnitude, so an element whose gradient is near
    zero takes a full-size step (about lr) in a direction that the sums' rounding can flip: element-wise such
    runs can differ by two whole steps, in a few elements, in any run. So compare each tensor's update
    delta = w - start as a whole: ||delta_got - delta_want|| <= rel * ||delta_want||. Runs that trained on
    other batches differ there by tens of percent.
    """
    assert got.keys() == want.keys() <= start.keys()
    for name in want:
        d_got, d_want = got[name].double() - start[name].double(), want[name].double() - start[name].double()
        scale = float(d_want.norm())
        gap = float((d_got - d_want).norm())
        assert gap <= rel * scale or gap == 0.0, (
            f"{name}: update differs by {gap:.3g} of {scale:.3g} (> {rel})"
        )


def hub_cache(tmp_path: Path, monkeypatch, repo: str, folder: str | os.PathLike) -> None:
    """Lay `folder` out as the Hub cache holds `repo` (models--org--name/snapshots/rev, refs/main -> rev) and
    go offline, so the Hub name resolves from that cache only, as a downloaded checkpoint would."""
    import shutil

    import huggingface_hub.constants as hub

    rev = "0123456789abcdef0123456789abcdef01234567"  # any commit hash
    entry = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / rev)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read once at import; the loaders read these
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))


def split_text(text: str, start: str, end: str, thinking: bool) -> tuple[str, str]:
    """(reasoning, content) of a reply's text, split where the marker texts occur: the oracle that the server's
    split by tokens (`flexrealign.decoding.staged`) must agree with when the markers come as whole tokens.

    Args:
        text: the reply; start, end: the marker texts (start "" when the tokenizer knows only an end marker);
        thinking: whether the reply starts inside a think block.
    """
    reasoning, content = [], []
    while True:
        marker = end if thinking else start
        at = text.find(marker) if marker else -1
        (reasoning if thinking else content).append(text if at < 0 else text[:at])
        if at < 0:
            return "".join(reasoning), "".join(content)
        text, thinking = text[at + len(marker) :], not thinking


def chat_reply(tok, messages: list[dict], text: str, end: str | None = None, **template_kwargs) -> tuple:
    """(reasoning, content) that the server's chat reply carries for the generated `text` (its thinking split
    out, `flexrealign.serving.reasoning`): either is None when empty."""
    from flexrealign.decoding.prompts import encode_prompts
    from flexrealign.decoding.thinking import THINKING, initial_stage, think_markers

    ids = encode_prompts(tok, [messages], template_kwargs or None)[0]
    markers = think_markers(tok, end=end)
    thinking = initial_stage(ids, markers) == THINKING
    reasoning, content = split_text(text, markers.start_text, markers.end_text, thinking)
    return reasoning or None, content or None  # an empty part is null, as the server sends it


def reply_parts(message) -> tuple:
    """(reasoning, content) of an OpenAI client's chat message, checking that both reasoning fields agree."""
    extra = message.model_extra or {}
    assert extra.get("reasoning") == extra.get("reasoning_content")
    return extra.get("reasoning"), message.content
