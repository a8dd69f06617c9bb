"""Serving throughput and latency: `flexrealign serve` under 1, 4 and 16 concurrent clients, in one run.

Compares continuous batching (--max-batch-size 16) with one request at a time (--max-batch-size 1), and mixed
lam per request with lam = 0 only (which runs the reference path alone). Then the thinking dial: 16 clients
whose requests mix budgets (with and without closing text), minimums, think/answer schedules and plain lam,
against 16 clients with plain mixed lam, interleaved and repeated (target: dial >= 0.9x plain); and adaptive
thinking (prompts that open a think block): lam auto and a budget's soft landing against a fixed lam (targets:
both >= 0.9x), with the hard cut beside them; the model folder holds a made-up calibration with an auto policy. The model is an InRaModel over a
random Qwen2 (hidden 384, 4 layers, 512-token vocabulary of the stories260K tokenizer), saved to a temporary
folder and served by the real command in a subprocess; clients are threads using the official `openai`
client, each sending its requests one after another (greedy, fixed length: ignore_eos).

    python benchmarks/serve.py                  # a few minutes on a 2-core CPU
    python benchmarks/serve.py --max-tokens 16 --requests-per-client 1   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLEXREALIGN_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "benchmarks" / "results" / "serve.json"
SHAPE = dict(model_type="qwen2", vocab_size=512, hidden_size=384, num_layers=4, num_heads=6, num_kv_heads=2,
             intermediate_size=1024)  # fmt: skip
MIXED_LAMS = [0.0, 0.25, 0.5, 1.0, 1.5, -0.5]
DIAL = [  # the dial mix: every kind of thinking control, and plain lam
    {"lam": 0.25},
    {"lam_think": -0.5, "lam_answer": 1.0, "thinking_token_budget": 8, "thinking_closing": "Time is up."},
    {"lam_think": 1.5, "lam_answer": 0.0, "min_thinking_tokens": 4},
    {"lam": 0.5, "thinking_token_budget": 4},
    {"lam_think": 0.0, "lam_answer": 1.0},
    {"lam": 1.0, "thinking_token_budget": 0},
]
PROMPTS = [
    "Once upon a time",
    "Lily saw a big dog in the park and she wanted to",
    "Tom had a red ball. He liked to throw it high in the sky, and one day the ball",
    "The sun was hot",
]
ADAPTIVE = {  # mix -> the dial of every request (the prompts open a think block)
    "fixed": {"lam": 0.5},
    "auto": {"lam": "auto"},
    "soft": {"lam": 0.5, "thinking_token_budget": 12, "thinking_landing": "soft"},
    "hard": {"lam": 0.5, "thinking_token_budget": 12, "thinking_landing": "hard"},
}
CURVE = [(-0.5, 40.0), (0.0, 30.0), (0.5, 20.0), (1.0, 12.0), (1.5, 8.0)]  # made up: lam -> thinking tokens
MODES = {"batched": 16, "one-at-a-time": 1}  # name -> --max-batch-size
CONCURRENCY = (1, 4, 16)


def save_model(folder: Path) -> dict:
    """Build the benchmark model (seeded) and save it with the stories tokenizer; returns its shape."""
    from flexrealign.core.inra import InRaModel
    from flexrealign.core.tiny import tiny_model

    # The word-level tokenizer builder is a test fixture (tests/tiny_checkpoints.py), kept out of the package.
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_checkpoints import bpe_tokenizer

    model = InRaModel.from_base(tiny_model(**SHAPE, max_position_embeddings=1024))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)  # so that the two paths differ
    # a byte-level BPE with exactly the model's 512 ids and the think markers <think> / </think>
    model.save_pretrained(folder, tokenizer=bpe_tokenizer(SHAPE["vocab_size"]))
    save_calibration(folder, g)
    return SHAPE | {"parameters": sum(p.numel() for p in model.parameters()), "adapter_layers": 1}


def save_calibration(folder: Path, g: torch.Generator) -> None:
    """A made-up calibration (CURVE) with an auto policy whose random probe sends about half the prompts to
    each lam, so that lam auto mixes both in one batch."""
    from flexrealign.decoding import calibration as c
    from flexrealign.decoding.adaptive import AutoPolicy

    curve = [c.CurvePoint(lam, t, t + 8, 50.0, 8) for lam, t in CURVE]
    weights = tuple((torch.randn(SHAPE["hidden_size"], generator=g) * 0.05).tolist())
    policy = AutoPolicy(weights, 0.0, 0.5, lam_easy=1.5, lam_hard=-0.5)
    c.save_calibration(folder, c.Calibration(curve, c.choose_efforts(curve, False), {}, policy))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, max_batch_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "flexrealign.cli", "serve", "--model", str(folder), "--served-model-name", "bench",
           "--port", str(port), "--max-batch-size", str(max_batch_size), "--device", "cpu", "--log-level", "warning"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not start in 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_cell(
    url: str, concurrency: int, per_client: int, lams: list, max_tokens: int, suffix: str = ""
) -> dict:
    """`concurrency` clients each send `per_client` requests in turn; throughput over the whole cell."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()

    def one_client(c: int) -> None:
        for r in range(per_client):
            i = c * per_client + r
            start = time.perf_counter()
            out = client.completions.create(
                model="bench", prompt=PROMPTS[i % len(PROMPTS)] + suffix, max_tokens=max_tokens, temperature=0,
                extra_body=_extra(lams[i % len(lams)]) | {"ignore_eos": True},
            )  # fmt: skip
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens.append(out.usage.completion_tokens)

    start = time.perf_counter()
    workers = [threading.Thread(target=one_client, args=(c,)) for c in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "completion_tokens": sum(tokens),
        "wall_s": round(wall, 3),
        "throughput_tok_s": round(sum(tokens) / wall, 2),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
    }


