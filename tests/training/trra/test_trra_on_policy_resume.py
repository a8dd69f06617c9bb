"""On-policy TrRa is a function of (seed, step): the first step of a run samples like any other, and a run
resumed from any checkpoint ends where the uninterrupted run ends (the model's mode, how often anything ran and
the global RNG take no part)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trra_helpers import trra_config

from flexrealign.training.trra import TrRaTrainer
from flexrealign.training.trra.data import IGNORE


class Killed(RuntimeError):
    pass


class KillAfterSave(TrainerCallback):
    """Stops the run right after the checkpoint of step `at` is on disk, as a kill would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise Killed(f"killed after step {state.global_step}")


def weights(trainer: TrRaTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def losses(trainer: TrRaTrainer) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


@pytest.mark.parametrize(
    ("lmbda", "kill_at", "options"),
    [
        (0.5, 2, {}),  # the reported case
        (0.3, 1, {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 2}),
    ],
    ids=["lmbda0.5-checkpoint2", "lmbda0.3-checkpoint1-accumulation2"],
)
def test_resumed_on_policy_run_equals_the_uninterrupted_one(
    tmp_path: Path, model_dirs: dict, rows: Dataset, lmbda: float, kill_at: int, options: dict
) -> None:
    common = dict(max_steps=4, lam=2.0, lmbda=lmbda, max_new_tokens=8, **options)
    full = TrRaTrainer(args=trra_config(tmp_path / "full", model_dirs, **common), train_dataset=rows)
    full.train()

    out = tmp_path / "broken"
    config = trra_config(out, model_dirs, save_strategy="steps", save_steps=1, **common)
    with pytest.raises(Killed):
        TrRaTrainer(args=config, train_dataset=rows, callbacks=[KillAfterSave(kill_at)]).train()
    resumed = TrRaTrainer(args=config, train_dataset=rows)  # as a fresh process would
    resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{kill_at}"))

    assert resumed.state.global_step == 4
    want, got = losses(full), losses(resumed)  # the resumed history holds the checkpoint's steps too
    assert sorted(got) == list(range(1, 5))
    for step, loss in got.items():
        assert loss == pytest.approx(want[step], rel=1e-5, abs=1e-7), f"step {step}"
    expected, actual = weights(full), weights(resumed)
    for name, value in expected.items():  # a step run off-policy instead moves some by ~5e-3
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=name)


class RecordingTrainer(TrRaTrainer):
    """Keeps the batches the loss of each optimizer step sees."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen = getattr(self, "seen", {})
        self.seen.setdefault(self.state.global_step, []).append({k: v.clone() for k, v in inputs.items()})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def sequences(batch: dict[str, torch.Tensor]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(prompt, completion) token tuples of each row of a right-padded batch."""
    out = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        n, start = int(mask.sum()), int((labels != IGNORE).int().argmax())
        out.append((tuple(ids[:start].tolist()), tuple(ids[start:n].tolist())))
    return out


def sequences_of_row(row: dict) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """`sequences` of one tokenized dataset row."""
    labels = torch.as_tensor(row["labels"])
    batch = {
        "input_ids": torch.as_tensor(row["input_ids"])[None],
        "labels": labels[None],
        "attention_mask": torch.ones_like(labels)[None],
    }
    return sequences(batch)


def test_first_step_of_a_run_is_on_policy(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    trainer = RecordingTrainer(
        args=trra_config(tmp_path, model_dirs, lmbda=1.0, max_new_tokens=8, max_steps=1), train_dataset=rows
    )
    trainer.model.eval()  # as from_pretrained leaves it: the mode before step 1 must not decide
    trainer.train()
    data = {pair for row in trainer.train_dataset for pair in sequences_of_row(row)}
    prompts = {prompt for prompt, _ in data}
    first = [pair for batch in trainer.seen[0] for pair in sequences(batch)]
    assert len(first) == trainer.args.per_device_train_batch_size
    # every row (lmbda = 1) has a prompt of the data and a completion sampled from the student
    assert all(prompt in prompts for prompt, _ in first)
    assert not any(pair in data for pair in first)
