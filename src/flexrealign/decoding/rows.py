"""The state of one sequence being decoded, shared by `generate` and the server's engine: its lam spec (a
number or a think/answer `LamSchedule`), its hard thinking limits, the text it has produced (stop strings,
incremental detokenization, split by thinking stage in `flexrealign.decoding.staged`) and its thinking state
machine (`flexrealign.decoding.thinking`)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from flexrealign.decoding.adaptive import AutoLam
from flexrealign.decoding.dial import LamSchedule, LamSpec, ThinkingLimits  # noqa: F401  (re-exported)
from flexrealign.decoding.staged import StagedText
from flexrealign.decoding.stopping import StopStream
from flexrealign.decoding.thinking import MissingThinkMarker, ThinkingState, thinking_plan


class IncrementalDetokenizer:
    """Text deltas from a growing list of token ids, holding back incomplete UTF-8 (as vLLM and TGI do)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self.flush(final=False)

    def flush(self, final: bool = True) -> str:
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) <= len(prefix) or (text.endswith("\ufffd") and not final):
            return ""  # a multi-byte character is still incomplete
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix) :]


class RowState:
    """One sequence being decoded: its tokens, text, thinking stage (lam) and finish reason.

    Stop strings follow `flexrealign.decoding.stopping`: `push` and `finish` return only text that no stop string can
    take back, so the deltas they return always add up to `text`, the final text.
    """

    def __init__(
        self,
        spec: LamSpec,
        tokenizer: PreTrainedTokenizerBase,
        stop: Sequence[str],
        eos: set[int],
        thinking: ThinkingState | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.max_tokens = max_tokens  # finish "length" at this many tokens (None: the caller stops the row)
        # lam auto: the policy decides the lam at the first step (`resolve_auto`); lam_hard until then
        self.auto = spec.policy if isinstance(spec, AutoLam) else None
        self.auto_lam: float | None = None  # the lam the policy chose
        self.base_lam = _first_lam(spec)
        self.thinking = thinking
        self.stops = StopStream(stop)
        self.eos = eos
        self.detok = IncrementalDetokenizer(tokenizer)
        self.staged = StagedText(thinking)  # the text split into thinking and answer, for the server
        self.ids: list[int] = []
        self.lam_changed = False  # set when a token switched the stage; the decode loop clears it
        self.finish_reason: str | None = None

    @property
    def text(self) -> str:
        return self.stops.text

    @property
    def lam(self) -> float:
        return self.thinking.lam if self.thinking is not None else self.base_lam

    @property
    def reasoning_tokens(self) -> int:
        return self.thinking.spent if self.thinking is not None else 0

    @property
    def thinking_cut(self) -> bool:
        """Whether the thinking budget's hard cut ended a thought of this row."""
        return self.thinking is not None and self.thinking.cut

    @property
    def possible_lams(self) -> tuple[float, ...]:
        """Every lam this row may decode at, so its cache holds the paths they need: an auto row may take
        any (both paths), a thinking plan's stages and steer are decided as tokens arrive."""
        if self.auto is not None:
            return (0.0, 1.0)
        return self.thinking.plan.lams if self.thinking is not None else (self.lam,)

    def lam_if(self, lam: float) -> float:
        """The lam of the next step were this row's lam `lam` (its stage and soft landing applied)."""
        t = self.thinking
        return float(lam) if t is None else t.lam_under(t.plan.with_lams(lam, lam))

    def resolve_auto(self, lam: float) -> None:
        """Fix an auto row's lam to the one its policy chose (the thinking plan's soft landing applied)."""
        self.auto, self.base_lam, self.auto_lam, self.lam_changed = None, float(lam), float(lam), True
        if self.thinking is not None:
            self.thinking.plan = self.thinking.plan.with_lams(lam, lam)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> str:
        """Append a sampled token; returns the new text that may be streamed (maybe empty: EOS, incomplete
        bytes, or text that may start a stop string)."""
        self.ids.append(token)
        before = self.staged.stage
        if self.thinking is not None and self.thinking.push(token):
            self.lam_changed = True
        if token in self.eos:
            return self.finish("stop")
        self.detok.ids.append(token)
        self.staged.token(before)
        delta = self._append_text(self.detok.flush(final=False))
        if not self.finished and self.max_tokens is not None and len(self.ids) >= self.max_tokens:
            delta += self.finish("length")
        return delta

    def finish(self, reason: str) -> str:
        """End the row (no-op if it has ended); returns the text held back until now."""
        if self.finish_reason is not None:
            return ""
        tail = self._append_text(self.detok.flush(final=True))
        self.finish_reason = self.finish_reason or reason
        rest = self.stops.flush()
        self.staged.release(len(rest), final=True)
        return tail + rest

    def _append_text(self, delta: str) -> str:
        self.staged.text(delta)
        out = self.stops.add(delta)
        if self.stops.matched is not None:
            self.finish_reason = "stop"
        # a stop string ends the row here, without `finish`: what it let go is all there will be
        self.staged.release(len(out), final=self.stops.matched is not None)
        return out


def row_thinking(
    tokenizer: PreTrainedTokenizerBase,
    spec: LamSpec,
    limits: ThinkingLimits,
    prompt_ids: Sequence[int],
    eos: set[int],
) -> ThinkingState | None:
    """The row's thinking state machine (`flexrealign.decoding.thinking`), built once when the request enters.

    A LamSchedule or active limits need the tokenizer's think markers (MissingThinkMarker, a ValueError,
    names the missing one); otherwise the machine only counts reasoning tokens, and None without markers.
    """
    needed = isinstance(spec, LamSchedule) or limits.active
    lams = spec.lams if isinstance(spec, LamSchedule) else (_first_lam(spec), _first_lam(spec))
    try:  # the limits say how they reach the plan, so that a new dial field does not pass through here
        plan = thinking_plan(tokenizer, *lams, eos=eos, **limits.plan_args(spec))
    except MissingThinkMarker:
        if needed:
            raise
        return None
    return ThinkingState(plan, prompt_ids)


def thinking_constraints(rows: Sequence[RowState]) -> tuple[list[int], list[int], list[int], list[int]]:
    """(rows, tokens) to force and (rows, tokens) to ban at the next step, from each row's thinking state."""
    force_rows, force_ids, ban_rows, ban_ids = [], [], [], []
    for i, r in enumerate(rows):
        t = r.thinking
        if t is None or not t.thinking or r.finished:
            continue
        if t.forced is not None:
            force_rows.append(i)
            force_ids.append(t.forced)
        for b in t.banned:
            ban_rows.append(i)
            ban_ids.append(b)
    return force_rows, force_ids, ban_rows, ban_ids


def _first_lam(spec: LamSpec) -> float:
    """The lam a row starts at: a number's, a schedule's 0 placeholder (its stages decide), an auto row's
    careful lam until its policy decides."""
    if isinstance(spec, AutoLam):
        return spec.policy.lam_hard
    return 0.0 if isinstance(spec, LamSchedule) else float(spec)
