"""The thinking split out of a chat reply, as reasoning servers return it: the text of a think block goes to
`reasoning` (what current vLLM returns) and `reasoning_content` (what older clients read), the rest to `content`.

The split follows the same markers and the same start as the thinking state machine
(`flexrealign.decoding.thinking`): a reply whose prompt left a block open (DeepSeek-R1's template ends in
"<think>\\n") starts in the block; otherwise a block opens where the model writes the start marker (Qwen3 writes
`<think>` itself). The markers are not part of either text. A marker split across two stream deltas is held back
until it is whole, so a streamed reply's pieces join to the same two texts as the unstreamed one.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexrealign.decoding.stopping import partial_stop_len
from flexrealign.decoding.thinking import THINKING, ThinkMarkers, initial_stage


@dataclass
class ReasoningSplit:
    """Splits one reply's text, fed in order, into (reasoning, content) pieces.

    Args:
        start: the think-start marker text ("" when the tokenizer knows only an end marker).
        end: the think-end marker text.
        thinking: whether the reply starts inside a think block.
    """

    start: str
    end: str
    thinking: bool
    _rest: str = ""

    @classmethod
    def for_prompt(cls, markers: ThinkMarkers, prompt_ids: list[int]) -> ReasoningSplit:
        """The split of a reply to `prompt_ids`: in a block when the prompt leaves one open."""
        return cls(markers.start_text, markers.end_text, initial_stage(prompt_ids, markers) == THINKING)

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """The (reasoning, content) of `text`, the next piece of the reply; `final` flushes what was held."""
        text, reasoning, content = self._rest + text, [], []
        while True:
            marker = self.end if self.thinking else self.start
            at = text.find(marker) if marker else -1
            if at < 0:
                keep = (
                    0 if final or not marker else partial_stop_len(text, [marker])
                )  # kept for the next delta
                (reasoning if self.thinking else content).append(text[: len(text) - keep])
                self._rest = text[len(text) - keep :]
                return "".join(reasoning), "".join(content)
            (reasoning if self.thinking else content).append(text[:at])
            text, self.thinking = text[at + len(marker) :], not self.thinking
