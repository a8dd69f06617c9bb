"""Constants and helpers shared by the vLLM plugin tests (imported as a plain module)."""

from __future__ import annotations

import gc
from pathlib import Path

from transformers import AutoTokenizer

from flexrealign.core.inra import InRaModel
from flexrealign.decoding.generation import generate

LAMS = (-1.0, 0.0, 0.5, 1.0, 2.0)
# The third prompt is longer than MAX_BATCHED_TOKENS, so its prefill is chunked over several steps.
LONG_PROMPT = " ".join(["the word of his time is that he was at one with all there, 42."] * 4)
PROMPTS = ("the word of his time", "you said that he was at one, 42.", LONG_PROMPT)
MAX_NEW_TOKENS = 12
MAX_BATCHED_TOKENS = 32
ENGINE_ARGS = dict(
    dtype="float32", max_model_len=256, max_num_seqs=16, kv_cache_memory_bytes=64 << 20, seed=0
)
# the offline tests' engines: a small block size, so that prompts fill blocks the prefix cache can reuse
OFFLINE_ENGINE_ARGS = dict(ENGINE_ARGS, block_size=32, max_num_batched_tokens=MAX_BATCHED_TOKENS)


# Per family, what its tiny checkpoint differs in. qwen2 pads its vocabulary past the tokenizer as real Qwen
# checkpoints do; qwen3 sets head_dim 128 itself (its config does not derive it from hidden / heads).
FAMILIES: dict[str, dict] = {
    "qwen2": {"num_tokens": 500},
    "llama": {},
    "qwen3": {"head_dim": 128},
    "mistral": {},
}
# The families added later, each served by one engine in test_vllm_families.py only (CI time): a mixed-lam greedy
# batch and the layer fixes each needs. Their family-table configs set head_dim 16, too small for vLLM's CPU
# attention.
EXTRA_FAMILIES: dict[str, dict] = {
    "qwen3_moe": {"head_dim": 128},
    "gemma3_text": {"head_dim": 128},
    "gpt_oss": {"head_dim": 128},
    "smollm3": {"head_dim": 128},
}


def reference_tokens(path: Path, prompts, lams, max_new_tokens: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """flexrealign's greedy tokens for every (prompt, lam) pair, loaded from the saved checkpoint."""
    model = InRaModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for p in prompts:
        res = generate(model, tok, [p] * len(lams), lam=list(lams), max_new_tokens=max_new_tokens)
        out += res.token_ids
    return out


def shutdown_llm(llm: object) -> None:
    """Stop an offline engine's processes now rather than at interpreter exit."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()
