"""InRa adapter training: only the adapter changes, lam interpolates the learned behaviour, DPO needs no
second base model, and the adapter (layer or LoRA) starts as an identity."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from datasets import Dataset
from inra_metrics import (
    completion_nll,
    reward_margins,
    tensor_digests,
    unique_parameter_bytes,
)

from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.training.inra_train import InRaPathView, InRaTrainConfig, build_inra_model, train_inra
from flexrealign.training.inra_train.train import check_optimizer_params, make_dpo_trainer

LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
SFT_PAIRS = [
    ("Once upon a time", " there was a big red dog named Max."),
    ("One day, Lily", " went to the park with her red ball."),
    ("The cat", " sat on the mat and ate a big red fish."),
    ("Tom was happy", " because his dog Max found the red ball."),
]
DPO_TRIPLES = [
    ("Once upon a time", " there was a happy dog.", " there was a sad dog."),
    ("Lily saw a bird.", " She smiled at it.", " She cried at it."),
    ("Tom had a ball.", " He was very happy.", " He was very sad."),
    ("The sun was out.", " Everyone was happy.", " Everyone was sad."),
]


def quick_config(tmp_path, **overrides) -> InRaTrainConfig:
    fields = dict(
        base_model="stories260k",
        output_dir=str(tmp_path / "out"),
        learning_rate=3e-3,
        max_steps=15,
        per_device_train_batch_size=4,
        warmup_ratio=0.0,
        max_length=64,
        logging_steps=5,
        seed=0,
    )
    return InRaTrainConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def sft_run(stories260k, tmp_path_factory):
    """One short SFT run on a private copy of stories260K (the session fixture must stay untouched)."""
    base, tok = copy.deepcopy(stories260k[0]), stories260k[1]
    before = tensor_digests(base)
    reference = copy.deepcopy(base)
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in SFT_PAIRS] * 4)
    config = quick_config(tmp_path_factory.mktemp("sft"))
    result = train_inra(config, base=base, tokenizer=tok, train_dataset=data)
    return result, before, reference, tok, config


def test_sft_leaves_every_base_weight_bit_identical(sft_run):
    result, before, reference, _, _ = sft_run
    assert tensor_digests(result.model.base) == before
    start = tensor_digests(build_inra_model(copy.deepcopy(reference), InRaTrainConfig()).adapter)
    assert tensor_digests(result.model.adapter) != start  # the adapter did train


def test_lam0_still_reproduces_the_base_model_exactly(sft_run):
    result, _, reference, tok, _ = sft_run
    ids = tok(["Once upon a time there was"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(result.model(ids, lam=0.0).logits, reference(ids).logits.float())


def test_sft_lowers_loss_and_lam_interpolates_monotonically(sft_run):
    result, _, _, tok, _ = sft_run
    losses = [completion_nll(result.model, tok, SFT_PAIRS, lam=lam) for lam in LAMS]
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(a > b for a, b in itertools.pairwise(losses)), losses


def test_saved_checkpoint_and_adapter_reload_the_trained_model(sft_run, stories260k):
    result, _, reference, tok, config = sft_run
    ids = tok(["One day, Lily"], return_tensors="pt")["input_ids"]
    from_ckpt = InRaModel.from_pretrained(config.output_dir, dtype=torch.float32)
    from_adapter = InRaModel.from_adapter(f"{config.output_dir}/adapter", copy.deepcopy(reference))
    with torch.no_grad():
        want = result.model(ids, lam=0.5).logits
        assert torch.allclose(from_ckpt(ids, lam=0.5).logits, want, atol=1e-5)
        assert torch.equal(from_adapter(ids, lam=0.5).logits, want)


def test_dpo_raises_the_margin_without_a_second_base_copy(stories260k, tmp_path):
    base, tok = copy.deepcopy(stories260k[0]), stories260k[1]
    before = tensor_digests(base)
    config = quick_config(tmp_path, method="dpo", beta=0.1, learning_rate=2e-3, max_steps=8, output_dir="")
    model = build_inra_model(base, config)
    assert reward_margins(model, tok, DPO_TRIPLES, config.beta) == [0.0] * len(DPO_TRIPLES)
    data = Dataset.from_list([dict(prompt=p, chosen=c, rejected=r) for p, c, r in DPO_TRIPLES] * 2)
    trainer = make_dpo_trainer(model, tok, data, config)
    check_optimizer_params(trainer, model)
    held = unique_parameter_bytes(trainer.model, trainer.ref_model)
    one_copy = unique_parameter_bytes(base) + unique_parameter_bytes(model.adapter)
    assert held == one_copy  # the reference is the adapter-less path of the same weights
    trainer.train()
    margins = reward_margins(model.eval(), tok, DPO_TRIPLES, config.beta)
    assert min(margins) > 0 and sum(margins) / len(margins) > 0.5, margins  # measured ~2.5
    assert tensor_digests(model.base) == before


def _lam_half_logits(model: InRaModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, lam=0.5).logits


@pytest.mark.parametrize("adapter_type", ["layer", "lora"])
def test_identity_init_changes_nothing_and_kaiming_does(adapter_type):
    base = tiny_model("qwen2", hidden_size=48, num_layers=2)
    ids = torch.randint(3, 96, (2, 7))
    with torch.no_grad():
        want = base(ids).logits
    make = lambda init: build_inra_model(  # noqa: E731
        base, InRaTrainConfig(adapter_init=init, adapter_type=adapter_type, seed=0)
    )
    assert torch.equal(_lam_half_logits(make("identity"), ids), want)
    assert not torch.allclose(_lam_half_logits(make("kaiming"), ids), want, atol=1e-3)


def test_lora_variant_trains_only_low_rank_updates_and_saves_plain_layers(stories260k, tmp_path):
    base, tok = copy.deepcopy(stories260k[0]), stories260k[1]
    config = quick_config(tmp_path, adapter_type="lora", lora_r=4, max_steps=10)
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in SFT_PAIRS] * 2)
    result = train_inra(config, base=base, tokenizer=tok, train_dataset=data)
    assert not any("lora" in name for name, _ in result.model.adapter.named_parameters())  # merged
    losses = [completion_nll(result.model, tok, SFT_PAIRS, lam=lam) for lam in (0.0, 1.0)]
    assert losses[1] < losses[0], losses
    reloaded = InRaModel.from_adapter(f"{config.output_dir}/adapter", copy.deepcopy(stories260k[0]))
    ids = tok(["The cat"], return_tensors="pt")["input_ids"]
    assert torch.equal(_lam_half_logits(reloaded, ids), _lam_half_logits(result.model, ids))


def test_lora_trainer_optimizes_only_the_rank_decomposition(stories260k):
    model = build_inra_model(copy.deepcopy(stories260k[0]), InRaTrainConfig(adapter_type="lora", lora_r=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.split(".")[-1] in ("lora_A", "lora_B") for n in trainable)


@pytest.mark.parametrize(
    "bad",
    [
        dict(method="ppo"),
        dict(adapter_init="zeros"),
        dict(adapter_type="prefix"),
        dict(num_adapter_layers=0),
        dict(lora_r=0),
        dict(max_steps=0),
        dict(beta=0.0),
        dict(dtype="int8"),
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        InRaTrainConfig(**bad)


def test_path_views_match_the_fused_model_and_share_its_weights():
    base = tiny_model("llama", hidden_size=32, num_layers=2)
    model = build_inra_model(base, InRaTrainConfig(adapter_init="kaiming"))
    ids = torch.randint(3, 96, (2, 6))
    with torch.no_grad():
        for path, lam in (("aligned", 1.0), ("ref", 0.0)):
            view = InRaPathView(model, path)
            hidden = view.base_model(ids).last_hidden_state  # what TRL's fused LM head reads
            assert torch.allclose(view.get_output_embeddings()(hidden), model(ids, lam=lam).logits, atol=1e-6)
            assert unique_parameter_bytes(view) == unique_parameter_bytes(model)


def test_gradient_checkpointing_covers_the_base_and_keeps_the_gradients():
    ids = torch.randint(3, 96, (2, 6))
    grads = []
    for checkpointing in (False, True):
        model = build_inra_model(tiny_model("llama", hidden_size=32), InRaTrainConfig(adapter_init="kaiming"))
        view = InRaPathView(model).train()
        if checkpointing:
            view.gradient_checkpointing_enable()
            assert view.is_gradient_checkpointing and model.base.is_gradient_checkpointing
        view(ids, labels=ids).loss.backward()
        grads.append([p.grad for p in model.adapter.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain)


def test_bf16_runs_keep_fp32_master_weights_for_the_trainable_tensors():
    base = tiny_model("qwen2", hidden_size=32).to(torch.bfloat16)
    for adapter_type in ("layer", "lora"):
        model = build_inra_model(base, InRaTrainConfig(bf16=True, adapter_type=adapter_type))
        trainable = [p for p in model.adapter.parameters() if p.requires_grad]
        assert trainable and all(p.dtype == torch.float32 for p in trainable)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randint(3, 96, (1, 5)), labels=torch.randint(3, 96, (1, 5))).loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
