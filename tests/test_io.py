"""Outputs are written as a careful Unix tool writes them (nmt.io.write_file)."""
import errno
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from nmt.errors import NmtError
from nmt.io import (building_folder, describe_os_error, refuse_output_that_is_an_input,
                    sweep_stale_folders, write_file, write_text)


@pytest.fixture
def umask():
    def set_umask(value):
        os.umask(value)
    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class DiskFull:
    """A writer that fills the disk after ``room`` bytes, as a small file system does."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, f):
        f.write(b"x" * self.room)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old\n")
    with pytest.raises(OSError) as caught:
        write_file(target, DiskFull(1000))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert describe_os_error(caught.value) == \
        f"{target}: no space left on the device; free some space"
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_new_files_get_the_usual_mode_and_existing_files_keep_theirs(tmp_path, umask):
    for value, expected in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        umask(value)
        path = tmp_path / f"new{value:o}.txt"
        write_text(path, "x\n")
        assert mode(path) == expected
    existing = tmp_path / "shared.txt"
    existing.write_text("old\n")
    os.chmod(existing, 0o640)
    umask(0o077)
    write_text(existing, "new\n")
    assert (mode(existing), existing.read_text()) == (0o640, "new\n")


def test_a_symbolic_link_is_followed_and_its_target_replaced(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old\n")
    os.chmod(target, 0o604)
    link = tmp_path / "link.txt"
    link.symlink_to(target.name)
    write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == "real.txt"
    assert target.read_text() == "new\n" and mode(target) == 0o604


def test_device_nodes_and_fifos_are_written_in_place(tmp_path):
    before = os.stat("/dev/null")
    write_text("/dev/null", "gone\n")  # as root, a rename here would replace the system's /dev/null
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    write_text(fifo, "through the pipe\n")
    reader.join(10)
    assert got == [b"through the pipe\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)

    with pytest.raises(OSError) as caught:  # a device that is always full
        write_text("/dev/full", "x" * 100_000)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/dev/full"


def test_dash_and_dev_stdout_are_standard_output(capfd):
    write_text("-", "one\n")
    write_text("/dev/stdout", "two\n")
    assert capfd.readouterr().out == "one\ntwo\n"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(OSError) as caught:
        write_text(tmp_path, "x")
    assert describe_os_error(caught.value) == f"{tmp_path}: is a directory, expected a file"


def test_an_output_that_is_an_input_is_refused(tmp_path):
    source = tmp_path / "in.de"
    source.write_text("Hallo\n")
    link, hard = tmp_path / "link.de", tmp_path / "hard.de"
    link.symlink_to(source)
    os.link(source, hard)
    for output in (source, link, hard):
        with pytest.raises(NmtError, match="is the same file as the input"):
            refuse_output_that_is_an_input(output, [source])
    refuse_output_that_is_an_input(tmp_path / "new.en", [source])  # a new file
    refuse_output_that_is_an_input("/dev/null", ["/dev/null"])  # a device is no regular file
    assert source.read_text() == "Hallo\n"


def test_a_folder_is_built_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "made"
    with building_folder(folder) as tmp:
        (tmp / "a").write_text("1")
        assert not folder.exists()  # a reader never sees it before it is complete
    assert [p.name for p in tmp_path.iterdir()] == ["made"] and (folder / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with building_folder(tmp_path / "failed") as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["made"]  # nothing of the failed one
    with building_folder(folder) as tmp:  # another process completed it first: its copy stays
        (tmp / "a").write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["made"] and (folder / "a").read_text() == "1"
    (tmp_path / "empty").mkdir()
    with building_folder(tmp_path / "empty") as tmp:  # an empty folder is replaced
        (tmp / "b").write_text("3")
    assert (tmp_path / "empty" / "b").read_text() == "3"


def test_only_the_folders_of_dead_processes_on_this_machine_are_swept(tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    names = {"dead": f".corpus-a.{host}-{exited}.tmp",
             "alive": f".corpus-b.{host}-{os.getpid()}.tmp",
             "elsewhere": f".corpus-c.another-machine-{exited}.tmp", "done": "corpus-d"}
    for name in names.values():
        (tmp_path / name).mkdir()
    sweep_stale_folders(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(names[k] for k in ("alive", "elsewhere", "done"))
