"""A row's text split by the thinking stage of the tokens that wrote it: a think block's text (THINKING), the
rest (ANSWERING), and the think markers' own text, which belongs to neither.

Decided from the row's thinking state machine (`flexrealign.decoding.thinking`), never by reading the text: a
marker that `skip_special_tokens` drops from the text is still seen, a prompt that left a block open starts in
it, and text that only looks like a marker is text of its stage. A marker of several tokens is known only once
whole, so the text of its first tokens is held until the machine resolves them (the marker, or thought). The
server routes the two parts to `reasoning` and `content` (`flexrealign.serving.reasoning`).
"""

from __future__ import annotations

from collections import deque

from flexrealign.decoding.thinking import ANSWERING, THINKING, ThinkingState

MARKER = "marker"  # the label of a think marker's tokens, whose text is shown in neither part
Part = tuple[str, str]  # (THINKING or ANSWERING, text)


class StagedText:
    """Labels each detokenized token of one row with its stage and passes the row's text on as parts.

    Feed it in order: `token` after the machine took each token (EOS excepted), `text` with the decoded text
    that followed, `release` with what the stop strings let go. Without a state machine (the tokenizer has no
    think markers) everything is ANSWERING.

    Args:
        thinking: the row's thinking state machine, or None.
    """

    def __init__(self, thinking: ThinkingState | None) -> None:
        self.thinking = thinking
        self._labels: list[str | None] = []  # per token: THINKING, ANSWERING or MARKER; None while pending
        self._done = 0  # tokens labelled so far
        self._pieces: deque[tuple[int, str]] = deque()  # (token index, text) not passed on yet
        self._owed = 0  # characters the stop strings let go but held here (their tokens are pending)
        self._ready: list[Part] = []  # passed on since the last `take`
        self._parts: dict[str, list[str]] = {THINKING: [], ANSWERING: []}

    @property
    def stage(self) -> str:
        return self.thinking.stage if self.thinking is not None else ANSWERING

    @property
    def reasoning(self) -> str:
        """The thinking text passed on so far, markers left out."""
        return "".join(self._parts[THINKING])

    @property
    def content(self) -> str:
        """The answer text passed on so far, markers left out."""
        return "".join(self._parts[ANSWERING])

    def token(self, before: str) -> None:
        """Label the token the state machine just took, and those it resolved.

        Args:
            before: the machine's stage before it took the token.
        """
        self._labels.append(None)
        n, t = len(self._labels), self.thinking
        # a token that switched the stage completed a marker: its last tokens are the marker
        if t is not None and t.stage != before:
            marker = t.plan.markers.end if before == THINKING else t.plan.markers.start
            self._label(n - len(marker), before)
            self._labels[n - len(marker) :] = [MARKER] * len(marker)
            self._done = n
        else:  # all but the tokens that may still become a marker are text of the current stage
            self._label(n - (t.pending if t is not None else 0), self.stage)

    def text(self, text: str) -> None:
        """Decoded text that the tokens taken so far completed. It goes with the last of them: a token that
        decodes to nothing (a skipped special marker) or to half a character adds its text to the next one's."""
        if text:
            self._pieces.append((len(self._labels) - 1, text))

    def release(self, n: int, final: bool = False) -> None:
        """Pass on the next `n` characters of text, as far as their tokens are labelled.

        Args:
            n: characters the stop strings just let go (`flexrealign.decoding.stopping`).
            final: the row ended: tokens still pending (a marker begun, never finished) are text of their stage.
        """
        self._owed += n
        if final:
            self._label(len(self._labels), self.stage)
        while self._owed and self._pieces:
            index, text = self._pieces[0]
            label = self._labels[index]
            if label is None:
                return
            piece, rest = text[: self._owed], text[self._owed :]
            self._owed -= len(piece)
            if rest:
                self._pieces[0] = (index, rest)
            else:
                self._pieces.popleft()
            if label != MARKER:
                self._add(label, piece)

    def take(self) -> tuple[Part, ...]:
        """The parts passed on since the last call, in order; neighbours of one stage are joined."""
        ready, self._ready = tuple(self._ready), []
        return ready

    def _label(self, upto: int, stage: str) -> None:
        if upto > self._done:
            self._labels[self._done : upto] = [stage] * (upto - self._done)
            self._done = upto

    def _add(self, stage: str, text: str) -> None:
        self._parts[stage].append(text)
        if self._ready and self._ready[-1][0] == stage:
            self._ready[-1] = (stage, self._ready[-1][1] + text)
        else:
            self._ready.append((stage, text))
