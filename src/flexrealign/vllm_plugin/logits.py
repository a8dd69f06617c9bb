"""The V1 logits processor that fuses the two paths with each request's lam (paper Eq. 5).

The InRa model's `compute_logits` returns one (B, 2V) row per request: [aligned | ref]. This processor
reads each request's lam from `SamplingParams.extra_args["lam"]` (`vllm_xargs` over HTTP; default 1.0),
returns `lam * aligned + (1 - lam) * ref` in fp32, (B, V), and everything after it in the sampler
(penalties, temperature, top-k/top-p, greedy argmax, processed logprobs) sees an ordinary V-wide row.

vLLM runs its built-in stages before custom processors, on the 2V-wide row, where they touch only the
first V columns (the aligned half):
* bans (bad_words, min_tokens, structured-output masks) write -inf there; `fuse_logits` keeps a token that
  is -inf in either half at -inf for every lam (lam * -inf alone would give +inf for lam < 0);
* logit_bias adds b there, which fusion scales to lam * b; the missing (1 - lam) * b is added back.
allowed_token_ids (a V-wide mask over a 2V-wide row) and prompt_logprobs (computed outside the sampler,
without processors) cannot work and are refused per request in `validate_params`.

Thinking (`flexrealign.decoding.thinking`, the same state machine as `generate` and `flexrealign serve`): a request
with lam_think/lam_answer, a thinking budget, a minimum or a reasoning_effort (see `requests.py`) gets a
ThinkingState built from its prompt ids when it joins the batch. `update_state` feeds it the request's new
output ids (vLLM hands the processor a live reference to that list) and rebuilds the per-row lam and the
force/ban index tensors only when something changed; `apply` stays a few tensor ops: fuse, keep bans, and
force or ban tokens through the logits (as vLLM's own thinking-budget processor does), with tensors built on
the device by `update_state` and no read back from it.

Rows past the tokenizer's vocabulary (Qwen checkpoints have 151,936 rows for about 151,669 tokens) decode to
nothing, and so do the ids of `generation_config.suppress_tokens`; they are set to -inf after fusion, at every
lam, as `generate` and the server do.

Which paths a step runs: a request whose every lam is 1 needs only the aligned path, one whose every lam is
0 only the reference path (`request_paths`). `update_state` keeps the union over the live batch, and the
model reads it through `live_paths(vllm_config)` before each forward (vLLM calls `update_state` before the
forward of the same step), so a step that no live request needs a path for runs without it. The processor
links itself to the engine's `VllmConfig` (the one object the worker hands both to the model and to the
processors) through a weak reference, so two engines in one process each see their own batch.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from flexrealign.core.fusion import ALIGNED, REF, fuse_checked, mask_untokenized
from flexrealign.decoding.adaptive import AutoLam, AutoPolicy
from flexrealign.decoding.generation import LamSchedule, row_thinking
from flexrealign.decoding.thinking import ThinkingState
from flexrealign.vllm_plugin.requests import (
    DEFAULT_LAM,
    check_markers,
    dial_request,
    record_served_model,
    request_paths,
)

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)
BOTH_PATHS: frozenset[str] = frozenset((ALIGNED, REF))
_LINK = "flexrealign_inra_processor"  # attribute on the engine's VllmConfig: a weakref to its processor


def link_processor(vllm_config: VllmConfig, proc: InRaLogitsProcessor) -> None:
    """Record `proc` as the logits processor of the engine that `vllm_config` configures (a weak reference,
    so the config keeps no dead processor alive)."""
    try:
        setattr(vllm_config, _LINK, weakref.ref(proc))
    except (AttributeError, TypeError):  # a frozen or slotted stand-in: the model then runs both paths
        name = type(vllm_config).__name__
        logger.warning("cannot link the InRa logits processor to %r: every step runs both paths", name)


def live_paths(vllm_config: VllmConfig) -> frozenset[str]:
    """The paths the live batch of the engine configured by `vllm_config` needs.

    Args:
        vllm_config: the engine's config, the object its worker passed to the model and to the processors.

    Returns:
        A subset of {"aligned", "ref"}; both when no processor is linked or its batch is empty (dummy runs).
    """
    proc = linked_processor(vllm_config)
    return BOTH_PATHS if proc is None else proc.live_paths


def linked_processor(vllm_config: VllmConfig) -> InRaLogitsProcessor | None:
    """The logits processor of the engine that `vllm_config` configures, or None."""
    link = getattr(vllm_config, _LINK, None)
    return link() if link is not None else None


def check_request(params: SamplingParams) -> None:
    """Refuse per request what cannot be served with the 2V-wide logits (see the module docstring), and dial
    values that are wrong or that this checkpoint cannot honour (no think marker, no calibration)."""
    check_markers(dial_request(params.extra_args))
    if params.allowed_token_ids:
        raise VLLMValidationError(
            "InRa models do not support allowed_token_ids; use logit_bias or bad_words instead",
            parameter="allowed_token_ids",
        )
    if params.prompt_logprobs:
        raise VLLMValidationError(
            "InRa models do not support prompt_logprobs (only logprobs of generated tokens)",
            parameter="prompt_logprobs",
        )


def stop_token_ids(params: SamplingParams) -> set[int]:
    """Every token that ends this request, as vLLM's scheduler decides (`check_stop`): its EOS (None under
    ignore_eos) and its stop_token_ids, which vLLM fills with the generation_config's EOS list
    (`SamplingParams.update_from_generation_config`: 151643 and 151645 on Qwen3) and the request's own.
    min_thinking_tokens bans them all, as vLLM's own min_tokens processor bans `all_stop_token_ids`."""
    ids = set(params.stop_token_ids or ())
    if params.eos_token_id is not None:
        ids.add(params.eos_token_id)
    return ids


