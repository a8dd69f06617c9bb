"""The lm-eval model `flexrealign` against lm-eval's own `hf` model, offline, on local tasks built from ../shared's
GSM8K: loglikelihood, loglikelihood_rolling and generate_until on SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'flexrealign[lm-eval]')")

import torch  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from flexrealign.commands import export  # noqa: E402
from flexrealign.core.inra import InRaModel  # noqa: E402
from flexrealign.eval.lm_eval_model import FlexRealignLM, _sampling  # noqa: E402
from helpers import perturb_adapter, shared_path  # noqa: E402

N_DOCS = 5
TASKS = {
    "fr_gsm8k_ll": {
        "output_type": "loglikelihood",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": " {{answer}}",
        "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}],
    },
    "fr_gsm8k_rolling": {
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{question}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}],
    },
    "fr_gsm8k_gen": {
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n\n", "Question:"], "do_sample": False, "max_gen_toks": 12},
        "metric_list": [{"metric": "exact_match"}],
    },
}


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory) -> TaskManager:
    """Task YAMLs (lm-eval's format) over a JSONL of the first GSM8K problems from ../shared, indexed."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    rows = []
    with shared_path("data", "benchmarks", "gsm8k.jsonl").open() as f:
        for line in list(f)[:N_DOCS]:
            row = json.loads(line)
            rows.append({"question": row["question"], "answer": row["answer"].rsplit("####", 1)[1].strip()})
    data = root / "gsm8k_small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, spec in TASKS.items():
        head = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}}
        (root / f"{name}.yaml").write_text(json.dumps(head | {"test_split": "test"} | spec))  # JSON is YAML
    # one TaskManager for the module: building one indexes every task lm-eval ships (seconds each time)
    return TaskManager(include_path=str(root))


@pytest.fixture(scope="module")
def checkpoints(smollm2_dir, tmp_path_factory):
    """An InRa checkpoint of SmolLM2 with a perturbed ("trained") adapter, and its plain lam = 1 export."""
    root = tmp_path_factory.mktemp("lm_eval_ckpts")
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    perturb_adapter(InRaModel.from_base(base), scale=0.02).save_pretrained(root / "inra", tokenizer=tok)
    assert export.run(["--checkpoint", str(root / "inra"), "--output_dir", str(root / "aligned")]) == 0
    return {"base": smollm2_dir, "inra": root / "inra", "aligned": root / "aligned"}


def samples(lm, task_manager) -> dict[str, list]:
    """task -> per-document responses, in document order."""
    out = simple_evaluate(
        model=lm, tasks=list(TASKS), task_manager=task_manager, log_samples=True,
        bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )  # fmt: skip
    return {t: [s["resps"] for s in sorted(out["samples"][t], key=lambda s: s["doc_id"])] for t in TASKS}


def hf(path) -> HFLM:
    return HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=4)


def ours(path, **kwargs) -> FlexRealignLM:
    return FlexRealignLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=4, **kwargs)


def assert_same(got: dict, want: dict, what: str) -> None:
    for task in ("fr_gsm8k_ll", "fr_gsm8k_rolling"):
        for doc, (g, w) in enumerate(zip(got[task], want[task], strict=True)):
            g_ll, w_ll = g[0][0], w[0][0]
            g_ll, w_ll = (g_ll[0], w_ll[0]) if isinstance(g_ll, (tuple, list)) else (g_ll, w_ll)
            assert math.isfinite(g_ll) and abs(g_ll - w_ll) <= 1e-4, (
                f"{what} {task} doc {doc}: {g_ll} != {w_ll}"
            )
    assert got["fr_gsm8k_gen"] == want["fr_gsm8k_gen"], f"{what}: generations differ"
    assert any(r[0][0].strip() for r in got["fr_gsm8k_gen"]), "the model should generate text"


@pytest.mark.real
def test_lam0_equals_hf_on_base(checkpoints, task_manager):
    want = samples(hf(checkpoints["base"]), task_manager)
    assert_same(samples(ours(checkpoints["inra"], lam=0.0), task_manager), want, "InRa lam=0 vs hf(base)")


@pytest.mark.real
def test_lam1_equals_hf_on_exported_model(checkpoints, task_manager):
    want = samples(hf(checkpoints["aligned"]), task_manager)
    got = samples(ours(checkpoints["inra"], lam=1.0), task_manager)
    assert_same(got, want, "InRa lam=1 vs hf(exported)")
    base = samples(ours(checkpoints["base"]), task_manager)  # a plain model through the flexrealign class
    assert base["fr_gsm8k_ll"] != got["fr_gsm8k_ll"], "the adapter must change the scores"


@pytest.mark.real
def test_dera_pair_at_lam_equals_inra(checkpoints, task_manager):
    pair = ours(checkpoints["base"], aligned=str(checkpoints["aligned"]), lam=1.5)
    assert_same(
        samples(pair, task_manager), samples(ours(checkpoints["inra"], lam=1.5), task_manager), "DeRa vs InRa"
    )


def test_lam_on_a_plain_model_is_refused(tmp_path):
    from flexrealign.core.tiny import tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="plain model"):
        FlexRealignLM(pretrained=str(tmp_path / "plain"), lam=0.5, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback applies on machines without CUDA")
def test_lm_eval_default_device_falls_back_to_cpu(tmp_path):
    """lm-eval's CLI passes device="cuda:0" when --device is not given; `--model hf` then runs on the CPU."""
    from flexrealign.core.tiny import tiny_model
    from flexrealign.testbed.tokenizer import build_tokenizer

    tiny_model("llama").save_pretrained(tmp_path / "plain")
    lm = FlexRealignLM(
        pretrained=str(tmp_path / "plain"), device="cuda:0", dtype="float32", tokenizer=build_tokenizer()
    )
    assert lm.device.type == "cpu" and next(lm.model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs, want",
    [
        ({"do_sample": False, "temperature": 0.0}, {"temperature": 0.0, "top_p": 1.0, "top_k": 0}),
        ({"do_sample": True}, {"temperature": 1.0, "top_p": 1.0, "top_k": 0}),
        (
            {"do_sample": True, "temperature": 0.7, "top_p": 0.9},
            {"temperature": 0.7, "top_p": 0.9, "top_k": 0},
        ),
    ],
)
def test_sampling_kwargs(kwargs, want):
    assert _sampling(kwargs) == want


def test_unknown_generation_kwargs_are_refused():
    with pytest.raises(ValueError, match="num_beams"):
        _sampling({"do_sample": False, "num_beams": 4})
