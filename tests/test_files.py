"""files.atomic_write on paths that are not plain files: device nodes and FIFOs are written in
place, symlinks are followed (issue 16: nothing destroyed that mt did not make)."""

from __future__ import annotations

import os
import stat

import pytest

from mt.files import atomic_write, write_text


def test_a_character_device_is_written_in_place_not_replaced(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    null = tmp_path / "mynull"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private copy of /dev/null
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    with atomic_write(null, "wb") as f:
        f.write(b"a picture nobody wants")
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mynull"]  # no temp file left


def test_a_fifo_is_written_into_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there, so the write never waits
    try:
        write_text(fifo, "hypothesis one\n")
        assert os.read(reader, 100) == b"hypothesis one\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_is_followed_its_target_replaced_and_the_link_kept(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "curves.png").write_text("old curves", encoding="utf-8")
    link = tmp_path / "linked.png"
    link.symlink_to(elsewhere / "curves.png")
    write_text(link, "new curves")
    assert link.is_symlink() and (elsewhere / "curves.png").read_text(encoding="utf-8") == "new curves"
    dangling = tmp_path / "later.txt"
    dangling.symlink_to(elsewhere / "not-yet.txt")
    write_text(dangling, "made through the link")
    assert dangling.is_symlink() and (elsewhere / "not-yet.txt").read_text(encoding="utf-8") == "made through the link"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["curves.png", "not-yet.txt"]


def test_a_link_to_stdout_writes_to_the_process_output(tmp_path):
    read_end, write_end = os.pipe()
    link = tmp_path / "mystdout"
    link.symlink_to(f"/proc/self/fd/{write_end}")  # what /dev/stdout is
    if not link.exists():
        pytest.skip("no /proc/self/fd here")
    write_text(link, "to the pipe\n")
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as f:
        assert f.read() == "to the pipe\n"
    assert link.is_symlink()
