"""Stop strings, applied by one rule wherever text is produced: `generate`, the server's engine (and so its
SSE stream) and, through the plugin, vLLM's detokenizer.

The rule:
* a completion ends at the stop string that *completes* first in the generated text; among matches that
  complete at the same character, the one that starts first (the longest). That is what reading the text
  one character at a time finds, so the result does not depend on how the tokenizer split the text, nor on
  the order of the `stop` list (vLLM's `check_stop_strings` uses the same rule, with list order for ties);
* the final text is everything before that match, so it never contains a stop string;
* while decoding, text that may be the start of a stop string is held back from the stream until it is
  resolved (completed into a stop string, or ruled out), so the concatenated stream always equals the final
  text.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """The first stop string to complete in `text`, among matches that end after index `start`.

    Returns (index where the match starts, the stop string), or None. `start` is where new text began: the
    text before it was searched already (a match ending there would have stopped the completion).
    """
    best: tuple[int, int, str] | None = None  # (end, start, stop)
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop, max(0, start - len(stop) + 1))  # a stop's first match is also its earliest end
        if at >= 0 and (best is None or (at + len(stop), at) < best[:2]):
            best = (at + len(stop), at, stop)
    return None if best is None else (best[1], best[2])


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string (0 if none)."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class StopStream:
    """The text of one completion with its stop strings applied, released as deltas never taken back.

    `add(delta)` appends decoded text and returns what may be streamed now; `flush()` (at the end) returns
    what was held back. `text` is the final text so far and `matched` the stop string that ended it, if any.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.text = ""
        self.matched: str | None = None
        self._sent = 0

    def add(self, delta: str) -> str:
        if self.matched is not None or not delta:
            return ""
        start = len(self.text)
        self.text += delta
        hit = find_stop(self.text, self.stops, start)
        if hit is not None:
            self.text, self.matched = self.text[: hit[0]], hit[1]
            return self.flush()
        return self._release(len(self.text) - partial_stop_len(self.text, self.stops))

    def flush(self) -> str:
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        # Held-back text never starts before `_sent`: what was sent ended with no partial stop string.
        end = max(end, self._sent)
        out, self._sent = self.text[self._sent : end], end
        return out


__all__ = ["StopStream", "find_stop", "partial_stop_len"]
