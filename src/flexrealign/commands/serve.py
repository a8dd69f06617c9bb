"""`flexrealign serve`: an OpenAI-compatible HTTP server with per-request lam and continuous batching."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from flexrealign.commands._args import fail, parse
from flexrealign.core.checkpoint import resolve_dtype

log = logging.getLogger("flexrealign.serve")


@dataclass
class ServeArgs:
    model: str | None = field(
        default=None,
        metadata={"help": "Model folder, Hub name or .gguf file: an InRa checkpoint (config with an 'inra' entry), "
                  "an adapter folder, or a plain causal LM. Not with --dera-ref/--dera-aligned."},
    )  # fmt: skip
    base: str | None = field(
        default=None,
        metadata={"help": "Base model of an adapter folder --model (default: the recorded one)."},
    )
    dera_ref: str | None = field(default=None, metadata={"help": "DeRa: the reference model (lam = 0)."})
    dera_aligned: str | None = field(default=None, metadata={"help": "DeRa: the aligned model (lam = 1)."})
    served_model_name: str | None = field(
        default=None, metadata={"help": "The name clients pass as `model` (default: the --model path)."}
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "Interface to bind; 0.0.0.0 exposes the server."}
    )
    port: int = field(default=8000, metadata={"help": "TCP port."})
    api_key: str | None = field(
        default=None,
        metadata={"help": "Require `Authorization: Bearer KEY` on /v1 routes (401 otherwise); default: "
                  "$FLEXREALIGN_API_KEY, which keeps the key out of the process list."},
    )  # fmt: skip
    lam_default: float = field(default=1.0, metadata={"help": "lam for requests that give none."})
    lam_min: float | None = field(default=None, metadata={"help": "Smallest lam a request may ask for."})
    lam_max: float | None = field(default=None, metadata={"help": "Largest lam a request may ask for."})
    max_batch_size: int = field(default=16, metadata={"help": "Requests decoded together at most."})
    max_tokens_limit: int = field(
        default=2048, metadata={"help": "Largest max_tokens a request may ask for."}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1, ... or auto."})
    dtype: str = field(
        default="auto", metadata={"help": "auto (the checkpoint's), float32, bfloat16, float16."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the checkpoint (off by default)."}
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error."})

    def __post_init__(self) -> None:
        dera = (self.dera_ref, self.dera_aligned)
        if (self.model is None) == all(x is None for x in dera) or (None in dera and any(dera)):
            raise ValueError("give either --model, or both --dera-ref and --dera-aligned")
        resolve_dtype(self.dtype)  # an unknown name is a usage error now, not after the server starts
        if self.max_batch_size < 1:
            raise ValueError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        from flexrealign.serving.api import ServerConfig

        # checks the lam bounds and max_tokens_limit now rather than after loading the model
        ServerConfig("", self.lam_default, self.lam_min, self.lam_max, self.max_tokens_limit)


def run(argv: list[str]) -> int:
    (args,) = parse([ServeArgs], argv, "serve", __doc__ or "")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    from flexrealign.conversion.loading import load
    from flexrealign.decoding.calibration import load_calibration
    from flexrealign.decoding.step import check_auto_policy
    from flexrealign.serving import Engine, create_app

    try:
        model, tokenizer = load(
            args.model or args.dera_ref, aligned=args.dera_aligned, base=args.base, dtype=args.dtype,
            device=args.device, trust_remote_code=args.trust_remote_code,
        )  # fmt: skip
        calibration = load_calibration(args.model) if args.model else None
        auto = calibration.auto if calibration is not None else None
        if auto is not None and getattr(model, "probes_hidden", False):
            check_auto_policy(model, auto)  # a probe fitted on another hidden size: refused now
    except (OSError, ValueError, ImportError) as e:  # CheckpointError is a ValueError
        return fail(f"cannot load the model: {e}", code=1)
    if calibration is not None:
        log.info("reasoning_effort: %s", {k: e.to_json() for k, e in calibration.efforts.items()})
    name = args.served_model_name or args.model or args.dera_aligned
    where = f"http://{args.host}:{args.port}"
    log.info("serving %s (%s) as %r on %s", type(model).__name__, model.device, name, where)
    api_key = args.api_key or os.environ.get("FLEXREALIGN_API_KEY")
    with Engine(model, tokenizer, max_batch_size=args.max_batch_size) as engine:
        app = create_app(
            engine, name, api_key=api_key, lam_default=args.lam_default, lam_min=args.lam_min,
            lam_max=args.lam_max, max_tokens_limit=args.max_tokens_limit, calibration=calibration,
        )  # fmt: skip
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