def _extra(lam: float | dict) -> dict:
    return lam if isinstance(lam, dict) else {"lam": lam}


def run_dial(url: str, args: argparse.Namespace) -> list[dict]:
    """The dial mix vs plain mixed lam at 16 clients on the batched server, interleaved, --repeats times."""
    rows = []
    per_client = max(args.requests_per_client, args.min_requests // 16)
    for rep in range(args.repeats):
        for name, lams in (("plain", MIXED_LAMS), ("dial", DIAL)):
            cell = run_cell(url, 16, per_client, lams, args.max_tokens)
            rows.append({"requests_mix": name, "repeat": rep, "concurrency": 16} | cell)
            print(f"  dial benchmark  {name:<5}  repeat={rep}  {cell}", flush=True)
    return rows


def run_adaptive(url: str, args: argparse.Namespace) -> list[dict]:
    """The ADAPTIVE mixes at 16 clients on the batched server, interleaved, --repeats times."""
    rows = []
    per_client = max(args.requests_per_client, args.min_requests // 16)
    for rep in range(args.repeats):
        for name, dial in ADAPTIVE.items():
            cell = run_cell(url, 16, per_client, [dial], args.max_tokens, suffix="<think>\n")
            rows.append({"requests_mix": name, "repeat": rep, "concurrency": 16} | cell)
            print(f"  adaptive benchmark  {name:<5}  repeat={rep}  {cell}", flush=True)
    return rows


def adaptive_summary(rows: list[dict]) -> dict:
    """Median throughput of each mix (min..max), and auto, soft and hard against the fixed lam."""
    tok = {m: [r["throughput_tok_s"] for r in rows if r["requests_mix"] == m] for m in ADAPTIVE}
    med = {m: float(np.median(v)) for m, v in tok.items()}
    out = {f"{m}_tok_s": f"{med[m]:.2f} ({min(v):.2f}..{max(v):.2f})" for m, v in tok.items()}
    return out | {f"{m}_vs_fixed": round(med[m] / med["fixed"], 3) for m in ("auto", "soft", "hard")}


def dial_summary(rows: list[dict]) -> dict:
    """Median throughput of each mix and their ratio (dial / plain)."""
    med = {
        m: float(np.median([r["throughput_tok_s"] for r in rows if r["requests_mix"] == m]))
        for m in ("plain", "dial")
    }
    return {"plain_tok_s": round(med["plain"], 2), "dial_tok_s": round(med["dial"], 2),
            "dial_vs_plain": round(med["dial"] / med["plain"], 3)}  # fmt: skip


def run_all(folder: Path, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Both servers run side by side (an idle engine waits without using the CPU) and each cell is measured
    on one right after the other, so that drifting load from other processes hits both modes alike."""
    modes = {"batched": MODES["batched"]} if args.dial_only else MODES
    servers = {mode: start_server(folder, size, args.threads) for mode, size in modes.items()}
    rows: list[dict] = []
    try:
        for _, url in servers.values():
            run_cell(url, 2, 1, [0.5], 4)  # warm-up: first-call allocations and lazy imports
        dial = run_dial(servers["batched"][1], args)
        dial += run_adaptive(servers["batched"][1], args)
        for lam_name, lams in () if args.dial_only else (("mixed", MIXED_LAMS), ("0", [0.0])):
            for concurrency in CONCURRENCY:
                per_client = max(args.requests_per_client, args.min_requests // concurrency)
                for mode, (_, url) in servers.items():
                    cell = run_cell(url, concurrency, per_client, lams, args.max_tokens)
                    rows.append({"batching": mode, "max_batch_size": MODES[mode], "lam": lam_name,
                                 "concurrency": concurrency} | cell)  # fmt: skip
                    print(f"  {mode:>13}  lam={lam_name:<5}  clients={concurrency:<2}  {cell}", flush=True)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    return rows, dial


def table(rows: list[dict]) -> str:
    """One line per (lam, clients): batched vs one-at-a-time throughput and latency, and the speed-up."""
    by = {(r["batching"], r["lam"], r["concurrency"]): r for r in rows}
    head = (f"{'lam':<6}{'clients':>8} | {'batched tok/s':>13} {'p50 s':>7} {'p95 s':>7} | "
            f"{'1-at-a-time tok/s':>17} {'p50 s':>7} {'p95 s':>7} | {'speed-up':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for lam in ("mixed", "0"):
        for c in CONCURRENCY:
            b, s = by[("batched", lam, c)], by[("one-at-a-time", lam, c)]
            lines.append(
                f"{lam:<6}{c:>8} | {b['throughput_tok_s']:>13.1f} {b['latency_p50_s']:>7.2f} {b['latency_p95_s']:>7.2f} | "
                f"{s['throughput_tok_s']:>17.1f} {s['latency_p50_s']:>7.2f} {s['latency_p95_s']:>7.2f} | "
                f"{b['throughput_tok_s'] / s['throughput_tok_s']:>7.2f}x"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request")
    parser.add_argument(
        "--requests-per-client", type=int, default=1, help="requests each client sends, at least"
    )
    parser.add_argument(
        "--min-requests", type=int, default=8, help="requests per cell, at least (spread over clients)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the dial comparison")
    parser.add_argument("--dial-only", action="store_true", help="only the dial vs plain lam comparison")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="flexrealign-serve-bench-") as tmp:
        shape = save_model(Path(tmp) / "model")
        rows, dial = run_all(Path(tmp) / "model", args)
    if rows:
        print("\n" + table(rows))
    summary = dial_summary([r for r in dial if r["requests_mix"] in ("plain", "dial")])
    adaptive = adaptive_summary([r for r in dial if r["requests_mix"] in ADAPTIVE])
    print(
        f"\nthinking dial at 16 clients (median of {args.repeats}): plain lam {summary['plain_tok_s']} tok/s, "
        f"dial mix {summary['dial_tok_s']} tok/s -> {summary['dial_vs_plain']}x (target >= 0.9x)"
    )
    meta = {
        "benchmark": "serve", "model": shape, "max_tokens": args.max_tokens, "threads": args.threads,
        "mixed_lams": MIXED_LAMS, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "load_average_1m": os.getloadavg()[0], "runtime_s": round(time.time() - started, 1),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"adaptive thinking at 16 clients (median of {args.repeats}): {adaptive} (targets: auto and soft "
        ">= 0.9x fixed)"
    )
    meta |= {"dial_mix": DIAL, "dial": summary, "adaptive_mix": ADAPTIVE, "adaptive": adaptive,
             "dial_cells": dial}  # fmt: skip
    args.out.write_text(json.dumps(meta | {"results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out} ({meta['runtime_s']} s)")


if __name__ == "__main__":
    main()
