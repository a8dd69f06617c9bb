"""TrRa into the layer adapter: the InRa aligned path is the student of TrRaTrainer (paper §3.3).

The student learns softmax(lam * z_aligned + (1 - lam) * z_ref) on completion tokens. The reference teacher is
the base model the adapter wraps, the very same object, so the base weights are held once; only the aligned
teacher is loaded separately.
"""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flexrealign.inra import InRaModel
from flexrealign.inra_train.views import InRaPathView
from flexrealign.trra import TrRaConfig, TrRaTrainer
from flexrealign.trra.loss import ALIGNED, REF, teacher_parts
from flexrealign.trra.models import freeze, head_weight, load_model
from flexrealign.trra.teacher_cache import TeacherCache
from flexrealign.trra.trainer import _teacher_dtype


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
        cache = TeacherCache(args.teacher_cache) if args.teacher_cache else None
        given = {REF: ref_model, ALIGNED: aligned_model}
        teachers = {}
        for part in teacher_parts(args.lam) if cache is None else ():
            teacher = given[part]
            if not isinstance(teacher, PreTrainedModel):
                if names[part] is None:
                    raise ValueError(f"lam={args.lam} needs the {part} model: set {part}_model")
                teacher = load_model(names[part], part, _teacher_dtype(args), args.trust_remote_code)
            teachers[part] = freeze(teacher)
        return model, teachers, cache

    def student_hidden_states(self, model, inputs):
        """The aligned path's final hidden states (B, T, D) (adapter -> L layers -> norm) and the base head."""
        hidden = model.backbone(
            inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state
        return hidden, head_weight(model)  # (B, T, D), (V, D)
