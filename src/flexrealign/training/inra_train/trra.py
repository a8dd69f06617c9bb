"""TrRa into the layer adapter: the InRa aligned path is the student of TrRaTrainer (paper §3.3).

The student learns softmax(lam * z_aligned + (1 - lam) * z_ref) on completion tokens. The reference teacher is
the base model the adapter wraps, the very same object, so the base weights are held once; only the aligned
teacher is loaded separately.
"""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flexrealign.core.inra import InRaModel
from flexrealign.training.inra_train.views import InRaPathView
from flexrealign.training.trra import TrRaConfig, TrRaTrainer
from flexrealign.training.trra.models import head_weight
from flexrealign.training.trra.trainer_models import load_teachers


class InRaTrRaTrainer(TrRaTrainer):
    """TrRaTrainer whose student is the aligned path of an InRaModel (only the adapter trains)."""

    _tag_names = ["trl", "flexrealign", "trra", "inra"]

    def __init__(
        self,
        model: InRaModel,
        args: TrRaConfig,
        train_dataset: Dataset,
        processing_class: PreTrainedTokenizerBase,
        aligned_model: PreTrainedModel | str | None = None,
    ) -> None:
        super().__init__(
            model=InRaPathView(model),
            ref_model=model.base,  # the frozen base is the reference teacher: shared, not reloaded
            aligned_model=aligned_model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
        )

    @staticmethod
    def _load_models(model, ref_model, aligned_model, names, args: TrRaConfig):
        """(student view, {part: frozen teacher}, cache or None): the student is never loaded or copied."""
        teachers, cache = load_teachers(ref_model, aligned_model, names, args)
        return model, teachers, cache

    def student_hidden_states(self, model, inputs):
        """The aligned path's final hidden states (B, T, D) (adapter -> L layers -> norm) and the base head."""
        hidden = model.backbone(
            inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state
        return hidden, head_weight(model)  # (B, T, D), (V, D)