def suppressed_rows(model_config, device: torch.device) -> torch.Tensor | None:
    """(K,) ids of the checkpoint's `generation_config.suppress_tokens`, never sampled (a converted GGUF lists
    its vocabulary's placeholder holes there, `conversion.gguf_vocab`); vLLM itself does not read that field."""
    read = getattr(model_config, "try_get_generation_config", None)
    found = (read() if read is not None else {}).get("suppress_tokens") or []
    return torch.tensor(sorted(set(found)), dtype=torch.long, device=device) if found else None


def tokenizer_size(vllm_config: VllmConfig) -> int | None:
    """How many vocabulary rows have a token: the length of the engine's tokenizer (None without one)."""
    from vllm.tokenizers import cached_tokenizer_from_config

    tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
    return None if tokenizer is None else len(tokenizer)


@dataclass
class _Row:
    """One request's dial state: its lam, its thinking machine (if any) and how much output it has seen."""

    lam: float
    thinking: ThinkingState | None = None
    output: list[int] = field(default_factory=list)  # vLLM's live list of the request's output ids
    seen: int = 0
    auto: AutoPolicy | None = None  # lam auto, until its policy chose (at the request's first step)
    seen_at_join: int = 0  # output ids it joined with: lam auto chooses at the step that samples the next one

    def lam_if(self, lam: float) -> float:
        """The lam of the next step were this request's lam `lam` (its stage and soft landing applied)."""
        t = self.thinking
        return float(lam) if t is None else t.lam_under(t.plan.with_lams(lam, lam))

    def resolve(self, lam: float) -> None:
        """Fix an auto request's lam to the one its policy chose."""
        self.auto = None
        if self.thinking is not None:
            self.thinking.plan = self.thinking.plan.with_lams(lam, lam)
        self.lam = self.thinking.lam if self.thinking is not None else float(lam)

    def advance(self) -> bool:
        """Feed the machine the output ids produced since the last step; True when the lam, the forced token
        or the banned tokens changed (only then are the device tensors rebuilt)."""
        t = self.thinking
        if t is None or len(self.output) == self.seen:
            return False  # outside a block the machine still reads every token: the model may open one
        before = (t.forced, t.banned)
        for token in self.output[self.seen :]:
            if token < 0:  # a placeholder of a token not known yet (async scheduling)
                break
            t.push(token)
            self.seen += 1
        changed = t.lam != self.lam or (t.forced, t.banned) != before
        self.lam = t.lam
        return changed


