"""lm-evaluation-harness model `flexrealign`: any InRa checkpoint, DeRa pair or plain model at a chosen lam.

    flexrealign lm-eval --model flexrealign --model_args pretrained=CKPT,lam=0.5 --tasks gsm8k --batch_size 8

The class subclasses lm-eval's own `HFLM`, so tokenisation, batching, request ordering, the logits cache,
`loglikelihood`, `loglikelihood_rolling`, chat templates and stop-sequence handling are lm-eval's; only the
model call changes. A forward pass returns the fused logits softmax(lam * aligned + (1 - lam) * ref) (paper
Eq. 3, per token, fp32) with the rows generation never samples masked, and `generate_until` decodes with
flexrealign's decode step at that lam (plain models too), so both score one distribution. At lam = 0 the
numbers equal lm-eval's `hf` model on the reference checkpoint, and at lam = 1 on an InRa checkpoint those of
`hf` on the exported lam = 1 model (tests/eval/test_lm_eval_model.py). This is the route to the paper's alignment
tax (Appendix F.1): one checkpoint, many lam, every lm-eval task.

model_args (besides HFLM's own, e.g. max_length, add_bos_token, truncation):
    pretrained  an InRa checkpoint, an adapter-only folder, a plain model (folder, Hub name or .gguf file);
                with `aligned`, the reference model of a DeRa pair
    aligned     the aligned model of a DeRa pair
    base        the base model of an adapter-only folder (default: the one it records)
    lam         alignment strength, any finite real (default 1.0: the aligned model); not for plain models
    dtype, device, trust_remote_code

lm-eval finds models in its own registry and offers no entry point to outside packages, so the model is
registered when this module is imported: by `flexrealign lm-eval` (a pass-through to lm-eval's CLI), or by
`import flexrealign.eval.lm_eval_model` before calling `lm_eval.simple_evaluate(model="flexrealign", ...)`.
"""

from __future__ import annotations

import math

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from flexrealign.conversion.loading import load_dera, load_model, load_tokenizer, resolve_device
from flexrealign.core.fused import FusedCausalLM
from flexrealign.core.fusion import mask_untokenized
from flexrealign.decoding.generation import LamSchedule, check_sampling, generate
from flexrealign.decoding.prompts import suppressed_ids

MODEL_NAME = "flexrealign"
_SAMPLING_KEYS = {"do_sample", "temperature", "top_p", "top_k", "seed"}


def load_for_eval(
    pretrained: str,
    aligned: str | None,
    base: str | None,
    lam: float | None,
    dtype: str,
    device: str,
    trust_remote_code: bool,
) -> tuple[torch.nn.Module, float | None]:
    """(model, lam): a DeRa pair, InRa model or plain model, and the lam it runs at (None for a plain model)."""
    if aligned is not None:
        model = load_dera(pretrained, aligned, dtype, device, trust_remote_code)
    else:
        model = load_model(pretrained, dtype, device, trust_remote_code, base)
    if not isinstance(model, FusedCausalLM):
        if lam is not None:
            raise ValueError(
                f"lam applies to an InRa checkpoint or a DeRa pair (pretrained=REF,aligned=ALIGNED); "
                f"{pretrained} is a plain model"
            )
        return model, None
    lam = 1.0 if lam is None else float(lam)
    if not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    return model, lam


def lm_eval_device(device: str | None) -> str:
    """HFLM's rule for `device`: one this machine does not have by that name means auto (CUDA if present, else
    CPU). lm-eval's command line passes "cuda:0" when --device is not given, and `--model hf` then runs on the
    CPU of a machine without a GPU; so must we. An explicit "cuda" without CUDA still fails in torch."""
    known = {"cpu", "cuda", "mps", "mps:0", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))}
    return device if device in known else "auto"


