"""On-policy TrRa (`lmbda`, as TRL GKD): lmbda = 0 is exactly the off-policy run; sampled rows keep their prompts
and carry the student's own samples; the loss on them equals an independent float64 KL to the fused teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trra_helpers import trra_config

from flexrealign.training.trra import TrRaConfig, TrRaTrainer
from flexrealign.training.trra.data import IGNORE
from flexrealign.training.trra.on_policy import pick_rows, prompt_lengths, sample_completions


def train(tmp_path: Path, model_dirs: dict, rows: Dataset, **overrides) -> dict[str, torch.Tensor]:
    trainer = TrRaTrainer(args=trra_config(tmp_path, model_dirs, **overrides), train_dataset=rows)
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_lmbda_0_reproduces_the_off_policy_run_exactly(
    tmp_path: Path, model_dirs: dict, rows: Dataset
) -> None:
    off = train(tmp_path / "off", model_dirs, rows)  # the default: the paper's off-policy TrRa
    zero = train(tmp_path / "zero", model_dirs, rows, lmbda=0.0, temperature=0.5, max_new_tokens=3)
    on = train(tmp_path / "on", model_dirs, rows, lmbda=0.5, max_new_tokens=8)
    assert all(torch.equal(off[k], zero[k]) for k in off)
    assert any(not torch.equal(off[k], on[k]) for k in off)  # the option does something


def test_on_policy_runs_are_deterministic(tmp_path: Path, model_dirs: dict, rows: Dataset) -> None:
    a = train(tmp_path / "a", model_dirs, rows, lmbda=1.0, max_new_tokens=8)
    b = train(tmp_path / "b", model_dirs, rows, lmbda=1.0, max_new_tokens=8)
    assert all(torch.equal(a[k], b[k]) for k in a)


def fused_kl_float64(trainer: TrRaTrainer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over completion tokens of KL(student || softmax(lam z_aligned + (1 - lam) z_ref)), from full logits."""
    lam = trainer.args.lam
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    z = {name: m(**kwargs).logits.double() for name, m in (("s", trainer.model), *trainer._teachers.items())}
    keep = batch["labels"][:, 1:] != IGNORE  # (B, T-1): positions predicting a completion token
    vocab = len(trainer.processing_class)  # rows past the tokenizer are padding, masked by the loss
    pick = {k: v[:, :-1][keep][:, :vocab] for k, v in z.items()}  # (N, V)
    log_s = torch.log_softmax(pick["s"], -1)
    log_t = torch.log_softmax(lam * pick["aligned"] + (1 - lam) * pick["ref"], -1)
    return (log_s.exp() * (log_s - log_t)).sum(-1).mean()


def test_on_policy_loss_equals_an_independent_kl_on_the_sampled_tokens(
    tmp_path: Path, model_dirs: dict, rows: Dataset
) -> None:
    trainer = TrRaTrainer(
        args=trra_config(tmp_path, model_dirs, lmbda=1.0, max_new_tokens=12, temperature=0.8),
        train_dataset=rows,
    )
    data = next(iter(trainer.get_train_dataloader()))
    batches, count = trainer.get_batch_samples(iter([data]), 1, torch.device("cpu"))
    batch = batches[0]
    # Prompts are kept; completions are the student's own samples (the same seed gives the same tokens).
    before, after = prompt_lengths(data["labels"]), prompt_lengths(batch["labels"])
    assert before == after
    seed = trainer.args.seed  # step 0, micro-batch 0, process 0
    prompts = [data["input_ids"][i, : before[i]].tolist() for i in range(len(before))]
    tok = trainer.processing_class
    sampled = sample_completions(
        trainer.model, prompts, tok.pad_token_id, tok.eos_token_id, 0.8, 12, seed, num_tokens=len(tok)
    )
    assert all(t < len(tok) for c in sampled for t in c)  # the loss's vocabulary, not the head's padding rows
    for i, completion in enumerate(sampled):
        labels = batch["labels"][i]
        assert labels[labels != IGNORE].tolist() == completion
        assert batch["input_ids"][i, : before[i]].tolist() == prompts[i]
    assert count is None or int(count) == sum(map(len, sampled))  # the tokens actually trained on
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        want = fused_kl_float64(trainer, batch)
    assert loss.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)


def test_pick_rows_is_a_seeded_share() -> None:
    assert pick_rows(64, 0.0, 1) == [] and pick_rows(8, 1.0, 1) == list(range(8))
    share = len(pick_rows(4000, 0.25, 3)) / 4000
    assert 0.22 < share < 0.28 and pick_rows(50, 0.5, 9) == pick_rows(50, 0.5, 9)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"lmbda": 1.5}, "lmbda"), ({"lmbda": -0.1}, "lmbda"), ({"lmbda": 0.5, "teacher_cache": "x"}, "teacher_cache"),
     ({"temperature": 0.0}, "temperature"), ({"max_new_tokens": 0}, "max_new_tokens")],
)  # fmt: skip
def test_bad_on_policy_fields_are_refused(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrRaConfig(output_dir=str(tmp_path), **fields)
