"""vLLM's stop strings under flexrealign's rule (`flexrealign.decoding.stopping`), so that vLLM and `generate` agree.

vLLM's `check_stop_strings` already ends a completion at the stop string that completes first and holds
back a possible stop-string prefix while streaming; it breaks ties (stop strings completing at the same
character, one a suffix of the other) by list order. `register()` wraps it so that the stop string is chosen
by `flexrealign.decoding.stopping.find_stop` (ties: the one that starts first), and vLLM's own function does the rest
(truncation, `include_stop_str_in_output`). The wrapper runs in vLLM's front-end process, where text is
detokenized.
"""

from __future__ import annotations

from flexrealign.decoding.stopping import find_stop


def use_flexrealign_stop_rule() -> None:
    """Route vLLM's stop-string check through `find_stop` (idempotent)."""
    from vllm.v1.engine import detokenizer

    original = detokenizer.check_stop_strings
    if getattr(original, "flexrealign_rule", False):
        return

    def check_stop_strings(
        output_text: str, new_char_count: int, stop: list[str], include_in_output: bool
    ) -> tuple[str, int] | None:
        if not new_char_count or not stop:
            return None
        hit = find_stop(output_text, stop, len(output_text) - new_char_count)
        return None if hit is None else original(output_text, new_char_count, [hit[1]], include_in_output)

    check_stop_strings.flexrealign_rule = True  # type: ignore[attr-defined]
    detokenizer.check_stop_strings = check_stop_strings
