"""The models a TrRaTrainer is built with, before any training: the student, the frozen teachers (or the teacher
cache in their place) and the tokenizer, each taken as given or loaded from its name, and checked against each
other: one vocabulary and head size everywhere, and a teacher cache made for these teachers and this student.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flexrealign.core.checkpoint import resolve_dtype
from flexrealign.training.trra.config import TrRaConfig
from flexrealign.training.trra.loss import ALIGNED, REF, teacher_parts
from flexrealign.training.trra.models import (
    check_vocabularies,
    freeze,
    head_rows,
    load_model,
    load_tokenizer,
)
from flexrealign.training.trra.teacher_cache import TeacherCache

ModelLike = PreTrainedModel | str | None


def model_name(model: ModelLike, configured: str | None) -> str | None:
    return model if isinstance(model, str) else (None if model is not None else configured)


def _teacher_dtype(args: TrRaConfig) -> str | torch.dtype:
    return resolve_dtype(args.teacher_dtype)


def _check_cache_matches(cache: TeacherCache, rows: int, tokens: int, names: dict[str, str | None]) -> None:
    """A teacher cache serves only the vocabulary and the teachers it was written with."""
    if (cache.meta["vocab_rows"], cache.meta["num_tokens"]) != (rows, tokens):
        raise ValueError(
            f"the teacher cache was made with {cache.meta['vocab_rows']} head rows and {cache.meta['num_tokens']} "
            f"tokens; this student has {rows} and its tokenizer {tokens}"
        )
    for part in (REF, ALIGNED):
        recorded = cache.meta[f"{part}_model"]
        if names[part] is not None and names[part] != recorded:
            raise ValueError(f"the teacher cache holds {part}_model={recorded!r}, not {names[part]!r}")


def load_training_tokenizer(names: dict[str, str | None], args: TrRaConfig) -> PreTrainedTokenizerBase:
    name = names[REF] or names["student"]
    if name is None:
        raise ValueError("no tokenizer: pass processing_class or set ref_model to a name or path")
    return load_tokenizer(name, REF, args.trust_remote_code)


def load_models(
    model: ModelLike,
    ref_model: ModelLike,
    aligned_model: ModelLike,
    names: dict[str, str | None],
    args: TrRaConfig,
) -> tuple[PreTrainedModel, dict[str, PreTrainedModel], TeacherCache | None]:
    """(student, {part: frozen teacher}, cache or None); every model is loaded before any data work."""
    given = {"student": model, REF: ref_model, ALIGNED: aligned_model}
    if isinstance(model, nn.Module) and any(model is t for t in (ref_model, aligned_model)):
        raise ValueError("the student must be a separate model object from the teachers (load it twice)")
    init_kwargs = dict(args.model_init_kwargs or {})
    student_dtype = init_kwargs.pop("dtype", "float32")
    student = given["student"]
    if not isinstance(student, PreTrainedModel):
        if names["student"] is None:
            raise ValueError("no student: pass model=... or set ref_model (or student_model)")
        student = load_model(
            names["student"], "student", student_dtype, args.trust_remote_code, **init_kwargs
        )
    if not any(p.requires_grad for p in student.parameters()):
        raise ValueError(
            "the student has no trainable parameters (was it frozen as a teacher?); call requires_grad_(True)"
        )
    teachers, cache = load_teachers(ref_model, aligned_model, names, args)
    return student, teachers, cache


def load_teachers(
    ref_model: ModelLike, aligned_model: ModelLike, names: dict[str, str | None], args: TrRaConfig
) -> tuple[dict[str, PreTrainedModel], TeacherCache | None]:
    """({part: frozen teacher} for the parts lam needs, cache or None); with a cache no teacher is loaded."""
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
    return teachers, cache


def check_vocab(
    student: PreTrainedModel,
    teachers: dict[str, PreTrainedModel],
    cache: TeacherCache | None,
    tokenizer: PreTrainedTokenizerBase,
    names: dict[str, str | None],
    args: TrRaConfig,
) -> int | None:
    """Same tokenizer and head size everywhere, checked before any training; returns the loss's num_tokens."""
    tokenizers, loaded = {"training": tokenizer}, set()
    for role, name in names.items():
        if name is None or name in loaded or (cache is not None and role != "student"):
            continue
        tokenizers[role] = load_tokenizer(name, role, args.trust_remote_code)
        loaded.add(name)
    num_tokens = check_vocabularies({"student": student, **teachers}, tokenizers)
    if cache is not None:
        _check_cache_matches(cache, head_rows(student), len(tokenizer), names)
    return num_tokens
