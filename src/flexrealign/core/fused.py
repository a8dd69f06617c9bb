"""The interface that InRaModel and DeRa share: two paths, one forward, logits fused per row with lam."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from flexrealign.core.fusion import ALIGNED, REF, LamLike, as_lam_tensor, fuse_paths, needed_paths
from flexrealign.core.hf_compat import OUTPUT_CACHE_FIELD
from flexrealign.core.keywords import unknown_keyword_error

BOTH = "both"  # a cache holding the two paths stacked on the batch axis: rows [aligned; ref]

# Keywords that Hugging Face callers (Trainer, TRL, lm-eval, GenerationMixin-style loops) pass and that mean
# nothing here when falsy: positions come from position_ids, the output is always a dataclass, and
# num_items_in_batch only rescales a loss that Trainer also averages. Truthy requests for attentions or
# hidden states are refused, because they would silently come back empty.
NO_OP_KEYWORDS = {
    "return_dict": lambda v: v is None or bool(v),
    "output_attentions": lambda v: not v,
    "output_hidden_states": lambda v: not v,
    "cache_position": lambda v: True,
    "num_items_in_batch": lambda v: True,
}
FORWARD_KEYWORDS = (
    "input_ids",
    "attention_mask",
    "lam",
    "cache",
    "use_cache",
    "position_ids",
    "labels",
    "logits_to_keep",
    "paths",
    "past_key_values",
)


def check_forward_kwargs(extra: dict[str, object], known: Iterable[str]) -> None:
    """Refuse keywords that forward would drop, naming the closest known one; allow NO_OP_KEYWORDS."""
    for key, value in extra.items():
        allowed = NO_OP_KEYWORDS.get(key)
        if allowed is not None and allowed(value):
            continue
        if allowed is not None:
            raise TypeError(
                f"forward() does not support {key}={value!r} (two-path models return fused logits only)"
            )
        raise unknown_keyword_error("forward()", key, [*known, *NO_OP_KEYWORDS])


class PathCache:
    """Key/value caches of a two-path model, one Hugging Face cache per part.

    `paths` are the paths this cache serves; a later call that needs another path is an error, because that
    path's cache would be missing the earlier tokens.
    """

    def __init__(self, paths: Iterable[str], caches: dict[str, DynamicCache]) -> None:
        self.paths = tuple(paths)
        self.caches = caches

    def __getitem__(self, part: str) -> DynamicCache:
        return self.caches[part]

    def get_seq_length(self) -> int:
        return max((c.get_seq_length() for c in self.caches.values()), default=0)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (B',) in every cache, in place (a server drops finished requests)."""
        batch = None
        for part, cache in self.caches.items():
            if part == BOTH:
                batch = cache.layers[0].keys.shape[0] // 2 if batch is None else batch
                cache.batch_select_indices(torch.cat([rows, rows + batch]))
            else:
                cache.batch_select_indices(rows)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over labels != -100 (Hugging Face convention)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)  # (B*(T-1),)
    return F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100)


def default_position_ids(input_ids: torch.Tensor, cache: PathCache | None) -> torch.Tensor:
    """Positions past the cached tokens, as Hugging Face models compute them when none are given."""
    past = cache.get_seq_length() if cache is not None else 0
    return torch.arange(past, past + input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, T)


