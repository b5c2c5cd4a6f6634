"""Writes that a crash cannot leave half done: a file or a folder appears whole, or not at all.

Each writes under a temporary name in the same folder, flushes it to disk, then renames it into
place with os.replace (atomic on one filesystem). Temporary names start with ".tmp-", so the
registry can sweep what a dead writer left.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write and flush to disk (no rename: for files inside a folder that is itself renamed into place)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path, data: bytes | str) -> Path:
    """Replace the file at `path` with `data` (str is written as UTF-8) -> the path."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        write_file(tmp, data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_dir(out):
    """`with atomic_dir(out) as tmp:` fill the folder tmp; on a clean exit it replaces `out` whole.
    On an error `out` is left as it was and tmp is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
