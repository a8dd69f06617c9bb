"""The per-request thinking state machine: stage (thinking / answering), the lam of each stage, and the tokens
spent thinking, with hard budgets. One pure module (no torch), used unchanged by `generate`, the server's
engine and the vLLM plugin's logits processor.

Everything is decided from token ids, never from decoded text (a special marker is skipped in decoding, and
a prompt that already closed the think block must start in the answer stage):

* the markers come from the tokenizer (`think_markers`): `<think>` / `</think>` and the other pairs in
  `MARKER_PAIRS`, whether special tokens or not; an override (`--think-marker`, API `lam_marker`) is encoded
  by the tokenizer and, when it is several tokens, matched as that sequence;
* the initial stage comes from the rendered prompt (`initial_stage`): thinking when the prompt left a think
  block open, answering otherwise; outside a block the model may open one (`<think>`), and may open another
  after closing one ("</think> Wait, <think> ...");
* `thinking_token_budget` caps the thinking tokens of all blocks together: when only the optional closing
  text still fits, the closing text and then the end marker are forced, one token per step (if the model has
  begun writing the end marker, only the rest of it); a block opened after the budget is spent is closed at
  once; the answer follows at the answer lam;
* `min_thinking_tokens` bans EOS and the next token of the end marker until that many thinking tokens were
  produced (while a block is open; a reply that never opens a block is not made to think).

Counting: a thinking token is a token generated while a think block is open, except those of the end marker
(the thoughts and the forced closing text count; the markers, and whatever is written outside a block, do
not). `spent <= budget` always holds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flexrealign.decoding.adaptive import Landing

# (start, end) marker pairs recognised in a tokenizer's vocabulary, first match wins
MARKER_PAIRS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
    ("<seed:think>", "</seed:think>"),
    ("◁think▷", "◁/think▷"),
)
# A prompt is in the answer stage when it ends the think block within this many final tokens (Qwen3's
# enable_thinking=False template ends "<think>\n\n</think>\n\n"); an older turn's `</think>` further back
# in a multi-turn prompt does not count.
PROMPT_TAIL = 16
THINKING, ANSWERING = "thinking", "answering"


class MissingThinkMarker(ValueError):
    """A schedule or budget was requested but the tokenizer has no such think marker."""


@dataclass(frozen=True)
class ThinkMarkers:
    """Token ids of the think markers; `start` may be () when the tokenizer only knows an end marker."""

    end: tuple[int, ...]
    start: tuple[int, ...] = ()
    end_text: str = ""
    start_text: str = ""

    def __post_init__(self) -> None:
        if not self.end:
            raise MissingThinkMarker("the think-end marker must be at least one token")


def _vocab_id(tokenizer, text: str) -> int | None:
    """The id of `text` when it is one added token (special or not) or one vocabulary entry, else None."""
    found = tokenizer.get_added_vocab().get(text)
    return found if found is not None else tokenizer.get_vocab().get(text)


def marker_ids(tokenizer, text: str) -> tuple[int, ...]:
    """Token ids of a marker: its id when it is an added token (as `</think>` is in Qwen's tokenizer, special
    or not), else its encoding without BOS/EOS, matched as a sequence."""
    if not text:
        raise MissingThinkMarker("a think marker must be a non-empty string")
    one = tokenizer.get_added_vocab().get(text)
    if one is not None:
        return (one,)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # SentencePiece tokenizers prefix a lone "▁" word boundary that is not part of the marker in context
    while len(ids) > 1 and tokenizer.decode(ids[:1]).strip() == "":
        ids = ids[1:]
    return tuple(ids)


@functools.lru_cache(maxsize=64)
def _marker_pair(tokenizer) -> tuple[str, str] | None:
    """The first (start, end) pair of MARKER_PAIRS whose end marker `tokenizer` has, or None. Cached apart from
    `think_markers`, whose MissingThinkMarker is not: without it a tokenizer with no marker (SmolLM2) paid two
    vocabulary builds per pair for every generated row (measured 155 ms a row)."""
    return next(((s, e) for s, e in MARKER_PAIRS if _vocab_id(tokenizer, e) is not None), None)


@functools.lru_cache(maxsize=64)
def think_markers(tokenizer, end: str | None = None, start: str | None = None) -> ThinkMarkers:
    """The think markers of `tokenizer`, or the overrides `end` / `start` (text, encoded by the tokenizer).

    Raises MissingThinkMarker naming the marker the tokenizer lacks (and how to give one).
    """
    pair = _marker_pair(tokenizer)
    if end is None and pair is None:
        names = ", ".join(e for _, e in MARKER_PAIRS)
        raise MissingThinkMarker(
            f"this tokenizer has no think-end marker (looked for {names} in its vocabulary): a thinking schedule "
            "or budget needs one; name it with --think-marker (API: lam_marker)"
        )
    end_text = end if end is not None else pair[1]  # type: ignore[index]
    start_text = start if start is not None else (pair[0] if pair and end in (None, pair[1]) else "")
    has_start = start_text and (start is not None or _vocab_id(tokenizer, start_text) is not None)
    return ThinkMarkers(
        end=marker_ids(tokenizer, end_text),
        start=marker_ids(tokenizer, start_text) if has_start else (),
        end_text=end_text,
        start_text=start_text if has_start else "",
    )


def _last_index(ids: Sequence[int], seq: tuple[int, ...]) -> int:
    """Index just past the last occurrence of `seq` in `ids`, or -1."""
    n = len(seq)
    if n == 0:
        return -1
    for i in range(len(ids) - n, -1, -1):
        if tuple(ids[i : i + n]) == seq:
            return i + n
    return -1


def initial_stage(prompt_ids: Sequence[int], markers: ThinkMarkers) -> str:
    """THINKING when the rendered prompt leaves a think block open, else ANSWERING.

    A block is open when the prompt's last start marker comes after its last end marker (DeepSeek-R1's template
    ends "<think>\\n"). A prompt that closed the block within its final PROMPT_TAIL tokens answers (Qwen3's
    enable_thinking=False). Otherwise no block is open: with a known start marker the request waits, outside
    any block, for the model to open one (Qwen3 writes `<think>` itself); a tokenizer that knows only an end
    marker cannot see a block open, so the model is taken to think first.
    """
    end = _last_index(prompt_ids, markers.end)
    start = _last_index(prompt_ids, markers.start)
    if start > end:
        return THINKING
    if end > start and len(prompt_ids) - end <= PROMPT_TAIL:
        return ANSWERING
    return ANSWERING if markers.start else THINKING


def _kept_prefix(seq: list[int], marker: tuple[int, ...]) -> int:
    """Length of the longest suffix of `seq` that is a proper prefix of `marker` (a KMP state)."""
    for k in range(min(len(seq), len(marker) - 1), 0, -1):
        if tuple(seq[-k:]) == marker[:k]:
            return k
    return 0


@dataclass(frozen=True)
class ThinkingPlan:
    """What one request asks of its thinking: the lam of each stage and the hard limits, as token ids.

    budget: at most this many thinking tokens (None: no cap). min_tokens: at least this many before the end
    marker or EOS. closing: token ids forced before the end marker when the budget runs out. landing: a soft
    landing (`flexrealign.decoding.adaptive.Landing`), which `thinking_plan` and `with_lams` turn into the
    thinking lam and, once `steer_at` tokens are spent, `lam_steer`.
    """

    markers: ThinkMarkers
    lam_think: float = 1.0
    lam_answer: float = 1.0
    budget: int | None = None
    min_tokens: int = 0
    closing: tuple[int, ...] = ()
    eos: frozenset[int] = field(default_factory=frozenset)
    landing: Landing | None = None
    lam_steer: float | None = None
    steer_at: int | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and (isinstance(self.budget, bool) or self.budget < 0):
            raise ValueError(f"thinking_token_budget must be an int >= 0, got {self.budget!r}")
        if isinstance(self.min_tokens, bool) or self.min_tokens < 0:
            raise ValueError(f"min_thinking_tokens must be an int >= 0, got {self.min_tokens!r}")
        if self.budget is not None and self.min_tokens > self.budget:
            raise ValueError(
                f"min_thinking_tokens ({self.min_tokens}) is above thinking_token_budget ({self.budget})"
            )
        end, closing = self.markers.end, self.closing
        if any(closing[i : i + len(end)] == end for i in range(len(closing) - len(end) + 1)):
            raise ValueError(
                "the thinking closing text must not contain the think-end marker: it is forced after it"
            )
        if self.budget is not None and len(self.closing) > self.budget:
            raise ValueError(
                f"the closing text is {len(self.closing)} tokens, more than thinking_token_budget "
                f"({self.budget}): raise the budget or shorten the text"
            )

    @property
    def lams(self) -> tuple[float, float]:
        """The lams this plan may decode at (the steered one included): every one needs its paths."""
        return (self.lam_think, self.lam_answer) + (() if self.lam_steer is None else (self.lam_steer,))

    def with_lams(self, think: float, answer: float) -> ThinkingPlan:
        """This plan at other lams (an `auto` request's, once chosen), its soft landing applied to them."""
        plan = dataclasses.replace(self, lam_think=float(think), lam_answer=float(answer), lam_steer=None,
                                   steer_at=None)  # fmt: skip
        if plan.landing is None or plan.budget is None:
            return plan
        start, steer, at = plan.landing.plan(plan.lam_think, plan.budget)
        return dataclasses.replace(plan, lam_think=start, lam_steer=steer, steer_at=at)


class ThinkingState:
    """One request's machine. Feed every generated token to `push`; before each step read `lam`,
    `forced` (the token the step must produce, or None) and `banned` (tokens it must not produce).

    Tokens count as thinking only inside an open block, and every block counts against one budget. The end
    marker's tokens never count: a generated tail that may still become the end marker (`_partial`, a proper
    prefix of it) is held apart until it completes the marker or turns out to be thought.
    """

    __slots__ = ("plan", "stage", "cut", "_thoughts", "_partial", "_opening", "_queue")

    def __init__(self, plan: ThinkingPlan, prompt_ids: Sequence[int]) -> None:
        self.plan = plan
        self.stage = initial_stage(prompt_ids, plan.markers)
        self.cut = False  # whether the budget forced a close (the hard cut ended a thought)
        self._thoughts = 0  # thinking tokens that are surely not part of an end marker, over every block
        self._partial: list[int] = []  # in a block: the tail that is a proper prefix of the end marker
        self._opening: list[int] = []  # out of a block: the tail that is a proper prefix of the start marker
        self._queue: list[int] = []  # forced tokens still to come
        self._maybe_force()

    @property
    def thinking(self) -> bool:
        return self.stage == THINKING

    @property
    def spent(self) -> int:
        """Thinking tokens so far (end markers excluded): a pending prefix of the end marker counts, unless the
        rest of the marker is being forced after it (then it surely is the marker)."""
        closing_it = self._queue and self._partial + self._queue == list(self.plan.markers.end)
        return self._thoughts + (0 if closing_it else len(self._partial))

    @property
    def pending(self) -> int:
        """The last generated tokens whose role is still open: a proper prefix of the marker that would switch
        the stage (the end marker in a block, the start marker outside); 0 with one-token markers."""
        return len(self._partial) if self.thinking else len(self._opening)

    @property
    def lam(self) -> float:
        """The lam of the next step: the answer's outside a block; in one, the thinking lam, or the soft
        landing's steered lam once `steer_at` thinking tokens are spent."""
        return self.lam_under(self.plan)

    def lam_under(self, p: ThinkingPlan) -> float:
        """The lam of the next step were `p` this request's plan (an auto request's, before it is chosen)."""
        if not self.thinking:
            return p.lam_answer
        return p.lam_steer if p.steer_at is not None and self.spent >= p.steer_at else p.lam_think

    @property
    def forced(self) -> int | None:
        return self._queue[0] if self._queue else None

    @property
    def banned(self) -> tuple[int, ...]:
        """While fewer than min_tokens were spent thinking in an open block: EOS, and the next token of the
        end marker. For a marker of several tokens that bans beginning it at all: a begun marker is completed,
        not restarted, when the budget runs out, so a begun marker below the minimum could close it early."""
        p, end = self.plan, self.plan.markers.end
        if not self.thinking or self._queue:
            return ()
        eos = tuple(p.eos) if self.spent < p.min_tokens else ()
        return eos + ((end[len(self._partial)],) if self._thoughts < p.min_tokens else ())

    def push(self, token: int) -> bool:
        """Advance by one generated token; returns True when the lam of the next step changed (a block opened
        or closed, or a soft landing steered). An EOS ends the reply and is no thought."""
        before = self.lam
        return self._push(token) or self.lam != before

    def _push(self, token: int) -> bool:
        if token in self.plan.eos:
            return False
        if not self.thinking:
            return self._push_outside(token)
        if self._queue:
            # a forced token was produced as forced, or (never with our engines) the step ignored the force:
            # then rebuild the close from what was really written
            self._queue = self._queue[1:] if self._queue[0] == token else []
        end = self.plan.markers.end
        seq = [*self._partial, token]
        if tuple(seq) == end:
            self.stage, self._partial, self._queue = ANSWERING, [], []
            return True
        keep = _kept_prefix(seq, end)
        self._thoughts += len(seq) - keep
        self._partial = seq[len(seq) - keep :]
        self._maybe_force()
        return False

    def _push_outside(self, token: int) -> bool:
        start = self.plan.markers.start
        if not start:
            return False
        seq = [*self._opening, token]
        if tuple(seq) == start:
            self.stage, self._opening = THINKING, []
            self._maybe_force()
            return True
        keep = _kept_prefix(seq, start)
        self._opening = seq[len(seq) - keep :]
        return False

    def push_many(self, tokens: Iterable[int]) -> bool:
        changed = False
        for t in tokens:
            changed |= self.push(t)
        return changed

    def _maybe_force(self) -> None:
        """Queue the close once only it still fits in the budget: the closing text and the end marker when
        the whole closing text fits, the end marker alone when less does (a later block), and the rest of the
        end marker when the model had begun writing it (never a second, restarted marker)."""
        p = self.plan
        if not self.thinking or self._queue or p.budget is None:
            return
        room = p.budget - self.spent
        if room > len(p.closing):
            return
        if self._partial:  # the model was closing on its own: complete its marker (no cut)
            self._queue = list(p.markers.end[len(self._partial) :])
        else:
            self._queue = (list(p.closing) if room == len(p.closing) else []) + list(p.markers.end)
            self.cut = True


# the request fields of the thinking limits (vLLM's names and ours)
LIMIT_KEYS = ("thinking_token_budget", "min_thinking_tokens", "thinking_closing")


def limit_conflict(dial: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """What is wrong with the thinking limits of `dial` (request field -> value) taken together, with the
    fields involved; None when they fit. The checks that need no tokenizer
    (`rows.ThinkingLimits`, effort files, the server and the vLLM plugin; `ThinkingPlan` checks the closing
    text's length in tokens).

    Args:
        dial: thinking_token_budget, min_thinking_tokens and thinking_closing, each optional.

    Returns:
        (message, fields involved) or None.
    """
    budget, minimum, closing = (dial.get(k) for k in LIMIT_KEYS)
    if budget is not None and minimum is not None and minimum > budget:
        return (f"min_thinking_tokens ({minimum}) is above thinking_token_budget ({budget})",
                ("min_thinking_tokens", "thinking_token_budget"))  # fmt: skip
    if closing is not None and budget is None:
        message = "a thinking closing text is forced when the budget runs out: give thinking_token_budget"
        return message, ("thinking_closing",)
    if closing and budget == 0:
        message = (
            "the closing text cannot fit a thinking_token_budget of 0: raise the budget or drop the text"
        )
        return message, ("thinking_closing", "thinking_token_budget")
    return None


def thinking_plan(
    tokenizer,
    lam_think: float,
    lam_answer: float,
    *,
    budget: int | None = None,
    min_tokens: int = 0,
    closing: str | None = None,
    end_marker: str | None = None,
    eos: Iterable[int] = (),
    start_marker: str | None = None,
    landing: Landing | None = None,
) -> ThinkingPlan:
    """A ThinkingPlan with the markers of `tokenizer` (or `end_marker`, `start_marker`) and `closing` encoded to token ids,
    and a soft `landing` (with a budget) applied to `lam_think`.

    Raises MissingThinkMarker when the tokenizer has no marker, ValueError for inconsistent limits.
    """
    markers = think_markers(tokenizer, end=end_marker, start=start_marker)
    if closing and markers.end_text and markers.end_text in closing:  # encoded in context it may not match
        raise ValueError(
            f"the thinking closing text must not contain the think-end marker {markers.end_text!r}: it is forced after it"
        )
    closing_ids = tuple(tokenizer(closing, add_special_tokens=False)["input_ids"]) if closing else ()
    plan = ThinkingPlan(markers, float(lam_think), float(lam_answer), budget, min_tokens, closing_ids,
                        frozenset(eos), landing)  # fmt: skip
    return plan.with_lams(lam_think, lam_answer)


__all__ = [
    "ANSWERING",
    "MARKER_PAIRS",
    "MissingThinkMarker",
    "THINKING",
    "ThinkMarkers",
    "ThinkingPlan",
    "ThinkingState",
    "initial_stage",
    "limit_conflict",
    "marker_ids",
    "think_markers",
    "thinking_plan",
]
