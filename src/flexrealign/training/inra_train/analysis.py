"""The paper's §5 analyses in small, on any model and prompt/completion data:

layer_significance (Table 3): fine-tune only the bottom-k or only the top-k decoder layers with the same budget
    (steps, learning rate, data order, and the same number of trainable tensors) and compare the held-out loss gain.
init_ablation (Table 4): train an InRa adapter from the identity init and from the kaiming init with the same
    budget; report how far each moves the lam = 0.5 model before training and the held-out loss after.

Both use a plain SFT loop (completion tokens only) so that the compared runs differ in nothing but the variable
under study. The paper measures Table 3 with DPO; the SFT loss gain is the cheap, model-agnostic stand-in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.inra import InRaModel

Pair = tuple[str, str]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class AnalysisRow:
    """One trained variant: which tensors trained, and the held-out completion loss before and after."""

    variant: str
    trainable_params: int
    loss_before: float
    loss_after: float
    note: str = ""

    @property
    def gain(self) -> float:
        return self.loss_before - self.loss_after

    def to_dict(self) -> dict:
        return asdict(self) | {"gain": self.gain}


def text_pair(record: dict, tokenizer: PreTrainedTokenizerBase) -> Pair:
    """(prompt, completion) text of a prompt/completion, prompt/chosen/rejected (chosen) or messages record;
    conversational prompts are rendered with the tokenizer's chat template."""
    if "messages" in record:
        prompt, completion = record["messages"][:-1], record["messages"][-1:]
    else:
        prompt, completion = record["prompt"], record.get("completion", record.get("chosen"))
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if isinstance(completion, list):
        completion = "".join(m["content"] for m in completion)
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError(f"need prompt/completion, prompt/chosen or messages fields; got {sorted(record)}")
    return prompt, completion


def collate(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair], max_length: int) -> Batch:
    """Right-padded input_ids (B, T), attention_mask (B, T) and labels (B, T) (-100 on prompt and padding)."""
    rows = []
    for prompt, completion in pairs:
        n_prompt = len(tokenizer(prompt)["input_ids"])
        ids = tokenizer(prompt + completion)["input_ids"][:max_length]
        rows.append((ids, [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])  # (B, T)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])  # (B, T)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])  # (B, T)
    return input_ids, mask, labels


def batches(tokenizer, pairs: Sequence[Pair], batch_size: int, max_length: int) -> list[Batch]:
    return [
        collate(tokenizer, pairs[i : i + batch_size], max_length) for i in range(0, len(pairs), batch_size)
    ]


def _loss_sum(model: nn.Module, batch: Batch, lam: float | None) -> tuple[torch.Tensor, int]:
    input_ids, mask, labels = (t.to(next(model.parameters()).device) for t in batch)
    kwargs = {} if lam is None else {"lam": lam}
    logits = model(input_ids, attention_mask=mask, **kwargs).logits[:, :-1]  # (B, T-1, V)
    targets = labels[:, 1:]  # (B, T-1)
    loss = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


@torch.no_grad()
def heldout_loss(model: nn.Module, data: Sequence[Batch], lam: float | None = None) -> float:
    """Mean completion-token NLL over `data` (at `lam` for an InRaModel)."""
    total, count = 0.0, 0
    for batch in data:
        loss, n = _loss_sum(model, batch, lam)
        total, count = total + float(loss), count + n
    return total / max(count, 1)


def sft_steps(
    model: nn.Module, params: list[nn.Parameter], data: Sequence[Batch], steps: int, lr: float
) -> None:
    """`steps` AdamW steps on `params` only, cycling through `data` in order (the same for every variant)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        loss, n = _loss_sum(model, data[step % len(data)], 1.0 if isinstance(model, InRaModel) else None)
        (loss / max(n, 1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layer stack of a causal LM (Llama/Qwen/Mistral/GPT-style layouts)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


@dataclass
class Budget:
    """What every compared variant gets: optimizer steps, learning rate and the (ordered) training batches."""

    steps: int
    learning_rate: float
    train: list[Batch]
    heldout: list[Batch]


def layer_significance(model: PreTrainedModel, k: int, budget: Budget) -> list[AnalysisRow]:
    """Table 3: train only the bottom-k layers, then (from the same start) only the top-k, and compare gains.

    Works in place without a second model copy: the trained layers' weights are restored after each variant.
    """
    layers = decoder_layers(model)
    if not 1 <= k < len(layers):
        raise ValueError(
            f"k must be in [1, {len(layers) - 1}] for a model with {len(layers)} layers, got {k}"
        )
    before = heldout_loss(model, budget.heldout)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    rows = []
    for name, indices in (("bottom", range(k)), ("top", range(len(layers) - k, len(layers)))):
        saved = [copy.deepcopy(layers[i].state_dict()) for i in indices]
        model.requires_grad_(False)
        params = [p for i in indices for p in layers[i].parameters()]
        for p in params:
            p.requires_grad_(True)
        sft_steps(model, params, budget.train, budget.steps, budget.learning_rate)
        after = heldout_loss(model, budget.heldout)
        for i, state in zip(indices, saved, strict=True):
            layers[i].load_state_dict(state)
        label = f"{name}-{k} (layers {indices.start}..{indices.stop - 1})"
        rows.append(AnalysisRow(label, sum(p.numel() for p in params), before, after))
    for name, p in model.named_parameters():
        p.requires_grad_(flags[name])
    return rows


def init_ablation(model: PreTrainedModel, budget: Budget, num_layers: int = 1) -> list[AnalysisRow]:
    """Table 4: identity vs kaiming adapter init; `note` is the lam = 0.5 logit shift from the base at init.

    Each run wraps the same frozen base with a fresh adapter; only the adapter trains, so the base is unchanged.
    """
    rows = []
    for init in ("identity", "kaiming"):
        torch.manual_seed(0)  # the same kaiming draw in every run
        inra = InRaModel.from_base(model, AdapterConfig(num_layers, init))
        shift = _lam_half_shift(inra, budget.heldout[0])
        before = heldout_loss(inra, budget.heldout, lam=1.0)
        sft_steps(inra, inra.adapter_parameters(), budget.train, budget.steps, budget.learning_rate)
        after = heldout_loss(inra, budget.heldout, lam=1.0)
        params = sum(p.numel() for p in inra.adapter_parameters())
        rows.append(
            AnalysisRow(f"{init} init", params, before, after, f"lam=0.5 max |dlogit| at init {shift:.3g}")
        )
    return rows


@torch.no_grad()
def _lam_half_shift(inra: InRaModel, batch: Batch) -> float:
    """Largest logit change of the lam = 0.5 model from the base (lam = 0) on one batch."""
    input_ids, mask, _ = (t.to(inra.device) for t in batch)
    half = inra(input_ids, attention_mask=mask, lam=0.5).logits  # (B, T, V)
    base = inra(input_ids, attention_mask=mask, lam=0.0).logits  # (B, T, V)
    return float((half - base).abs()[mask.bool()].max())


def format_table(rows: Sequence[AnalysisRow], title: str) -> str:
    """A fixed-width table: variant, trainable params, held-out loss before/after, gain, note."""
    head = f"{'variant':<28} {'params':>10} {'loss before':>12} {'loss after':>11} {'gain':>8}  note"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.variant:<28} {r.trainable_params:>10,} {r.loss_before:>12.4f} {r.loss_after:>11.4f} "
            f"{r.gain:>8.4f}  {r.note}"
        )
    return "\n".join(lines)
