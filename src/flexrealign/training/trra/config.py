"""TrRaConfig: TRL's SFTConfig plus the fields of training-time realignment (paper §3.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from flexrealign.core.keywords import refuse_unknown_keywords
from flexrealign.training.trra.loss import DEFAULT_CHUNK_SIZE, DIVERGENCES, check_lam

TEACHER_DTYPES = ("auto", "bfloat16", "float16", "float32")


@refuse_unknown_keywords
@dataclass
class TrRaConfig(SFTConfig):
    """Configuration of `TrRaTrainer` and of the `flexrealign trra` command.

    The student is trained to match, on the completion tokens of the data, the teacher
    pi_hat = softmax(lam * aligned_logits + (1 - lam) * ref_logits) (the paper's Eq. 5), by minimising
    KL(pi_student || pi_hat) per token (Eq. 6, `divergence="reverse_kl"`). Every `SFTConfig`/`TrainingArguments`
    field applies as usual (learning rate, batch size, max_length, save_steps, resume_from_checkpoint, ...).

    Args:
        ref_model, aligned_model, student_model: the two teachers and the student's initialisation (folders
            or Hub names; the student defaults to the reference).
        lam: the teacher's alignment strength, any finite real (0: reference, 1: aligned, > 1 extrapolates).
        divergence: "reverse_kl" (Eq. 6), "forward_kl" or "jsd" (with `jsd_beta`).
        teacher_dtype, teacher_cache, loss_chunk_size: how the teachers are run (or read from a cache) and
            the loss chunked, so that no full (B, T, V) tensor is built.
        iterations: TrRa-iter rounds; lmbda, temperature, max_new_tokens: on-policy sampling (lmbda > 0).

    Raises:
        ValueError: on construction, for an unknown divergence or teacher_dtype, jsd_beta outside (0, 1),
            loss_chunk_size or iterations < 1, lmbda outside [0, 1], a non-finite lam, or an SFTConfig
            option that TrRa does not support.
        TypeError: a keyword it does not take (a typo is named with its close match), never dropped.

    Example:
        ```python
        args = TrRaConfig(
            output_dir="out/trra-lam1.5",
            ref_model="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            aligned_model="path/to/aligned",
            lam=1.5,
            learning_rate=1e-5,
            max_length=4096,
        )
        ```
    """

    ref_model: str | None = field(
        default=None,
        metadata={
            "help": "The reference model (the paper's pi_ref): a local folder or a Hugging Face Hub name. "
            "It is one of the two teachers and, unless student_model is given, the student's initialisation."
        },
    )
    aligned_model: str | None = field(
        default=None,
        metadata={
            "help": "The aligned model (pi_theta(beta)), fine-tuned from ref_model: a local folder or a Hub name. "
            "Not needed when teacher_cache is given (the cache holds its outputs)."
        },
    )
    student_model: str | None = field(
        default=None,
        metadata={
            "help": "Initialise the student from this model instead of ref_model (local folder or Hub name)."
        },
    )
    lam: float = field(
        default=1.0,
        metadata={
            "help": "Alignment strength of the teacher, any finite real: 0 is the reference, 1 the aligned model, "
            "> 1 extrapolates past it (the paper uses 0.5, 1.5, 2, 5, 10), < 0 moves away from it."
        },
    )
    divergence: str = field(
        default="reverse_kl",
        metadata={
            "help": "Per-token divergence to minimise: 'reverse_kl' = KL(student || teacher), the paper's Eq. 6; "
            "'forward_kl' = KL(teacher || student); 'jsd' = generalised Jensen-Shannon with jsd_beta.",
            "choices": list(DIVERGENCES),
        },
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "For divergence='jsd': beta * KL(teacher || m) + (1 - beta) * KL(student || m) with the mixture "
            "m = beta * teacher + (1 - beta) * student (TRL GKD's definition); strictly between 0 and 1."
        },
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype to load the two teachers in ('auto' keeps the checkpoint's); the fused teacher logits "
            "are always computed in float32.",
            "choices": list(TEACHER_DTYPES),
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder of teacher hidden states written by `flexrealign trra cache-teachers`. Training then "
            "reads them instead of running the teachers, so a sweep over lam runs the teachers once."
        },
    )
    loss_chunk_size: int = field(
        default=DEFAULT_CHUNK_SIZE,
        metadata={
            "help": "Tokens per chunk of the loss: each chunk holds about three (chunk, vocabulary) float32 tiles "
            "(0.47 GB at 256 tokens and Qwen's 151,936 rows); no full (batch, length, vocabulary) tensor is built."
        },
    )
    iterations: int = field(
        default=1,
        metadata={
            "help": "TrRa-iter: run TrRa this many rounds; round r > 1 uses (ref_model, round r-1's student) as "
            "(reference, aligned). Every round's model is saved. 1 is plain TrRa; the paper's 'iter1' is 2."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "On-policy share, as TRL GKD's lmbda: each row of a batch has its completion sampled from the "
            "current student with this probability (then scored by the fused teacher on those tokens). 0 is the "
            "paper's off-policy TrRa; a share > 0 counters exposure bias at lam > 1 (the student is trained on "
            "its own states, e.g. after closing its think block early). Sampling is set by temperature and "
            "max_new_tokens alone (pure sampling, stopping at the tokenizer's EOS, seeded by seed and step); the "
            "student's generation_config is not read."
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "On-policy sampling temperature (lmbda > 0); 1 samples the student as is."},
    )
    max_new_tokens: int = field(
        default=256,
        metadata={"help": "Longest on-policy completion (lmbda > 0), in tokens; longer ones are cut there."},
    )
    use_liger_loss: bool = field(
        default=False,
        metadata={
            "help": "Compute the loss with Liger-Kernel's fused linear JSD (needs liger-kernel and CUDA). Faster, "
            "but in the model's dtype; the default chunked float32 path is exact."
        },
    )
    # Overridden default: the trainer returns no logits (they are never built), so evaluation reports the loss.
    prediction_loss_only: bool = field(
        default=True,
        metadata={
            "help": "Evaluation reports the loss only (TrRa never builds full logits); must stay True."
        },
    )

    def __post_init__(self) -> None:
        self._check_trra_fields()
        super().__post_init__()

    def _check_trra_fields(self) -> None:
        # Checked before TrainingArguments sets anything up, so a bad value fails at once and clearly.
        self.lam = check_lam(self.lam)
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if not 0.0 < self.jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must lie strictly between 0 and 1, got {self.jsd_beta}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher_dtype must be one of {TEACHER_DTYPES}, got {self.teacher_dtype!r}")
        if self.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1, got {self.loss_chunk_size}")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda is a share of each batch, between 0 and 1; got {self.lmbda}")
        if self.lmbda > 0 and self.teacher_cache:
            raise ValueError(
                "teacher_cache holds the data's tokens only; on-policy rows (lmbda > 0) need teachers"
            )
        if not self.temperature > 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"temperature must be > 0 and max_new_tokens >= 1, got {self.temperature}, {self.max_new_tokens}"
            )
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.iterations > 1 and self.teacher_cache:
            raise ValueError(
                "teacher_cache cannot serve TrRa-iter: from round 2 on, the aligned teacher is the new student"
            )
        if not self.prediction_loss_only:
            raise ValueError("TrRa evaluation reports the loss only: prediction_loss_only must be True")
        self._check_sft_fields()

    def _check_sft_fields(self) -> None:
        """SFT options that have no meaning for TrRa: refuse them rather than silently ignore them."""
        if self.packing or self.padding_free:
            raise ValueError(
                "packing / padding_free are not supported by TrRa (each example keeps its own rows)"
            )
        if self.assistant_only_loss or self.completion_only_loss is False:
            raise ValueError(
                "TrRa always trains on the completion tokens only; leave assistant_only_loss and completion_only_loss unset"
            )
        if self.loss_type != "nll":
            raise ValueError(
                f"loss_type is an SFT option; TrRa's loss is set by `divergence` (got loss_type={self.loss_type!r})"
            )
