"""TrRaTrainer: TRL's SFTTrainer with the loss replaced by the divergence to the lam-fused teacher (paper Eq. 6).

The trainer places the teachers, computes the loss and samples on-policy completions; the student, teachers and
tokenizer it is built with are loaded and checked in `trainer_models`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import DistributedType
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import SFTTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import maybe_gather_lm_head_ctx

from flexrealign.training.distributed import fsdp_on_cpu
from flexrealign.training.trra.config import TrRaConfig
from flexrealign.training.trra.data import (
    CompletionCollator,
    completion_positions,
    is_tokenized,
    prepare_dataset,
)
from flexrealign.training.trra.loss import (
    ALIGNED,
    REF,
    divergence_sum,
    fused_teacher_hidden,
    fused_teacher_weight,
    liger_divergence_sum,
    teacher_parts,
)
from flexrealign.training.trra.models import final_hidden_states, head_weight
from flexrealign.training.trra.on_policy import (
    on_policy_seed,
    pick_rows,
    prompt_lengths,
    sample_completions,
    with_completions,
)
from flexrealign.training.trra.teacher_cache import TeacherCache
from flexrealign.training.trra.trainer_models import (
    ModelLike,
    check_vocab,
    load_models,
    load_training_tokenizer,
    model_name,
)


class _ForwardRedirection:
    """Run `method(*args)` as the forward of `wrapper` (DDP/FSDP/DeepSpeed), which wraps `module`.

    DDP only prepares its gradient reduction, and FSDP/ZeRO-3 only gather parameters, inside the wrapper's forward;
    the loss calls the backbone and reads the head weight directly, so it runs in that forward. (The trick comes
    from PyTorch Lightning's strategies.)
    """

    def __call__(self, wrapper: nn.Module, module: nn.Module, method: Callable, *args: Any) -> Any:
        original = module.forward

        def redirected(*inner: Any) -> Any:
            module.forward = original  # restore first: `method` may call the real forward
            return method(*inner)

        module.forward = redirected
        try:
            return wrapper(*args)
        finally:
            module.forward = original


# distributed types whose processes each hold a shard of the student's weights
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


class TrRaTrainer(SFTTrainer):
    """Training-time realignment: the student learns softmax(lam * z_aligned + (1 - lam) * z_ref) on completions.

    Models are given as loaded `PreTrainedModel`s or names/paths, or taken from `args` (`ref_model`,
    `aligned_model`, `student_model`); the student defaults to a fresh copy of the reference. Datasets may be
    raw (prompt/completion or messages rows) or already tokenised by `flexrealign.training.trra.data.prepare_dataset`.
    With `args.teacher_cache`, the teachers are not loaded at all: their hidden states come from the cache.
    Only the loss differs from SFTTrainer; logging, checkpointing, resuming and distribution are the Trainer's.
    The loss is the paper's Eq. 6, KL(pi_student || pi_hat) per completion token, pi_hat as in Eq. 5, computed
    in chunks of `args.loss_chunk_size` tokens from hidden states so that no (B, T, V) logits are built.

    Args:
        model, ref_model, aligned_model: student and teachers (`PreTrainedModel` or name/path; None: from args).
        args: a `TrRaConfig`. train_dataset, eval_dataset: prompt/completion or messages rows, or tokenised.
        processing_class: the tokenizer (default: the reference's). callbacks, optimizers: as in `Trainer`.

    Raises:
        TypeError: `args` is not a `TrRaConfig`.
        ValueError: no student or tokenizer can be found, the student is a teacher object, the models'
            vocabularies differ, a teacher that `lam` needs is missing, or `teacher_cache` does not match.

    Example:
        ```python
        data = Dataset.from_list([{"prompt": "2 + 2 =", "completion": " 4"}])
        args = TrRaConfig(output_dir="out", ref_model="path/to/ref", aligned_model="path/to/aligned", lam=1.5)
        TrRaTrainer(args=args, train_dataset=data).train()
        ```
    """

    _tag_names = ["trl", "flexrealign", "trra"]
    _name = "TrRa"
    _paper = {
        "title": "Flexible Realignment of Language Models",
        "id": "2506.12704",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{zhu2025flexible,
                title        = {{Flexible Realignment of Language Models}},
                author       = {Wenhong Zhu and Ruobing Xie and Weinan Zhang and Rui Wang},
                year         = 2025,
                eprint       = {arXiv:2506.12704},
            }"""),
    }

    def __init__(
        self,
        model: ModelLike = None,
        ref_model: ModelLike = None,
        aligned_model: ModelLike = None,
        args: TrRaConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
    ) -> None:
        if not isinstance(args, TrRaConfig):
            raise TypeError(f"TrRaTrainer needs args=TrRaConfig(...), got {type(args).__name__}")
        names = {
            "student": model_name(model, args.student_model or args.ref_model),
            REF: model_name(ref_model, args.ref_model),
            ALIGNED: model_name(aligned_model, args.aligned_model),
        }
        tokenizer = processing_class or load_training_tokenizer(names, args)
        student, teachers, cache = self._load_models(model, ref_model, aligned_model, names, args)
        if args.lmbda > 0 and not isinstance(student, PreTrainedModel):
            raise ValueError(
                "on-policy TrRa (lmbda > 0) samples from the student's logits as a Hugging Face causal LM (a "
                f"PreTrainedModel with a KV cache); a {type(student).__name__} is not one: set lmbda=0"
            )
        self._num_tokens = check_vocab(student, teachers, cache, tokenizer, names, args)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        with args.main_process_first(desc="tokenizing the TrRa data"):
            train_dataset, eval_dataset = (
                self._tokenized(d, tokenizer, args) for d in (train_dataset, eval_dataset)
            )
        if cache is not None:
            cache.check_dataset(train_dataset)
            if eval_dataset is not None:
                raise ValueError(
                    "teacher_cache holds the training rows only: evaluate without it (teachers on the fly)"
                )
        super().__init__(
            model=student,
            args=args,
            data_collator=CompletionCollator(tokenizer.pad_token_id),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._setup_teachers(teachers, cache)

    # ------------------------------------------------------------------------------------------- construction
    def create_accelerator_and_postprocess(self) -> None:
        with fsdp_on_cpu():  # an FSDP launch on CPU processes really shards (accelerate alone runs it as DDP)
            super().create_accelerator_and_postprocess()

    # (student, {part: frozen teacher}, cache or None) from what was given (`trainer_models.load_models`); a
    # trainer whose student is not a loaded model overrides it (InRaTrRaTrainer trains a view of an InRa model)
    _load_models = staticmethod(load_models)

    @staticmethod
    def _tokenized(dataset: Dataset | None, tokenizer, args: TrRaConfig) -> Dataset | None:
        if dataset is None or is_tokenized(dataset):
            return dataset
        return prepare_dataset(dataset, tokenizer, args.max_length, args.dataset_num_proc)

    def _setup_teachers(self, teachers: dict[str, PreTrainedModel], cache: TeacherCache | None) -> None:
        """Place the teachers and build the fused teacher head cat[lam W_a, (1 - lam) W_r] once, in fp32."""
        device = self.accelerator.device
        if self.is_deepspeed_enabled and teachers:
            from trl.models import prepare_deepspeed  # ZeRO-3 shards the teachers like the student

            teachers = {p: prepare_deepspeed(t, self.accelerator) for p, t in teachers.items()}
        else:
            teachers = {p: t.to(device) for p, t in teachers.items()}
        if cache is not None:
            heads = cache.heads()
        else:
            heads = {}
            for part, teacher in teachers.items():
                head = self.accelerator.unwrap_model(teacher).get_output_embeddings().weight
                with maybe_gather_lm_head_ctx(head):
                    heads[part] = head.detach().float().clone()
        self._teachers, self._cache = teachers, cache
        self._teacher_weight = fused_teacher_weight(heads.get(ALIGNED), heads.get(REF), self.args.lam).to(
            device
        )
        self._forward_redirection = _ForwardRedirection()
        if self.args.use_liger_loss:
            self._check_liger()

    def _check_liger(self) -> None:
        try:
            import liger_kernel  # noqa: F401
        except ImportError as e:
            raise ValueError(
                "use_liger_loss=True needs the liger-kernel package (pip install liger-kernel)"
            ) from e
        if self.accelerator.device.type != "cuda":
            raise ValueError("use_liger_loss=True needs a CUDA device; the default loss runs everywhere")

    # --------------------------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, None]:
        """Sum of the per-token divergence over the batch's completion tokens, divided by the global token count."""
        unwrapped = self.accelerator.unwrap_model(model)
        total, count = self._forward_redirection(model, unwrapped, self._divergence_sum, unwrapped, inputs)
        if num_items_in_batch is None:
            loss = total / count.clamp(min=1)
        else:
            # As in SFTTrainer: the count covers every process and accumulation step, and DDP averages gradients.
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _divergence_sum(
        self, student: nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = completion_positions(inputs["labels"])  # (B, T-1)
        hidden, weight = self.student_hidden_states(student, inputs)  # (B, T, D), (V, D)
        h_s = hidden[:, :-1][mask]  # (N, D)
        h_t = self._teacher_hidden(inputs, mask)  # (N, K) fp32
        loss_fn = liger_divergence_sum if self.args.use_liger_loss else divergence_sum
        extra = {} if self.args.use_liger_loss else {"chunk_size": self.args.loss_chunk_size}
        with maybe_gather_lm_head_ctx(weight):
            total = loss_fn(
                h_s,
                weight,
                h_t,
                self._teacher_weight,
                self.args.divergence,
                self.args.jsd_beta,
                self._num_tokens,
                **extra,
            )
        return total, mask.sum()

    def student_hidden_states(
        self, model: nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's final hidden states (B, T, D) (after the final norm) and its head weight (V, D).

        The one place that knows how to read a student: plain Hugging Face causal LMs here. A student of another
        kind (e.g. an InRa adapter model, whose aligned path runs adapter -> base layers -> norm) overrides this.
        """
        if not isinstance(model, PreTrainedModel):
            raise TypeError(
                f"TrRaTrainer reads Hugging Face causal LMs; for a {type(model).__name__} student, subclass "
                "TrRaTrainer and override student_hidden_states"
            )
        return final_hidden_states(model, inputs["input_ids"], inputs["attention_mask"]), head_weight(model)

    @torch.no_grad()
    def _teacher_hidden(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """cat[h_aligned, h_ref] at the completion positions, (N, K) fp32: from the cache or the frozen teachers."""
        parts = {}
        for part in teacher_parts(self.args.lam):
            if self._cache is not None:
                parts[part] = self._cache.hidden(part, inputs["example_index"], mask.sum(1)).to(mask.device)
                continue
            teacher = self._teachers[part]
            inner = self.accelerator.unwrap_model(teacher)
            # Teachers run in their own dtype, outside the student's autocast, exactly as cache-teachers does.
            with torch.autocast(mask.device.type, enabled=False):
                hidden = self._forward_redirection(
                    teacher, inner, final_hidden_states, inner, inputs["input_ids"], inputs["attention_mask"]
                )  # (B, T, D)
            parts[part] = hidden[:, :-1][mask]  # (N, D)
        return fused_teacher_hidden(parts.get(ALIGNED), parts.get(REF), self.args.lam)

    # ------------------------------------------------------------------------------------------------ on-policy
    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor | int | None]:
        """The step's micro-batches, a share `lmbda` of whose rows take completions sampled from the student.

        Called by the training loop only (evaluation never samples). Which rows are on-policy, and what they
        sample, depends on (seed, step, micro-batch, process) alone (`on_policy_batch`): not on the model's mode,
        on how often anything ran before, or on the global RNG, so the first step of a run samples like any other
        and a resumed run samples what the uninterrupted run sampled. The loss's token count is taken after, so
        it counts the tokens actually trained on.

        Args:
            epoch_iterator: the training loop's iterator over collated micro-batches.
            num_batches: micro-batches in this optimizer step (the gradient accumulation steps, or fewer).
            device: where the token count goes.

        Returns:
            (micro-batches, token count or None), as `Trainer.get_batch_samples`.
        """
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.args.lmbda <= 0:
            return batches, num_items
        batches = [self.on_policy_batch(b, k) for k, b in enumerate(batches)]
        return batches, self._get_num_items_in_batch(batches, device)

    def on_policy_batch(self, batch: dict[str, torch.Tensor], micro: int = 0) -> dict[str, torch.Tensor]:
        """`batch` with the completions of a seeded `lmbda` share of its rows sampled from the current student.

        Args:
            batch: a collated, right-padded micro-batch of the optimizer step `self.state.global_step`.
            micro: its index within the step.

        Returns:
            A copy of `batch` whose picked rows keep their prompts and carry the student's completions.
        """
        seed = on_policy_seed(self.args.seed, self.state.global_step, micro, self.accelerator.process_index)
        rows = pick_rows(len(batch["input_ids"]), self.args.lmbda, seed)
        sharded = self.accelerator.num_processes > 1 and self.accelerator.distributed_type in SHARDED
        if not rows and not sharded:
            return batch
        lengths = prompt_lengths(batch["labels"])
        # A sharded student samples with every process at once (ZeRO-3 gathers its weights for it, FSDP in each
        # forward): one that picked no rows still samples (row 0, discarded), and under FSDP all stop together.
        prompts = [batch["input_ids"][i, : lengths[i]].tolist() for i in rows or [0]]
        tok = self.processing_class
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as student:
            completions = sample_completions(
                student, prompts, tok.pad_token_id, tok.eos_token_id, self.args.temperature,
                self.args.max_new_tokens, seed, num_tokens=self._num_tokens,
                synced=sharded and self.accelerator.distributed_type == DistributedType.FSDP,
            )  # fmt: skip
        return with_completions(batch, rows, completions, tok.pad_token_id) if rows else batch

    def _set_signature_columns_if_needed(self) -> None:
        # Keep example_index through Trainer's column pruning: it keys the teacher cache.
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "example_index"]
