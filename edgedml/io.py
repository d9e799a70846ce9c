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
from typing import TYPE_CHECKING, Any

from edgedml.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a file :func:`append_jsonl` wrote, one per line; none when the file does not exist."""
    target = Path(path)
    if not target.is_file():
        return []
    return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_figure(figure: Figure, path: str | os.PathLike, dpi: float) -> None:
    """Render a matplotlib figure into ``path``, in the format its suffix names (png without one)."""
    picture_format = Path(path).suffix.lstrip(".").lower() or "png"
    write_with(path, lambda tmp: figure.savefig(tmp, format=picture_format, dpi=dpi))


# ---- output locations, checked before any work ---------------------------------------------------


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """``path`` is a folder, or one can be made there, and it can be written: else one ConfigError naming ``option``."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{option} {target} is a file, not a folder", hint=f"give {option} a folder path")
    _check_writable_ancestor(target, option)


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """``path`` is a file, or one can be written there: else one ConfigError naming ``option``."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {target} is a folder, not a file", hint=f"give {option} a file path")
    _check_writable_ancestor(target.parent, option, shown=target)


def _check_writable_ancestor(folder: Path, option: str, shown: Path | None = None) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    shown = shown or folder
    if not existing.is_dir():
        raise ConfigError(
            f"{option} {shown}: {existing} is a file, so nothing can be written under it",
            hint=f"give {option} a path under a folder",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{option} {shown}: {existing} is not writable", hint=f"give {option} a folder you can write to"
        )


# ---- folders the tool owns ------------------------------------------------------------------------

OWNED_MARKER = ".edgedml-owned.json"


def check_owned(folder: str | os.PathLike, option: str = "--out") -> None:
    """A folder a command may rewrite as a whole (the quick start's): new, empty, or holding only files that
    the command itself wrote last time (recorded by :func:`record_owned`). Anything else is the user's."""
    root = Path(folder)
    if not root.is_dir():
        return
    marker = root / OWNED_MARKER
    owned: set[str] = set()
    if marker.is_file():
        try:
            owned = set(json.loads(marker.read_text(encoding="utf-8"))["files"])
        except (OSError, ValueError, KeyError, TypeError):
            owned = set()
    foreign = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p != marker)
    foreign = [name for name in foreign if name not in owned]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(
            f"{option} {root} holds files this command did not write ({foreign[0]}{more}); nothing was changed",
            hint=f"give {option} a new or empty folder, or move those files out of it",
        )


def record_owned(folder: str | os.PathLike) -> None:
    """Record every file now in ``folder`` as the command's own, for the next :func:`check_owned`."""
    root = Path(folder)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != OWNED_MARKER)
    write_json(root / OWNED_MARKER, {"files": names})
