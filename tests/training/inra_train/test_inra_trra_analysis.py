"""TrRa into the adapter (the base doubles as the reference teacher) and the §5 analyses on a tiny model."""

from __future__ import annotations

import copy
import json

import torch
from datasets import Dataset
from inra_metrics import tensor_digests, unique_parameter_bytes

from flexrealign.cli import main
from flexrealign.core.tiny import tiny_model
from flexrealign.training.inra_train import InRaTrainConfig, build_inra_model
from flexrealign.training.inra_train.analysis import Budget, batches, init_ablation, layer_significance
from flexrealign.training.inra_train.train import check_optimizer_params, make_trra_trainer
from flexrealign.training.trra.loss import ALIGNED

PAIRS = [("Once upon a time", " there was a big red dog."), ("Lily", " went to the park.")] * 4


def test_trra_trains_the_adapter_toward_the_aligned_teacher_sharing_the_base(stories260k, tmp_path):
    base, tok = copy.deepcopy(stories260k[0]), copy.deepcopy(stories260k[1])
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # TrRa renders with a template
    )
    aligned = copy.deepcopy(base)
    with torch.no_grad():
        for p in aligned.model.layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    aligned.save_pretrained(tmp_path / "aligned")
    tok.save_pretrained(tmp_path / "aligned")
    config = InRaTrainConfig(
        method="trra", aligned_model=str(tmp_path / "aligned"), lam=1.0, max_steps=6, learning_rate=3e-3,
        per_device_train_batch_size=4, warmup_ratio=0.0, max_length=64, logging_steps=2,
    )  # fmt: skip
    before = tensor_digests(base)
    model = build_inra_model(base, config)
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in PAIRS])
    trainer = make_trra_trainer(model, tok, data, config)
    check_optimizer_params(trainer, model)
    held = unique_parameter_bytes(trainer.model, *trainer._teachers.values())
    loaded = trainer._teachers[ALIGNED]
    assert held == sum(unique_parameter_bytes(m) for m in (base, model.adapter, loaded))  # ref teacher = base
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0], losses
    assert tensor_digests(base) == before


def _budget(tok_model_pairs, steps: int = 4) -> Budget:
    tok, pairs = tok_model_pairs
    return Budget(steps, 1e-3, batches(tok, pairs[:6], 2, 32), batches(tok, pairs[6:], 2, 32))


def test_layer_significance_gives_both_variants_the_same_budget_and_restores_the_model(stories260k):
    model, tok = copy.deepcopy(stories260k[0]), stories260k[1]
    before = tensor_digests(model)
    rows = layer_significance(model, 2, _budget((tok, PAIRS)))
    assert [r.variant.split()[0] for r in rows] == ["bottom-2", "top-2"]
    assert rows[0].trainable_params == rows[1].trainable_params > 0
    assert rows[0].loss_before == rows[1].loss_before and all(r.gain > 0 for r in rows)
    assert tensor_digests(model) == before


def test_init_ablation_identity_starts_at_the_base_and_kaiming_does_not(stories260k):
    model, tok = copy.deepcopy(stories260k[0]), stories260k[1]
    identity, kaiming = init_ablation(model, _budget((tok, PAIRS), steps=2))
    assert identity.note.endswith(" 0") and not kaiming.note.endswith(" 0")
    assert identity.loss_before < kaiming.loss_before


def test_analyze_command_prints_a_table_and_writes_json(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_model("llama", vocab_size=96).save_pretrained(folder)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(96)} | {"[UNK]": 95}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="w0").save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"w{i} w{i + 1}", "completion": f" w{i + 2} w{i + 3}"} for i in range(10)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "layers.json"
    args = ["--model", str(folder), "--dataset", str(data), "--num_heldout", "2", "--steps", "2"]
    assert main(["analyze", "layers", *args, "--output", str(out)]) == 0
    assert "bottom-1" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["analysis"] == "layers" and len(report["rows"]) == 2 and "gain" in report["rows"][0]
    assert main(["analyze", "nope"]) == 2
