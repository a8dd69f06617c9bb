"""One path of an InRaModel dressed as a Hugging Face causal LM, so TRL's trainers can drive it unchanged.

TRL's SFTTrainer and DPOTrainer patch the model's forward with a fused LM head that calls `model.base_model(...)`
for hidden states and `model.get_output_embeddings()` for the head, so the trainers never materialise (B, T, V)
logits. A view exposes exactly that interface for one fixed path of a shared InRaModel:

    InRaPathView(inra, ALIGNED)  the policy: embeddings -> adapter -> L layers -> head   (lam = 1)
    InRaPathView(inra, REF)      the reference: embeddings -> L layers -> head          (lam = 0)

Both views hold the same InRaModel, so the DPO reference costs no second copy of the base weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from flexrealign.core.fused import default_position_ids
from flexrealign.core.fusion import ALIGNED, REF
from flexrealign.core.inra import InRaModel

PATH_LAM = {ALIGNED: 1.0, REF: 0.0}


class _PathBackbone(nn.Module):
    """Hidden states of one path (what `PreTrainedModel.base_model` returns for a plain causal LM)."""

    def __init__(self, inra: InRaModel, path: str) -> None:
        super().__init__()
        self.inra = inra
        self.path = path

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **unused: object,
    ) -> BaseModelOutputWithPast:
        if position_ids is None:
            position_ids = default_position_ids(input_ids, None)  # (1, T)
        # InRaModel's own path functions (the ones its forward uses), so the views cannot drift from it.
        h = self.inra.base.get_input_embeddings()(input_ids)  # (B, T, D)
        if self.path == ALIGNED:
            h = self.inra._run_adapter(h, attention_mask, position_ids, None)  # (B, T, D)
        h = self.inra._run_body(h, attention_mask, position_ids, None)  # (B, T, D), after the final norm
        return BaseModelOutputWithPast(last_hidden_state=h)


class InRaPathView(nn.Module):
    """The aligned (lam = 1) or reference (lam = 0) path of `inra` with the interface TRL and Trainer use."""

    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, inra: InRaModel, path: str = ALIGNED) -> None:
        super().__init__()
        if path not in PATH_LAM:
            raise ValueError(f"path must be {ALIGNED!r} or {REF!r}, got {path!r}")
        self.inra = inra
        self.path = path
        # A copy: TRL writes its settings into the model's config (router-loss flags, use_cache), which must
        # not reach the base model's config and the checkpoints saved from it.
        self.config = copy.deepcopy(inra.config)
        self.generation_config = inra.base.generation_config
        # Named `backbone`, not `base_model`, so the module tree has no second name for the shared weights;
        # TRL's fused head reaches it through the `base_model` property below.
        self.backbone = _PathBackbone(inra, path)

    @property
    def base_model(self) -> nn.Module:
        return self.backbone

    @property
    def _no_split_modules(self) -> list[str] | None:
        # FSDP's transformer wrap policy shards per decoder layer class, read from here (adapter layers included).
        return self.inra.base._no_split_modules

    @property
    def lam(self) -> float:
        return PATH_LAM[self.path]

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Trainers tag the model card; the InRa checkpoint writes its own config, so tags are not kept."""

    def get_input_embeddings(self) -> nn.Module:
        return self.inra.base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.inra.base.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> CausalLMOutputWithPast:
        """The InRa forward at this view's lam (used when a trainer asks for plain logits)."""
        kwargs.pop("use_cache", None)
        return self.inra(input_ids, attention_mask=attention_mask, lam=self.lam, labels=labels, **kwargs)

    # Gradient checkpointing covers the frozen base layers (the bulk of activation memory); the adapter's few
    # layers keep their activations.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.inra.base.is_gradient_checkpointing

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None, **options
    ) -> None:
        # Non-reentrant: the frozen layers' inputs come from the adapter, and reentrant checkpointing would need
        # the checkpointed block's own inputs to require grad.
        kwargs = {"use_reentrant": False} | (gradient_checkpointing_kwargs or {})
        self.inra.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **options)

    def gradient_checkpointing_disable(self) -> None:
        self.inra.base.gradient_checkpointing_disable()
