"""The thinking dial of one request, parsed and validated once, in pure Python (no torch, no HTTP).

Every surface (`flexrealign generate`, the HTTP server, the vLLM plugin) hands `parse_dial` a plain dict of the
fields below and gets a `Dial` back, or a `DialError` naming the offending field, which the surface turns into
its own error (a 400, a `VLLMValidationError`, a usage error). The fields are declared once, on `Dial`: the
server's request schema and the CLI's flags are built from `dial_fields()`, so a new field is added here, where
it acts in decoding, and in the docs. The fields: lam, lam_turns (chats), lam_think with lam_answer (a
`LamSchedule`) and its markers, the `ThinkingLimits` (thinking_token_budget, min_thinking_tokens,
thinking_closing, thinking_landing), and reasoning_effort: the fields an effort of the checkpoint's
calibration stands for, expanded under the request's own (`expand_effort`). An error about a value the effort
supplied names `reasoning_effort` and the effort, not a field the client never sent. `lam: "auto"` (and
`reasoning_effort: "auto"`) and the soft landing read the calibration too (`flexrealign.decoding.adaptive`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from flexrealign.decoding.adaptive import (
    AUTO,
    DEFAULT_LANDING,
    HARD,
    SOFT,
    AutoLam,
    AutoPolicy,
    Landing,
)
from flexrealign.decoding.dial_values import (  # noqa: F401  (DialError, LamValue: re-exported)
    DialError,
    LamValue,
    count_value,
    dial_field,
    finite_real,
    finite_reals,
    lam_value,
    landing_value,
    text_value,
)
from flexrealign.decoding.thinking import LIMIT_KEYS, MissingThinkMarker, limit_conflict, thinking_plan

LOOKALIKE = ("lam", "think", "min_think", "reasoning")  # an unknown key with these prefixes is a typo
EFFORT_LAM_KEYS = ("lam", "lam_think", "lam_answer", "lam_marker")  # dropped whole when a request gives a lam
REQUEST_LAM_KEYS = ("lam", "lam_turns", "lam_think", "lam_answer")  # any of them in a request: its own lam
CALIBRATE_HINT = (
    "flexrealign calibrate --model CHECKPOINT --benchmark FILE.jsonl --lam -0.5 0 0.5 1 1.5 --n-problems 50"
)


class EffortTable(Protocol):
    """What `parse_dial` reads of a calibration (`flexrealign.decoding.calibration.Calibration`): its efforts by name,
    each with `dial()` (the request fields it stands for) and `chat_template_kwargs`; its `auto` policy (or
    None) and `landing()` (the soft landing its curve gives)."""

    efforts: Mapping[str, Any]
    auto: AutoPolicy | None

    def landing(self) -> Landing: ...


# ----------------------------------------------------------------------------------- lam and hard limits
@dataclass(frozen=True)
class LamSchedule:
    """A think/answer lam schedule: `lams[0]` while a think block is open, `lams[1]` outside one.

    The stage is decided from token ids by `flexrealign.decoding.thinking`. `markers=(text,)` overrides the end marker
    (encoded by the tokenizer; several tokens are matched as a sequence).

    Example:
        >>> LamSchedule.think_answer(-0.5, 1.0)  # think at lam = -0.5, answer at lam = 1
        LamSchedule(lams=(-0.5, 1.0), markers=())

    Raises:
        DialError: not two finite lams, or an empty marker.
    """

    lams: tuple[float, ...]
    markers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        lams, markers = tuple(self.lams), tuple(self.markers)
        if len(lams) != 2 or len(markers) > 1 or any(not isinstance(m, str) or not m for m in markers):
            raise DialError(f"LamSchedule takes two lams (think, answer) and at most one non-empty end marker, "
                            f"got {self}", "lam_think")  # fmt: skip
        object.__setattr__(
            self,
            "lams",
            tuple(finite_real(k, v) for k, v in zip(("lam_think", "lam_answer"), lams, strict=True)),
        )
        object.__setattr__(self, "markers", markers)

    @classmethod
    def think_answer(cls, think: float, answer: float, marker: str | None = None) -> LamSchedule:
        return cls((think, answer), () if marker is None else (marker,))

    @property
    def marker(self) -> str | None:
        """The end-marker override, or None for the tokenizer's own."""
        return self.markers[0] if self.markers else None


