import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from flexrealign.cli import main
from flexrealign.conversion.loading import load_model, load_tokenizer
from flexrealign.core.inra import InRaModel
from flexrealign.decoding.generation import generate
from helpers import perturb_adapter


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from helpers import shared_path

    root = tmp_path_factory.mktemp("cli")
    stories = shared_path("models", "stories260K")
    assert (
        main(
            [
                "convert-llama2c",
                "--checkpoint",
                str(stories / "stories260K.bin"),
                "--tokenizer",
                str(stories / "tok512.model"),
                "--output-dir",
                str(root / "base"),
            ]
        )
        == 0
    )
    base, tok = load_model(str(root / "base"), device="cpu"), load_tokenizer(str(root / "base"))
    perturb_adapter(InRaModel.from_base(base)).save_pretrained(root / "inra", tokenizer=tok)
    return root


def test_top_level_help_explains_lam(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "lam > 1 extrapolates" in out and "lam < 0" in out and "generate" in out


def test_generate_cli_matches_python_api(checkpoints, capsys):
    args = [
        "generate",
        "--model",
        str(checkpoints / "inra"),
        "--prompt",
        "Once upon a time",
        "Tom went",
        "--lam",
        "0",
        "0.5",
        "--max-new-tokens",
        "15",
        "--json-output",
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    model, tok = (
        load_model(str(checkpoints / "inra"), device="cpu"),
        load_tokenizer(str(checkpoints / "inra")),
    )
    for lam in (0.0, 0.5):
        want = generate(model, tok, ["Once upon a time", "Tom went"], lam=lam, max_new_tokens=15).texts
        assert [r["text"] for r in records if r["lam"] == lam] == want


def test_generate_cli_dera_and_messages(checkpoints, tmp_path, capsys):
    assert (
        main(["export", "--checkpoint", str(checkpoints / "inra"), "--output-dir", str(tmp_path / "aligned")])
        == 0
    )
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "aligned")
    assert not hasattr(plain.config, "inra")
    inra = load_model(str(checkpoints / "inra"), device="cpu")
    ids = torch.tensor([[1, 300, 400]])
    assert torch.equal(plain(ids).logits, inra(ids, lam=1.0).logits)
    capsys.readouterr()
    args = [
        "generate",
        "--dera-ref",
        str(checkpoints / "base"),
        "--dera-aligned",
        str(tmp_path / "aligned"),
        "--prompt",
        "Once upon a time",
        "--lam",
        "0.5",
        "--max-new-tokens",
        "10",
        "--json-output",
    ]
    assert main(args) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    tok = load_tokenizer(str(checkpoints / "inra"))
    assert record["text"] == generate(inra, tok, ["Once upon a time"], lam=0.5, max_new_tokens=10).texts[0]


def test_export_adapter_roundtrip(checkpoints, tmp_path):
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(checkpoints / "inra"),
                "--output-dir",
                str(tmp_path / "ad"),
                "--format",
                "adapter",
            ]
        )
        == 0
    )
    model = load_model(str(tmp_path / "ad"), device="cpu", base=str(checkpoints / "base"))
    ref = load_model(str(checkpoints / "inra"), device="cpu")
    ids = torch.tensor([[1, 300, 400, 20]])
    assert torch.equal(model(ids, lam=0.7).logits, ref(ids, lam=0.7).logits)


def test_cli_errors_are_clear(checkpoints, capsys):
    assert main(["generate", "--model", str(checkpoints / "base"), "--prompt", "hi", "--lam", "0.5"]) == 2
    assert "plain model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "hi"])  # no model
    assert "--model" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
