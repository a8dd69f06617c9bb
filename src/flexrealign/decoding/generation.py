"""Batched generation for InRaModel, DeRa and plain Hugging Face models, with per-prompt and scheduled lam.

One loop serves all three: left-padded prompts, a KV cache, per-row lam and sampling parameters, stop
strings and a streaming callback. The engine knows nothing about training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from flexrealign.core.fused import FusedCausalLM, PathCache
from flexrealign.core.fusion import ALIGNED, REF, as_lam_tensor, needed_paths
from flexrealign.core.keywords import refuse_unknown_keywords
from flexrealign.decoding.adaptive import AUTO, AutoLam, Landing
from flexrealign.decoding.dial import CALIBRATE_HINT, DialError, parse_dial
from flexrealign.decoding.prompts import (  # noqa: F401  (re-exported: generation's public helpers)
    Messages,
    Prompt,
    encode_prompts,
    eos_ids,
    lam_for_next_turn,
    left_pad,
    pad_token_id,
    suppressed_ids,
)
from flexrealign.decoding.rows import (  # noqa: F401  (re-exported)
    IncrementalDetokenizer,
    LamSchedule,
    LamSpec,
    RowState,
    ThinkingLimits,
    row_thinking,
)
from flexrealign.decoding.sampling import RowSampling, Sampler, row_seed, seeded_generators
from flexrealign.decoding.step import AutoChoice, check_auto_policy, decode_step, next_logits, row_lams

StreamCallback = Callable[[int, str], None]


@dataclass
class GenerationResult:
    """Per prompt: the generated text, its token ids (generated only, EOS included) and why it stopped."""

    texts: list[str]
    token_ids: list[list[int]]
    num_tokens: list[int]
    finish_reasons: list[str]  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: list[int] = field(default_factory=list)
    reasoning_tokens: list[int] = field(default_factory=list)  # thinking tokens (0 without think markers)
    thinking_cut: list[bool] = field(default_factory=list)  # the budget's hard cut ended a thought
    auto_lams: list[float | None] = field(
        default_factory=list
    )  # the lam chosen for a lam auto row, else None


# ------------------------------------------------------------------------------------------------ decoding
@refuse_unknown_keywords
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompt | Sequence[Prompt],
    lam: LamSpec | Sequence[LamSpec] | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | Sequence[int] | None = None,
    stop: Sequence[str] | None = None,
    stream: StreamCallback | None = None,
    lam_turns: Sequence[float] | None = None,
    chat_template_kwargs: dict | None = None,
    batch_size: int | None = None,
    ignore_eos: bool = False,
    *,
    thinking_token_budget: int | Sequence[int | None] | None = None,
    min_thinking_tokens: int | Sequence[int] = 0,
    thinking_closing: str | None = None,
    think_marker: str | None = None,
    thinking_landing: str | None = None,
    thinking: ThinkingLimits | Sequence[ThinkingLimits] | None = None,
) -> GenerationResult:
    """Generate a completion for each prompt (a string, or a list of chat messages rendered by the chat template).

    Each step samples from the model's next-token logits (B, V); for InRaModel / DeRa those are the paper's
    Eq. 5 fusion, softmax(lam * h_aligned + (1 - lam) * h_ref), at each row's current lam.

    Args:
        model: an `InRaModel`, a `DeRa`, or a plain Hugging Face causal LM.
        tokenizer: the model's tokenizer (its chat template renders message prompts).
        prompts: one prompt or a list; a prompt is a string or a list of {"role", "content"} messages.
        max_new_tokens: the most tokens generated per prompt.
        lam: for InRaModel / DeRa, one value for all prompts, one per prompt, or a `LamSchedule` (think at one
            lam until the think-end marker, answer at another); default 1.0 (the aligned model). Plain models
            take None.
        lam_turns: for message prompts, one lam per assistant turn; the turn being generated picks its entry.
        temperature: 0 is greedy; top_k 0 and top_p 1 disable those filters.
        seed: makes sampling reproducible. An int seeds prompt i with stream i of that seed; a list gives each
            prompt its own seed (as one server request with that seed). A prompt's sample depends on its seed
            and index only: not on batch_size, on the other prompts, or on which of them are generated
            together.
        stop: strings that end a completion (not included in the text). stream(index, text_delta) is called
            as text is produced. batch_size splits many prompts into batches of that size.
        ignore_eos: keep generating past EOS up to max_new_tokens (for benchmarks, as in vLLM).
            Where the settings come from: temperature, top_p, top_k, seed and the limits from these arguments
            only; EOS from the model's `generation_config.eos_token_id` (chat models list several) and the
            tokenizer's (`prompts.eos_ids`), and its `suppress_tokens` are never sampled (as in Hugging Face
            `generate`); nothing else of `generation_config` is read.
        thinking_token_budget: at most this many thinking tokens (one value, or one per prompt; None: no cap).
            When it runs out, `thinking_closing` (if any) and then the think-end marker are forced, and the
            answer follows at the answer lam. min_thinking_tokens: EOS and the end marker are banned until
            that many thinking tokens. think_marker overrides the tokenizer's think-end marker (text).
        thinking_landing: how a budget ends: "soft" steers lam toward shorter thinking first, by the
            calibration of the folder the model was loaded from (`flexrealign.decoding.adaptive`); "hard"
            only cuts. Default: soft where there is a calibration, as the server and the vLLM plugin do.
        thinking: the same limits as one typed `flexrealign.ThinkingLimits` (one for all prompts, or one per
            prompt), as `flexrealign.decoding.dial.parse_dial` returns them (`Dial.limits()`): its fields
            `thinking_token_budget`, `min_thinking_tokens`, `closing` (= thinking_closing), `marker`
            (= think_marker) and `start_marker` (the think-start marker, which only this form takes). Give
            either this or the four keywords above.

    Returns:
        `GenerationResult`, one entry per prompt in each list: `texts`, `token_ids` (generated ids, EOS
        included), `num_tokens`, `finish_reasons` ("stop" or "length"), `prompt_tokens`, `reasoning_tokens`.

    Raises:
        ValueError: a bad lam (non-finite, wrong count, or a lam given to a plain model) or sampling value
            (max_new_tokens < 1, temperature < 0, top_p outside (0, 1], top_k < 0); a thinking_closing
            longer (in tokens) than its budget.
        MissingThinkMarker: (`flexrealign.decoding.thinking`, a ValueError) a schedule or thinking budget is
            asked of a tokenizer with no think marker.
        TypeError: a keyword it does not take (a typo is named with its close match), never dropped.

    Example:
        ```python
        from flexrealign import InRaModel, LamSchedule, generate

        model = InRaModel.from_pretrained("out/inra")
        tok = AutoTokenizer.from_pretrained("out/inra")  # saved by save_pretrained(..., tokenizer=tok)
        chat = [{"role": "user", "content": "What is 17 * 23?"}]
        out = generate(model, tok, [chat], lam=LamSchedule.think_answer(-0.5, 1.0), thinking_token_budget=512)
        print(out.texts[0], out.finish_reasons[0], out.reasoning_tokens[0])
        out = generate(model, tok, ["Hi", "Hello"], lam=[0.0, 1.5], temperature=0.7, seed=0)
        ```
    """
    prompts = [prompts] if isinstance(prompts, str) or _is_messages(prompts) else list(prompts)
    specs = _lam_specs(model, prompts, lam, lam_turns)
    loose = (thinking_token_budget, min_thinking_tokens or None, thinking_closing, think_marker)
    if thinking is not None and any(v is not None for v in loose):
        raise ValueError("give the thinking limits either as `thinking` or as the four keywords, not both")
    if thinking is not None:
        limits = [thinking] * len(prompts) if isinstance(thinking, ThinkingLimits) else list(thinking)
        if not all(isinstance(x, ThinkingLimits) for x in limits):
            raise TypeError(
                f"thinking takes ThinkingLimits (flexrealign.ThinkingLimits), got {thinking!r:.80}"
            )
        if len(limits) != len(prompts):
            raise ValueError(f"give one ThinkingLimits per prompt ({len(prompts)}), or one for all")
    else:
        landing = _landing(model, thinking_landing, thinking_token_budget)
        limits = _limits(
            len(prompts), thinking_token_budget, min_thinking_tokens, thinking_closing, think_marker, landing
        )
    check_sampling(max_new_tokens, temperature, top_p, top_k)
    size = batch_size or len(prompts)
    seeds = prompt_seeds(seed, len(prompts))
    sampling = RowSampling(temperature=temperature, top_p=top_p, top_k=top_k)
    parts = [
        _generate_batch(
            model, tokenizer,
            _Job(prompts[i : i + size], specs[i : i + size], limits[i : i + size], max_new_tokens, sampling,
                 seeds[i : i + size], list(stop or ()), _offset_stream(stream, i), chat_template_kwargs,
                 ignore_eos),
        )
        for i in range(0, len(prompts), size)
    ]  # fmt: skip
    return GenerationResult(
        *(sum((getattr(p, f) for p in parts), []) for f in GenerationResult.__dataclass_fields__)
    )


@dataclass
class _Job:
    """One batch of `generate`: prompts with their lam specs and thinking limits, and the decode settings."""

    prompts: list[Prompt]
    specs: list[LamSpec]
    limits: list[ThinkingLimits]
    max_new_tokens: int
    sampling: RowSampling  # the same for every prompt of a `generate` call
    seed: list[int | None]  # one generator seed per prompt (prompt_seeds)
    stop: list[str]
    stream: StreamCallback | None
    chat_kwargs: dict | None
    ignore_eos: bool


def _landing(model: torch.nn.Module, landing: str | None, budget) -> Landing | None:
    """The soft landing of `generate`'s budget keywords: parsed as a request's `thinking_landing` is, against
    the calibration of the folder the model was loaded from."""
    from flexrealign.decoding.calibration import load_calibration

    if budget is None and landing is None:
        return None
    cal = load_calibration(getattr(model, "source", None)) if isinstance(model, FusedCausalLM) else None
    one = next((b for b in (budget if isinstance(budget, (list, tuple)) else [budget]) if b), None)
    dial = {"thinking_token_budget": one} if one is not None else {}
    try:
        return parse_dial(dial | ({"thinking_landing": landing} if landing is not None else {}), cal).landing
    except DialError as e:
        raise ValueError(e.message) from e


def _limits(
    n: int, budget, min_tokens, closing: str | None, marker: str | None, landing: Landing | None = None
) -> list[ThinkingLimits]:
    budgets = list(budget) if isinstance(budget, (list, tuple)) else [budget] * n
    mins = list(min_tokens) if isinstance(min_tokens, (list, tuple)) else [min_tokens] * n
    if len(budgets) != n or len(mins) != n:
        raise ValueError(
            f"give one thinking_token_budget / min_thinking_tokens per prompt ({n}), or one for all"
        )
    if closing is not None and budget is None:
        raise ValueError("thinking_closing is forced when the budget runs out: give thinking_token_budget")
    return [
        ThinkingLimits(b, m, None if b is None else closing, marker, landing=landing if b else None)
        for b, m in zip(budgets, mins, strict=True)
    ]


@torch.inference_mode()
def _generate_batch(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, job: _Job
) -> GenerationResult:
    ids = encode_prompts(tokenizer, job.prompts, job.chat_kwargs)
    x, mask = left_pad(ids, pad_token_id(tokenizer), model.device)  # (B, T)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions skip the left padding, as in HF generate
    eos = set() if job.ignore_eos else eos_ids(model, tokenizer)
    rows = [
        RowState(
            spec, tokenizer, job.stop, eos, row_thinking(tokenizer, spec, lim, p, eos), job.max_new_tokens
        )
        for spec, lim, p in zip(job.specs, job.limits, ids, strict=True)
    ]
    sampler = Sampler([job.sampling] * len(rows), seeded_generators(job.seed, model.device), model.device)
    cache = _new_cache(model, rows)
    lam = row_lams(rows, None, model.device)  # (B,)
    suppressed = suppressed_ids(model, model.device)  # (K,) rows without a token inside the tokenizer
    choose = AutoChoice.of(rows, lam)  # lam auto rows: chosen at the first step, from the prompt's state
    auto_lams: list[float | None] = [None] * len(rows)
    while True:
        logits = next_logits(model, x, mask, pos, cache, lam, choose)  # (B, V)
        if choose is not None:
            choose, auto_lams = None, choose.resolve()
        nxt, deltas = decode_step(logits, rows, sampler, vocab_size=len(tokenizer), suppressed=suppressed)
        for i, delta in enumerate(deltas):
            _emit(job.stream, i, delta)
        if all(r.finished for r in rows):
            break
        lam = row_lams(rows, lam, model.device)
        x, pos = nxt.unsqueeze(-1), pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)  # (B, T + t)
    return GenerationResult(
        texts=[r.text for r in rows],
        token_ids=[r.ids for r in rows],
        num_tokens=[len(r.ids) for r in rows],
        finish_reasons=[r.finish_reason for r in rows],
        prompt_tokens=[len(p) for p in ids],
        reasoning_tokens=[r.reasoning_tokens for r in rows],
        thinking_cut=[r.thinking_cut for r in rows],
        auto_lams=auto_lams,
    )


def _new_cache(model: torch.nn.Module, rows: list[RowState]) -> PathCache | DynamicCache:
    """A cache for the paths every lam the rows may take needs: a schedule's stages are decided as tokens
    arrive, so both of its lams count from the start."""
    if not isinstance(model, FusedCausalLM):
        return DynamicCache(config=model.config)
    return model.new_cache(needed_paths(torch.tensor([v for r in rows for v in r.possible_lams])))


def _emit(stream: StreamCallback | None, index: int, delta: str) -> None:
    if stream is not None and delta:
        stream(index, delta)


def _offset_stream(stream: StreamCallback | None, offset: int) -> StreamCallback | None:
    return None if stream is None else (lambda i, d: stream(i + offset, d))


def _is_messages(p: object) -> bool:
    return isinstance(p, list) and len(p) > 0 and all(isinstance(m, dict) for m in p)


def prompt_seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    """The generator seed of each of n prompts (see `generate`'s `seed`)."""
    if seed is None:
        return [None] * n
    if isinstance(seed, bool) or not isinstance(seed, (int, Sequence)):
        raise ValueError(f"seed must be an int, one int per prompt, or None; got {seed!r:.80}")
    if isinstance(seed, int):
        return [row_seed(seed, i) for i in range(n)]
    if len(seed) != n or not all(isinstance(x, int) and not isinstance(x, bool) for x in seed):
        raise ValueError(f"seed as a list needs one int per prompt ({n}), got {list(seed)!r:.80}")
    return [row_seed(x) for x in seed]


def _lam_specs(model, prompts, lam, lam_turns) -> list[LamSpec]:
    """One lam spec per prompt, validated; plain models take no lam."""
    if not isinstance(model, FusedCausalLM):
        if lam is not None or lam_turns is not None:
            raise ValueError(f"lam applies to InRaModel and DeRa; {type(model).__name__} has a single path")
        return [0.0] * len(prompts)
    if lam_turns is not None:
        if lam is not None:
            raise ValueError("give either lam or lam_turns, not both")
        if not all(_is_messages(p) for p in prompts):
            raise ValueError("lam_turns needs prompts given as chat messages")
        return [lam_for_next_turn(p, lam_turns) for p in prompts]
    lam = 1.0 if lam is None else lam
    one = isinstance(lam, (int, float, str, LamSchedule, AutoLam))
    specs = [lam] * len(prompts) if one else list(lam)
    if len(specs) != len(prompts):
        raise ValueError(f"got {len(specs)} lam values for {len(prompts)} prompts")
    specs = [_auto_lam(model) if s == AUTO else s for s in specs]
    for s in specs:
        if isinstance(s, AutoLam):
            check_auto_policy(model, s.policy)
        elif not isinstance(s, LamSchedule):
            as_lam_tensor(s, 1)
    return specs


def _auto_lam(model: FusedCausalLM) -> AutoLam:
    """lam "auto": the policy of the calibration in the folder `model` was loaded from."""
    from flexrealign.decoding.calibration import load_calibration

    cal = load_calibration(getattr(model, "source", None))
    if cal is None or cal.auto is None:
        has = (
            "has no auto policy" if cal is not None else "was not loaded from a calibrated checkpoint folder"
        )
        raise ValueError(f'lam "auto" is chosen by the policy that flexrealign calibrate fits, and this model '
                         f"{has}. Create one with: {CALIBRATE_HINT}; or pass lam=AutoLam(policy)")  # fmt: skip
    return AutoLam(cal.auto)


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    """Raise ValueError naming the first sampling parameter that is out of range."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not (temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")


@refuse_unknown_keywords(also=generate)
def chat(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[str]],
    lam_turns: Sequence[float] | None = None,
    system: str | None = None,
    **generate_kwargs,
) -> list[Messages]:
    """Run multi-turn chats turn by turn: user turn k is answered with lam_turns[k] (paper App. F.3).

    conversations: per chat, its user messages. Returns the full message lists including the answers.
    """
    chats: list[Messages] = [[{"role": "system", "content": system}] if system else [] for _ in conversations]
    for turn in range(max(map(len, conversations), default=0)):
        live = [i for i, c in enumerate(conversations) if turn < len(c)]
        for i in live:
            chats[i].append({"role": "user", "content": conversations[i][turn]})
        kwargs = dict(generate_kwargs)
        if lam_turns is not None:
            kwargs["lam_turns"] = lam_turns
        out = generate(model, tokenizer, [chats[i] for i in live], **kwargs)
        for i, text in zip(live, out.texts, strict=True):
            chats[i].append({"role": "assistant", "content": text})
    return chats


__all__ = [
    "GenerationResult",
    "LamSchedule",
    "ThinkingLimits",
    "chat",
    "generate",
    "lam_for_next_turn",
    "REF",
    "ALIGNED",
]