LamSpec = float | LamSchedule | AutoLam


@dataclass(frozen=True)
class ThinkingLimits:
    """Hard thinking limits of one request (vLLM's names): at most `thinking_token_budget` thinking tokens,
    at least `min_thinking_tokens`; `closing` is text forced before the end marker when the budget runs
    out (e.g. "Time is up; answering now."). `marker` and `start_marker` override the tokenizer's think
    markers.

    Raises:
        DialError: a negative or non-int count, or limits that do not fit together.
    """

    thinking_token_budget: int | None = None
    min_thinking_tokens: int = 0
    closing: str | None = None
    marker: str | None = None
    start_marker: str | None = None
    landing: Landing | None = (
        None  # a soft landing (`flexrealign.decoding.adaptive`); None: the hard cut alone
    )

    def __post_init__(self) -> None:
        if self.thinking_token_budget is not None:
            count_value("thinking_token_budget", self.thinking_token_budget)
        count_value("min_thinking_tokens", self.min_thinking_tokens)
        conflict = limit_conflict(dict(zip(LIMIT_KEYS, (self.thinking_token_budget, self.min_thinking_tokens,
                                                        self.closing), strict=True)))  # fmt: skip
        if conflict is not None:
            raise DialError(conflict[0], conflict[1][0])

    @property
    def active(self) -> bool:
        return self.thinking_token_budget is not None or self.min_thinking_tokens > 0

    def plan_args(self, spec: LamSpec) -> dict[str, Any]:
        """`thinking.thinking_plan`'s keyword arguments for these limits under `spec` (a schedule's marker wins)."""
        marker = (spec.marker if isinstance(spec, LamSchedule) else None) or self.marker
        return {"budget": self.thinking_token_budget, "min_tokens": self.min_thinking_tokens,
                "closing": self.closing, "end_marker": marker, "start_marker": self.start_marker,
                "landing": self.landing}  # fmt: skip


