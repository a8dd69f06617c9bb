"""What the real demo (`flexrealign.testbed.realdemo`) asks and scores, shared with its landing table
(`flexrealign.testbed.reallanding`): the prompt template, the original model's log-likelihood proxy and a row
of the table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TEMPLATE = "{question}\nAnswer briefly, then give the final answer as a number."


@torch.inference_mode()
def ref_logprobs(base: Path, records: list[dict], problems: dict[str, str]) -> list[float]:
    """The reference model's mean per-token log-likelihood of each answer given its prompt (the chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(base)
    scores = []
    for rec in records:
        messages = [{"role": "user", "content": TEMPLATE.replace("{question}", problems[rec["problem_id"]])}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(rec["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] * (
            rec["finish_reason"] == "stop"
        )
        if not a_ids:
            scores.append(float("nan"))
            continue
        ids = torch.tensor([p_ids + a_ids])  # (1, T)
        logp = model(ids).logits[0, len(p_ids) - 1 : -1].float().log_softmax(-1)  # (A, V)
        scores.append(logp.gather(-1, torch.tensor(a_ids).unsqueeze(-1)).mean().item())
    return scores


@dataclass
class DemoRow:
    """One line of the real demo's table."""

    model: str
    lam: float | None
    answers: int
    mean_tokens: float
    ref_logprob: float
    answered_pct: float
    pass_at_1: float
    cutoff_pct: float