class InRaLogitsProcessor(LogitsProcessor):
    """Fuses [aligned | ref] (B, 2V) into (B, V) per row with that request's lam, and runs its thinking state."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        check_request(sampling_params)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.vocab_size: int = vllm_config.model_config.get_vocab_size()
        self.num_tokens = tokenizer_size(vllm_config)  # rows at or past it have no token
        self.suppressed = suppressed_rows(vllm_config.model_config, device)  # (K,) nor do these, or None
        self.device = device
        self.model_config = vllm_config.model_config
        if hasattr(self.model_config, "model"):  # the engine process: the config hook ran in the frontend
            record_served_model(self.model_config)
        self.rows: dict[int, _Row] = {}  # persistent-batch row -> dial state
        self.biases: dict[int, dict[int, float]] = {}  # row -> logit_bias, to complete after fusion
        self._tok = None  # the engine's tokenizer, for think markers (loaded on the first dial request)
        self._lam_rows: torch.Tensor | None = None  # (B,) rebuilt after a batch change or a stage switch
        self._force: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, tokens) forced next step
        self._ban: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, tokens) banned next step
        self._bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # logit_bias completion
        self._bias_top = -1  # the highest row with a logit_bias completion
        self._auto: tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, float] | None = (
            None  # `_choose`
        )
        self._picked: tuple[list[int], torch.Tensor] | None = None  # the last step's choices, to resolve
        self.probe_logit: torch.Tensor | None = None  # (B,) lam auto's probe, set by the model each step
        self.paths: dict[int, frozenset[str]] = {}  # row -> the paths that request can ever need
        self.live_paths: frozenset[str] = BOTH_PATHS  # their union over the batch (both when it is empty)
        link_processor(vllm_config, self)

    def is_argmax_invariant(self) -> bool:
        return False  # fusion changes which token is the most likely, so greedy decoding needs it too

    # ------------------------------------------------------------------------------------------- state
    def _tokenizer(self):
        if self._tok is None:
            from vllm.tokenizers.registry import cached_tokenizer_from_config

            self._tok = cached_tokenizer_from_config(self.model_config)
        return self._tok

    def _new_row(self, params: SamplingParams, prompt: list[int] | None, output: list[int]) -> _Row:
        dial = dial_request(params.extra_args)
        auto = dial.lam.policy if isinstance(dial.lam, AutoLam) else None
        lam = (
            dial.lam.lams[0]
            if isinstance(dial.lam, LamSchedule)
            else auto.lam_hard
            if auto
            else float(dial.lam)
        )
        if not dial.needs_state:
            return _Row(lam, output=output, auto=auto, seen_at_join=len(output))
        try:
            state = row_thinking(
                self._tokenizer(), dial.lam, dial.limits, prompt or [], stop_token_ids(params)
            )
        except ValueError:  # validate_params refuses these first; never take the engine down for one request
            logger.exception("InRa: cannot build the thinking state of a request; it runs at lam %s", lam)
            return _Row(lam)
        if state is not None and max((*state.plan.markers.end, *state.plan.closing)) >= self.vocab_size:
            logger.error(
                "InRa: think-marker ids beyond the model's %d logits; thinking control off", self.vocab_size
            )
            return _Row(lam)
        row = _Row(
            state.lam if state is not None else lam, state, output, auto=auto, seen_at_join=len(output)
        )
        row.advance()  # a request can join with output already (preemption, resumed)
        return row

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        resolved = self._resolve_auto()  # by the rows of the last step, before this update moves them
        process_dict_updates(self.rows, batch_update, self._new_row)
        process_dict_updates(self.biases, batch_update, lambda params, _p, _o: params.logit_bias or None)
        changed = batch_update is not None or resolved
        if changed:
            process_dict_updates(self.paths, batch_update, lambda params, _p, _o: request_paths(params))
            self.live_paths = frozenset().union(*self.paths.values()) if self.paths else BOTH_PATHS
        for row in self.rows.values():
            changed |= row.advance()
        if changed:
            self._refresh(batch_update.batch_size if batch_update is not None else None)

    def _refresh(self, batch: int | None) -> None:
        """Per-row lam and the force/ban index tensors, from the rows' states (host lists, one copy each)."""
        size = batch if batch is not None else (self._lam_rows.shape[0] if self._lam_rows is not None else 0)
        size = max([size, *(i + 1 for i in self.rows)])
        lams = [DEFAULT_LAM] * size
        force, ban = ([], []), ([], [])
        for i, row in self.rows.items():
            lams[i] = row.lam
            t = row.thinking
            if t is None or not t.thinking:
                continue
            if t.forced is not None:
                force[0].append(i), force[1].append(t.forced)
            for b in t.banned:
                ban[0].append(i), ban[1].append(b)
        self._lam_rows = torch.tensor(lams, dtype=torch.float32).to(self.device, non_blocking=True)  # (B,)
        self._auto = self._auto_tensors()
        self._bias = self._bias_tensors(lams)
        self._force = tuple(torch.tensor(x, device=self.device) for x in force) if force[0] else None  # type: ignore[assignment]
        self._ban = tuple(torch.tensor(x, device=self.device) for x in ban) if ban[0] else None  # type: ignore[assignment]

    # ------------------------------------------------------------------------------------------- lam auto
    @property
    def wants_probe(self) -> bool:
        """Whether a request waits for lam auto's choice: the model then hands its probe's logits over."""
        return self._auto is not None

    def _auto_tensors(self) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, float] | None:
        """(rows as a list and on the device, lam if the policy picks lam_easy, lam if lam_hard, the probe's
        logit threshold) of the requests waiting for lam auto's choice, the lams worked out on the host."""
        waiting = [(i, r) for i, r in self.rows.items() if r.auto is not None]
        if not waiting:
            return None
        policy = waiting[0][1].auto
        rows, easy, hard = zip(*[(i, r.lam_if(r.auto.lam_easy), r.lam_if(r.auto.lam_hard)) for i, r in waiting],
                               strict=True)  # fmt: skip
        return (list(rows), torch.tensor(rows, dtype=torch.long, device=self.device),
                torch.tensor(easy, dtype=torch.float32, device=self.device),
                torch.tensor(hard, dtype=torch.float32, device=self.device), policy.logit_threshold)  # fmt: skip

    def _choose(self, lam: torch.Tensor) -> torch.Tensor:
        """lam (B,) with each waiting request's entry chosen by the probe (lam_easy where its logit reaches the
        threshold), a few tensor ops on the device; the choices are read back at the next `update_state`."""
        host_rows, rows, easy, hard, threshold = self._auto  # type: ignore[misc]
        if self.probe_logit is None:  # the model computed no probe: never guess, fail the step loudly
            raise RuntimeError("InRa: a lam auto request, but the model computed no probe (no calibration?)")
        picked = self.probe_logit[rows] >= threshold  # (A,)
        self._picked = (host_rows, picked)  # the rows from the host: no read of the device here
        lam = lam.clone()
        lam[rows] = torch.where(picked, easy, hard)
        return lam

    def _resolve_auto(self) -> bool:
        """Give the requests the last step chose for their lam (one read from the device, once per request)."""
        if self._picked is None:
            return False
        rows, picked = self._picked
        self._picked, self.probe_logit = None, None
        for i, easy in zip(rows, picked.tolist(), strict=True):
            row = self.rows.get(i)
            # a step that sampled nothing for it (a chunk of a long prompt) read a state mid-prompt: choose again
            if row is not None and row.auto is not None and len(row.output) > row.seen_at_join:
                row.resolve(row.auto.lam_easy if easy else row.auto.lam_hard)
        return True

    def _bias_tensors(self, lams: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(rows, tokens, values): the (1 - lam) * b that fusion leaves out of each logit_bias entry b (vLLM
        added b to the aligned half only), for rows not at lam 1; with the highest row, on the device."""
        entries = [(row, token, (1.0 - lams[row]) * b) for row, bias in self.biases.items() if row < len(lams)
                   and lams[row] != 1 for token, b in bias.items()]  # fmt: skip
        if not entries:
            return None
        rows, tokens, values = zip(*entries, strict=True)
        self._bias_top = max(rows)
        return (
            torch.tensor(rows, dtype=torch.long, device=self.device),
            torch.tensor(tokens, dtype=torch.long, device=self.device),
            torch.tensor(values, dtype=torch.float32, device=self.device),
        )

    def _lam_tensor(self, batch: int) -> torch.Tensor:
        if self._lam_rows is None or self._lam_rows.shape[0] < batch:
            self._refresh(batch)
        return self._lam_rows[:batch]  # type: ignore[index]

    # ------------------------------------------------------------------------------------------- apply
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        V = self.vocab_size
        if logits.dim() != 2 or logits.shape[1] != 2 * V:
            raise RuntimeError(
                f"InRa: expected logits of shape (B, {2 * V}) [aligned | ref], got {tuple(logits.shape)}"
            )
        lam = self._lam_tensor(logits.shape[0])  # (B,)
        if self._auto is not None:
            lam = self._choose(lam)
        aligned, ref = logits[:, :V], logits[:, V:]  # (B, V) each
        # lam was validated when each request entered (validate_params): no check, and no read of the device
        fused = mask_untokenized(
            fuse_checked(ref, aligned, lam), self.num_tokens, self.suppressed
        )  # (B, V) fp32
        if self._bias is not None:
            rows, tokens, values = self._bias
            if self._bias_top >= fused.shape[0]:  # rows past this batch (never seen; filtered, at a sync)
                keep = rows < fused.shape[0]
                rows, tokens, values = rows[keep], tokens[keep], values[keep]
            fused.index_put_((rows, tokens), values, accumulate=True)  # the rest of each logit_bias
        if self._ban is not None:
            fused[self._ban] = float("-inf")  # minimum not reached: EOS and the end marker
        if self._force is not None:
            rows, tokens = self._force
            fused[rows] = float("-inf")  # budget spent: only the closing text / end marker token remains
            fused[rows, tokens] = 0.0
        return fused