@dataclass(frozen=True)
class Dial:
    """The dial of one request, validated: the fields the client sent, with its reasoning_effort's expanded
    under them. Build it with `parse_dial`; read the lam with `lam_spec` and the limits with `limits`."""

    lam: float | str | None = dial_field(
        lam_value, "lam for the whole reply (any finite real; 0 = reference model, 1 = aligned model), or auto: "
        "chosen per request by the checkpoint's calibrated policy", many=True,
    )  # fmt: skip
    lam_turns: tuple[float, ...] | None = dial_field(
        finite_reals, "chats only: one lam per assistant turn; the turn being generated picks its entry"
    )
    lam_think: float | None = dial_field(
        finite_real, "lam while thinking, until the think-end marker; with lam_answer"
    )
    lam_answer: float | None = dial_field(finite_real, "lam after the think-end marker")
    lam_start_marker: str | None = dial_field(
        text_value, "overrides the tokenizer's think-start marker (its <think>): a block it opens counts",
        flag="think_start_marker",
    )  # fmt: skip
    lam_marker: str | None = dial_field(
        text_value, "overrides the tokenizer's think-end marker (its </think>)", flag="think_marker"
    )
    thinking_token_budget: int | None = dial_field(
        count_value, "at most this many thinking tokens; then the closing text (if any) and the end marker are "
        "forced",
    )  # fmt: skip
    min_thinking_tokens: int | None = dial_field(
        count_value, "EOS and the think-end marker are banned until this many thinking tokens"
    )
    thinking_closing: str | None = dial_field(
        text_value, "text forced before the end marker when the budget runs out"
    )
    thinking_landing: str | None = dial_field(
        landing_value, "with a budget: soft steers lam toward shorter thinking before the hard cut (needs a "
        "calibration; the default where there is one), hard only cuts",
    )  # fmt: skip
    reasoning_effort: str | None = dial_field(
        text_value, "an effort of the checkpoint's calibration (flexrealign calibrate), or of a chat template "
        "that reads it (gpt-oss)",
    )  # fmt: skip
    taken: frozenset[str] = field(default=frozenset(), metadata={"internal": True})  # fields from the effort
    policy: AutoPolicy | None = field(default=None, compare=False, metadata={"internal": True})  # lam auto
    landing: Landing | None = field(default=None, compare=False, metadata={"internal": True})  # soft landing
    template_kwargs: Mapping[str, Any] = field(
        default_factory=dict, compare=False, metadata={"internal": True}
    )

    def given(self, names: Iterable[str]) -> list[str]:
        """The names among `names` whose field is set."""
        return [k for k in names if getattr(self, k) is not None]

    def error(self, message: str, keys: Iterable[str], code: str = "invalid_value") -> DialError:
        """A DialError about `keys`: naming the first one the client sent, else the effort that sent them."""
        keys = list(keys)
        key = blame(keys, self.taken)
        if key is not None or not keys:
            return DialError(message, key or "reasoning_effort", code, getattr(self, key) if key else None)
        value = getattr(self, keys[0])
        value = list(value) if isinstance(value, tuple) else value
        return DialError(f"reasoning_effort {self.reasoning_effort!r} stands for {keys[0]}={value!r}, "
                         f"and {message}", "reasoning_effort", code, self.reasoning_effort)  # fmt: skip

    def lam_spec(self, messages: list[dict] | None = None, fused: bool = True, default: float = 1.0):
        """The lam of the reply: a float or a LamSchedule; None for a single-path model.

        Args:
            messages: the chat (lam_turns picks the entry of the turn being generated); None for raw text.
            fused: whether the model has two paths (InRa, DeRa); a plain model takes no lam.
            default: the lam when the dial sets none.

        Returns:
            The LamSpec, or None when not `fused`.

        Raises:
            DialError: a lam for a plain model, or lam_turns without a chat.
        """
        given = self.given(("lam", "lam_turns", "lam_think", "lam_answer"))
        if not fused:
            if given or self.thinking_landing == SOFT:
                raise self.error("lam applies to InRa and DeRa models; this is a plain model, with a single "
                                 "path", given or ["thinking_landing"])  # fmt: skip
            return None
        if self.lam == AUTO:
            return AutoLam(self.policy)  # type: ignore[arg-type]  (parse_dial refuses auto without a policy)
        if self.lam_turns is not None:
            if messages is None:
                raise self.error("lam_turns applies to chat completions only", ["lam_turns"])
            done = sum(1 for m in messages if m.get("role") == "assistant")
            return self.lam_turns[min(done, len(self.lam_turns) - 1)]
        if self.lam_think is not None:
            return LamSchedule.think_answer(self.lam_think, self.lam_answer, self.lam_marker)  # type: ignore[arg-type]
        return self.lam if self.lam is not None else float(default)

    def limits(self) -> ThinkingLimits:
        """The hard thinking limits (with lam_marker, the end marker they force)."""
        return ThinkingLimits(self.thinking_token_budget, self.min_thinking_tokens or 0, self.thinking_closing,
                              self.lam_marker, self.lam_start_marker, self.landing)  # fmt: skip

    @property
    def needs_marker(self) -> list[str]:
        """The fields that make this dial need the tokenizer's think-end marker (empty when none does)."""
        needs = self.given(("thinking_token_budget", "lam_think"))
        return needs + (["min_thinking_tokens"] if self.min_thinking_tokens else [])

    def check_tokenizer(self, tokenizer) -> None:
        """The tokenizer has the think marker this dial needs, and the closing text fits the budget.

        Raises:
            DialError: `missing_think_marker` naming the fields that need it, or the closing text's problem.
        """
        if not self.needs_marker:
            return
        try:
            thinking_plan(tokenizer, 0.0, 0.0, **self.limits().plan_args(0.0))
        except MissingThinkMarker as e:
            raise self.error(str(e), [*self.needs_marker, *self.given(["lam_marker"])],
                             "missing_think_marker") from e  # fmt: skip
        except ValueError as e:
            raise self.error(str(e), ["thinking_closing", "thinking_token_budget"]) from e


def dial_fields() -> list[tuple[str, Mapping[str, Any]]]:
    """(name, metadata) of each field a request may send: `check`, `type` (of one value), `help`, `flag` (the
    CLI's name, or None), `many` (the CLI takes several values). The surfaces build their schemas and flags
    from this."""
    return [(f.name, f.metadata) for f in fields(Dial) if not f.metadata.get("internal")]


