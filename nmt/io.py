"""Files: outputs written the way a careful Unix tool writes them, and strict UTF-8 reading.

Every file nmt writes goes through ``write_file``: a regular file (new or existing, named
directly or through a symbolic link, whose target is written) is written to a temporary file
beside it, flushed to disk and renamed over it, so readers see the old file or the new one and a
failure leaves the old one; a new file gets mode 0666 minus the umask, an existing one keeps its
mode (and, where the user may, its owner and group). Anything else (a terminal, ``/dev/null``, a
FIFO) is written to directly, as renaming would replace it with a regular file; ``-``,
``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` write to that descriptor (``>>`` appends).
``building_folder`` writes a folder under a temporary name and renames it whole.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from nmt.errors import DataError, NmtError


def _descriptor(path: str) -> int | None:
    """The open file descriptor a path names (``-``, /dev/stdout, /dev/fd/3), if it names one."""
    names = {"-": 1, "/dev/stdout": 1, "/dev/stderr": 2, "/dev/stdin": 0}
    if path in names:
        return names[path]
    for prefix in ("/dev/fd/", "/proc/self/fd/"):
        if path.startswith(prefix) and path[len(prefix):].isdigit():
            return int(path[len(prefix):])
    return None


def write_file(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` with a binary file that becomes ``path`` (see the module's rules)."""
    fd = _descriptor(str(path))
    if fd == 1 and hasattr(sys.stdout, "buffer"):  # also where Python redirected sys.stdout
        sys.stdout.flush()
        write(sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    if fd is not None:
        with os.fdopen(os.dup(fd), "wb") as f:
            write(f)
        return
    path = Path(path)
    try:
        st = os.stat(path)  # follows symbolic links
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(path, "wb") as f:
                write(f)
        else:
            _replace(Path(os.path.realpath(path)), st, write)
    except OSError as err:  # errors from f.write carry no file name: name the user's path
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def _replace(target: Path, st: os.stat_result | None, write: Callable[[BinaryIO], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    # Created 0666: the kernel applies the umask, as for any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        if st is not None:
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                with suppress(PermissionError):
                    os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_file(path, lambda f: f.write(text.encode("utf-8")))


def write_bytes(path: str | Path, data: bytes) -> None:
    write_file(path, lambda f: f.write(data))


def _fsync_folder(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextmanager
def building_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder beside ``folder`` that becomes it (files and rename on disk) when the
    block ends without error, and is removed otherwise: no reader sees a partial folder. If
    another process completed ``folder`` first, its copy is kept."""
    tmp = folder.parent / f".{folder.name}.{socket.gethostname()}-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_folder(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_stale_folders(parent: Path) -> None:
    """Remove the temporary folders killed ``building_folder`` processes left in ``parent``."""
    for stale in parent.glob(f".*.{socket.gethostname()}-*.tmp"):
        pid = stale.name.rsplit("-", 1)[1][:-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists, as another user's process
    return True


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the block as Ctrl-C does: a ``building_folder`` in it cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def refuse_output_that_is_an_input(output: str | Path | None, inputs: Iterable[str | Path | None],
                                   stdin: bool = False) -> None:
    """Refuse an output that is the same regular file as an input (also through a link, or
    as the shell's stdin)."""
    if output is None or str(output) == "-":
        return
    try:
        out = os.stat(output)
    except OSError:
        return  # it does not exist yet (or cannot be read): it is no input
    if not stat.S_ISREG(out.st_mode):
        return
    seen = [(str(p), os.stat(p)) for p in inputs if p is not None and os.path.exists(p)]
    if stdin:
        with suppress(OSError, ValueError):
            seen.append(("<stdin>", os.fstat(sys.stdin.fileno())))
    for name, st in seen:
        if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
            raise NmtError(f"{output}: is the same file as the input {name}; writing it would "
                           "destroy the input (choose another output file)")


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file without their line endings, split on "\n" only (a stray form
    feed or U+2028 starts no line); DataError naming the file (and line, for bad UTF-8)."""
    with open_input(path) as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [_decode_line(raw, str(path), number) for number, raw in enumerate(lines, 1)]


def open_input(path: str | Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None


def _decode_line(raw: bytes, name: str, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as err:
        raise DataError(f"{name}:{number}: invalid UTF-8 at byte {err.start}") from None


def read_chunks(path: str | None, size: int) -> Iterator[list[str]]:
    """The lines of a UTF-8 file (stdin when ``path`` is None), ``size`` at a time (from a
    terminal one at a time, so each typed line is answered). The file is opened now; bad UTF-8
    raises DataError naming the file and line when its chunk is read."""
    stream = open_input(path) if path else sys.stdin.buffer
    return _chunks(stream, path or "<stdin>", 1 if stream.isatty() else size, close=bool(path))


def _chunks(stream: BinaryIO, name: str, size: int, close: bool) -> Iterator[list[str]]:
    chunk: list[str] = []
    with stream if close else nullcontext():
        for number, raw in enumerate(stream, 1):  # binary lines end at b"\n" only
            chunk.append(_decode_line(raw.removesuffix(b"\n"), name, number))
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "disk quota exceeded; free some space",
    errno.EACCES: "permission denied; check the permissions of the file and its folder",
    errno.EPERM: "operation not permitted; check the permissions of the file and its folder",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.ENOENT: "no such file or folder (did it vanish while nmt ran?)",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way, where a folder is needed",
    errno.EIO: "input/output error; check the disk",
}


def describe_os_error(err: OSError) -> str:
    """One line for a failed file operation: the file, what went wrong, what to do."""
    what = ADVICE.get(err.errno, err.strerror or str(err))
    name = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        name = f"{name} -> {err.filename2}"
    return f"{name}: {what}" if name else what
