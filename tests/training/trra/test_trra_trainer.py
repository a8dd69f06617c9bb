"""TrRaTrainer on tiny models: zero loss at the reference, gradients to the student only, realignment past lam=1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trra_helpers import make_model, make_rows, make_tokenizer, perturbed, trra_config

from flexrealign.training.trra import TrRaTrainer, trra_loss
from flexrealign.training.trra.data import CompletionCollator, completion_positions, prepare_dataset
from flexrealign.training.trra.models import final_hidden_states


def first_batch(trainer: TrRaTrainer) -> dict[str, torch.Tensor]:
    return next(iter(trainer.get_train_dataloader()))


def test_student_equal_to_reference_at_lam_0_gives_zero_loss_and_gradients(
    tmp_path: Path, model_dirs: dict, rows: Dataset
) -> None:
    trainer = TrRaTrainer(args=trra_config(tmp_path, model_dirs, lam=0.0), train_dataset=rows)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    teacher = trainer._teachers["ref"]
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_gradients_reach_the_student_only(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    trainer = TrRaTrainer(args=trra_config(tmp_path, model_dirs, lam=2.0), train_dataset=rows)
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    loss.backward()
    assert loss.item() > 0
    assert set(trainer._teachers) == {"ref", "aligned"}
    assert trainer.model.lm_head.weight.grad.abs().sum() > 0
    assert trainer.model.model.embed_tokens.weight.grad.abs().sum() > 0
    for teacher in trainer._teachers.values():
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_model_objects_and_lam_1_loads_only_the_aligned_teacher(tmp_path: Path, rows: Dataset) -> None:
    tok = make_tokenizer()
    aligned = perturbed(make_model(0))
    trainer = TrRaTrainer(
        model=make_model(0), aligned_model=aligned, args=trra_config(tmp_path, lam=1.0),
        train_dataset=rows, processing_class=tok,
    )  # fmt: skip
    assert set(trainer._teachers) == {"aligned"}
    assert trainer._num_tokens == len(tok)  # the 12 padded head rows are left out of the loss
    with pytest.raises(ValueError, match="separate model object"):
        TrRaTrainer(model=aligned, aligned_model=aligned, args=trra_config(tmp_path, lam=1.0), train_dataset=rows, processing_class=tok)  # fmt: skip


@torch.no_grad()
def mean_kl(p_model, q_model, batch: dict) -> float:
    """Mean per-token KL(p || q) over completion positions: trra_loss with lam = 0 makes q the teacher."""
    mask = completion_positions(batch["labels"])  # (B, T-1)
    h_p = final_hidden_states(p_model, batch["input_ids"], batch["attention_mask"])[:, :-1]
    h_q = final_hidden_states(q_model, batch["input_ids"], batch["attention_mask"])[:, :-1]
    w_p, w_q = p_model.lm_head.weight, q_model.lm_head.weight
    return trra_loss(h_p, w_p, None, None, h_q, w_q, 0.0, mask, num_tokens=260).item()


def test_short_run_realigns_beyond_the_aligned_model(tmp_path: Path) -> None:
    tok = make_tokenizer()
    ref, aligned = make_model(0).eval(), perturbed(make_model(0), scale=3.0).eval()
    held_out = prepare_dataset(make_rows(16, seed=99), tok, max_length=64)
    batch = CompletionCollator(tok.pad_token_id)([held_out[i] for i in range(len(held_out))])
    config = trra_config(tmp_path, lam=2.0, max_steps=30, learning_rate=1e-2, eval_strategy="no")
    trainer = TrRaTrainer(
        model=make_model(0), ref_model=ref, aligned_model=aligned, args=config,
        train_dataset=make_rows(128), eval_dataset=held_out, processing_class=tok,
    )  # fmt: skip
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.5 * before  # the divergence to the fused teacher went down

    student = trainer.model.eval()
    kl_aligned, kl_student = mean_kl(aligned, ref, batch), mean_kl(student, ref, batch)
    assert kl_aligned > 0.02  # the aligned model really differs from the reference
    assert kl_student > 1.5 * kl_aligned  # lam = 2 pushed the student past the aligned model
