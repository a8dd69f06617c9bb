"""The demo's recipe over several seeds: each row's mean ± spread, and in how many seeds each paper effect holds.

For every seed it runs the default recipe (`flexrealign demo`'s, plus the kaiming-initialised adapter of the
paper's Table 4), and with `--lmbda 0 0.5` also on-policy TrRa next to off-policy TrRa: the on-policy variant
reuses that seed's reference, aligned model and adapters (hard links to the same checkpoints), so only its
TrRa students differ. Each run is a normal results folder under `--out` (cached: a rerun only re-reads).

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--lmbda 0 0.5] [--quick] [--out bench-demo-seeds]
                                    [--json benchmarks/results/demo_seeds.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

from flexrealign.testbed.malloc import keep_freed_memory
from flexrealign.testbed.paired import fmt_pct
from flexrealign.testbed.recipe import TRRA_ITER, RecipeConfig, RecipeResult, run_recipe, trra_name

REPO = Path(__file__).resolve().parents[1]
SHARED = (
    "reference",
    "aligned",
    "efficient",
    "inra",
    "inra-kaiming",
)  # stages that do not depend on TrRa's options


def link_shared(src: Path, dst: Path) -> None:
    """Hard-link the checkpoints that the TrRa options do not touch, so a variant does not retrain them."""
    for stage in SHARED:
        folder = src / "models" / stage
        if not folder.is_dir() or (dst / "models" / stage).exists():
            continue
        for file in folder.rglob("*"):
            target = dst / "models" / stage / file.relative_to(folder)
            if file.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(file, target)


def run_one(out: Path, cfg: RecipeConfig, base: Path | None) -> RecipeResult:
    if base is not None:
        link_shared(base, out)
    t0 = time.time()
    result = run_recipe(out, cfg, show=False, log=lambda line: print(f"  {line}", flush=True))
    print(f"  {out.name}: {time.time() - t0:.0f} s", flush=True)
    return result


def rows_of(result: RecipeResult) -> dict[str, dict]:
    """Per row: Pass@1 and mean tokens on all problems; on hard ones Pass@1, the careful share and Pass@1 of
    its careful and of its concise samples."""
    out = {}
    for r in [*result.table1, *result.figure4]:
        h = result.hard.get(r.name)
        out[r.name] = {"pass_at_1": r.pass_at_1, "mean_tokens": r.mean_tokens}
        if h is not None:
            out[r.name] |= {
                "hard_pass_at_1": h.pass_at_1,
                "hard_careful_share": h.careful_share,
                "hard_careful_pass_at_1": h.careful_pass,
                "hard_concise_pass_at_1": h.concise_pass,
            }
    return out


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.1f} ± {half:.1f}"


def print_seed(label: str, result: RecipeResult) -> None:
    print(f"\n### {label}\n\n| row | Pass@1 | mean tokens | hard: Pass@1 | careful % | Pass@1 careful | "
          "Pass@1 concise |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for name, r in rows_of(result).items():
        print(
            f"| {name} | {r['pass_at_1']:.1f} | {r['mean_tokens']:.1f} | {fmt_pct(r.get('hard_pass_at_1'))} | "
            f"{fmt_pct(r.get('hard_careful_share'))} | {fmt_pct(r.get('hard_careful_pass_at_1'))} | "
            f"{fmt_pct(r.get('hard_concise_pass_at_1'))} |"
        )
    for e in result.effects:
        print(f"- {e.line()}")
    print(f"\n{result.adaptive}")


def summarize(variant: str, results: dict[int, RecipeResult]) -> dict:
    """Mean ± half-range over seeds per row, and per effect the number of seeds in which it holds."""
    per_seed = {seed: rows_of(r) for seed, r in results.items()}
    names = list(next(iter(per_seed.values())))
    n = len(results)
    print(
        f"\n## {variant}: mean ± half-range over {n} seeds\n\n| row | Pass@1 | mean tokens |\n|---|---|---|"
    )
    table = {"per_seed": per_seed}
    for name in names:
        acc = [per_seed[s][name]["pass_at_1"] for s in per_seed if name in per_seed[s]]
        tok = [per_seed[s][name]["mean_tokens"] for s in per_seed if name in per_seed[s]]
        table[name] = {"pass_at_1": acc, "mean_tokens": tok}
        print(f"| {name} | {spread(acc)} | {spread(tok)} |")
    effects = {}
    print("\n| effect | holds in |\n|---|---|")
    for i, e in enumerate(next(iter(results.values())).effects):
        verdicts = [r.effects[i].holds for r in results.values()]
        effects[e.key] = {
            "claim": e.claim,
            "holds": verdicts,
            "numbers": [r.effects[i].numbers for r in results.values()],
        }
        print(f"| {e.claim} | {sum(v is True for v in verdicts)}/{n} |")
    return {"rows": table, "effects": effects}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lmbda", type=float, nargs="+", default=[0.0], help="TrRa on-policy shares to compare")
    ap.add_argument("--quick", action="store_true", help="the quick recipe (for a smoke test)")
    ap.add_argument("--out", default="bench-demo-seeds")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "demo_seeds.json"))
    a = ap.parse_args()
    keep_freed_memory()  # as `flexrealign demo` does
    base_cfg = dataclasses.replace(RecipeConfig.quick() if a.quick else RecipeConfig(), kaiming_ablation=True)
    report: dict = {"config": base_cfg.to_dict(), "seeds": a.seeds, "variants": {}, "seconds": {}}
    results: dict[str, dict[int, RecipeResult]] = {}
    for seed in a.seeds:
        first = None
        for lmbda in a.lmbda:
            variant = f"lmbda{lmbda:g}"
            out = Path(a.out) / f"seed{seed}-{variant}"
            print(f"seed {seed}, TrRa lmbda={lmbda:g} -> {out}", flush=True)
            cfg = dataclasses.replace(base_cfg, seed=seed, trra_lmbda=lmbda)
            t0 = time.time()
            result = run_one(out, cfg, first)
            report["seconds"][f"seed{seed}-{variant}"] = time.time() - t0
            first = first or out
            results.setdefault(variant, {})[seed] = result
            report.setdefault("adaptive", {})[f"seed{seed}-{variant}"] = result.adaptive
            print_seed(f"seed {seed}, TrRa lmbda={lmbda:g}", result)
    for variant, by_seed in results.items():
        report["variants"][variant] = summarize(variant, by_seed)
    stages = [*map(trra_name, base_cfg.trra_lams), TRRA_ITER]
    report["trra_stages"] = stages
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
