"""Atomic writes, in the standard library only (so that torch-free modules such as the dial may use them).

`atomic_file` and `atomic_dir` write beside the target and rename into place: a reader sees the old version
or the new one, never a half-written one, and a crash leaves the old version untouched. Every writer of
results, checkpoints, caches and data files in flexrealign goes through one of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file"]


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write; on success it is fsynced and renamed over `target`.

    Readers see the old file or the new one, never a half-written one; on an error the temporary file is
    removed and `target` is left as it was. The temporary name ends in `target`'s suffix, for writers that
    pick a format by extension.

    Args:
        target: the file to write (its folder is created).

    Example:
        >>> with atomic_file("out/results.md") as tmp:
        ...     tmp.write_text("# Results\n")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}{target.suffix}")
    try:
        yield tmp
        with tmp.open("rb") as f:  # the data reaches the disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    A crash mid-save leaves the previous `target` untouched (the temporary folder is removed).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
