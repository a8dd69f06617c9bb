"""Every family of the table (`flexrealign.core.families`) through InRa, DeRa, export, generate and training.

Tiny random models built in code; each family's quirks come from its table entry (experts, sliding/global
patterns, NoPE layers, attention sinks). The vLLM plugin's per-family tests are in tests/vllm_plugin.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from tiny_checkpoints import bpe_tokenizer
from transformers import AutoModelForCausalLM

from flexrealign.core.adapter import AdapterConfig, base_model_config, merged_model_config
from flexrealign.core.dera import DeRa
from flexrealign.core.families import FAMILIES, family_of
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.generation import generate
from flexrealign.decoding.rows import LamSchedule
from helpers import perturb_adapter

VOCAB = 300  # the BPE test tokenizer's smallest size is 262 (specials, think markers, 256 bytes)
ALL = list(FAMILIES)


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(VOCAB)


def base_and_inra(family: str, layers: int = 2, **config) -> tuple[torch.nn.Module, InRaModel]:
    base = tiny_model(family, vocab_size=VOCAB, **config)
    inra = perturb_adapter(InRaModel.from_base(base, AdapterConfig(num_layers=layers)), scale=0.5, seed=3)
    return base, inra.eval()


def config_fields(config) -> dict:
    """A config's fields, without those that name where it came from."""
    return {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "architectures")}


