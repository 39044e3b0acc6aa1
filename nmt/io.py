"""File helpers: atomic writes (nothing half-written is ever left) and strict UTF-8 reading."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from nmt.errors import DataError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then move the temporary file onto ``path``.

    The temporary file lives in the same folder so that the final rename is
    atomic: readers see the old file or the new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file without their line endings.

    Raises DataError naming the file (and the line, for bad UTF-8).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    return decode_lines(data, str(path))


def decode_lines(data: bytes, name: str) -> list[str]:
    """Split on "\n" only (a stray form feed or U+2028 does not start a line), then decode."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as err:
            raise DataError(f"{name}:{number}: invalid UTF-8 at byte {err.start}") from None
    return out