class FusedCausalLM(nn.Module):
    """Base class: subclasses compute each path's logits; this class handles lam, caches, fusion and loss."""

    config: PretrainedConfig
    probes_hidden: bool = False  # `_path_logits` fills `hidden_out` (lam auto's probe reads it)

    def _path_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: PathCache | None,
        paths: tuple[str, ...],
        logits_to_keep: int,
        hidden_out: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """path -> logits (B, T', V) of the last `logits_to_keep` positions (0: all); a subclass with
        `probes_hidden` also puts path -> final hidden state at the last position (B, D) into `hidden_out`."""
        raise NotImplementedError

    def new_cache(self, paths: Iterable[str]) -> PathCache:
        raise NotImplementedError

    def tie_weights(self) -> None:
        """Re-tie each inner Hugging Face model's embeddings, as `PreTrainedModel.tie_weights` does (harnesses
        such as lm-eval call it on the model they are given)."""
        for module in self.children():
            if hasattr(module, "tie_weights"):
                module.tie_weights()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lam: LamLike = 1.0,
        cache: PathCache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        paths: Iterable[str] | None = None,
        past_key_values: PathCache | None = None,
        **unused: object,
    ) -> CausalLMOutputWithPast:
        """Run the paths that `lam` needs and return fused fp32 logits (B, T, V) (or the last `logits_to_keep`).

        lam: a float or one value per row, any finite real. Rows at lam == 0 get the reference logits and rows
        at lam == 1 the aligned logits exactly; a batch where every row is 0 (or 1) runs one path only.
        paths: force the paths to compute (a generation whose lam changes mid-way needs both from the start).
        cache: the PathCache to extend (`past_key_values` is its older name, as in transformers < 5.24).

        Raises:
            TypeError: on a keyword this forward does not know (a typo such as `lamda=` would otherwise run
                at lam = 1); see `check_forward_kwargs` for the Hugging Face keywords accepted as no-ops.
        """
        check_forward_kwargs(unused, FORWARD_KEYWORDS)
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("give the cache once, as cache= (past_key_values= is its older name)")
            cache = past_key_values
        lam_t = as_lam_tensor(lam, input_ids.shape[0], input_ids.device)  # (B,)
        paths = self._resolve_paths(lam_t, cache, paths)
        if use_cache and cache is None:
            cache = self.new_cache(paths)
        if position_ids is None:
            position_ids = default_position_ids(input_ids, cache)
        logits = self._path_logits(input_ids, attention_mask, position_ids, cache, paths, logits_to_keep)
        fused = fuse_paths(logits, lam_t)  # (B, T, V) fp32
        loss = causal_lm_loss(fused, labels) if labels is not None else None
        return CausalLMOutputWithPast(
            loss=loss, logits=fused, **{OUTPUT_CACHE_FIELD: cache if use_cache else None}
        )

    def step_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: PathCache,
        lam: torch.Tensor,
        *,
        choose_lam: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One cached decode step: fused fp32 logits (B, V) at the last position of input_ids (B, T).

        For a decode loop that validated lam (B,) when its requests entered and made `cache` for the paths
        that lam needs (`fusion.needed_paths`): nothing is checked again, so the step reads nothing back from
        the device. `forward` is the checked entry point for everyone else.

        choose_lam: given the reference path's final hidden state at the last position (B, D), returns the lam
        (B,) to fuse at: an `auto` request's lam is chosen there (`flexrealign.decoding.step.AutoChoice`).
        Needs both paths in `cache`.
        """
        if choose_lam is None:
            logits = self._path_logits(input_ids, attention_mask, position_ids, cache, cache.paths, 1)
            return fuse_paths(logits, lam, checked=True)[:, -1]  # (B, V)
        if not self.probes_hidden:
            raise ValueError(f"lam auto reads the reference path's hidden state, which {type(self).__name__} "
                             "does not expose: it is served for InRa models")  # fmt: skip
        hidden: dict[str, torch.Tensor] = {}
        logits = self._path_logits(input_ids, attention_mask, position_ids, cache, cache.paths, 1, hidden)
        return fuse_paths(logits, choose_lam(hidden[REF]), checked=True)[:, -1]  # (B, V)

    @staticmethod
    def _resolve_paths(
        lam: torch.Tensor, cache: PathCache | None, paths: Iterable[str] | None
    ) -> tuple[str, ...]:
        need = needed_paths(lam)
        if paths is not None:
            given = set(paths)
            if not given or given - {REF, ALIGNED}:
                raise ValueError(
                    f"paths must be a non-empty subset of ('ref', 'aligned'), got {sorted(given)}"
                )
            paths = tuple(p for p in (REF, ALIGNED) if p in given)
        if cache is not None:
            paths = cache.paths if paths is None else paths
            if not set(paths) <= set(cache.paths):
                raise ValueError(f"the cache holds paths {cache.paths} but {paths} were requested")
        paths = need if paths is None else paths
        missing = set(need) - set(paths)
        if missing:
            raise ValueError(
                f"lam={lam.tolist()} needs the {sorted(missing)} path(s), which this call does not compute; "
                "start the generation with paths=('ref', 'aligned') when lam changes mid-way"
            )
        return paths
