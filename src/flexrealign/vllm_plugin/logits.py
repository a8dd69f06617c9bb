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

Rows past the tokenizer's vocabulary (Qwen checkpoints have 151,936 rows for about 151,669 tokens) decode to
nothing; they are set to -inf after fusion, at every lam, as `generate` and the server do.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from flexrealign.fusion import fuse_logits, mask_untokenized
from flexrealign.vllm_plugin import LAM_KEY

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

DEFAULT_LAM = 1.0  # as flexrealign.generate: a request without lam gets the aligned model


def request_lam(params: SamplingParams) -> float:
    """The lam of one request: `extra_args["lam"]`, any finite real number; VLLMValidationError otherwise.

    vLLM turns that error into HTTP 400 (the request is refused before it reaches the engine).
    """
    lam = (params.extra_args or {}).get(LAM_KEY, DEFAULT_LAM)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise VLLMValidationError(
            f"InRa: extra_args / vllm_xargs '{LAM_KEY}' must be a finite number, got {lam!r}",
            parameter=f"vllm_xargs.{LAM_KEY}",
            value=lam,
        )
    return float(lam)


def check_request(params: SamplingParams) -> None:
    """Refuse per request what cannot be served with the 2V-wide logits (see the module docstring)."""
    request_lam(params)
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


def tokenizer_size(vllm_config: VllmConfig) -> int | None:
    """How many vocabulary rows have a token: the length of the engine's tokenizer (None without one)."""
    from vllm.tokenizers import cached_tokenizer_from_config

    tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
    return None if tokenizer is None else len(tokenizer)


class InRaLogitsProcessor(LogitsProcessor):
    """Fuses [aligned | ref] (B, 2V) into (B, V) per row with that request's lam."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        check_request(sampling_params)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.vocab_size: int = vllm_config.model_config.get_vocab_size()
        self.num_tokens = tokenizer_size(vllm_config)  # rows at or past it have no token
        self.device = device
        self.lams: dict[int, float] = {}  # persistent-batch row -> lam
        self.biases: dict[int, dict[int, float]] = {}  # row -> logit_bias, to complete after fusion
        self._lam_rows: torch.Tensor | None = None  # (B,) built lazily after each batch change

    def is_argmax_invariant(self) -> bool:
        return False  # fusion changes which token is the most likely, so greedy decoding needs it too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.lams, batch_update, lambda params, _p, _o: request_lam(params))
        process_dict_updates(self.biases, batch_update, lambda params, _p, _o: params.logit_bias or None)
        if batch_update is not None:
            self._lam_rows = None  # rows were added, removed or moved

    def _lam_tensor(self, batch: int) -> torch.Tensor:
        if self._lam_rows is None or self._lam_rows.shape[0] != batch:
            lams = [self.lams.get(i, DEFAULT_LAM) for i in range(batch)]
            self._lam_rows = torch.tensor(lams, dtype=torch.float32).to(self.device)  # (B,)
        return self._lam_rows

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        V = self.vocab_size
        if logits.dim() != 2 or logits.shape[1] != 2 * V:
            raise RuntimeError(
                f"InRa: expected logits of shape (B, {2 * V}) [aligned | ref], got {tuple(logits.shape)}"
            )
        lam = self._lam_tensor(logits.shape[0])  # (B,)
        aligned, ref = logits[:, :V], logits[:, V:]  # (B, V) each
        fused = mask_untokenized(fuse_logits(ref, aligned, lam), self.num_tokens)  # (B, V) fp32
        for row, bias in self.biases.items():
            if row < fused.shape[0] and lam[row] != 1:
                tokens = torch.tensor(list(bias), dtype=torch.long, device=fused.device)  # (K,)
                values = torch.tensor(list(bias.values()), dtype=torch.float32, device=fused.device)  # (K,)
                fused[row, tokens] += (1.0 - lam[row]) * values
        return fused
