import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.dera import DeRa
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import FAMILIES, tiny_model
from helpers import perturb_adapter

LAMS = [-1.0, 0.0, 0.5, 1.0, 2.0]


@pytest.mark.parametrize("family", FAMILIES)
def test_untrained_adapter_is_identity(family):
    base = tiny_model(family)
    model = InRaModel.from_base(base)
    ids = torch.randint(3, 96, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    want = base(ids, attention_mask=mask).logits
    for lam in LAMS:
        got = model(ids, attention_mask=mask, lam=lam).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_untrained_adapter_is_identity_on_pretrained_stories(stories260k):
    base, tok = stories260k
    model = InRaModel.from_base(base)
    ids = tok(["Once upon a time, there was a", "Tom had a big red ball"], return_tensors="pt", padding=True)
    want = base(**ids).logits
    for lam in LAMS:
        torch.testing.assert_close(model(**ids, lam=lam).logits, want, atol=1e-5, rtol=0)


def test_only_adapter_is_trainable_and_base_is_shared():
    base = tiny_model("qwen2")
    model = InRaModel.from_base(base, AdapterConfig(num_layers=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") for n in trainable)
    assert model.base is base  # wrapped, not copied
    layer = model.adapter[0]
    assert torch.count_nonzero(layer.self_attn.o_proj.weight) == 0
    assert torch.count_nonzero(layer.mlp.down_proj.weight) == 0


def test_qwen2_biases_are_zeroed():
    base = tiny_model("qwen2")
    for lin in (base.model.layers[0].self_attn.o_proj, base.model.layers[0].mlp.down_proj):
        if lin.bias is None:
            lin.bias = torch.nn.Parameter(torch.randn(lin.out_features))
    model = InRaModel.from_base(base)
    assert torch.count_nonzero(model.adapter[0].self_attn.o_proj.bias) == 0
    assert torch.count_nonzero(model.adapter[0].mlp.down_proj.bias) == 0


@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral"])
def test_inra_equals_dera_on_merged_model_at_every_cached_step(family):
    # DeRa runs the two paths as separate models with separate caches: an independent computation of what
    # InRa's stacked (one pass, 2B rows) cache must give.
    base = tiny_model(family)
    model = perturb_adapter(InRaModel.from_base(base, AdapterConfig(num_layers=2)))
    dera = DeRa(base, model.to_aligned_model())
    assert not torch.allclose(
        dera.aligned_model(torch.tensor([[5, 6]])).logits, base(torch.tensor([[5, 6]])).logits
    )
    for lam in [-0.5, 0.3, 1.7]:
        ids = torch.randint(3, 96, (2, 6))
        cache_i, cache_d = None, None
        for _ in range(12):  # prefill then decode one token at a time, > the mistral sliding window
            out_i = model(ids, lam=lam, past_key_values=cache_i, use_cache=True)
            out_d = dera(ids, lam=lam, past_key_values=cache_d, use_cache=True)
            torch.testing.assert_close(out_i.logits, out_d.logits, atol=1e-5, rtol=0)
            cache_i, cache_d = out_i.past_key_values, out_d.past_key_values
            ids = out_i.logits[:, -1:].argmax(-1)


def test_cached_decoding_equals_recomputation():
    # Cached steps stack both paths on the batch axis; the uncached recomputation runs each path on its own.
    model = perturb_adapter(InRaModel.from_base(tiny_model("mistral")))
    lam = torch.tensor([0.0, 0.4, 1.0, 1.8])  # mixed per row, including both single-path values
    seq = torch.randint(3, 96, (4, 5))
    out = model(seq, lam=lam, use_cache=True)
    cache = out.past_key_values
    for _ in range(12):
        nxt = out.logits[:, -1:].argmax(-1)
        seq = torch.cat([seq, nxt], dim=1)
        out = model(nxt, lam=lam, past_key_values=cache, use_cache=True)
        full = model(seq, lam=lam).logits[:, -1]
        torch.testing.assert_close(out.logits[:, -1], full, atol=1e-5, rtol=0)


def test_lam_zero_and_one_run_one_path_exactly():
    base = tiny_model("llama")
    model = perturb_adapter(InRaModel.from_base(base))
    aligned = model.to_aligned_model()
    ids = torch.randint(3, 96, (2, 7))
    assert torch.equal(model(ids, lam=0.0).logits, base(ids).logits)
    assert torch.equal(model(ids, lam=1.0).logits, aligned(ids).logits)
    cache = model(ids, lam=0.0, use_cache=True).past_key_values
    assert set(cache.caches) == {"ref"}  # the adapter path was not run at all
    mixed = model(ids, lam=torch.tensor([0.0, 1.0])).logits
    assert torch.equal(mixed[0], base(ids).logits[0])
    assert torch.equal(mixed[1], aligned(ids).logits[1])


def test_cache_for_one_path_refuses_the_other():
    model = perturb_adapter(InRaModel.from_base(tiny_model("llama")))
    cache = model(torch.tensor([[4, 5]]), lam=0.0, use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"needs the \['aligned'\] path"):
        model(torch.tensor([[6]]), lam=0.5, past_key_values=cache, use_cache=True)


def test_adapter_runs_once_per_token():
    model = perturb_adapter(InRaModel.from_base(tiny_model("qwen2")))
    calls = []
    model.adapter[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    for use_cache in (False, True):  # paths run one after the other, or stacked in one cached pass
        calls.clear()
        model(torch.randint(3, 96, (3, 4)), lam=0.5, use_cache=use_cache)
        assert calls == [torch.Size([3, 4, 32])]


def test_kaiming_init_changes_outputs_identity_does_not():
    base = tiny_model("qwen3")
    ids = torch.randint(3, 96, (1, 6))
    want = base(ids).logits
    assert torch.allclose(InRaModel.from_base(base)(ids, lam=0.5).logits, want, atol=1e-6)
    kaiming = InRaModel.from_base(base, AdapterConfig(init="kaiming"))
    assert not torch.allclose(kaiming(ids, lam=0.5).logits, want, atol=1e-3)


def test_unsupported_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(
        ValueError, match=r"decoder families llama, qwen2, .*gpt_oss, smollm3.*GPT2LMHeadModel.*gpt2"
    ):
        InRaModel.from_base(gpt2)


def test_bad_adapter_config():
    with pytest.raises(ValueError, match="num_layers"):
        AdapterConfig(num_layers=0)
    with pytest.raises(ValueError, match="init"):
        AdapterConfig(init="zeros")


def test_merged_checkpoint_is_plain_hf_and_roundtrips(tmp_path):
    model = perturb_adapter(InRaModel.from_base(tiny_model("qwen3"), AdapterConfig(num_layers=2)))
    ids = torch.randint(3, 96, (2, 8))
    model.save_pretrained(tmp_path / "ckpt")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")  # no custom code
    assert plain.config.num_hidden_layers == 4 and plain.config.inra["adapter_layers"] == 2
    assert torch.equal(plain(ids).logits, model(ids, lam=1.0).logits)
    loaded = InRaModel.from_pretrained(tmp_path / "ckpt")
    assert len(loaded.adapter) == 2 and loaded.config.num_hidden_layers == 2
    for lam in [-0.5, 0.0, 0.3, 1.0, 1.7]:
        assert torch.equal(loaded(ids, lam=lam).logits, model(ids, lam=lam).logits)
    assert not hasattr(loaded.config, "inra")


def test_adapter_only_roundtrip(tmp_path):
    base = tiny_model("llama")
    model = perturb_adapter(InRaModel.from_base(base))
    model.save_adapter(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["inra_adapter.safetensors", "inra_config.json"]
    fresh = InRaModel.from_adapter(tmp_path / "adapter", base=copy.deepcopy(base))
    ids = torch.randint(3, 96, (2, 5))
    for lam in [0.0, 0.6, 1.0]:
        assert torch.equal(fresh(ids, lam=lam).logits, model(ids, lam=lam).logits)


def test_save_is_atomic_and_keeps_previous_on_failure(tmp_path, monkeypatch):
    model = InRaModel.from_base(tiny_model("llama"))
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    before = sorted(p.name for p in target.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("flexrealign.core.inra.save_state_dict", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    from flexrealign.core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="could not load"):
        InRaModel.from_pretrained(tmp_path / "nope")
    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not an InRa checkpoint"):
        InRaModel.from_pretrained(tmp_path / "plain")
    model = perturb_adapter(InRaModel.from_base(base))
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="could not load"):
        InRaModel.from_pretrained(tmp_path / "ckpt")
    model.save_adapter(tmp_path / "adapter")
    (tmp_path / "adapter" / "inra_adapter.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        InRaModel.from_adapter(tmp_path / "adapter", base=base)
    (tmp_path / "adapter" / "inra_config.json").unlink()
    with pytest.raises(CheckpointError, match="missing file"):
        InRaModel.from_adapter(tmp_path / "adapter", base=base)


def test_adapter_for_another_model_is_refused(tmp_path):
    InRaModel.from_base(tiny_model("llama")).save_adapter(tmp_path / "a")
    other = InRaModel.from_base(tiny_model("llama", hidden_size=48))
    from flexrealign.core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="hidden_size"):
        other.load_adapter(tmp_path / "a")


def test_sft_gradients_reach_only_the_adapter():
    model = perturb_adapter(InRaModel.from_base(tiny_model("llama")))
    ids = torch.randint(3, 96, (2, 6))
    loss = model(ids, lam=1.0, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in model.adapter.parameters())
    assert all(p.grad is None for p in model.base.parameters())
