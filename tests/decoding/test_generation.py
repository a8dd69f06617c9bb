import copy

import pytest
import torch

from flexrealign.core.inra import InRaModel
from flexrealign.decoding.generation import LamSchedule, chat, generate, lam_for_next_turn
from flexrealign.decoding.thinking import marker_ids
from helpers import perturb_adapter

PROMPTS = ["Once upon a time", "Tom and Lily went to the park. They saw a"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture()
def stories(stories260k):
    model, tok = stories260k
    tok = copy.deepcopy(tok)
    tok.chat_template = CHAT_TEMPLATE
    return model, tok


@pytest.fixture()
def inra(stories):
    model, _ = stories
    return perturb_adapter(InRaModel.from_base(model), scale=0.05)


def hf_greedy(model, tok, prompts, n):
    tok = copy.deepcopy(tok)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return [row[enc.input_ids.shape[1] :].tolist() for row in out]


def strip_after_eos(ids, eos=2):
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_lam_zero_greedy_equals_hf_generate_of_the_base(stories, inra):
    model, tok = stories
    want = [strip_after_eos(x) for x in hf_greedy(model, tok, PROMPTS, 40)]
    assert generate(model, tok, PROMPTS, max_new_tokens=40).token_ids == want
    assert generate(inra, tok, PROMPTS, lam=0.0, max_new_tokens=40).token_ids == want


def test_lam_one_greedy_equals_hf_generate_of_the_merged_model(stories, inra):
    _, tok = stories
    want = [strip_after_eos(x) for x in hf_greedy(inra.to_aligned_model(), tok, PROMPTS, 30)]
    assert generate(inra, tok, PROMPTS, lam=1.0, max_new_tokens=30).token_ids == want


def test_per_prompt_lam_in_one_batch_equals_each_alone(stories, inra):
    _, tok = stories
    lams = [-0.5, 0.0, 0.7, 1.0, 1.5]
    prompts = [PROMPTS[i % 2] for i in range(len(lams))]
    batched = generate(inra, tok, prompts, lam=lams, max_new_tokens=25)
    for i, lam in enumerate(lams):
        alone = generate(inra, tok, [prompts[i]], lam=lam, max_new_tokens=25)
        assert batched.token_ids[i] == alone.token_ids[0], f"lam={lam}"
    assert len({tuple(t) for t in batched.token_ids}) > 2  # lam really changes the output


def test_lam_schedule_switches_at_the_marker(stories, inra):
    """A text override of the end marker is matched on token ids: lam switches on the token after it."""
    _, tok = stories
    first = generate(inra, tok, ["Once upon a time"], lam=0.0, max_new_tokens=40).token_ids[0]
    prompt = tok("Once upon a time")["input_ids"]
    j, marker = next(
        (j, m)
        for j in range(3, 30)
        if (m := tok.decode([first[j]]).strip())
        and marker_ids(tok, m) == (first[j],)
        and first[j] not in prompt + first[:j]
    )  # a token the lam = 0 text produces early, not in the prompt
    sched = generate(
        inra, tok, ["Once upon a time"], lam=LamSchedule((0.0, 1.5), (marker,)), max_new_tokens=40
    ).token_ids[0]
    assert sched[: j + 1] == first[: j + 1]  # identical up to and including the marker
    assert sched != first  # then lam = 1.5 takes over
    assert LamSchedule.think_answer(-0.5, 1.0).markers == ()  # the tokenizer's own markers
    with pytest.raises(ValueError, match="marker"):
        LamSchedule((0.0, 1.0, 2.0), ("a", "b"))


def test_streaming_and_stop_strings(stories, inra):
    _, tok = stories
    pieces: dict[int, str] = {}
    out = generate(
        inra, tok, PROMPTS, lam=0.3, max_new_tokens=40, stop=["."],
        stream=lambda i, d: pieces.__setitem__(i, pieces.get(i, "") + d),
    )  # fmt: skip
    assert [pieces.get(i, "") for i in range(2)] == out.texts
    assert all("." not in t for t in out.texts)
    assert out.finish_reasons == ["stop", "stop"]
    full = generate(inra, tok, PROMPTS, lam=0.3, max_new_tokens=40)
    assert all(f.startswith(t) for f, t in zip(full.texts, out.texts, strict=True))


def test_seeded_sampling_is_reproducible_and_filters_work(stories, inra):
    _, tok = stories
    kw = dict(lam=0.5, max_new_tokens=20, temperature=1.0, seed=7)
    a, b = generate(inra, tok, PROMPTS, **kw), generate(inra, tok, PROMPTS, **kw)
    assert a.token_ids == b.token_ids
    greedy = generate(inra, tok, PROMPTS, lam=0.5, max_new_tokens=20)
    assert generate(inra, tok, PROMPTS, **kw, top_k=1).token_ids == greedy.token_ids
    assert generate(inra, tok, PROMPTS, **kw, top_p=1e-6).token_ids == greedy.token_ids


class PaddedVocabInRa(InRaModel):
    """Eight output rows past the 512-token tokenizer (like Qwen's padding) whose logits would always win."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = torch.nn.functional.pad(out.logits, (0, 8), value=100.0)  # (B, T, V + 8)
        return out


def test_padded_vocabulary_rows_are_never_generated(stories):
    model, tok = stories
    padded = PaddedVocabInRa.from_base(model)
    assert padded(torch.tensor([[1, 400]]), lam=0.5).logits[0, -1].argmax() >= 512
    for temperature in (0.0, 1.0):
        out = generate(padded, tok, PROMPTS, lam=0.5, max_new_tokens=10, temperature=temperature, seed=0)
        assert all(t < 512 for ids in out.token_ids for t in ids)


def test_chat_messages_and_per_turn_lam(stories, inra):
    _, tok = stories
    history = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon a time there was a cat."},
        {"role": "user", "content": "And then?"},
    ]
    assert lam_for_next_turn(history, [1.5, 0.2]) == 0.2
    assert lam_for_next_turn(history[:1], [1.5, 0.2]) == 1.5
    by_turn = generate(inra, tok, [history], lam_turns=[1.5, 0.2], max_new_tokens=15)
    direct = generate(inra, tok, [history], lam=0.2, max_new_tokens=15)
    assert by_turn.token_ids == direct.token_ids
    chats = chat(inra, tok, [["Hi.", "More."]], lam_turns=[1.0, 0.0], max_new_tokens=8)
    roles = [m["role"] for m in chats[0]]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_bad_generation_arguments(stories, inra):
    model, tok = stories
    with pytest.raises(ValueError, match="finite"):
        generate(inra, tok, PROMPTS, lam=float("nan"))
    with pytest.raises(ValueError, match="single path"):
        generate(model, tok, PROMPTS, lam=0.5)
    with pytest.raises(ValueError, match="2 prompts"):
        generate(inra, tok, PROMPTS, lam=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="top_p"):
        generate(inra, tok, PROMPTS, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(inra, tok, PROMPTS, max_new_tokens=0)


def test_a_seeded_sample_does_not_depend_on_batching(stories, inra):
    """Issue 11, kind 4, for generate(seed=..., batch_size=...): prompt i's sample depends on (seed, i) only;
    a list of seeds gives each prompt its own, as one server request with that seed would get."""
    _, tok = stories
    prompts = [*PROMPTS, "The cat", "One day, a little girl"]
    kw = dict(lam=0.5, max_new_tokens=12, temperature=1.0)
    whole = generate(inra, tok, prompts, seed=3, **kw).token_ids
    for size in (1, 3):
        assert generate(inra, tok, prompts, seed=3, batch_size=size, **kw).token_ids == whole
    own = generate(inra, tok, prompts, seed=[5, 6, 7, 8], batch_size=3, **kw).token_ids
    assert [
        generate(inra, tok, prompts[i], seed=[s], **kw).token_ids[0] for i, s in enumerate([5, 6, 7, 8])
    ] == own
    assert generate(inra, tok, prompts[::-1], seed=[8, 7, 6, 5], **kw).token_ids == own[::-1]
    assert len({tuple(x) for x in whole}) == len(prompts)
    with pytest.raises(ValueError, match="one int per prompt"):
        generate(inra, tok, prompts, seed=[1, 2], **kw)
