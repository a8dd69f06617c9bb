"""Helpers of the TrRa tests: a byte-level tokenizer with a chat template, tiny Qwen2 models, synthetic data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

from flexrealign.core.tiny import tiny_model
from flexrealign.training.trra import TrRaConfig

REPO_ROOT = Path(__file__).resolve().parents[3]
VOCAB_ROWS = 272  # the tokenizer has 260 tokens: rows past it are padding, as in Qwen
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def shared_path(*parts: str) -> Path:
    """A path in ../shared (or $FLEXREALIGN_SHARED), as tests/conftest.py finds it; skips the test when absent."""
    path = Path(os.environ.get("FLEXREALIGN_SHARED", REPO_ROOT.parent / "shared")).joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset {path} not found (set FLEXREALIGN_SHARED to the shared/ folder)")
    return path


def make_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + <pad>, <|end|> (EOS), <|user|>, <|assistant|>."""
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(seed: int = 0, vocab_size: int = VOCAB_ROWS):
    return tiny_model("qwen2", seed=seed, vocab_size=vocab_size, hidden_size=32, num_layers=2)


def perturbed(model, scale: float = 0.5, seed: int = 1):
    """An 'aligned' model: the reference with its output head moved (KL(aligned || ref) clearly > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.lm_head.weight
        w.add_(torch.randn(w.shape, generator=g) * scale * w.std())
    return model


def make_rows(n: int, seed: int = 0) -> Dataset:
    """Prompt/completion rows: 'add a b' -> the digits, spelt out with filler, so completions are ~20-40 tokens."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        prompt = f"add {a} {b}"
        completion = f"{a + b} " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": prompt, "completion": completion})
    return Dataset.from_list(rows)


def save_models(root: Path) -> dict[str, Path]:
    """{'ref', 'aligned'}: tiny models with the tokenizer, saved (safetensors) under `root`."""
    tok = make_tokenizer()
    dirs = {"ref": root / "ref", "aligned": root / "aligned"}
    for name, model in (("ref", make_model(0)), ("aligned", perturbed(make_model(0)))):
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    return dirs


def trra_config(output_dir: Path, model_dirs: dict[str, Path] | None = None, **overrides) -> TrRaConfig:
    """A fast CPU configuration (fp32, no gradient checkpointing, no reports); models from `model_dirs` if given."""
    fields = dict(
        output_dir=str(output_dir),
        ref_model=str(model_dirs["ref"]) if model_dirs else None,
        aligned_model=str(model_dirs["aligned"]) if model_dirs else None,
        lam=2.0,
        max_length=64,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    fields.update(overrides)
    return TrRaConfig(**fields)