@register_model(MODEL_NAME)
class FlexRealignLM(HFLM):
    """lm-eval's HF model with the flexrealign forward: fused logits at a fixed lam (see the module doc).

    Example:
        >>> import lm_eval, flexrealign.eval.lm_eval_model  # registers "flexrealign"
        >>> lm_eval.simple_evaluate(model="flexrealign", model_args="pretrained=ckpt,lam=0.5", tasks=["gsm8k"])
    """

    def __init__(
        self,
        pretrained: str,
        lam: float | None = None,
        aligned: str | None = None,
        base: str | None = None,
        dtype: str = "auto",
        device: str | None = "auto",
        trust_remote_code: bool = False,
        tokenizer=None,
        lam_think: float | None = None,
        lam_answer: float | None = None,
        thinking_token_budget: int | None = None,
        **kwargs,
    ) -> None:
        device = resolve_device(lm_eval_device(device))
        model, self.lam = load_for_eval(
            str(pretrained), aligned, base, lam, dtype or "auto", device, trust_remote_code
        )
        self.generation_dial = _generation_dial(self.lam, lam_think, lam_answer, thinking_token_budget)
        tokenizer = tokenizer or load_tokenizer(str(pretrained), trust_remote_code)
        super().__init__(pretrained=model, tokenizer=tokenizer, backend="causal", **kwargs)
        self.pretrained, self.aligned = str(pretrained), aligned  # names for the results, not objects

    @property
    def fused(self) -> bool:
        return isinstance(self.model, FusedCausalLM)

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """Logits (B, T, V) of right-padded inputs (B, T), fp32: fused at self.lam for InRa/DeRa, and masked as
        generation masks them (rows past the tokenizer and `suppress_tokens` are -inf), so that loglikelihood
        scores the distribution `generate_until` samples from and `is_greedy` means what greedy decoding does."""
        with torch.no_grad():
            if self.fused:
                logits = self.model(inps, lam=self.lam).logits
            else:
                logits = super()._model_call(inps, attn_mask, labels).float()
        return mask_untokenized(logits, len(self.tokenizer), suppressed_ids(self.model, logits.device))

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs
    ) -> torch.Tensor:
        """Continue left-padded `context` (B, T) by flexrealign's decode loop (at self.lam for InRa/DeRa).

        Returns (B, T + new) token ids: the context, then each row's new tokens padded with EOS, as lm-eval
        expects from HF's `generate`. Sampling follows lm-eval's kwargs (greedy unless do_sample/temperature).
        """
        mask = kwargs.pop("attention_mask", None)
        mask = torch.ones_like(context) if mask is None else mask
        sampling = _sampling(kwargs)
        prompts = [row[keep.bool()].tolist() for row, keep in zip(context, mask, strict=True)]
        if "seed" in sampling:  # each request samples as a server request with this seed does, in any batch
            sampling["seed"] = [sampling["seed"]] * len(prompts)
        out = generate(
            self.model, self.tokenizer, prompts, max_new_tokens=max_length - context.shape[1], stop=stop,
            **self.generation_dial, **sampling,
        )  # fmt: skip
        width = max(map(len, out.token_ids), default=0)
        new = torch.full((len(prompts), width), self.eot_token_id, dtype=context.dtype)
        for i, ids in enumerate(out.token_ids):
            new[i, : len(ids)] = torch.tensor(ids, dtype=context.dtype)
        return torch.cat([context, new.to(context.device)], dim=1)

    def get_model_info(self) -> dict:
        """What lm-eval records about the model: names and lam, never a Hub query."""
        params = sum(p.numel() for p in self.model.parameters())
        info = {"model_num_parameters": params, "model_dtype": str(self.model.dtype), "lam": self.lam}
        return info | {"pretrained": self.pretrained, "aligned": self.aligned}


def _generation_dial(
    lam: float | None, think: float | None, answer: float | None, budget: int | None
) -> dict:
    """`generate`'s lam and thinking arguments for generate_until: a think/answer schedule when lam_think or
    lam_answer is given (the other side defaults to lam), and a thinking budget. Loglikelihood scores at lam."""
    dial: dict = {"lam": lam}
    if think is not None or answer is not None:
        if lam is None:
            raise ValueError("lam_think / lam_answer apply to an InRa checkpoint or a DeRa pair")
        dial["lam"] = LamSchedule.think_answer(
            float(lam if think is None else think), float(lam if answer is None else answer)
        )
    if budget is not None:
        dial["thinking_token_budget"] = int(budget)
    return dial


def _sampling(kwargs: dict) -> dict:
    """flexrealign's sampling parameters from lm-eval generation kwargs; unknown ones are refused, not ignored."""
    unknown = set(kwargs) - _SAMPLING_KEYS
    if unknown:
        raise ValueError(
            f"generation kwargs {sorted(unknown)} are not supported by the flexrealign model "
            f"(it supports {sorted(_SAMPLING_KEYS)} and the task's `until`/`max_gen_toks`)"
        )
    temperature = float(kwargs.get("temperature") or 0.0)
    if kwargs.get("do_sample") is False:
        temperature = 0.0
    elif kwargs.get("do_sample") and temperature == 0.0:
        temperature = 1.0  # HF's default when sampling is asked for without a temperature
    top_p, top_k = float(kwargs.get("top_p") or 1.0), int(kwargs.get("top_k") or 0)
    check_sampling(1, temperature, top_p, top_k)
    out = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    if kwargs.get("seed") is not None:
        out["seed"] = int(kwargs["seed"])
    return out
