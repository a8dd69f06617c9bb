"""A real Hugging Face tokenizer for the testbed, built in code: a word-level vocabulary of symbols with
Qwen-style chat tokens and `<think>` / `</think>`, so testbed models go through the same code as real ones.

Every character the task uses is its own token (digits one by one, as in Llama/Qwen), except `\\boxed{`
and whole words; decoding concatenates tokens, so text -> ids -> text is exact for the task's alphabet.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"
SPECIAL = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 match flexrealign.core.tiny.tiny_config's pad/bos/eos ids
THINK_TOKENS = ("<think>", "</think>")
WORDS = ("user", "assistant", "system", "verify", "\\boxed{", *"ABCDEFGH")  # A-H: the task's term labels
SYMBOLS = tuple("0123456789") + tuple("+-*/=()[]{}.,:;?!") + ("}", " ", "\n")
# One token per word, `\boxed{`, digit, whitespace character or other symbol: the pre-tokenizer splits so.
SPLIT_PATTERN = r"\\boxed\{|[A-Za-z]+|\d|\s|[^A-Za-z\d\s]"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def vocabulary() -> dict[str, int]:
    """token -> id: special tokens first, then the think markers, words and symbols (no duplicates)."""
    vocab: dict[str, int] = {}
    for tok in (*SPECIAL, *THINK_TOKENS, *WORDS, *SYMBOLS):
        vocab.setdefault(tok, len(vocab))
    return vocab


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The testbed tokenizer as a `PreTrainedTokenizerFast` (save it with `save_pretrained` like any other)."""
    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    core.decoder = decoders.Fuse()  # no spaces between tokens: the text is exactly the concatenation
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    # Like Qwen's, the think markers are added tokens that are *not* special, so decoding keeps them and
    # `</think>` lam schedules and the grader see them.
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=1024,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
