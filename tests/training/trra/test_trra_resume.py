"""resume_from_checkpoint after an interruption continues at the saved step and ends where an unbroken run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trra_helpers import trra_config

from flexrealign.training.trra import TrRaTrainer

STEPS, KILL_AT = 8, 4


class Killed(RuntimeError):
    pass


class KillAfterSave(TrainerCallback):
    """Stops the run right after the checkpoint of step KILL_AT is on disk, as a kill would."""

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == KILL_AT:
            raise Killed(f"killed after step {state.global_step}")


class RecordSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def weights(trainer: TrRaTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_continues_from_the_saved_step(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    common = dict(max_steps=STEPS, lam=2.0, warmup_steps=2, lr_scheduler_type="cosine")
    full = TrRaTrainer(args=trra_config(tmp_path / "full", model_dirs, **common), train_dataset=rows)
    full.train()

    out = tmp_path / "broken"
    config = trra_config(out, model_dirs, save_strategy="steps", save_steps=KILL_AT, **common)
    with pytest.raises(Killed):
        TrRaTrainer(args=config, train_dataset=rows, callbacks=[KillAfterSave()]).train()
    assert (out / f"checkpoint-{KILL_AT}").is_dir()

    record = RecordSteps()
    resumed = TrRaTrainer(args=config, train_dataset=rows, callbacks=[record])  # as a fresh process would
    resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{KILL_AT}"))
    assert record.steps == list(
        range(KILL_AT + 1, STEPS + 1)
    )  # continued after the saved step, not restarted
    assert resumed.state.global_step == STEPS

    losses = {e["step"]: e["loss"] for e in full.state.log_history if "loss" in e}
    for entry in resumed.state.log_history:
        if "loss" in entry:
            assert entry["loss"] == pytest.approx(losses[entry["step"]], rel=1e-6)
    expected, actual = weights(full), weights(resumed)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-7, msg=name)
