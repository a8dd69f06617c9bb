"""Measurements used by the InRa training tests: completion loss at a lam, DPO implicit reward margins,
per-tensor hashes and the memory held by parameters."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flexrealign.core.inra import InRaModel


def tensor_digests(module: nn.Module) -> dict[str, str]:
    """sha256 of every parameter's and buffer's bytes, by name: equal digests mean bit-identical tensors."""
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    return {
        name: hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for name, t in tensors.items()
    }


def unique_parameter_bytes(*modules: nn.Module) -> int:
    """Bytes of parameter storage reachable from `modules`, each storage counted once (shared weights too)."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            storage = p.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (1, T) of prompt + completion and labels (1, T) with the prompt tokens set to -100."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + completion)["input_ids"]
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
    return torch.tensor([full_ids]), torch.tensor([labels])


@torch.no_grad()
def completion_nll(
    model: InRaModel | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    lam: float | None = None,
) -> float:
    """Mean per-token negative log-likelihood of each completion given its prompt (at `lam` for InRa)."""
    total, count = 0.0, 0
    for prompt, completion in pairs:
        input_ids, labels = encode_pair(tokenizer, prompt, completion)
        kwargs = {} if lam is None else {"lam": lam}
        out = model(input_ids.to(model.device), labels=labels.to(model.device), **kwargs)
        n = int((labels[:, 1:] != -100).sum())
        total, count = total + float(out.loss) * n, count + n
    return total / max(count, 1)


@torch.no_grad()
def sequence_logp(
    model: InRaModel, tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, lam: float
):
    """Summed log-probability of `completion` given `prompt` under the lam-fused model."""
    input_ids, labels = encode_pair(tokenizer, prompt, completion)
    logits = model(input_ids.to(model.device), lam=lam).logits[:, :-1]  # (1, T-1, V)
    targets = labels[:, 1:].to(logits.device)  # (1, T-1)
    mask = targets != -100
    logp = (
        torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    )  # (1, T-1)
    return float((logp * mask).sum())


def reward_margins(
    model: InRaModel, tokenizer: PreTrainedTokenizerBase, triples: Iterable[tuple[str, str, str]], beta: float
) -> list[float]:
    """DPO implicit reward margin per (prompt, chosen, rejected): beta·(log-ratio chosen − log-ratio rejected),
    with the aligned path (lam = 1) as policy and the adapter-less path (lam = 0) as reference."""
    margins = []
    for prompt, chosen, rejected in triples:
        ratio = [
            sequence_logp(model, tokenizer, prompt, c, 1.0) - sequence_logp(model, tokenizer, prompt, c, 0.0)
            for c in (chosen, rejected)
        ]
        margins.append(beta * (ratio[0] - ratio[1]))
    return margins
