"""The evaluation harness: models x lam x problems x samples -> an append-only JSONL of generations, a table
(Pass@1, mean completion tokens, token reduction %, cut-off %) as Markdown and CSV, and Figure 4's plot.

Protocol defaults are the paper's (§4.1): 8 samples per problem, temperature 0.7, top-p 0.95, up to 16,384
new tokens, the R1 prompt through the chat template. Every generation is appended to `generations.jsonl` as
soon as its batch finishes, keyed by (model, lam, problem id, sample index), so an interrupted run resumes
where it stopped: finished keys are skipped, never redone or duplicated, and a half-written last line left
by a crash is dropped.

This module holds what to evaluate (`ModelSpec`, `EvalConfig`), the engines and the resumable loop (`evaluate`);
the JSONL is read and written by `eval.generations`, the table and the plot by `eval.results`.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flexrealign.conversion.loading import is_adapter_dir, is_two_path, load, model_kind
from flexrealign.core.dera import DeRa
from flexrealign.core.inra import InRaModel
from flexrealign.core.keywords import refuse_unknown_keywords
from flexrealign.decoding.generation import GenerationResult, Prompt
from flexrealign.eval.benchmarks import DEFAULT_TEMPLATE, Problem, build_messages
from flexrealign.eval.generations import GENERATIONS, Key, append_generations, load_generations
from flexrealign.eval.grading import grade
from flexrealign.eval.results import Row, add_token_reduction, fmt_lam, write_results

PAPER_LAMS = (-0.5, 0.0, 0.5, 1.0, 1.5)

# (prompts, lam or None, one seed per prompt) -> completions; one per engine
GenerateFn = Callable[[list[Prompt], float | None, list[int]], GenerationResult]


@dataclass
class ModelSpec:
    """A model to evaluate. kind: "plain" (one HF model), "inra" (two paths: an InRa checkpoint or adapter
    folder) or "dera" (two models); None (the default) asks the loader, which reads the model's config, so a
    Hub name of an InRa checkpoint is "inra" too (a loaded model: its class).

    `path` is the checkpoint (for DeRa the reference; `aligned_path` the aligned model). `family` groups rows
    into one line of the plot (default: the label). `loaded` may hold an already loaded (model, tokenizer).
    """

    label: str
    kind: str | None = None
    path: str | None = None
    aligned_path: str | None = None
    family: str | None = None
    loaded: tuple | None = field(default=None, repr=False)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = self._detect_kind()
        if self.kind not in ("plain", "inra", "dera"):
            raise ValueError(f"ModelSpec.kind must be plain, inra or dera, got {self.kind!r}")
        if self.kind == "dera" and self.loaded is None and not (self.path and self.aligned_path):
            raise ValueError("a DeRa model needs both the reference path and the aligned path")
        self.family = self.family or self.label

    def _detect_kind(self) -> str:
        if self.loaded is not None:
            model = self.loaded[0]
            return "dera" if isinstance(model, DeRa) else "inra" if isinstance(model, InRaModel) else "plain"
        if self.aligned_path is not None:
            return "dera"
        if self.path is None:
            raise ValueError(f"model {self.label!r}: give a path or an already loaded (model, tokenizer)")
        return "inra" if is_two_path(model_kind(self.path, self.trust_remote_code)) else "plain"

    @property
    def fused(self) -> bool:
        return self.kind in ("inra", "dera")


@refuse_unknown_keywords
@dataclass
class EvalConfig:
    """How to evaluate (the paper's protocol by default)."""

    lams: Sequence[float] = PAPER_LAMS
    n_samples: int = 8
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 16384
    batch_size: int = 16
    template: str = DEFAULT_TEMPLATE
    seed: int = 0
    # the row ("label" or "label@lam") that token reduction is measured against
    baseline: str | None = None
    engine: str = "flexrealign"  # or "vllm"
    vllm_kwargs: dict = field(default_factory=dict)  # extra `vllm.LLM(...)` arguments (memory, max_model_len)
    progress: bool = True


# ------------------------------------------------------------------------------------------------- models
def load_model(spec: ModelSpec, device: str | torch.device = "auto") -> tuple:
    """(model, tokenizer) for `spec` through the one loader (`flexrealign.conversion.loading.load`), in eval mode on
    `device` (the GPU when there is one)."""
    if spec.loaded is not None:
        return spec.loaded
    aligned = spec.aligned_path if spec.kind == "dera" else None
    return load(spec.path, aligned=aligned, device=device, trust_remote_code=spec.trust_remote_code)


def flexrealign_engine(model: torch.nn.Module, tokenizer, cfg: EvalConfig) -> GenerateFn:
    """Generation through our own decode loop (`flexrealign.decoding.generation.generate`)."""
    from flexrealign.decoding.generation import generate

    def run(prompts: list[Prompt], lam: float | None, seeds: list[int]) -> GenerationResult:
        return generate(
            model, tokenizer, prompts, lam=lam, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=seeds,
        )  # fmt: skip

    return run


def vllm_engine(spec: ModelSpec, cfg: EvalConfig) -> GenerateFn:
    """Generation through vLLM with the flexrealign plugin (`flexrealign.vllm_plugin`), for GPU-scale runs.

    The plugin makes `LLM(path)` load an InRa checkpoint as the two-path model and reads each request's lam
    from `SamplingParams.extra_args["lam"]`; plain checkpoints run as usual. Prompts are rendered with the
    same chat template as the default engine, so prompts, grading and outputs are identical. DeRa pairs are
    not supported here (vLLM serves one model per engine).
    """
    if spec.kind == "dera":
        raise ValueError("--engine vllm does not run DeRa pairs; use --engine flexrealign")
    if spec.path is not None and is_adapter_dir(spec.path):
        raise ValueError(f"--engine vllm loads full checkpoints; export the adapter folder {spec.path} first "
                         "(flexrealign export --format inra) or use --engine flexrealign")  # fmt: skip
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec.path, **{"seed": cfg.seed, **cfg.vllm_kwargs})
    tokenizer = llm.get_tokenizer()

    def run(prompts: list[Prompt], lam: float | None, seeds: list[int]) -> GenerationResult:
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
        ]
        extra = None if lam is None else {"lam": float(lam)}
        params = [
            SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or -1,
                           max_tokens=cfg.max_new_tokens, seed=seeds[i], extra_args=extra)
            for i in range(len(texts))
        ]  # fmt: skip
        outs = [o.outputs[0] for o in llm.generate(texts, params, use_tqdm=False)]
        return GenerationResult(
            texts=[o.text for o in outs],
            token_ids=[list(o.token_ids) for o in outs],
            num_tokens=[len(o.token_ids) for o in outs],
            finish_reasons=["length" if o.finish_reason == "length" else "stop" for o in outs],
        )

    def close() -> None:  # stop the engine's worker processes now, not at interpreter exit
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    run.close = close  # type: ignore[attr-defined]
    return run


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class Job:
    """The generations one (model, lam) still owes: (problem index, sample index) pairs."""

    spec: ModelSpec
    lam: float | None
    todo: list[tuple[int, int]]


