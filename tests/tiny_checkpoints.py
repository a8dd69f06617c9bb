"""Tiny InRa checkpoints with a word-level tokenizer, built in code: a test fixture (the vLLM plugin, serving,
family and surface tests) that `benchmarks/vllm_inra.py` and `benchmarks/serve.py` borrow.

vLLM's CPU attention kernel needs head_dim 128, so the default model is hidden 256 with 2 heads; the
families whose tiny config sets its own head_dim (`families.Family.tiny`: Qwen3, Qwen3-MoE, Gemma-3, gpt-oss)
need `head_dim=128` as well. The tokenizer has the model's vocabulary size unless `num_tokens` pads the
vocabulary past it, as Qwen does.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, as tiny_config's pad/bos/eos
THINK_TOKENS = ("<think>", "</think>")  # so that the thinking dial has markers to work with
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_WORDS_TEXT = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had "
    "by hot word but what some we can out other were all there when up use your how said each she which do "
    "their time if will way about many then them write would like so these her long make thing see him two"
)


def bpe_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with exactly `vocab_size` ids, trained in code on a fixed synthetic text.

    The think markers `<think>` / `</think>` are added tokens (not special), as in Qwen's tokenizers.
    Byte-level with vocab + merges, as the Qwen2 tokenizer class that AutoTokenizer insists on for qwen2
    checkpoints can rebuild it; every string encodes (all 256 bytes are tokens) and every id decodes. The
    small text yields a few hundred merges; larger vocabularies are filled up with `<extra_i>` tokens.
    """
    smallest = len(SPECIAL_TOKENS) + len(THINK_TOKENS) + 256
    if vocab_size < smallest:
        raise ValueError(f"bpe_tokenizer: vocab_size must be >= {smallest}, got {vocab_size}")
    rng, words = random.Random(0), _WORDS_TEXT.split()
    corpus = [
        " ".join(rng.choice(words) for _ in range(12)) + f", {rng.randint(0, 999)}." for _ in range(2000)
    ]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens(list(THINK_TOKENS))  # added, not special, as in Qwen's tokenizers
    tok.add_tokens([f"<extra_{i}>" for i in range(vocab_size - tok.get_vocab_size())])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


def perturb_(model: InRaModel, scale: float, seed: int) -> InRaModel:
    """Stand-in for training: add Gaussian noise to every adapter tensor, so lam changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)
    return model


def tiny_inra_checkpoint(
    path: str | os.PathLike,
    model_type: str = "qwen2",
    base_path: str | os.PathLike | None = None,
    adapter_layers: int = 1,
    perturb: float = 0.5,
    seed: int = 0,
    num_tokens: int | None = None,
    **config: object,
) -> InRaModel:
    """Save an InRa checkpoint (and, with `base_path`, the plain base model) with a tokenizer; return the model.

    `config` overrides the tiny model config (vocab_size, hidden_size, num_layers, num_heads, ...).
    `num_tokens` makes the tokenizer smaller than the vocabulary, as Qwen checkpoints pad their embeddings
    (151,936 rows for about 151,669 tokens): the rows past it have no token.
    `initializer_range` defaults to 0.1 (HF's 0.02 gives near-ties everywhere): on the test prompts the
    greedy top-1 margins are then >= 3e-4 while fp32 logits of vLLM's CPU kernels and Hugging Face's differ
    by ~2e-5, so both pick the same tokens. Larger weights widen the margins but grow those differences
    faster (~4e-4 at 0.5, for plain vLLM on the lam = 1 model just as for InRa).
    """
    fields: dict = dict(vocab_size=512, hidden_size=256, num_heads=2, num_kv_heads=1, intermediate_size=512)
    fields.update(initializer_range=0.1, num_layers=2)
    fields.update(config)
    base = tiny_model(model_type, seed=seed, **fields)
    tokenizer = bpe_tokenizer(num_tokens or base.config.vocab_size)
    if base_path is not None:
        base.save_pretrained(Path(base_path))
        tokenizer.save_pretrained(Path(base_path))
    model = perturb_(InRaModel.from_base(base, AdapterConfig(num_layers=adapter_layers)), perturb, seed + 1)
    model.save_pretrained(path, tokenizer=tokenizer)
    return model.eval()
