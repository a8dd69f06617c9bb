"""Constants and helpers shared by the vLLM plugin tests (imported as a plain module)."""

from __future__ import annotations

import gc
from pathlib import Path

from transformers import AutoTokenizer

from flexrealign.generation import generate
from flexrealign.inra import InRaModel

LAMS = (-1.0, 0.0, 0.5, 1.0, 2.0)
PROMPTS = ("the word of his time", "you said that he was at one, 42.")
MAX_NEW_TOKENS = 12
ENGINE_ARGS = dict(
    dtype="float32", max_model_len=256, max_num_seqs=16, kv_cache_memory_bytes=64 << 20, seed=0
)


# Per family, what its tiny checkpoint differs in. qwen2 pads its vocabulary past the tokenizer as real Qwen
# checkpoints do; qwen3 sets head_dim 128 itself (its config does not derive it from hidden / heads).
FAMILIES: dict[str, dict] = {
    "qwen2": {"num_tokens": 500},
    "llama": {},
    "qwen3": {"head_dim": 128},
    "mistral": {},
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
