"""DeRa (Liu et al., 2024), the baseline: two separate models whose logits are fused per token."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import DynamicCache, PreTrainedModel

from flexrealign.core.fused import FusedCausalLM, PathCache
from flexrealign.core.fusion import ALIGNED, REF
from flexrealign.core.hf_compat import with_cache
from flexrealign.core.keywords import refuse_unknown_keywords
from flexrealign.core.vocab import check_same_vocab


@refuse_unknown_keywords
class DeRa(FusedCausalLM):
    """Decoding-time realignment: `forward(..., lam=...)` runs the reference and aligned models and fuses them.

    Each step's logits follow the paper's Eq. 5, softmax(lam * h_aligned + (1 - lam) * h_ref) (`fuse_logits`).
    Same interface as `InRaModel`, so one decoding loop serves both; it costs two full models of memory and
    compute, which InRa avoids by sharing all but the adapter. Both models are frozen.

    Args:
        ref_model: the reference model pi_ref (a Hugging Face causal LM).
        aligned_model: the aligned model, fine-tuned from `ref_model`; it must share its output vocabulary.
        tokenizers: optional tokenizers to check as well (all must hold the same tokens).

    Returns:
        `forward(input_ids (B, T), attention_mask (B, T), lam=...)` returns a `CausalLMOutputWithPast` whose
        `logits` are the fused fp32 logits, shape (B, T, V).

    Raises:
        ValueError: the two models (or the tokenizers) do not share one vocabulary; from `forward`, a
            non-finite lam or one whose length is not B.
        TypeError: a keyword it does not take (a typo is named with its close match), never dropped.

    Example:
        ```python
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from flexrealign.core.dera import DeRa
        from flexrealign.decoding.generation import generate

        tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B")
        ref = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
        aligned = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
        model = DeRa(ref, aligned, tokenizers=[tok])
        ids = tok(["Hello"], return_tensors="pt").input_ids  # (B, T)
        logits = model(ids, lam=0.5).logits  # (B, T, V), fp32
        out = generate(model, tok, "Hello", lam=0.5, max_new_tokens=16)
        ```
    """

    def __init__(
        self, ref_model: PreTrainedModel, aligned_model: PreTrainedModel, tokenizers: Iterable = ()
    ) -> None:
        super().__init__()
        check_same_vocab({"ref": ref_model, "aligned": aligned_model}, tuple(tokenizers))
        self.ref_model = ref_model.requires_grad_(False)
        self.aligned_model = aligned_model.requires_grad_(False)
        self.config = ref_model.config

    def new_cache(self, paths: Iterable[str]) -> PathCache:
        models = {REF: self.ref_model, ALIGNED: self.aligned_model}
        paths = tuple(paths)
        return PathCache(paths, {p: DynamicCache(config=models[p].config) for p in paths})

    def _path_logits(self, input_ids, attention_mask, position_ids, cache, paths, logits_to_keep):
        models = {REF: self.ref_model, ALIGNED: self.aligned_model}
        logits = {}
        for p in paths:
            out = models[p](
                input_ids=input_ids.to(models[p].device),
                attention_mask=attention_mask.to(models[p].device) if attention_mask is not None else None,
                position_ids=position_ids.to(models[p].device),
                use_cache=cache is not None,
                logits_to_keep=logits_to_keep,
                **with_cache(models[p], cache[p] if cache is not None else None),
            )
            logits[p] = out.logits.to(input_ids.device)  # (B, T', V)
        return logits
