"""Files on disk: atomic writes (temp file, fsync, rename) and reading plain or gzipped text.

Every file mt writes into a run directory goes through `atomic_write`, so a crash, a kill -9
or a full disk leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import stat
import tempfile
import time
import zlib
from pathlib import Path
from typing import IO, Iterator, Optional

from mt.errors import MtError

# a write refused for want of room: the disk or the quota is full, or the file size limit (ulimit -f) is reached
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    On any exception the temporary file is removed and `path` is untouched; a disk found full
    while the caller writes is an error naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a folder that cannot be made or written to
        raise MtError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            _finish(f.flush, path)
            _finish(lambda: os.fsync(f.fileno()), path)
        _finish(lambda: os.chmod(tmp, 0o666 & ~_umask()), path)  # mkstemp makes 0600: usual permissions
        _finish(lambda: os.replace(tmp, path), path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = no_room(e)
        if full is not None:
            raise MtError(f"{path}: cannot write: {full.strerror}") from None
        raise
    _fsync_dir(path.parent)


def no_room(error: BaseException) -> Optional[OSError]:
    """The disk-full (or file-size-limit) OSError behind `error`, if there is one: libraries that
    write for us (torch.save) may raise an error of their own while handling it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _finish(step, path: Path) -> None:
    """A step of the write after the caller's part: disk full or a directory in the way are
    errors naming the file the user asked for, not our temporary one."""
    try:
        step()
    except OSError as e:
        raise MtError(f"{path}: cannot write: {e.strerror or e}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or (both existing) one inode,
    as with a hard link."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading bytes, decompressing it when its name ends in .gz."""
    path = Path(path)
    if not path.is_file():
        raise MtError(f"{path}: {not_a_file(path)}")
    raw = open(path, "rb")
    return gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw


def as_given(path: str | Path) -> str:
    """A path as the user wrote it and, when relative, where it led: relative paths in a config
    are read from the current directory, not the config's folder."""
    if Path(path).is_absolute():
        return str(path)
    return f"{path} (relative paths are read from the current directory: {Path(path).absolute()})"


def not_a_file(path: Path) -> str:
    """Why `path`, which is not a regular file, cannot be read as one: said as the user needs it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{kind}, not a file"


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a UTF-8 text file (plain or .gz), without their line endings.

    Invalid UTF-8 is an error naming the file and the 1-based line number.
    """
    return list(iter_lines(path))


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or .gz) one at a time, as `read_lines` gives them.

    Reads and decodes blocks of whole lines (a line per call costs more than the decoding at
    millions of lines); a line is split at LF only and loses the CRs before it.
    """
    number = 0
    try:
        with open_binary(path) as f:
            for block in _line_blocks(f):
                try:
                    lines = block.decode("utf-8").split("\n")
                except UnicodeDecodeError as e:
                    bad_line = number + block.count(b"\n", 0, e.start) + 1
                    raise MtError(f"{path}:{bad_line}: invalid UTF-8") from None
                if block.endswith(b"\n"):
                    lines.pop()  # the empty string after the last LF
                number += len(lines)
                yield from (line.rstrip("\r") for line in lines)
    except (OSError, EOFError, zlib.error) as e:  # unreadable file, or a truncated/corrupt .gz
        raise MtError(f"{path}: cannot read: {e}") from None


LINE_BLOCK_BYTES = 1 << 20


def _line_blocks(f) -> Iterator[bytes]:
    """The file's bytes in blocks that end at a line end (the last block may not): about
    LINE_BLOCK_BYTES each, longer when one line is."""
    parts: list[bytes] = []
    while data := f.read(LINE_BLOCK_BYTES):
        cut = data.rfind(b"\n") + 1
        if not cut:
            parts.append(data)  # inside a long line: keep reading
            continue
        parts.append(data[:cut])
        yield b"".join(parts)
        parts = [data[cut:]] if cut < len(data) else []
    if parts:
        yield b"".join(parts)


def decode_stdin_lines(data: bytes) -> list[str]:
    """Lines of stdin read whole, split on LF only (as `mt translate` splits them, so line
    numbers agree), CR of CRLF dropped; invalid UTF-8 is an error naming the line."""
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as e:
            raise MtError(f"stdin:{number}: invalid UTF-8 at byte {e.start}") from None
    return lines


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class KnownSums:
    """SHA-256 of files, re-using the sum recorded for a file whose size and mtime are unchanged.

    The rule is make's and rsync's: a file of the same size and modification time (to the
    nanosecond) is taken to hold the same bytes, so it is not read again; any write that changes
    the size or the mtime is noticed. A file rewritten with its mtime set back to the recorded
    one is not. `known` maps a resolved path to {"size", "mtime_ns", "sha256"}; `now` holds the
    entries of the files summed since, the record to keep."""

    def __init__(self, known: dict):
        self.known = known
        self.now: dict[str, dict] = {}

    def sha256(self, path: str | os.PathLike) -> str:
        resolved = Path(path).resolve()
        if not resolved.is_file():
            raise MtError(f"{path}: {not_a_file(resolved)}")
        stat_ns = time.time_ns()  # any write after this gives the file a later mtime, once a tick is past
        info = resolved.stat()
        entry = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        old = self.known.get(str(resolved))
        if isinstance(old, dict) and {k: old.get(k) for k in entry} == entry and isinstance(old.get("sha256"), str):
            self.now[str(resolved)] = old
            return old["sha256"]
        digest = sha256_file(resolved)
        if _settled(info.st_mtime_ns, stat_ns):  # otherwise not recorded: summed again next time
            self.now[str(resolved)] = {**entry, "sha256": digest}
        return digest


def _settled(mtime_ns: int, stat_ns: int) -> bool:
    """Whether a file last modified at `mtime_ns` and looked at at `stat_ns` could not have been
    modified since without its mtime changing: its mtime was more than one tick of its file
    system's clock old (git's "racily clean" entries).
    Whole seconds suggest a coarse clock (FAT keeps 2 s, HFS+ 1 s); ext4, XFS or btrfs keep
    nanoseconds and tick in milliseconds."""
    tick_ns = 2_000_000_000 if mtime_ns % 1_000_000_000 == 0 else 100_000_000
    return stat_ns - mtime_ns > tick_ns
