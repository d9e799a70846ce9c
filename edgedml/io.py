"""Atomic file writes: every file edgedml produces is written to a temporary sibling and renamed.

A crash or Ctrl-C in the middle of a write therefore leaves either the old file or the
new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _new_file_mode() -> int:
    """The mode open() would give a new file: 0o666 less the process umask (mkstemp uses 0o600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp (and writers that recreate the file) leave 0o600; give what open() would
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else _new_file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line by rewriting the file atomically (metrics files are small)."""
    target = Path(path)
    previous = target.read_text(encoding="utf-8") if target.exists() else ""
    write_text(target, previous + json.dumps(record, sort_keys=True, allow_nan=False) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Let ``writer`` write a temporary path, then move it onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
