"""keep_freed_memory: on glibc, freed tensor memory is reused instead of being unmapped and faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from flexrealign.testbed.malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MiB: above glibc's largest dynamic mmap threshold
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    assert faults("keep") < faults("default") / 3
