"""What the tests share: the result of a CLI call, file digests, and the shape of a clean failure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CliResult:
    exit_code: int
    output: str  # stdout and stderr as the user sees them, ANSI codes removed
    stdout: str
    exception: BaseException | None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("error:")]

    @property
    def hint_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("hint:")]

    def __str__(self) -> str:  # shown by failing asserts
        return f"exit code {self.exit_code}, exception {self.exception!r}\n{self.output}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_error(result, *fragments: str, code: int | None = None) -> None:
    """Non-zero exit (``code`` if given), one error line holding every fragment, one hint line, no traceback."""
    assert result.exit_code != 0, str(result)
    if code is not None:
        assert result.exit_code == code, str(result)
    assert len(result.error_lines) == 1, str(result)
    for fragment in fragments:
        assert fragment in result.error_lines[0], str(result)
    assert len(result.hint_lines) == 1, str(result)
    assert "Traceback" not in result.output, str(result)
