"""`flexrealign generate`: text from an InRa model, a DeRa pair or a plain model at one or more lam.

A bare --prompt meets a chat model as a user message: when the tokenizer has a chat template, the prompt is
rendered through it (as one user turn, with the generation prompt); --raw sends the text as it is. Thinking
models take a lam per stage (--lam-think/--lam-answer) and hard limits (--thinking-token-budget,
--min-thinking-tokens, --thinking-closing); the think markers come from the tokenizer (--think-marker
overrides the end marker). The dial flags are built from `flexrealign.decoding.dial`'s fields and parsed by its
`parse_dial`, as the server and the vLLM plugin parse theirs; --reasoning_effort reads the checkpoint's
calibration."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from flexrealign.commands._args import fail, parse
from flexrealign.conversion.loading import load_dera, load_model, load_tokenizer
from flexrealign.core.inra import InRaModel
from flexrealign.decoding.adaptive import AUTO, SOFT, AutoLam
from flexrealign.decoding.calibration import load_calibration
from flexrealign.decoding.dial import Dial, DialError, LamSchedule, dial_fields, parse_dial
from flexrealign.decoding.generation import generate
from flexrealign.decoding.prompts import template_takes


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


def _flag_type(meta) -> object:
    kind = meta["type"]
    return (list[kind] if meta["many"] else kind) | None


def _dial_args_check(self) -> None:
    """The checks that need no model (types, pairs, limits), before anything is loaded."""
    for values in dial_values(self):
        # the effort, lam auto and the soft landing read the checkpoint's calibration: checked once it is known
        values = values | ({"lam": 0.0} if values.get("lam") == AUTO else {})
        values = {k: v for k, v in values.items() if (k, v) != ("thinking_landing", SOFT)}
        parse_dial(values, native_effort=True)


# the dial's fields as flags (`flexrealign.decoding.dial.Dial`); --lam takes several values, each answered in turn
DialArgs = make_dataclass(
    "DialArgs",
    [(meta["flag"] or name, _flag_type(meta), field(default=None, metadata={"help": meta["help"] + (
        "; several values: each prompt is answered at each" if meta["many"] else "")}))
     for name, meta in dial_fields()],
    namespace={"__post_init__": _dial_args_check},
)  # fmt: skip


def dial_values(args) -> list[dict]:
    """The dial fields of the flags given (as `parse_dial` takes them), one dict per value of a `many` flag.

    Args:
        args: a DialArgs.

    Returns:
        One dict per setting to answer each prompt at.
    """
    values = {name: getattr(args, meta["flag"] or name) for name, meta in dial_fields()}
    values = {k: v for k, v in values.items() if v is not None}
    many = [name for name, meta in dial_fields() if meta["many"] and name in values]
    out = [values]
    for name in many:
        out = [v | {name: x} for v in out for x in values[name]]
    return out


def _dials(dial_args, args: GenerateArgs, tok) -> list[Dial]:
    """The parsed dials of the flags, the checkpoint's reasoning_effort expanded (DialError otherwise)."""
    native = template_takes(tok, "reasoning_effort") and not args.raw
    calibration = load_calibration(args.model) if args.model else None
    return [parse_dial(v, calibration, native_effort=native) for v in dial_values(dial_args)]


def _setting(dial: Dial, prompts: list, dual: bool, tok, template: dict | None) -> dict:
    """generate()'s keyword arguments for one dial: its lam (one per prompt for lam_turns) and limits.

    Raises:
        DialError: a lam for a plain model, lam_turns without chats, a marker the tokenizer lacks.
    """
    if dial.lam_turns is not None:
        lam = [dial.lam_spec(p if isinstance(p, list) else None, dual) for p in prompts]
    else:
        lam = dial.lam_spec(None, dual)
    dial.check_tokenizer(tok)
    chats = prompts and isinstance(prompts[0], list)
    native = {"reasoning_effort": dial.reasoning_effort} if dial.reasoning_effort and template_takes(
        tok, "reasoning_effort") else {}  # fmt: skip
    kwargs = (dict(dial.template_kwargs) | native | (template or {})) if chats else template
    return dict(lam=lam, thinking=dial.limits(), chat_template_kwargs=kwargs or None)


def run(argv: list[str]) -> int:
    args, dial_args = parse([GenerateArgs, DialArgs], argv, "generate", __doc__)
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
    dual = isinstance(model, InRaModel) or args.model is None
    try:
        dials = _dials(dial_args, args, tok)
        settings = [_setting(d, prompts, dual, tok, template_kwargs(args)) for d in dials]
    except (DialError, ValueError) as e:  # ValueError: a bad calibration file
        return fail(str(e))
    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
    )
    for dial, setting in zip(dials, settings, strict=True):
        stream_live = not args.json_output and len(prompts) == 1
        try:
            out = generate(
                model, tok, prompts, **setting, **sampling, stream=_printer() if stream_live else None
            )
        except ValueError as e:  # e.g. a budget for a tokenizer without think markers
            return fail(str(e))
        _report(args, args.prompt or prompts, dial, setting, out, streamed=stream_live)
    return 0


def _printer():
    def emit(_: int, delta: str) -> None:
        print(delta, end="", flush=True)

    return emit


def _report(args: GenerateArgs, prompts: list, dial: Dial, setting: dict, out, streamed: bool) -> None:
    lam = list(dial.lam_turns) if dial.lam_turns is not None else setting["lam"]
    lam = list(lam.lams) if isinstance(lam, LamSchedule) else AUTO if isinstance(lam, AutoLam) else lam
    for i, text in enumerate(out.texts):
        chosen = out.auto_lams[i]
        if args.json_output:
            record = {
                "prompt": prompts[i],
                "lam": lam,
                "text": text,
                "num_tokens": out.num_tokens[i],
                "reasoning_tokens": out.reasoning_tokens[i],
                "finish_reason": out.finish_reasons[i],
            } | ({"auto_lam": chosen} if chosen is not None else {})  # fmt: skip
            print(json.dumps(record, ensure_ascii=False))
            continue
        shown = f"auto -> {chosen:g}" if chosen is not None else lam
        if not streamed:
            print(f"--- prompt {i} | lam={shown} ---\n{text}")
        print(f"\n[lam={shown} tokens={out.num_tokens[i]} finish={out.finish_reasons[i]}]")
