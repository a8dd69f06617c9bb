"""`generate` with the thinking dial: lam per stage, hard budgets and minimums, per row in mixed batches.

A tiny random Qwen3-family InRa model over the real Qwen3 tokenizer: it never ends its thinking on its own, so
budgets force the closing text and `</think>`; where a test needs a model that *wants* to stop (EOS or the
end marker at once), its output head is edited so that greedy decoding picks that token first.
"""

from __future__ import annotations

import copy

import pytest
import torch

from flexrealign.core.tiny import tiny_model
from flexrealign.decoding.generation import LamSchedule, encode_prompts, generate
from flexrealign.decoding.thinking import MissingThinkMarker
from helpers import qwen3_inra, qwen3_thinking_tokenizer

CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
OTHER = [{"role": "user", "content": "Name a colour."}]
CLOSING = "Time is up; answering now."
N = 16


@pytest.fixture(scope="module")
def tok():
    return qwen3_thinking_tokenizer()


def qwen_base(tok, seed: int = 0):
    return tiny_model("qwen3", seed=seed, vocab_size=len(tok), hidden_size=32, num_layers=2)


@pytest.fixture(scope="module")
def inra(tok):
    return qwen3_inra(tok)


def ids_of(tok, *chats, **kwargs) -> list[list[int]]:
    return encode_prompts(tok, list(chats), kwargs or None)


@torch.no_grad()
def greedy_next(model, ids: list[int], lam: float) -> int:
    return int(model(torch.tensor([ids]), lam=lam).logits[0, -1].argmax())


def assert_decoded_at(model, prompt: list[int], out: list[int], positions, lam: float) -> None:
    """Each token at `positions` is the greedy choice of a full forward at `lam` (no cache, no batch)."""
    for j in positions:
        assert greedy_next(model, prompt + out[:j], lam) == out[j], f"token {j} was not decoded at lam={lam}"


def test_budget_per_row_in_a_mixed_batch(inra, tok):
    end = tok.convert_tokens_to_ids("</think>")
    closing = tok(CLOSING, add_special_tokens=False)["input_ids"]
    budgets = [len(closing) + 2, None, len(closing) + 5, len(closing)]
    schedule = LamSchedule.think_answer(-0.5, 1.5)
    prompts = [CHAT, OTHER, OTHER, CHAT]
    out = generate(inra, tok, prompts, lam=schedule, max_new_tokens=N, thinking_token_budget=budgets,
                   thinking_closing=CLOSING)  # fmt: skip
    for i, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True)):
        ids, spent = out.token_ids[i], out.reasoning_tokens[i]
        alone = generate(inra, tok, [prompt], lam=schedule, max_new_tokens=N, thinking_token_budget=[budget],
                         thinking_closing=CLOSING)  # fmt: skip
        assert alone.token_ids[0] == ids, f"row {i} differs from the same request alone"
        if budget is None:
            assert end not in ids and spent == len(ids)  # this model never ends thinking by itself
            continue
        k = ids.index(end)
        assert spent == k == budget and ids.count(end) == 1  # exact: the budget, the marker once
        assert ids[k - len(closing) : k] == closing and _count(ids, closing) == 1
        p = ids_of(tok, prompt)[0]
        assert_decoded_at(inra, p, ids, range(k - len(closing)), -0.5)  # free thinking at lam_think
        assert_decoded_at(inra, p, ids, range(k + 1, len(ids)), 1.5)  # the answer at lam_answer


def test_typed_limits_equal_the_keywords(inra, tok):
    from flexrealign.decoding.dial import ThinkingLimits

    schedule, prompts = LamSchedule.think_answer(-0.5, 1.5), [CHAT, OTHER]
    keywords = generate(inra, tok, prompts, lam=schedule, max_new_tokens=N, thinking_token_budget=[9, 12],
                        thinking_closing=CLOSING)  # fmt: skip
    typed = [ThinkingLimits(9, closing=CLOSING), ThinkingLimits(12, closing=CLOSING)]
    assert generate(inra, tok, prompts, lam=schedule, max_new_tokens=N, thinking=typed) == keywords
    with pytest.raises(ValueError, match="not both"):
        generate(inra, tok, prompts, lam=schedule, thinking=typed, thinking_token_budget=9)
    with pytest.raises(ValueError, match="one ThinkingLimits per prompt"):
        generate(inra, tok, prompts, lam=schedule, thinking=typed[:1])
    with pytest.raises(TypeError, match="thinking takes ThinkingLimits"):
        generate(inra, tok, prompts, lam=schedule, thinking={"thinking_token_budget": 9})


