"""Batched generation for InRaModel, DeRa and plain Hugging Face models, with per-prompt and scheduled lam.

One loop serves all three: left-padded prompts, a KV cache, per-row lam and sampling parameters, stop
strings and a streaming callback. The engine knows nothing about training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from flexrealign.fused import FusedCausalLM, PathCache
from flexrealign.fusion import ALIGNED, REF, as_lam_tensor, mask_untokenized, needed_paths
from flexrealign.hf_compat import with_cache
from flexrealign.sampling import row_seed, sample_next, seeded_generators
from flexrealign.stopping import StopStream

Messages = list[dict[str, str]]
Prompt = str | Messages | list[int]  # text, chat messages, or token ids (used as they are, like vLLM's)
StreamCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class LamSchedule:
    """lam that changes during one generation: `lams[i]` applies until `markers[i]` appears in the output.

    `LamSchedule.think_answer(-0.5, 1.0)` thinks with lam = -0.5 until `</think>`, then answers with lam = 1.
    """

    lams: tuple[float, ...]
    markers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lams", tuple(float(x) for x in self.lams))
        object.__setattr__(self, "markers", tuple(self.markers))
        as_lam_tensor(list(self.lams), len(self.lams))  # finite check
        if len(self.markers) != len(self.lams) - 1 or any(not m for m in self.markers):
            raise ValueError(f"LamSchedule needs one non-empty marker between consecutive lams, got {self}")

    @classmethod
    def think_answer(cls, think: float, answer: float, marker: str = "</think>") -> LamSchedule:
        return cls((think, answer), (marker,))


LamSpec = float | LamSchedule


@dataclass
class GenerationResult:
    """Per prompt: the generated text, its token ids (generated only, EOS included) and why it stopped."""

    texts: list[str]
    token_ids: list[list[int]]
    num_tokens: list[int]
    finish_reasons: list[str]  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ prompts
def lam_for_next_turn(messages: Messages, lam_turns: Sequence[float]) -> float:
    """The lam of the assistant turn about to be generated: one value per assistant turn (paper App. F.3)."""
    if not lam_turns:
        raise ValueError("lam_turns must hold at least one lam")
    done = sum(1 for m in messages if m.get("role") == "assistant")
    return float(lam_turns[min(done, len(lam_turns) - 1)])


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], chat_template_kwargs: dict | None = None
) -> list[list[int]]:
    """Token ids per prompt; message lists go through the tokenizer's chat template, as in HF; lists of token
    ids are taken as they are (a harness that tokenised the prompt itself, such as lm-eval)."""
    ids = []
    for p in prompts:
        if isinstance(p, str):
            ids.append(tokenizer(p, add_special_tokens=True)["input_ids"])
            continue
        if isinstance(p, list) and all(isinstance(t, int) for t in p):
            ids.append(list(p))
            continue
        if not isinstance(p, list) or not all(isinstance(m, dict) and "role" in m for m in p):
            raise ValueError(
                f"a prompt must be a string or a list of {{'role', 'content'}} messages, got {p!r:.80}"
            )
        if tokenizer.chat_template is None:
            raise ValueError("prompts given as messages need a tokenizer with a chat_template")
        text = tokenizer.apply_chat_template(
            p, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    if any(len(x) == 0 for x in ids):
        raise ValueError("empty prompt: at least one token is needed to condition on")
    return ids


def left_pad(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a (B, T) batch; returns input_ids and attention_mask."""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return input_ids.to(device), mask.to(device)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills left padding (masked out, so any valid id works): pad, else EOS, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


def eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """EOS ids from the generation config (chat models list several) and the tokenizer."""
    gen_cfg = getattr(_hf_model(model), "generation_config", None)
    found = getattr(gen_cfg, "eos_token_id", None)
    ids = set(found if isinstance(found, list) else [found] if found is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    for attr in ("base", "ref_model"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


# ---------------------------------------------------------------------------------------------- row state
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
    """One sequence being decoded: its tokens, text, lam stage and finish reason.

    Stop strings follow `flexrealign.stopping`: `push` and `finish` return only text that no stop string can
    take back, so the deltas they return always add up to `text`, the final text.
    """

    def __init__(
        self, spec: LamSpec, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], eos: set[int]
    ) -> None:
        self.schedule = spec if isinstance(spec, LamSchedule) else LamSchedule((float(spec),))
        self.stops = StopStream(stop)
        self.eos = eos
        self.detok = IncrementalDetokenizer(tokenizer)
        self.ids: list[int] = []
        self.stage, self.stage_start = 0, 0
        self.finish_reason: str | None = None

    @property
    def text(self) -> str:
        return self.stops.text

    @property
    def lam(self) -> float:
        return self.schedule.lams[self.stage]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> str:
        """Append a sampled token; returns the new text that may be streamed (maybe empty: EOS, incomplete
        bytes, or text that may start a stop string)."""
        self.ids.append(token)
        if token in self.eos:
            return self.finish("stop")
        self.detok.ids.append(token)
        return self._append_text(self.detok.flush(final=False))

    def finish(self, reason: str) -> str:
        """End the row (no-op if it has ended); returns the text held back until now."""
        if self.finish_reason is not None:
            return ""
        tail = self._append_text(self.detok.flush(final=True))
        self.finish_reason = self.finish_reason or reason
        return tail + self.stops.flush()

    def _append_text(self, delta: str) -> str:
        out = self.stops.add(delta)
        if self.stops.matched is not None:
            self.finish_reason = "stop"
        while self.stage < len(self.schedule.markers):
            hit = self.text.find(self.schedule.markers[self.stage], self.stage_start)
            if hit < 0:
                break
            self.stage += 1
            self.stage_start = hit + len(self.schedule.markers[self.stage - 1])
        return out


# ------------------------------------------------------------------------------------------------ decoding
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
) -> GenerationResult:
    """Generate a completion for each prompt (a string, or a list of chat messages rendered by the chat template).

    lam: for InRaModel / DeRa, one value for all prompts, one per prompt, or a `LamSchedule` (e.g. think with
      one lam until `</think>`, answer with another); default 1.0 (the aligned model). Plain models take None.
    lam_turns: for message prompts, one lam per assistant turn; the turn being generated picks its entry.
    temperature 0 is greedy; top_k 0 and top_p 1 disable those filters.
    seed: makes sampling reproducible. An int seeds prompt i with stream i of that seed; a list gives each
      prompt its own seed (as one server request with that seed). A prompt's sample depends on its seed and
      index only: not on batch_size, on the other prompts, or on which of them are generated together.
    stop: strings that end a completion (not included in the text). stream(index, text_delta) is called as
      text is produced. batch_size splits many prompts into batches of that size.
    ignore_eos: keep generating past EOS up to max_new_tokens (for benchmarks, as in vLLM).
    """
    prompts = [prompts] if isinstance(prompts, str) or _is_messages(prompts) else list(prompts)
    specs = _lam_specs(model, prompts, lam, lam_turns)
    check_sampling(max_new_tokens, temperature, top_p, top_k)
    size = batch_size or len(prompts)
    seeds = prompt_seeds(seed, len(prompts))
    parts = [
        _generate_batch(
            model, tokenizer, prompts[i : i + size], specs[i : i + size], max_new_tokens,
            (temperature, top_p, top_k), seeds[i : i + size], list(stop or ()),
            _offset_stream(stream, i), chat_template_kwargs, ignore_eos,
        )
        for i in range(0, len(prompts), size)
    ]  # fmt: skip
    return GenerationResult(
        *(sum((getattr(p, f) for p in parts), []) for f in GenerationResult.__dataclass_fields__)
    )


@torch.inference_mode()
def _generate_batch(
    model, tokenizer, prompts, specs, max_new_tokens, sampling, seed, stop, stream, chat_kwargs, ignore_eos
):
    ids = encode_prompts(tokenizer, prompts, chat_kwargs)
    x, mask = left_pad(ids, pad_token_id(tokenizer), model.device)  # (B, T)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions skip the left padding, as in HF generate
    eos = set() if ignore_eos else eos_ids(model, tokenizer)
    rows = [RowState(spec, tokenizer, stop, eos) for spec in specs]
    B = len(rows)
    temperature, top_p, top_k = (torch.full((B,), v, device=model.device) for v in sampling)
    gens = seeded_generators(seed, model.device)
    dual = isinstance(model, FusedCausalLM)
    all_lams = [v for r in rows for v in r.schedule.lams]
    paths = needed_paths(torch.tensor(all_lams)) if dual else ()
    cache = model.new_cache(paths) if dual else DynamicCache(config=model.config)
    for _ in range(max_new_tokens):
        lam = torch.tensor([r.lam for r in rows], device=model.device)
        logits = mask_untokenized(
            next_logits(model, x, mask, pos, cache, lam, paths), len(tokenizer)
        )  # (B, V)
        nxt = sample_next(logits, temperature, top_k.long(), top_p, gens)  # (B,)
        for i, r in enumerate(rows):
            if not r.finished:
                _emit(stream, i, r.push(int(nxt[i])))
        if all(r.finished for r in rows):
            break
        x, pos = nxt.unsqueeze(-1), pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=-1)  # (B, T + t)
    for i, r in enumerate(rows):
        _emit(stream, i, r.finish("length"))
    return GenerationResult(
        texts=[r.text for r in rows],
        token_ids=[r.ids for r in rows],
        num_tokens=[len(r.ids) for r in rows],
        finish_reasons=[r.finish_reason for r in rows],
        prompt_tokens=[len(p) for p in ids],
    )


def next_logits(
    model: torch.nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    cache: PathCache | DynamicCache,
    lam: torch.Tensor,
    paths: tuple[str, ...],
) -> torch.Tensor:
    """One cached forward step: fp32 logits (B, V) at the last position of x (B, T).

    mask (B, past + T) covers the cached and the new tokens; pos (B, T) holds per-row positions; lam (B,)
    is ignored when paths is () (plain models).
    """
    kwargs = dict(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True) | with_cache(
        model, cache
    )
    if paths:
        kwargs.update(lam=lam, paths=paths)
    return model(**kwargs, logits_to_keep=1).logits[:, -1].float()  # (B, V)


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
    specs = [lam] * len(prompts) if isinstance(lam, (int, float, LamSchedule)) else list(lam)
    if len(specs) != len(prompts):
        raise ValueError(f"got {len(specs)} lam values for {len(prompts)} prompts")
    for s in specs:
        if not isinstance(s, LamSchedule):
            as_lam_tensor(s, 1)
    return specs


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


__all__ = ["GenerationResult", "LamSchedule", "chat", "generate", "lam_for_next_turn", "REF", "ALIGNED"]