FIELD_NAMES: tuple[str, ...] = tuple(name for name, _ in dial_fields())


# ------------------------------------------------------------------------------------- reasoning_effort
def expand_effort(explicit: Mapping[str, Any], effort: Any) -> tuple[dict[str, Any], frozenset[str]]:
    """A request's dial fields with `effort` expanded under them: the fields the client sent win, the lam
    fields as a group (any of lam, lam_turns, lam_think, lam_answer drops the effort's lam, schedule and
    marker), the thinking limits one by one. A field sent as None counts as not sent.

    Args:
        explicit: the request's fields (name -> value).
        effort: the effort the request names, or None.

    Returns:
        (the fields to validate and serve, the names among them that came from the effort).
    """
    out = dict(explicit)
    if effort is None:
        return out, frozenset()
    own = effort.dial()
    if any(explicit.get(k) is not None for k in REQUEST_LAM_KEYS):
        own = {k: v for k, v in own.items() if k not in EFFORT_LAM_KEYS}
    taken = {k: v for k, v in own.items() if explicit.get(k) is None}
    return out | taken, frozenset(taken)


def blame(keys: Iterable[str], taken: frozenset[str]) -> str | None:
    """The field to name for an error about `keys`: the first one the client sent, None when all came from
    the effort (the error is then the effort's: name reasoning_effort)."""
    return next((k for k in keys if k not in taken), None)


# ------------------------------------------------------------------------------------------------ parsing
def parse_dial(
    values: Mapping[str, Any],
    calibration: EffortTable | None = None,
    *,
    lam_range: tuple[float | None, float | None] = (None, None),
    native_effort: bool = False,
    ignore_unknown: bool = False,
) -> Dial:
    """Parse and validate a request's dial fields, with its reasoning_effort expanded under them.

    Args:
        values: field name -> value, as the client sent them (a value of None is refused: leave the key out).
        calibration: the checkpoint's effort table, or None.
        lam_range: (lam_min, lam_max) the surface allows (a server's bounds); None for no bound.
        native_effort: the chat template reads reasoning_effort itself (gpt-oss): without a calibration the
            level then goes to the template alone, as in vLLM.
        ignore_unknown: keys that do not look like dial fields belong to someone else (vLLM's extra_args);
            a key that looks like one (`lam_thnik`) is refused either way.

    Returns:
        The validated Dial.

    Raises:
        DialError: naming the field at fault, or reasoning_effort for a value the effort supplied.

    Example:
        >>> parse_dial({"lam_think": -0.5, "lam_answer": 1.0, "thinking_token_budget": 64}).lam_spec()
        LamSchedule(lams=(-0.5, 1.0), markers=())
    """
    checks = dict(dial_fields())
    explicit = {k: checks[k]["check"](k, v) for k, v in _known(values, ignore_unknown).items()}
    name = explicit.pop("reasoning_effort", None)
    effort = _effort(name, calibration, native_effort)
    merged, taken = expand_effort(explicit, effort)
    merged = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
    template = dict(effort.chat_template_kwargs or {}) if effort is not None else {}
    dial = _calibrated(
        Dial(**merged, reasoning_effort=name, taken=taken, template_kwargs=template), calibration
    )
    _check_together(dial, lam_range)
    return dial


def no_policy(what: str, calibration: EffortTable | None) -> str:
    """The message of a request for lam auto that this model cannot serve, with the way to calibrate it."""
    has = "has no auto policy" if calibration is not None else "has no calibration"
    return (f"{what} is chosen by the policy that flexrealign calibrate fits, and this model {has}. Create one "
            f"with: {CALIBRATE_HINT}")  # fmt: skip


class _AutoEffort:
    """reasoning_effort "auto": it stands for lam "auto" (the calibration's policy)."""

    chat_template_kwargs = None

    @staticmethod
    def dial() -> dict[str, Any]:
        return {"lam": AUTO}


