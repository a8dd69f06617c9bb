"""Refuse, don't drop: unknown keywords name their close match (public API, configs, YAML via the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from flexrealign.core.keywords import close_match_hint, refuse_unknown_keywords


def test_close_match_hint_names_the_match_or_lists_a_short_set():
    assert close_match_hint("lamda", ["lam", "seed"]) == "; did you mean 'lam'?"
    assert close_match_hint("zzz", ["lam", "seed"]) == "; known keywords: lam, seed"
    assert close_match_hint("zzz", [f"field{i}" for i in range(100)]) == ""


def test_decorated_function_class_and_passthrough():
    @refuse_unknown_keywords
    def f(a: int, lam: float = 1.0) -> float:
        return a * lam

    @refuse_unknown_keywords
    @dataclass
    class Cfg:
        lam: float = 1.0

    @refuse_unknown_keywords
    def load(path: str, trust_remote_code: bool = False, **hf_kwargs: object) -> dict:
        return hf_kwargs

    assert f(2, lam=3.0) == 6.0 and Cfg(lam=2.0).lam == 2.0
    with pytest.raises(
        TypeError, match=r"f\(\) got an unexpected keyword argument 'lamda'; did you mean 'lam'\?"
    ):
        f(2, lamda=3.0)
    with pytest.raises(
        TypeError, match=r"Cfg\(\) got an unexpected keyword argument 'lamb'; did you mean 'lam'"
    ):
        Cfg(lamb=2.0)
    # Keywords passed on to Hugging Face go through; a typo of an own keyword does not.
    assert load("x", dtype="auto", revision="main") == {"dtype": "auto", "revision": "main"}
    with pytest.raises(TypeError, match="did you mean 'trust_remote_code'"):
        load("x", trust_remote_cod=True)


def test_generate_and_chat_refuse_lamda():
    from flexrealign.decoding.generation import chat, generate

    with pytest.raises(
        TypeError, match=r"generate\(\) got an unexpected keyword argument 'lamda'; did you mean 'lam'\?"
    ):
        generate(None, None, ["hi"], lamda=0.5)
    with pytest.raises(
        TypeError, match=r"chat\(\) got an unexpected keyword argument 'max_new_token'; did you mean"
    ):
        chat(None, None, [["hi"]], max_new_token=4)


def test_inra_and_dera_construction_refuse_typos():
    from flexrealign.core.dera import DeRa
    from flexrealign.core.inra import InRaModel

    with pytest.raises(TypeError, match="did you mean 'config'"):
        InRaModel.from_base(None, confg=None)
    with pytest.raises(TypeError, match="did you mean 'trust_remote_code'"):
        InRaModel.from_pretrained("x", trust_remote_cod=True)
    with pytest.raises(
        TypeError, match=r"DeRa\(\) got an unexpected keyword argument 'tokenizer'; did you mean 'tokenizers'"
    ):
        DeRa(None, None, tokenizer=None)


def test_configs_refuse_typos():
    from flexrealign.training.inra_train.config import InRaTrainConfig
    from flexrealign.training.trra.config import TrRaConfig

    with pytest.raises(
        TypeError, match=r"TrRaConfig\(\) got an unexpected keyword argument 'lamda'; did you mean 'lam'\?"
    ):
        TrRaConfig(output_dir="x", lamda=0.5)
    with pytest.raises(
        TypeError, match=r"InRaTrainConfig\(\) .* 'num_adapter_layer'; did you mean 'num_adapter_layers'"
    ):
        InRaTrainConfig(base_model="b", dataset="d", num_adapter_layer=2)


def test_yaml_typo_is_a_usage_error_naming_the_close_match(tmp_path, capsys):
    from flexrealign.commands._args import parse
    from flexrealign.training.inra_train.config import InRaTrainConfig

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("base_model: b\ndataset: d\nnum_adapter_layer: 2\n")
    with pytest.raises(SystemExit) as e:
        parse([InRaTrainConfig], ["--config", str(cfg)], "inra-train", "doc")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'num_adapter_layer' in the --config file; did you mean 'num_adapter_layers'?" in err
    with pytest.raises(SystemExit):
        parse(
            [InRaTrainConfig], ["--base_model", "b", "--dataset", "d", "--num_adaptr_layers", "2"], "x", "doc"
        )
    assert "did you mean 'num_adapter_layers'" in capsys.readouterr().err
    cfg.write_text("base_model: b\ndataset: d\nnum_adapter_layers: 3\n")
    (args,) = parse([InRaTrainConfig], ["--config", str(cfg)], "inra-train", "doc")
    assert args.num_adapter_layers == 3
