"""A continuous-batching engine: one background thread owns the model and decodes all live requests together.

Every request has its own lam (or LamSchedule), sampling parameters, seed, stop strings and token budget.
Requests join at step boundaries: the newcomers are prefilled together in a fresh KV cache, then their rows
are merged into the running batch (the shorter cache is left-padded along the sequence axis and the attention
mask gets zeros there). Positions are per row and padding slots are masked out, so each row computes what it
would compute alone, whatever else is in the batch and whenever it arrived. Finished and cancelled rows are
dropped from the cache at once, and padding no remaining row needs is trimmed.

The engine knows nothing about HTTP: callers `submit` token ids and receive `Event`s through a callback.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from flexrealign.core.fused import FusedCausalLM
from flexrealign.core.fusion import ALIGNED, REF, needed_paths
from flexrealign.decoding.adaptive import AutoLam
from flexrealign.decoding.prompts import (
    Prompt,
    encode_prompts,
    eos_ids,
    left_pad,
    pad_token_id,
    suppressed_ids,
)
from flexrealign.decoding.rows import LamSpec, RowState
from flexrealign.decoding.sampling import row_generators
from flexrealign.decoding.step import AutoChoice, check_auto_policy, decode_step, next_logits
from flexrealign.serving.batch import Batch, Row
from flexrealign.serving.kvcache import is_mergeable, new_cache
from flexrealign.serving.requests import (  # noqa: F401  (re-exported: the engine's public types)
    Event,
    EventSink,
    InvalidRequest,
    RequestHandle,
    RequestOutput,
    SamplingParams,
    check_lam,
    check_prompt,
    request_thinking,
)

log = logging.getLogger("flexrealign.serve")


class Engine:
    """Owns `model` in a background thread and serves requests with continuous batching.

    max_batch_size caps the rows decoding at once; more requests wait in a FIFO queue. Use `with Engine(...)`
    or `start()` / `stop()`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 16,
        chat_template_kwargs: dict | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch_size = max_batch_size
        self.chat_template_kwargs = chat_template_kwargs
        self.is_fused = isinstance(model, FusedCausalLM)
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self.device = next(model.parameters()).device
        self._eos = eos_ids(model, tokenizer)
        self._pad_id = pad_token_id(tokenizer)
        self._vocab = len(tokenizer)  # rows past the tokenizer (padded embeddings) are never sampled
        self._suppressed = suppressed_ids(model, self.device)  # nor are these (a GGUF vocabulary's holes)
        self._mergeable = is_mergeable(new_cache(model, needed_paths(torch.tensor([0.5]))))
        self._cv = threading.Condition()
        self._pending: deque[RequestHandle] = deque()
        self._batches: dict[tuple[str, ...], Batch] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ids = itertools.count()
        self._num_active = 0
        self.stats: Counter[str] = Counter()  # finished requests by finish_reason; "steps"; "merged" joins

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="flexrealign-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the current step, fail what is left (finish_reason "error") and join the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def num_active(self) -> int:
        """Rows decoding now (finished and cancelled rows are dropped at the end of each step)."""
        return self._num_active

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------------------------------ requests
    def encode(self, prompt: Prompt, chat_template_kwargs: dict | None = None) -> list[int]:
        """Token ids of a string or a chat (rendered by the tokenizer's chat template; `chat_template_kwargs`
        add to or override the engine's)."""
        kwargs = (self.chat_template_kwargs or {}) | (chat_template_kwargs or {})
        try:
            return encode_prompts(self.tokenizer, [prompt], kwargs)[0]
        except ValueError as e:
            raise InvalidRequest(str(e), param="prompt") from e

    def submit(
        self,
        prompt_ids: Sequence[int],
        lam: LamSpec | None = None,
        params: SamplingParams | None = None,
        sink: EventSink | None = None,
    ) -> RequestHandle:
        """Queue a request; `sink` is called from the engine thread with each Event (it must not block).

        lam: a float or LamSchedule for two-path models (None means 1.0, the aligned model); None for plain ones.
        Raises InvalidRequest for a bad lam, an empty prompt or one that leaves no room for max_tokens.
        """
        params = params or SamplingParams()
        prompt_ids = check_prompt(list(prompt_ids), params, self._vocab, self.context_length)
        lam = check_lam(lam, self.is_fused, type(self.model).__name__)
        if isinstance(lam, AutoLam):
            try:
                check_auto_policy(self.model, lam.policy)
            except ValueError as e:
                raise InvalidRequest(str(e), "lam", "no_auto_policy") from e
        eos = set() if params.ignore_eos else self._eos
        thinking = request_thinking(self.tokenizer, prompt_ids, lam, params, eos)
        handle = RequestHandle(f"req-{next(self._ids)}", prompt_ids, lam, params, sink, self._wake, thinking)
        with self._cv:
            if self._stopping:
                raise RuntimeError("the engine is stopped")
            self._pending.append(handle)
            self._cv.notify_all()
        return handle

    def generate(
        self, prompt: Prompt | Sequence[int], lam: LamSpec | None = None, params: SamplingParams | None = None
    ) -> RequestOutput:
        """Blocking convenience: submit one prompt (text, chat or token ids) and wait for its output."""
        ids = list(prompt) if _is_token_ids(prompt) else self.encode(prompt)  # type: ignore[arg-type]
        return self.submit(ids, lam, params).result()

    def stream(
        self, prompt_ids: Sequence[int], lam: LamSpec | None = None, params: SamplingParams | None = None
    ) -> tuple[RequestHandle, queue.Queue[Event]]:
        """Submit a request whose events land in a thread-safe queue (for synchronous consumers)."""
        events: queue.Queue[Event] = queue.Queue()
        return self.submit(prompt_ids, lam, params, sink=events.put), events

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # -------------------------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._step()
        except Exception:  # a bug in the engine itself: fail everything rather than hang the clients
            log.exception("engine loop crashed")
        finally:
            self._stopping = True
            self._fail_all("the engine stopped")

    def _wait_for_work(self) -> bool:
        with self._cv:
            while not self._stopping and not self._pending and not self._batches:
                self._cv.wait()
            return not self._stopping

    @torch.inference_mode()
    def _step(self) -> None:
        """One step: drop cancelled rows, decode every batch one token, then prefill and merge newcomers."""
        self._cancel_rows()
        for paths, batch in list(self._batches.items()):
            self._guard(paths, batch.rows, lambda b=batch: self._decode(b))
        self._compact()  # frees the slots of rows that just finished, for the newcomers below
        for paths, handles in self._group(self._take_pending()).items():
            new = self._prefill_or_fail(paths, handles)
            if new is not None:
                self._join(new)
        self._compact()  # a newcomer may finish on its first token
        self.stats["steps"] += 1

    def _guard(self, paths: tuple[str, ...], rows: list[Row], fn: Callable[[], None]) -> None:
        """Run fn; if the model raises, fail the rows involved and drop their batch (its cache is suspect)."""
        try:
            fn()
        except Exception as e:
            log.exception("decode step failed")
            for r in rows:
                self._finish(r, "error", error=f"{type(e).__name__}: {e}")
            self._batches.pop(paths, None)

    def _decode(self, batch: Batch) -> None:
        x = batch.next_ids.unsqueeze(-1)  # (B, 1)
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=-1)  # (B, T + 1)
        logits = next_logits(
            self.model, x, mask, batch.next_pos.unsqueeze(-1), batch.cache, batch.lam()
        )  # (B, V)
        batch.mask, batch.next_pos = mask, batch.next_pos + 1
        batch.next_ids = self._sample(batch, logits)

    def _prefill_or_fail(self, paths: tuple[str, ...], handles: list[RequestHandle]) -> Batch | None:
        try:
            return self._prefill(paths, handles)
        except Exception as e:
            log.exception("prefill failed")
            for h in handles:
                out = RequestOutput("", [], "error", len(h.prompt_ids), h.lam, f"{type(e).__name__}: {e}")
                self._complete(h, out)
            return None

    def _join(self, new: Batch) -> None:
        """Merge prefilled newcomers into the running batch with their paths (chosen by `_group`), or start one."""
        batch = self._batches.get(new.paths)
        if batch is None:
            self._batches[new.paths] = new
        else:
            self._guard(new.paths, batch.rows + new.rows, lambda: batch.merge(new))
            self.stats["merged"] += 1

    def _prefill(self, paths: tuple[str, ...], handles: list[RequestHandle]) -> Batch:
        """Prefill newcomers together exactly as `generate` does, and sample their first token."""
        x, mask = left_pad([h.prompt_ids for h in handles], self._pad_id, self.device)  # (B, T)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions skip the left padding
        rows = [Row(h, self._row_state(h), _generator(h.params.seed, self.device)) for h in handles]
        batch = Batch(paths, rows, new_cache(self.model, paths), mask, x[:, -1], pos[:, -1] + 1)
        lam = batch.lam()  # (B,)
        choose = AutoChoice.of([r.state for r in rows], lam)  # lam auto rows: chosen here, as in `generate`
        logits = next_logits(self.model, x, mask, pos, batch.cache, lam, choose)  # (B, V)
        if choose is not None:
            choose.resolve()
        batch.next_ids = self._sample(batch, logits)
        return batch

    def _row_state(self, h: RequestHandle) -> RowState:
        eos = set() if h.params.ignore_eos else self._eos
        lam = h.lam if h.lam is not None else 0.0
        return RowState(lam, self.tokenizer, h.params.stop, eos, h.thinking, h.params.max_tokens)

    def _sample(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """The decode step shared with `generate`; then each row's delta goes out as an Event."""
        states = [r.state for r in batch.rows]
        nxt, deltas = decode_step(
            logits, states, batch.sampler, vocab_size=self._vocab, suppressed=self._suppressed
        )  # (B,)
        for row, delta in zip(batch.rows, deltas, strict=True):
            if delta is not None:
                output = self._output(row) if row.state.finished else None
                self._emit(row.handle, Event(delta, row.state.ids[-1], output, row.state.staged.take()))
                if output is not None:
                    self._complete(row.handle, output, emit=False)
        return nxt

    # ------------------------------------------------------------------------------------ rows coming/going
    def _take_pending(self) -> list[RequestHandle]:
        """Newcomers that fit, in arrival order."""
        with self._cv:
            cancelled = [h for h in self._pending if h.cancelled]
            self._pending = deque(h for h in self._pending if not h.cancelled)
            room = self.max_batch_size - sum(len(b.rows) for b in self._batches.values())
            if self._mergeable:
                taken = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            else:
                taken = self._take_unpadded(room)
        for h in cancelled:
            self._complete(h, RequestOutput("", [], "cancelled", len(h.prompt_ids), h.lam))
        return taken

    def _take_unpadded(self, room: int) -> list[RequestHandle]:
        """Sliding-window models: HF counts the window in cache slots, so padding would shorten what a row sees.
        Start a batch only once the last one drained, and only from prompts as long as the oldest one."""
        if self._batches or not self._pending:
            return []
        length = len(self._pending[0].prompt_ids)
        taken = [h for h in self._pending if len(h.prompt_ids) == length][:room]
        self._pending = deque(h for h in self._pending if h not in taken)
        return taken

    def _paths(self, h: RequestHandle) -> tuple[str, ...]:
        if not self.is_fused:
            return ()
        if isinstance(h.lam, AutoLam):  # its policy may choose either lam: both paths from the start
            return needed_paths(torch.tensor([0.5]))
        lams = h.thinking.plan.lams if h.thinking is not None else (h.lam,)
        return needed_paths(torch.tensor(lams))

    def _target(self, paths: tuple[str, ...]) -> tuple[str, ...] | None:
        """The running batch to join: the one with exactly these paths, else one computing a superset (one
        forward over more rows beats two forwards), else None (start a batch)."""
        if paths in self._batches:
            return paths
        return next((p for p in self._batches if set(paths) <= set(p)), None)

    def _group(self, handles: list[RequestHandle]) -> dict[tuple[str, ...], list[RequestHandle]]:
        """Newcomers by the batch they will join, so that each group is prefilled in one forward. Those no
        running batch covers start one batch computing the union of their paths (one forward per step
        rather than up to three; the union is one path when all of them are at lam = 0, or all at 1)."""
        groups: dict[tuple[str, ...], list[RequestHandle]] = {}
        homeless: list[RequestHandle] = []
        for h in handles:
            target = self._target(self._paths(h))
            if target is None:
                homeless.append(h)
            else:
                groups.setdefault(target, []).append(h)
        if homeless:
            union = {p for h in homeless for p in self._paths(h)}
            key = tuple(p for p in (REF, ALIGNED) if p in union)
            groups.setdefault(key, []).extend(homeless)
        return groups

    def _cancel_rows(self) -> None:
        for batch in self._batches.values():
            for r in batch.rows:
                if r.handle.cancelled and not r.state.finished:
                    self._finish(r, "cancelled")
        self._compact()

    def _compact(self) -> None:
        for paths, batch in list(self._batches.items()):
            keep = [i for i, r in enumerate(batch.rows) if not r.state.finished]
            if not keep:
                del self._batches[paths]
            elif len(keep) < len(batch.rows):
                batch.keep(keep, trim=self._mergeable)
        self._num_active = sum(len(b.rows) for b in self._batches.values())

    def _finish(self, row: Row, reason: str, error: str | None = None) -> None:
        """End a row early (cancelled or failed); its cache slot is freed at the next compaction."""
        tail = row.state.finish(reason)  # held-back text: the stream must still add up to the final text
        self._complete(row.handle, self._output(row, error), delta=tail, parts=row.state.staged.take())

    def _output(self, row: Row, error: str | None = None) -> RequestOutput:
        s, h = row.state, row.handle
        return RequestOutput(s.text, list(s.ids), s.finish_reason or "error", len(h.prompt_ids), h.lam, error,
                             s.reasoning_tokens, s.staged.reasoning, s.staged.content, s.auto_lam)  # fmt: skip

    def _complete(self, handle: RequestHandle, output: RequestOutput, emit: bool = True, delta: str = "",
                  parts: tuple[tuple[str, str], ...] = ()) -> None:  # fmt: skip
        if handle.done:
            return
        handle.output = output
        if emit:
            self._emit(handle, Event(delta, None, output, parts))
        self.stats[output.finish_reason] += 1
        handle._done.set()

    def _emit(self, handle: RequestHandle, event: Event) -> None:
        if handle.sink is None:
            return
        try:
            handle.sink(event)
        except Exception:  # e.g. the consumer's event loop is gone: nobody is listening, so stop decoding
            log.warning("request %s: event sink failed; cancelling", handle.request_id, exc_info=True)
            handle._cancelled.set()

    def _fail_all(self, message: str) -> None:
        for batch in self._batches.values():
            for r in batch.rows:
                if not r.state.finished:
                    self._finish(r, "error", error=message)
        self._batches.clear()
        with self._cv:
            pending, self._pending = list(self._pending), deque()
        for h in pending:
            self._complete(h, RequestOutput("", [], "error", len(h.prompt_ids), h.lam, message))
        self._num_active = 0


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """The same stream `generate(..., seed=seed)` gives its first row, so a seeded request reproduces it."""
    gens = row_generators(seed, 1, device)
    return None if gens is None else gens[0]


def _is_token_ids(prompt: object) -> bool:
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(t, int) for t in prompt)
