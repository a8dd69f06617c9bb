"""Keep freed memory in the process (glibc): a tiny model's training step frees and reallocates the same
tensors every step, and glibc's defaults hand large blocks back to the kernel (munmap/trim) each time, so every
step pays page faults again. Measured on the testbed model (`benchmarks/trainer_overhead.py --steps 20`, two
interleaved pairs, 2 cores at load ~11): page faults 0.71-1.06 M -> 0.20-0.22 M, system time 1.9-2.3 s ->
0.95 s, the Trainer's cost over a bare loop 1.21-1.28x -> 1.05-1.17x. `flexrealign demo` calls it at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
KEEP = 1 << 30  # bytes: blocks below this come from the heap, and up to this much free memory is kept


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False (and no change) off glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        # Both settings, each on its own: a glibc that refuses one must still get the other.
        mmap_ok, trim_ok = libc.mallopt(M_MMAP_THRESHOLD, KEEP), libc.mallopt(M_TRIM_THRESHOLD, KEEP)
        return bool(mmap_ok) and bool(trim_ok)
    except (OSError, AttributeError):
        return False