def _calibrated(dial: Dial, calibration: EffortTable | None) -> Dial:
    """The parts of `dial` the calibration decides: the policy of lam auto, and the soft landing of a budget
    (the default landing where the checkpoint has a calibration; the hard cut alone where it has none)."""
    policy = getattr(calibration, "auto", None)
    if dial.lam == AUTO and policy is None:
        raise dial.error(
            no_policy("lam auto", calibration) + " (or send a number)", ["lam"], "no_auto_policy"
        )
    if dial.thinking_landing is not None and dial.thinking_token_budget is None:
        raise dial.error("thinking_landing says how a thinking budget ends: give thinking_token_budget",
                         ["thinking_landing"])  # fmt: skip
    mode = dial.thinking_landing or (DEFAULT_LANDING if calibration is not None else HARD)
    if not dial.thinking_token_budget or mode == HARD:  # a budget of 0 closes at once: nothing to steer
        return dataclasses.replace(dial, policy=policy if dial.lam == AUTO else None)
    if calibration is None:
        raise dial.error("a soft landing steers by the calibrated lam -> thinking tokens curve, and this model "
                         f"has no calibration. Create one with: {CALIBRATE_HINT} (or send thinking_landing: "
                         "hard)", ["thinking_landing"], "no_calibration")  # fmt: skip
    return dataclasses.replace(
        dial, policy=policy if dial.lam == AUTO else None, landing=calibration.landing()
    )


def _known(values: Mapping[str, Any], ignore_unknown: bool) -> dict[str, Any]:
    """The dial fields of `values`; DialError for an unknown key (naming the closest field)."""
    for key, value in values.items():
        if key in FIELD_NAMES or (ignore_unknown and not str(key).lower().startswith(LOOKALIKE)):
            continue
        close = difflib.get_close_matches(str(key), FIELD_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DialError(f"unknown field {key!r}{hint}; the dial fields are {', '.join(FIELD_NAMES)}", str(key),
                        "unknown_field", value)  # fmt: skip
    return {k: v for k, v in values.items() if k in FIELD_NAMES}


def _effort(name: str | None, calibration: EffortTable | None, native: bool) -> Any:
    """The calibrated effort `name` stands for; never ignored silently (but see `native_effort`)."""
    if name == AUTO and getattr(calibration, "auto", None) is not None:
        return _AutoEffort()
    if name == AUTO:
        raise DialError(
            no_policy("reasoning_effort auto", calibration), "reasoning_effort", "no_auto_policy", name
        )
    if name is None or (native and calibration is None):
        return None
    if calibration is None:
        raise DialError(f"reasoning_effort needs a calibration of this model, and it has none. Create one "
                        f"with: {CALIBRATE_HINT} (or send lam and thinking_token_budget instead)",
                        "reasoning_effort", "no_calibration", name)  # fmt: skip
    effort = calibration.efforts.get(name)
    if effort is None:
        raise DialError(f"reasoning_effort {name!r} is not offered by this model; it offers: "
                        f"{', '.join(calibration.efforts)}", "reasoning_effort", value=name)  # fmt: skip
    return effort


def _check_together(dial: Dial, lam_range: tuple[float | None, float | None]) -> None:
    """The checks that look at several fields (or at a surface's lam range); DialError naming one of them."""
    given = dial.given(("lam", "lam_turns", "lam_think", "lam_answer"))
    if len({"think" if k in ("lam_think", "lam_answer") else k for k in given}) > 1:
        raise dial.error("give only one of lam, lam_turns, or lam_think with lam_answer", given)
    if (dial.lam_think is None) != (dial.lam_answer is None):
        raise dial.error("lam_think and lam_answer go together", dial.given(("lam_think", "lam_answer")))
    lo, hi = lam_range
    for name in given:
        value = getattr(dial, name)
        value = dial.policy.lams if value == AUTO and dial.policy is not None else value
        for v in value if isinstance(value, tuple) else (value,):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise dial.error(f"{name}={v} is outside this server's range [{lo}, {hi}]", [name],
                                 "lam_out_of_range")  # fmt: skip
    conflict = limit_conflict({k: getattr(dial, k) for k in LIMIT_KEYS})
    if conflict is not None:
        raise dial.error(*conflict)


__all__ = ["CALIBRATE_HINT", "FIELD_NAMES", "Dial", "DialError", "LamSchedule", "LamSpec", "ThinkingLimits",
           "blame", "dial_fields", "expand_effort", "parse_dial"]  # fmt: skip