def plan_jobs(
    specs: Sequence[ModelSpec], problems: Sequence[Problem], cfg: EvalConfig, done: dict[Key, dict]
) -> list[Job]:
    """Every (model, lam) with its missing (problem, sample) pairs; plain models are evaluated once."""
    jobs = []
    for spec in specs:
        for lam in [float(x) for x in cfg.lams] if spec.fused else [None]:
            todo = [
                (i, s)
                for s in range(cfg.n_samples)
                for i, p in enumerate(problems)
                if (spec.label, lam, p.id, s) not in done
            ]
            jobs.append(Job(spec, lam, todo))
    return jobs


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def make_records(job: Job, part: Sequence, problems: Sequence[Problem], out: GenerationResult) -> list[dict]:
    """One JSONL record per generation, graded against the problem's answer."""
    recs = []
    thinking = out.reasoning_tokens or [None] * len(part)  # engines that do not count thinking give None
    for (i, s), text, n, reason, t in zip(
        part, out.texts, out.num_tokens, out.finish_reasons, thinking, strict=True
    ):
        p = problems[i]
        recs.append(
            {
                "model": job.spec.label, "family": job.spec.family, "kind": job.spec.kind, "lam": job.lam,
                "problem_id": p.id, "sample": s, "answer": p.answer, "text": text, "tokens": n,
                "reasoning_tokens": t, "finish_reason": reason, "correct": grade(text, p.answer),
            }
        )  # fmt: skip
    return recs


