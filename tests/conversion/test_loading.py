"""The one loader (`flexrealign.conversion.loading`): kinds by config (Hub names included), safetensors only,
trust_remote_code only when asked, clear errors naming the path; and `atomic_file`, `resolve_dtype`,
`resolve_device` from `flexrealign.core.checkpoint`."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from flexrealign.conversion.loading import load, load_model, load_tokenizer, model_kind
from flexrealign.core.adapter import AdapterConfig
from flexrealign.core.atomic import atomic_file
from flexrealign.core.checkpoint import CheckpointError, resolve_device, resolve_dtype
from flexrealign.core.inra import InRaModel
from flexrealign.core.tiny import tiny_model
from flexrealign.testbed.tokenizer import build_tokenizer
from helpers import hub_cache, perturb_adapter


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """Local folders of every kind the loader tells apart: plain, inra, adapter (recorded base), bin-only."""
    root = tmp_path_factory.mktemp("loading")
    tok = build_tokenizer()
    tiny_model("llama", seed=0, vocab_size=len(tok)).save_pretrained(root / "plain")
    tok.save_pretrained(root / "plain")
    base = AutoModelForCausalLM.from_pretrained(root / "plain")  # records the folder as its name
    inra = perturb_adapter(InRaModel.from_base(base, AdapterConfig()), scale=0.5).eval()
    inra.save_pretrained(root / "inra", tokenizer=tok)
    inra.save_adapter(root / "adapter")
    shutil.copytree(root / "plain", root / "bin")
    state = {k: v.contiguous() for k, v in base.state_dict().items()}
    (root / "bin" / "model.safetensors").unlink()
    torch.save(state, root / "bin" / "pytorch_model.bin")
    return {"root": root, "tok": tok, "inra": inra}


def test_kinds_of_local_folders_and_files(folders) -> None:
    root = folders["root"]
    kinds = [model_kind(root / name) for name in ("plain", "inra", "adapter")]
    assert kinds == ["plain", "inra", "adapter"]
    assert model_kind("whatever.Q4_K_M.gguf") == "gguf"  # by name, without reading the file


def test_inra_checkpoint_on_the_hub_is_recognised_by_its_config(folders, tmp_path, monkeypatch) -> None:
    hub_cache(tmp_path, monkeypatch, "some-org/an-inra-checkpoint", folders["root"] / "inra")
    hub_cache(tmp_path, monkeypatch, "some-org/a-plain-model", folders["root"] / "plain")
    assert model_kind("some-org/an-inra-checkpoint") == "inra"
    assert model_kind("some-org/a-plain-model") == "plain"
    model, tok = load("some-org/an-inra-checkpoint", device="cpu")
    assert isinstance(model, InRaModel) and len(tok) == len(folders["tok"])
    ids = torch.tensor([[1, 5, 9, 4]])
    with torch.no_grad():
        for lam in (0.0, 1.0):
            assert torch.equal(model(ids, lam=lam).logits, folders["inra"](ids, lam=lam).logits)


def test_every_kind_loads_as_its_class(folders) -> None:
    root = folders["root"]
    assert isinstance(load_model(str(root / "plain"), device="cpu"), LlamaForCausalLM)
    inra = load_model(str(root / "inra"), device="cpu")
    adapter = load_model(str(root / "adapter"), device="cpu")
    ids = torch.tensor([[1, 5, 9, 4]])
    with torch.no_grad():
        assert torch.equal(inra(ids, lam=0.5).logits, adapter(ids, lam=0.5).logits)
    assert load_tokenizer(str(root / "adapter")).get_vocab() == folders["tok"].get_vocab()


def test_adapter_base_given_explicitly(folders, tmp_path) -> None:
    """--base names the base of an adapter folder that records none (the tokenizer comes from it too)."""
    root = folders["root"]
    shutil.copytree(root / "adapter", tmp_path / "adapter")
    meta = (tmp_path / "adapter" / "inra_config.json").read_text()
    (tmp_path / "adapter" / "inra_config.json").write_text(meta.replace(str(root / "plain"), ""))
    with pytest.raises(CheckpointError, match="records no base model"):
        load_model(str(tmp_path / "adapter"), device="cpu")
    model, tok = load(str(tmp_path / "adapter"), base=str(root / "plain"), device="cpu")
    assert isinstance(model, InRaModel) and tok.get_vocab() == folders["tok"].get_vocab()


def test_pickled_weights_are_refused_naming_the_path(folders) -> None:
    path = str(folders["root"] / "bin")
    with pytest.raises(CheckpointError, match=f"{path}.*safetensors only"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("name", ["no/such-model-anywhere", "./missing-folder"])
def test_missing_model_is_a_clear_error(name, tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # no network in tests: the name resolves nowhere
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=name.lstrip("./")):
        load_model(name, device="cpu")


def _record(monkeypatch, cls, calls: list) -> None:
    real = cls.from_pretrained

    def from_pretrained(*args, **kwargs):
        calls.append(kwargs.get("trust_remote_code", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", from_pretrained)


@pytest.mark.parametrize("asked", [False, True])
def test_trust_remote_code_only_when_asked(folders, monkeypatch, asked) -> None:
    calls: list[bool] = []
    for cls in (AutoConfig, AutoModelForCausalLM, AutoTokenizer):
        _record(monkeypatch, cls, calls)
    root = folders["root"]
    for name in ("plain", "inra", "adapter"):
        load(str(root / name), device="cpu", trust_remote_code=asked)
    assert len(calls) >= 9 and set(calls) == {asked}


def test_resolve_dtype_and_device() -> None:
    assert resolve_dtype("auto") == resolve_dtype(None) == "auto"
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    for bad in ("int8", "float33", "Tensor"):
        with pytest.raises(ValueError, match=f"unknown dtype '{bad}'"):
            resolve_dtype(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_atomic_file_replaces_on_success_only(tmp_path) -> None:
    target = tmp_path / "sub" / "results.csv"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".csv"
        tmp.write_text("new\n")
        assert not target.exists()  # nothing is visible before the rename
    assert target.read_text() == "new\n"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "new\n" and sorted(p.name for p in target.parent.iterdir()) == [
        "results.csv"
    ]