def _count(ids: list[int], seq: list[int]) -> int:
    return sum(ids[i : i + len(seq)] == seq for i in range(len(ids) - len(seq) + 1))


def test_special_token_marker_switches_the_lam(inra, tok):
    special = copy.deepcopy(tok)
    special.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    end = special.convert_tokens_to_ids("</think>")
    out = generate(inra, special, [CHAT], lam=LamSchedule.think_answer(0.0, 2.0), max_new_tokens=10,
                   thinking_token_budget=4)  # fmt: skip
    ids = out.token_ids[0]
    assert ids[4] == end and "</think>" not in out.texts[0]  # skipped in decoding, still seen
    assert_decoded_at(inra, ids_of(special, CHAT)[0], ids, range(5, len(ids)), 2.0)


def test_prompt_that_closed_thinking_decodes_at_the_answer_lam(inra, tok):
    kwargs = {"enable_thinking": False}
    sched = generate(inra, tok, [CHAT, CHAT], lam=[LamSchedule.think_answer(-1.0, 1.5), 1.5],
                     max_new_tokens=N, chat_template_kwargs=kwargs, thinking_token_budget=[2, None])  # fmt: skip
    assert sched.token_ids[0] == sched.token_ids[1] and sched.reasoning_tokens == [0, 0]


@pytest.fixture(scope="module")
def eager_stopper(tok):
    """(model, first): a base model whose greedy first token is `</think>` (it wants to stop thinking), and
    the token `first` that an unedited model picks first."""
    base = qwen_base(tok, seed=1)
    p = ids_of(tok, CHAT)[0]
    first = greedy_next_plain(base, p)
    with torch.no_grad():
        base.lm_head.weight[tok.convert_tokens_to_ids("</think>")] = base.lm_head.weight[first] * 3
    return base, first


@torch.no_grad()
def greedy_next_plain(model, ids):
    return int(model(torch.tensor([ids])).logits[0, -1].argmax())


def test_minimum_holds_off_the_end_marker_and_eos(eager_stopper, tok):
    base, first = eager_stopper
    end = tok.convert_tokens_to_ids("</think>")
    plain = generate(base, tok, [CHAT], max_new_tokens=6)
    assert plain.token_ids[0][0] == end and plain.reasoning_tokens == [0]  # it would stop at once
    out = generate(base, tok, [CHAT, OTHER], max_new_tokens=N, min_thinking_tokens=[5, 0])
    ids = out.token_ids[0]
    assert end not in ids[:5] and out.reasoning_tokens[0] >= 5 and end in ids
    assert out.token_ids[1][0] == end  # the row without a minimum is unaffected
    eos_model = copy.deepcopy(base)
    eos_model.generation_config.eos_token_id = [end, tok.eos_token_id]  # now "</think>" also ends the reply
    stopped = generate(eos_model, tok, [CHAT, CHAT], max_new_tokens=N, min_thinking_tokens=[4, 0])
    assert stopped.num_tokens[1] == 1 and stopped.finish_reasons[1] == "stop"
    assert stopped.num_tokens[0] > 4 and stopped.reasoning_tokens[0] >= 4


def test_budget_needs_a_marker(stories260k):
    model, tok = stories260k
    with pytest.raises(MissingThinkMarker, match="</think>"):
        generate(model, tok, ["Once upon a time"], max_new_tokens=3, thinking_token_budget=2)
    out = generate(model, tok, ["Once upon a time"], max_new_tokens=3)  # plain requests need no marker
    assert out.reasoning_tokens == [0]
