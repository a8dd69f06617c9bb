"""`flexrealign generate`: text from an InRa model, a DeRa pair or a plain model at one or more lam.

A bare --prompt meets a chat model as a user message: when the tokenizer has a chat template, the prompt is
rendered through it (as one user turn, with the generation prompt); --raw sends the text as it is. Thinking
models take a lam per stage (--lam-think/--lam-answer) and hard limits (--thinking-token-budget,
--min-thinking-tokens, --thinking-closing); the think markers come from the tokenizer (--think-marker
overrides the end marker)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flexrealign.commands._args import fail, parse
from flexrealign.generation import LamSchedule, generate
from flexrealign.inra import InRaModel
from flexrealign.loading import load_dera, load_model, load_tokenizer


@dataclass
class GenerateArgs:
    model: str | None = field(
        default=None, metadata={"help": "InRa checkpoint, adapter folder, or plain model (path or Hub name)."}
    )
    dera_ref: str | None = field(default=None, metadata={"help": "DeRa baseline: the reference model."})
    dera_aligned: str | None = field(default=None, metadata={"help": "DeRa baseline: the aligned model."})
    base: str | None = field(
        default=None,
        metadata={"help": "Base model for an adapter-only --model folder (default: the recorded one)."},
    )
    prompt: list[str] | None = field(
        default=None,
        metadata={"help": "One or more prompts. With a chat template, each is sent as one user message through it "
                  "(as --messages would); --raw sends the text as it is."},
    )  # fmt: skip
    raw: bool = field(
        default=False, metadata={"help": "Send --prompt as raw text, without the chat template."}
    )
    messages: str | None = field(
        default=None,
        metadata={
            "help": "JSON file: a chat (list of {role, content}) or a list of chats; rendered by the chat template."
        },
    )
    chat_template_kwargs: str | None = field(
        default=None,
        metadata={"help": "JSON object of chat template arguments, e.g. '{\"enable_thinking\": false}' or "
                  "gpt-oss's '{\"reasoning_effort\": \"high\"}'."},
    )  # fmt: skip
    lam: list[float] | None = field(
        default=None,
        metadata={"help": "lam value(s); each prompt is answered at each lam. Default 1.0 for InRa/DeRa."},
    )
    lam_think: float | None = field(
        default=None, metadata={"help": "lam while thinking, until --think-marker; needs --lam-answer."}
    )
    lam_answer: float | None = field(default=None, metadata={"help": "lam after the think marker."})
    think_marker: str | None = field(
        default=None,
        metadata={
            "help": "Overrides the tokenizer's think-end marker (default: its </think> or equivalent)."
        },
    )
    thinking_token_budget: int | None = field(
        default=None,
        metadata={"help": "At most this many thinking tokens; then --thinking-closing (if any) and the end "
                  "marker are forced, and the answer follows at --lam-answer."},
    )  # fmt: skip
    min_thinking_tokens: int = field(
        default=0,
        metadata={"help": "EOS and the think-end marker are banned until this many thinking tokens."},
    )
    thinking_closing: str | None = field(
        default=None,
        metadata={"help": "Text forced before the end marker when the budget runs out, e.g. 'Time is up.'"},
    )
    lam_turns: list[float] | None = field(
        default=None,
        metadata={
            "help": "With --messages: one lam per assistant turn (the turn being generated picks its entry)."
        },
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum tokens to generate per prompt."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1 = off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    seed: int | None = field(default=None, metadata={"help": "Seed for reproducible sampling."})
    stop: list[str] | None = field(default=None, metadata={"help": "Stop strings."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the checkpoint (off by default)."}
    )
    json_output: bool = field(
        default=False, metadata={"help": "Print one JSON object per completion instead of text."}
    )

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.dera_ref or self.dera_aligned):
            raise ValueError("give either --model, or both --dera_ref and --dera_aligned")
        if (self.dera_ref is None) != (self.dera_aligned is None):
            raise ValueError("DeRa needs both --dera_ref and --dera_aligned")
        if bool(self.prompt) == bool(self.messages):
            raise ValueError("give either --prompt or --messages")
        if self.raw and not self.prompt:
            raise ValueError("--raw applies to --prompt")
        if (self.lam_think is None) != (self.lam_answer is None):
            raise ValueError("--lam_think and --lam_answer go together")
        if sum(x is not None for x in (self.lam, self.lam_think, self.lam_turns)) > 1:
            raise ValueError("use one of --lam, --lam_think/--lam_answer, --lam_turns")
        template_kwargs(self)  # a malformed object fails here, before any model is loaded


def template_kwargs(args: GenerateArgs) -> dict | None:
    """--chat-template-kwargs as a dict (None when not given).

    Raises:
        ValueError: it is not a JSON object, or it is given with --raw (no template renders the prompt).
    """
    if args.chat_template_kwargs is None:
        return None
    if args.raw:
        raise ValueError(
            "--chat_template_kwargs applies to chats; --raw sends the prompt without the template"
        )
    try:
        value = json.loads(args.chat_template_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--chat_template_kwargs is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"--chat_template_kwargs must be a JSON object, got {args.chat_template_kwargs!r}")
    return value


def _prompts(args: GenerateArgs, tokenizer) -> list:
    """--prompt texts (as user messages when the tokenizer has a chat template, unless --raw) or --messages."""
    if args.prompt:
        if args.raw or tokenizer.chat_template is None:
            return list(args.prompt)
        return [[{"role": "user", "content": p}] for p in args.prompt]
    data = json.loads(Path(args.messages).read_text())
    return [data] if data and isinstance(data[0], dict) else data


def _lam_settings(args: GenerateArgs, dual: bool) -> list[dict]:
    if not dual:
        if args.lam or args.lam_think is not None or args.lam_turns:
            raise ValueError("lam applies to InRa checkpoints and DeRa pairs; this is a plain model")
        return [{}]
    if args.lam_turns:
        return [{"lam_turns": args.lam_turns}]
    if args.lam_think is not None:
        return [{"lam": LamSchedule.think_answer(args.lam_think, args.lam_answer, args.think_marker)}]
    return [{"lam": lam} for lam in (args.lam or [1.0])]


def run(argv: list[str]) -> int:
    (args,) = parse([GenerateArgs], argv, "generate", __doc__)
    if args.model:
        model, tok = (
            load_model(args.model, args.dtype, args.device, args.trust_remote_code, args.base),
            load_tokenizer(args.model, args.trust_remote_code),
        )
    else:
        model = load_dera(args.dera_ref, args.dera_aligned, args.dtype, args.device, args.trust_remote_code)
        tok = load_tokenizer(args.dera_ref, args.trust_remote_code)
    prompts = _prompts(args, tok)
    if args.chat_template_kwargs and tok.chat_template is None:
        return fail("--chat_template_kwargs needs a chat template, and this tokenizer has none")
    try:
        settings = _lam_settings(args, dual=isinstance(model, InRaModel) or args.model is None)
    except ValueError as e:
        return fail(str(e))
    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
        thinking_token_budget=args.thinking_token_budget,
        min_thinking_tokens=args.min_thinking_tokens,
        thinking_closing=args.thinking_closing,
        think_marker=args.think_marker,
        chat_template_kwargs=template_kwargs(args),
    )
    for setting in settings:
        stream_live = not args.json_output and len(prompts) == 1
        try:
            out = generate(
                model, tok, prompts, **setting, **sampling, stream=_printer() if stream_live else None
            )
        except ValueError as e:  # e.g. a budget for a tokenizer without think markers
            return fail(str(e))
        _report(args, args.prompt or prompts, setting, out, streamed=stream_live)
    return 0


def _printer():
    def emit(_: int, delta: str) -> None:
        print(delta, end="", flush=True)

    return emit


def _report(args: GenerateArgs, prompts: list, setting: dict, out, streamed: bool) -> None:
    lam = setting.get("lam", setting.get("lam_turns"))
    lam = list(lam.lams) if isinstance(lam, LamSchedule) else lam
    for i, text in enumerate(out.texts):
        if args.json_output:
            record = {
                "prompt": prompts[i],
                "lam": lam,
                "text": text,
                "num_tokens": out.num_tokens[i],
                "reasoning_tokens": out.reasoning_tokens[i],
                "finish_reason": out.finish_reasons[i],
            }
            print(json.dumps(record, ensure_ascii=False))
            continue
        if not streamed:
            print(f"--- prompt {i} | lam={lam} ---\n{text}")
        print(f"\n[lam={lam} tokens={out.num_tokens[i]} finish={out.finish_reasons[i]}]")