def padded_ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(7, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("family", ALL)
def test_untrained_adapter_is_an_exact_identity(family):
    base = tiny_model(family, vocab_size=VOCAB)
    model = InRaModel.from_base(base)
    ids, mask = padded_ids()
    want = base(ids, attention_mask=mask).logits
    assert torch.equal(model(ids, attention_mask=mask, lam=0.0).logits, want)
    assert torch.equal(model(ids, attention_mask=mask, lam=1.0).logits, want)
    torch.testing.assert_close(model(ids, attention_mask=mask, lam=0.5).logits, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ALL)
def test_lam0_is_the_base_and_lam1_the_exported_plain_model(family, tok, tmp_path):
    base, inra = base_and_inra(family)
    ids, mask = padded_ids()
    inra.save_pretrained(tmp_path, tokenizer=tok)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # stock Hugging Face, no flexrealign
    assert type(plain) is type(base) and plain.config.num_hidden_layers == base.config.num_hidden_layers + 2
    assert torch.equal(inra(ids, attention_mask=mask, lam=0.0).logits, base(ids, attention_mask=mask).logits)
    aligned = inra(ids, attention_mask=mask, lam=1.0).logits
    assert torch.equal(aligned, plain(ids, attention_mask=mask).logits)
    assert not torch.allclose(aligned, base(ids, attention_mask=mask).logits, atol=1e-3), "perturbed adapter"


@pytest.mark.parametrize("family", ALL)
def test_inra_equals_dera_on_the_merged_model_at_every_cached_step(family):
    base, inra = base_and_inra(family)
    dera = DeRa(base, inra.to_aligned_model())
    for lam in (-0.5, 0.3, 1.7):
        ids = torch.randint(7, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
        cache_i = cache_d = None
        for _ in range(12):  # prefill, then one token at a time past the sliding windows (8)
            out_i = inra(ids, lam=lam, past_key_values=cache_i, use_cache=True)
            out_d = dera(ids, lam=lam, past_key_values=cache_d, use_cache=True)
            torch.testing.assert_close(out_i.logits, out_d.logits, atol=1e-5, rtol=0)
            cache_i, cache_d = out_i.past_key_values, out_d.past_key_values
            ids = out_i.logits[:, -1:].argmax(-1)


@pytest.mark.parametrize("family", ALL)
def test_mixed_lam_batch_equals_each_prompt_alone_with_a_schedule_and_a_budget(family, tok):
    _, inra = base_and_inra(family)
    prompts = ["the word of his time <think>", "you said that <think>", "he was at one"]
    lams = [LamSchedule.think_answer(-1.0, 1.0), 0.5, LamSchedule.think_answer(2.0, 0.0)]
    kw = dict(max_new_tokens=10, thinking_token_budget=4, thinking_closing=" so")
    batch = generate(inra, tok, prompts, lam=lams, **kw)
    for i, (p, lam) in enumerate(zip(prompts, lams, strict=True)):
        alone = generate(inra, tok, [p], lam=[lam], **kw)
        assert alone.token_ids[0] == batch.token_ids[i], f"prompt {i}"
    assert all(r <= 4 for r in batch.reasoning_tokens)
    assert batch.reasoning_tokens[0] == 4 and tok.convert_tokens_to_ids("</think>") in batch.token_ids[0]
    by_lam = generate(inra, tok, [prompts[2]] * 2, lam=[0.0, 1.0], max_new_tokens=10)
    assert by_lam.token_ids[0] != by_lam.token_ids[1], "lam must change the output"


@pytest.mark.parametrize("family", ALL)
def test_checkpoint_and_adapter_round_trip(family, tok, tmp_path):
    base, inra = base_and_inra(family)
    ids, mask = padded_ids()
    want = inra(ids, attention_mask=mask, lam=0.5).logits
    inra.save_pretrained(tmp_path / "ckpt", tokenizer=tok)
    inra.save_adapter(tmp_path / "adapter")
    loaded = InRaModel.from_pretrained(tmp_path / "ckpt").eval()
    assert config_fields(loaded.config) == config_fields(base.config)
    assert torch.equal(loaded(ids, attention_mask=mask, lam=0.5).logits, want)
    onto = InRaModel.from_adapter(tmp_path / "adapter", base=base).eval()
    assert torch.equal(onto(ids, attention_mask=mask, lam=0.5).logits, want)


def layer_settings(layer: torch.nn.Module) -> tuple:
    """What a decoder layer's construction took from the config: its modules' classes and shapes, and the
    attention's plain attributes (sliding window, rope use, scaling...), without its index."""
    attn = {
        k: v
        for k, v in vars(layer.self_attn).items()
        if not k.startswith("_") and k not in ("layer_idx", "config") and not isinstance(v, torch.Tensor)
    }
    return repr(layer), sorted(attn.items(), key=str)


@pytest.mark.parametrize(
    ("family", "config"),
    [(f, {"num_layers": 4}) for f in ALL]
    + [("qwen3_moe", {"num_layers": 4, "decoder_sparse_step": 2, "mlp_only_layers": []})]
    + [("smollm3", {"num_layers": 4, "no_rope_layers": [0, 1, 1, 0]})]
    + [("gemma3_text", {"num_layers": 4, "layer_types": ["full_attention"] + ["sliding_attention"] * 3})],
)
def test_every_original_layer_keeps_its_own_settings_in_the_merged_model(family, config):
    base, inra = base_and_inra(family, **config)
    merged = inra.to_aligned_model()
    layers, n = base.model.layers, 2
    for j, layer in enumerate(merged.model.layers):
        want = layers[j - n] if j >= n else layers[0]  # the adapter layers are copies of the bottom one
        assert layer_settings(layer) == layer_settings(want), f"merged layer {j}"
    restored, found = base_model_config(merged.config)
    assert found == n and config_fields(restored) == config_fields(base.config)


def test_sparse_step_becomes_an_explicit_dense_list():
    base = tiny_model("qwen3_moe", num_layers=4, decoder_sparse_step=2, mlp_only_layers=[])  # sparse: 1, 3
    merged = merged_model_config(base.config, 1, {})
    assert (merged.decoder_sparse_step, merged.mlp_only_layers) == (1, [0, 1, 3])  # 0 copies dense layer 0
    assert merged.inra["base_fields"] == {"mlp_only_layers": [], "decoder_sparse_step": 2}


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_every_expert_of_the_adapter_is_zeroed_and_the_router_kept(family):
    base = tiny_model(family, vocab_size=VOCAB)
    adapter = InRaModel.from_base(base).adapter[0]
    experts = adapter.mlp.experts
    assert torch.count_nonzero(experts.down_proj) == 0
    assert getattr(experts, "down_proj_bias", torch.zeros(1)).count_nonzero() == 0
    router = "gate" if family == "qwen3_moe" else "router"
    assert torch.equal(getattr(adapter.mlp, router).weight, getattr(base.model.layers[0].mlp, router).weight)


def test_the_router_aux_loss_never_enters_the_loss():
    """InRa runs model.model and lm_head itself, so an MoE config asking for router logits changes nothing."""
    ids = torch.randint(7, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    losses = []
    for aux in (False, True):
        base = tiny_model("qwen3_moe", vocab_size=VOCAB, output_router_logits=aux, router_aux_loss_coef=10.0)
        inra = perturb_adapter(InRaModel.from_base(base), scale=0.5, seed=3)
        out = inra(ids, labels=ids, lam=1.0)
        ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        torch.testing.assert_close(out.loss, ce)
        losses.append(out.loss)
    assert torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("family", ALL)
def test_adapter_training_changes_only_the_adapter(family, tok):
    from flexrealign.training.inra_train import InRaTrainConfig, train_inra

    moe = (
        {"output_router_logits": True, "router_aux_loss_coef": 0.5}
        if "experts" in str(FAMILIES[family])
        else {}
    )
    base = tiny_model(family, vocab_size=VOCAB, **moe)  # MoE: a config asking for the router loss
    before, config_before = copy.deepcopy(base.state_dict()), base.config.to_dict()
    rows = [{"prompt": "the word of", "completion": " his time is that he was"}] * 8
    config = InRaTrainConfig(
        output_dir=None, learning_rate=1e-2, max_steps=3, per_device_train_batch_size=4, max_length=32, seed=0
    )
    result = train_inra(config, base=base, tokenizer=tok, train_dataset=Dataset.from_list(rows))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert base.config.to_dict() == config_before  # TRL's router-loss settings went to the view's copy
    ids, mask = padded_ids()
    model = result.model.eval()
    assert torch.equal(model(ids, attention_mask=mask, lam=0.0).logits, base(ids, attention_mask=mask).logits)
    assert not torch.allclose(model(ids, lam=1.0).logits, base(ids).logits, atol=1e-4), "the adapter trained"


@pytest.mark.parametrize("family", ALL)
def test_trra_trainer_realigns_a_student_of_every_family(family, tok, tmp_path):
    from flexrealign.training.trra import TrRaConfig, TrRaTrainer

    ref, inra = base_and_inra(family)
    rows = Dataset.from_list([{"prompt": "the word of", "completion": " his time is that he was"}] * 8)
    args = TrRaConfig(
        output_dir=str(tmp_path), lam=2.0, max_length=32, per_device_train_batch_size=4, learning_rate=3e-3,
        max_steps=2, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        gradient_checkpointing=False, bf16=False,
    )  # fmt: skip
    student = copy.deepcopy(ref).requires_grad_(True)  # from_base froze the reference it wraps
    trainer = TrRaTrainer(
        model=student, ref_model=ref, aligned_model=inra.to_aligned_model(), args=args,
        train_dataset=rows, processing_class=tok,
    )  # fmt: skip
    trainer.train()
    assert not torch.equal(student.lm_head.weight, ref.lm_head.weight)


def test_an_unknown_family_names_the_table():
    with pytest.raises(ValueError, match=r"decoder families llama, .*smollm3; got Foo with model_type='foo'"):
        family_of("foo", "Foo")
