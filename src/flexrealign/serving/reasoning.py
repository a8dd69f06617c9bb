"""The thinking split out of a chat reply, as reasoning servers return it: a think block's text goes to
`reasoning` (what current vLLM returns) and `reasoning_content` (what older clients read), the rest to `content`.

The engine tags each piece of text with the thinking stage of the tokens that wrote it (`decoding.staged`,
driven by the row's thinking state machine), so the split follows the tokens, not the text: a marker that
decoding skips still splits, a prompt that left the block open (DeepSeek-R1's template ends in "<think>\\n")
starts in it, and the markers belong to neither part. Without think markers all of it is content.
`/v1/completions` is not split: it returns the text whole, as vLLM does.
"""

from __future__ import annotations

from flexrealign.decoding.thinking import THINKING
from flexrealign.serving.requests import RequestOutput

REASONING_KEYS = ("reasoning", "reasoning_content")


def chat_message(out: RequestOutput, include_reasoning: bool = True) -> dict:
    """The message of a non-streamed chat reply.

    Args:
        out: the finished request, its text split into `reasoning` and `content`.
        include_reasoning: False drops the reasoning fields (the request's `include_reasoning`).

    Returns:
        {"role", "content"} and, when included, both reasoning fields (null when the reply did not think).
        `content` is null when the reply is all thinking, as vLLM's reasoning parsers answer.
    """
    message = {"role": "assistant", "content": out.content or (None if out.reasoning else "")}
    if include_reasoning:
        message |= dict.fromkeys(REASONING_KEYS, out.reasoning or None)
    return message


def chat_deltas(
    parts: tuple[tuple[str, str], ...], finish_reason: str | None, include_reasoning: bool = True
) -> list[dict]:
    """The streamed choices of one engine event: one per part, so that no delta mixes the stages out of order.

    Args:
        parts: the event's (THINKING or ANSWERING, text) parts (`Event.parts`).
        finish_reason: set on the request's last event; it goes on the last choice (an empty delta when
            nothing is left to say).
        include_reasoning: False drops the thinking parts, so no empty chunks stream while the model thinks.

    Returns:
        OpenAI's chunk choices, maybe none.
    """
    deltas = [
        dict.fromkeys(REASONING_KEYS, text) if stage == THINKING else {"content": text}
        for stage, text in parts
        if text and (include_reasoning or stage != THINKING)
    ]
    if finish_reason is not None and not deltas:
        deltas.append({})
    last = len(deltas) - 1
    return [
        {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason if i == last else None}
        for i, d in enumerate(deltas)
    ]
