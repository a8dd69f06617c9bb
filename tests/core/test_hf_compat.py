"""hf_compat: names that moved between the transformers versions flexrealign supports."""

from __future__ import annotations

import dataclasses
import warnings

from transformers import TrainingArguments

from flexrealign.core.hf_compat import checkpointing_field


def test_checkpointing_field_is_this_transformers_name_and_does_not_warn(tmp_path) -> None:
    name = checkpointing_field()
    assert name in {f.name for f in dataclasses.fields(TrainingArguments)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # 5.24 warns on the old name
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{name: False})
    assert getattr(args, name) is False
