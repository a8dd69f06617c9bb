"""One decode step, the only place that turns logits into tokens: `generate` (and through it the CLI and the
lm-eval wrapper) and the server's engine both run it, so a request gets the same tokens on every surface.

A step is: one cached forward (fused fp32 logits at the last position) -> the vocabulary rows that are never
sampled -> the thinking constraints (forced and banned tokens) -> sampling -> each row's state takes its token
(stop strings, EOS, max tokens, thinking stage). Everything a step needs from the requests (lam, sampling
settings, which paths to run) is decided on the host when the rows change, so the step reads one thing back
from the device: the token ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from flexrealign.core.fused import FusedCausalLM, PathCache
from flexrealign.core.fusion import mask_untokenized
from flexrealign.core.hf_compat import with_cache
from flexrealign.decoding.adaptive import AutoPolicy
from flexrealign.decoding.rows import RowState, thinking_constraints
from flexrealign.decoding.sampling import Sampler, constrain


def next_logits(
    model: torch.nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    cache: PathCache | DynamicCache,
    lam: torch.Tensor,
    choose: AutoChoice | None = None,
) -> torch.Tensor:
    """One cached forward: fp32 logits (B, V) at the last position of x (B, T).

    Args:
        model: an InRaModel or DeRa (two paths, fused at lam), or a plain Hugging Face causal LM.
        x: (B, T) new token ids; mask: (B, past + T) 1 where a slot holds a real token of that row, cached
            and new; pos: (B, T) per-row positions (they skip left padding).
        cache: the model's cache, made for the paths this batch's lams need (`fusion.needed_paths`).
        lam: (B,) validated when the requests entered; unused by plain models.
        choose: at the first step of rows whose lam is auto, their policy (`AutoChoice`), which sets their lam.

    Returns:
        (B, V) fp32 logits, fused as the paper's Eq. 5 (before its softmax) for two-path models.
    """
    if isinstance(model, FusedCausalLM):
        return model.step_logits(x, mask, pos, cache, lam, choose_lam=choose)  # (B, V)
    kwargs = dict(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True)
    return model(**kwargs, **with_cache(model, cache), logits_to_keep=1).logits[:, -1].float()  # (B, V)


def decode_step(
    logits: torch.Tensor,
    rows: Sequence[RowState],
    sampler: Sampler,
    *,
    vocab_size: int,
    suppressed: torch.Tensor | None,
) -> tuple[torch.Tensor, list[str | None]]:
    """Choose and record each row's next token.

    Args:
        logits: (B, V) fp32 next-token logits (`next_logits`); changed in place.
        rows: each row's state; rows that have finished keep their place but take no token.
        sampler: the rows' sampling settings (`sampling.Sampler`, rebuilt when the rows change).
        vocab_size: the tokenizer's length: rows past it (padded embeddings) are never sampled.
        suppressed: (K,) ids inside the tokenizer that are never sampled either (`prompts.suppressed_ids`).

    Returns:
        The next ids (B,) on the model's device, to feed the next forward, and per row the text it may stream
        now (None for a row that had finished before this step).
    """
    logits = mask_untokenized(logits, vocab_size, suppressed)  # (B, V)
    force_rows, force_ids, ban_rows, ban_ids = thinking_constraints(rows)
    logits = constrain(logits, (force_rows, force_ids), (ban_rows, ban_ids))  # budgets, minimums
    nxt = sampler.sample(logits)  # (B,)
    tokens = nxt.tolist()  # the step's one read from the device
    return nxt, [None if r.finished else r.push(t) for r, t in zip(rows, tokens, strict=True)]


def row_lams(rows: Sequence[RowState], current: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(B,) lam per row: `current` until the rows change (current None) or a row's thinking stage switched
    its lam, then rebuilt from the rows' host-side values (no read from the device)."""
    if current is None or any(r.lam_changed for r in rows):
        for r in rows:
            r.lam_changed = False
        current = torch.tensor([r.lam for r in rows], dtype=torch.float32, device=device)
    return current


class AutoChoice:
    """The first step of rows whose lam is `auto` (`flexrealign.decoding.adaptive`): their policy reads the
    reference path's final hidden state at the last prompt position, h (B, D), and picks each row's lam,
    lam_easy where the probe's logit w . h + b reaches the threshold, lam_hard elsewhere. The step fuses at
    what each choice means for the row's next token (its stage and soft landing, worked out on the host for
    both choices beforehand); `resolve` then tells the rows, the one read from the device this adds.

    Args:
        rows: the batch's rows (`RowState.auto` is the policy of an undecided auto row).
        lam: (B,) the rows' lams; the auto rows' entries are replaced.

    Raises:
        ValueError: auto rows with different policies (one model has one calibration).
    """

    def __init__(self, rows: Sequence[RowState], lam: torch.Tensor) -> None:
        policies = {r.auto for r in rows if r.auto is not None}
        if len(policies) > 1:
            raise ValueError("the auto rows of one batch must share one policy (one model, one calibration)")
        self.rows, self.policy, self.picked = rows, policies.pop(), None
        easy = [r.lam_if(r.auto.lam_easy) if r.auto is not None else r.lam for r in rows]
        hard = [r.lam_if(r.auto.lam_hard) if r.auto is not None else r.lam for r in rows]
        self.easy = torch.tensor(easy, dtype=torch.float32, device=lam.device)  # (B,)
        self.hard = torch.tensor(hard, dtype=torch.float32, device=lam.device)  # (B,)

    @classmethod
    def of(cls, rows: Sequence[RowState], lam: torch.Tensor) -> AutoChoice | None:
        """The choice to make at this step, or None when no row waits for one."""
        return cls(rows, lam) if any(r.auto is not None for r in rows) else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        p = self.policy
        w = torch.tensor(p.weights, dtype=torch.float32, device=hidden.device)  # (D,)
        self.picked = hidden.float() @ w + p.bias >= p.logit_threshold  # (B,) lam_easy where True
        return torch.where(self.picked, self.easy, self.hard)  # (B,)

    def resolve(self) -> list[float | None]:
        """Give each auto row the lam chosen for it; returns those lams (None for the other rows)."""
        out: list[float | None] = []
        for r, easy in zip(self.rows, self.picked.tolist(), strict=True):
            lam = None if r.auto is None else (r.auto.lam_easy if easy else r.auto.lam_hard)
            out.append(lam)
            if lam is not None:
                r.resolve_auto(lam)
        return out


def check_auto_policy(model: torch.nn.Module, policy: AutoPolicy) -> None:
    """The model can serve lam auto with `policy`: it exposes its hidden state, of the probe's size.

    Raises:
        ValueError: a model without a probed hidden state (a plain model, DeRa), or a probe fitted on another
            hidden size (a calibration copied from another checkpoint).
    """
    if not getattr(model, "probes_hidden", False):
        raise ValueError(f"lam auto reads the reference path's hidden state, which {type(model).__name__} does "
                         "not expose: it is served for InRa models")  # fmt: skip
    size = model.config.get_text_config().hidden_size
    if len(policy.weights) != size:
        raise ValueError(f"the auto policy was fitted on a hidden size of {len(policy.weights)}; this model's is "
                         f"{size}: rerun flexrealign calibrate on this checkpoint")  # fmt: skip
