"""The per-request thinking state machine: stage (thinking / answering), the lam of each stage, and the tokens
spent thinking, with hard budgets. One pure module (no torch), used unchanged by `generate`, the server's
engine and the vLLM plugin's logits processor.

Everything is decided from token ids, never from decoded text (a special marker is skipped in decoding, and
a prompt that already closed the think block must start in the answer stage):

* the markers come from the tokenizer (`think_markers`): `<think>` / `</think>` and the other pairs in
  `MARKER_PAIRS`, whether special tokens or not; an override (`--think-marker`, API `lam_marker`) is encoded
  by the tokenizer and, when it is several tokens, matched as that sequence;
* the initial stage comes from the rendered prompt (`initial_stage`);
* `thinking_token_budget` caps the thinking tokens: when only the optional closing text still fits, the
  closing text and then the end marker are forced, one token per step; the answer follows at the answer lam;
* `min_thinking_tokens` bans EOS and the token that would complete the end marker until that many thinking
  tokens were produced.

Counting: a thinking token is any token generated in the thinking stage except those of the end marker
(the model's own `<think>`, its thoughts and the forced closing text count). `spent <= budget` always holds.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
    """ANSWERING when the rendered prompt already closed the think block (its last marker, within the final
    PROMPT_TAIL tokens, is the end marker), else THINKING (the model thinks first)."""
    end = _last_index(prompt_ids, markers.end)
    start = _last_index(prompt_ids, markers.start)
    if end > start and len(prompt_ids) - end <= PROMPT_TAIL:
        return ANSWERING
    return THINKING


@dataclass(frozen=True)
class ThinkingPlan:
    """What one request asks of its thinking: the lam of each stage and the hard limits, as token ids.

    budget: at most this many thinking tokens (None: no cap). min_tokens: at least this many before the end
    marker or EOS. closing: token ids forced before the end marker when the budget runs out.
    """

    markers: ThinkMarkers
    lam_think: float = 1.0
    lam_answer: float = 1.0
    budget: int | None = None
    min_tokens: int = 0
    closing: tuple[int, ...] = ()
    eos: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.budget is not None and (isinstance(self.budget, bool) or self.budget < 0):
            raise ValueError(f"thinking_token_budget must be an int >= 0, got {self.budget!r}")
        if isinstance(self.min_tokens, bool) or self.min_tokens < 0:
            raise ValueError(f"min_thinking_tokens must be an int >= 0, got {self.min_tokens!r}")
        if self.budget is not None and self.min_tokens > self.budget:
            raise ValueError(
                f"min_thinking_tokens ({self.min_tokens}) is above thinking_token_budget ({self.budget})"
            )
        if self.budget is not None and len(self.closing) > self.budget:
            raise ValueError(
                f"the closing text is {len(self.closing)} tokens, more than thinking_token_budget "
                f"({self.budget}): raise the budget or shorten the text"
            )

    @property
    def lams(self) -> tuple[float, float]:
        return (self.lam_think, self.lam_answer)

    @property
    def is_plain(self) -> bool:
        """No stage switch and no limit: the machine only counts."""
        return self.lam_think == self.lam_answer and self.budget is None and self.min_tokens == 0


class ThinkingState:
    """One request's machine. Feed every generated token to `push`; before each step read `lam`,
    `forced` (the token the step must produce, or None) and `banned` (tokens it must not produce)."""

    __slots__ = ("plan", "stage", "spent", "generated", "_queue", "_recent")

    def __init__(self, plan: ThinkingPlan, prompt_ids: Sequence[int]) -> None:
        self.plan = plan
        self.stage = initial_stage(prompt_ids, plan.markers)
        self.spent = 0  # thinking tokens so far (end marker excluded)
        self.generated = 0  # tokens pushed while thinking, end marker included
        self._queue: list[int] = []  # forced tokens still to come
        self._recent: list[int] = []  # the last len(end) tokens, to match the end marker
        self._maybe_force()

    @property
    def thinking(self) -> bool:
        return self.stage == THINKING

    @property
    def lam(self) -> float:
        return self.plan.lam_think if self.thinking else self.plan.lam_answer

    @property
    def forced(self) -> int | None:
        return self._queue[0] if self._queue else None

    @property
    def banned(self) -> tuple[int, ...]:
        """EOS and the end marker's completing token, while fewer than min_tokens were spent thinking."""
        p, end = self.plan, self.plan.markers.end
        if not self.thinking or self._queue or self.generated - (len(end) - 1) >= p.min_tokens:
            return ()
        completes = len(end) == 1 or self._recent[-(len(end) - 1) :] == list(end[:-1])
        eos = tuple(p.eos) if self.spent < p.min_tokens else ()
        return eos + ((end[-1],) if completes else ())

    def push(self, token: int) -> bool:
        """Advance by one generated token; returns True when it changed the stage (lam may change)."""
        if not self.thinking:
            return False
        end = self.plan.markers.end
        self.generated += 1
        self._recent = (self._recent + [token])[-len(end) :]
        if self._queue and self._queue[0] == token:
            self._queue.pop(0)
        if tuple(self._recent) == end:
            self.stage, self._queue = ANSWERING, []
            self.spent = self.generated - len(end)
            return True
        self.spent = self.generated
        self._maybe_force()
        return False

    def push_many(self, tokens: Iterable[int]) -> bool:
        changed = False
        for t in tokens:
            changed |= self.push(t)
        return changed

    def _maybe_force(self) -> None:
        """Queue the closing text and the end marker once only they still fit in the budget."""
        p = self.plan
        if (
            self.thinking
            and not self._queue
            and p.budget is not None
            and self.spent >= p.budget - len(p.closing)
        ):
            self._queue = list(p.closing[max(0, self.spent - (p.budget - len(p.closing))) :])
            self._queue += list(p.markers.end)


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
) -> ThinkingPlan:
    """A ThinkingPlan with the markers of `tokenizer` (or `end_marker`) and `closing` encoded to token ids.

    Raises MissingThinkMarker when the tokenizer has no marker, ValueError for inconsistent limits.
    """
    markers = think_markers(tokenizer, end=end_marker)
    closing_ids = tuple(tokenizer(closing, add_special_tokens=False)["input_ids"]) if closing else ()
    return ThinkingPlan(markers, float(lam_think), float(lam_answer), budget, min_tokens, closing_ids,
                        frozenset(eos))  # fmt: skip


__all__ = [
    "ANSWERING",
    "MARKER_PAIRS",
    "MissingThinkMarker",
    "THINKING",
    "ThinkMarkers",
    "ThinkingPlan",
    "ThinkingState",
    "initial_stage",
    "marker_ids",
    "think_markers",
    "thinking_plan",
]