def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """The sampling seed of one (problem, sample) key: a 63-bit hash of (seed, problem id, sample index).

    A generation is therefore a function of (seed, problem, sample, model, lam) alone, whatever the batch it
    lands in or a resume. Every model and lam shares the key's random stream (common random numbers), so
    differences between lams are not sampling noise.
    """
    key = f"{int(seed)}\x00{problem_id}\x00{int(sample)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def run_job(
    job: Job, engine: GenerateFn, problems: Sequence[Problem], cfg: EvalConfig, path: Path, bar
) -> None:
    """Generate a job's missing samples batch by batch, appending each finished batch to the JSONL."""
    tag = job.spec.label if job.lam is None else f"{job.spec.label} lam={fmt_lam(job.lam)}"
    bar.set_postfix_str(tag, refresh=False)
    for part in chunks(job.todo, cfg.batch_size):
        prompts = [build_messages(problems[i], cfg.template) for i, _ in part]
        seeds = [sample_seed(cfg.seed, problems[i].id, s) for i, s in part]
        out = engine(prompts, job.lam, seeds)
        append_generations(path, make_records(job, part, problems, out))
        bar.update(len(part))


def evaluate(
    specs: Sequence[ModelSpec], problems: Sequence[Problem], cfg: EvalConfig, out_dir: str | os.PathLike
) -> list[Row]:
    """Evaluate every model (at every lam in `cfg.lams` for InRa/DeRa) and write the results folder:
    generations.jsonl (resumable), results.csv, results.md and accuracy_vs_tokens.png. Returns the table."""
    _check_labels(specs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / GENERATIONS
    jobs = plan_jobs(specs, problems, cfg, load_generations(path))
    total = sum(len(j.todo) for j in jobs)
    with tqdm(total=total, desc="evaluating", unit="gen", disable=not cfg.progress or total == 0) as bar:
        for spec in specs:
            mine = [j for j in jobs if j.spec is spec and j.todo]
            if not mine:
                continue
            engine = make_engine(spec, cfg)
            for job in mine:
                run_job(job, engine, problems, cfg, path, bar)
            getattr(engine, "close", lambda: None)()
            del engine
            gc.collect()
    rows = summarize(load_generations(path), specs, problems, cfg)
    write_results(rows, out_dir, baseline=cfg.baseline)
    return rows


def make_engine(spec: ModelSpec, cfg: EvalConfig) -> GenerateFn:
    if cfg.engine == "vllm":
        return vllm_engine(spec, cfg)
    if cfg.engine != "flexrealign":
        raise ValueError(f"engine must be 'flexrealign' or 'vllm', got {cfg.engine!r}")
    model, tokenizer = load_model(spec)
    return flexrealign_engine(model, tokenizer, cfg)


def _check_labels(specs: Sequence[ModelSpec]) -> None:
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique (they key the results), got {labels}")


# --------------------------------------------------------------------------------------------- the table
def summarize(
    done: dict[Key, dict], specs: Sequence[ModelSpec], problems: Sequence[Problem], cfg: EvalConfig
) -> list[Row]:
    """One row per (model, lam) from the finished generations of this problem set and sample count."""
    rows = []
    for spec in specs:
        for lam in [float(x) for x in cfg.lams] if spec.fused else [None]:
            recs = [
                done[k]
                for s in range(cfg.n_samples)
                for p in problems
                if (k := (spec.label, lam, p.id, s)) in done
            ]
            if not recs:
                continue
            n = len(recs)
            rows.append(
                Row(
                    model=spec.label, family=spec.family or spec.label, lam=lam,
                    problems=len({r["problem_id"] for r in recs}), samples=n,
                    pass_at_1=100.0 * sum(bool(r["correct"]) for r in recs) / n,
                    mean_tokens=sum(r["tokens"] for r in recs) / n,
                    cutoff_pct=100.0 * sum(r["finish_reason"] == "length" for r in recs) / n,
                )
            )  # fmt: skip
    return add_token_reduction(rows, cfg.baseline)
