"""keep_freed_memory: on glibc it takes effect, and freed blocks are then reused without new page faults."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from flexrealign.testbed.malloc import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    assert keep_freed_memory()
    torch.empty(8 << 20, dtype=torch.uint8).fill_(
        1
    )  # 8 MiB: mmap'ed (and unmapped on free) by glibc's default
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(8 << 20, dtype=torch.uint8).fill_(1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20 * (8 << 20) // 4096 // 4  # a quarter of what re-faulting every block would cost
