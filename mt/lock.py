"""One writer per run directory: an advisory lock that the operating system releases when its
process ends, however it ends (exit, kill -9, a crash, a reboot).

The lock is `flock` on a small file in the run dir. Its content names the owner (pid, host,
command, since when) so that a second writer is told who holds the run dir. A file that still
names an owner when the lock is free was left by a process that died (or copied with its run
dir): it is taken over with a note saying which, never a manual step. Readers (translate, attention, serve) take no lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from mt.errors import MtError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

log = logging.getLogger(__name__)


@contextlib.contextmanager
def hold(lock_path: Path, command: str) -> Iterator[None]:
    """Hold the lock at `lock_path` for the body; raise MtError naming the holder if it is taken."""
    if fcntl is None:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MtError(f"{lock_path.parent} is in use by another mt command ({describe(read_owner(f))}); "
                          "wait for it to finish, or stop it first") from None
        left = read_owner(f)
        if left:
            log.info("note: %s: taking over the lock left by %s: %s", lock_path.parent, describe(left),
                     why_free(left))
        write_owner(f, {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        try:
            yield
        finally:
            write_owner(f, None)  # an empty file: nobody holds it; the lock goes with the close


def read_owner(f) -> Optional[dict]:
    f.seek(0)
    try:
        owner = json.loads(f.read() or "null")
    except ValueError:  # a file cut short by a crash mid-write still means "someone held it"
        return {}
    return owner if isinstance(owner, dict) else None


def write_owner(f, owner: Optional[dict]) -> None:
    f.seek(0)
    f.truncate()
    if owner:
        f.write(json.dumps(owner))
    f.flush()


def describe(owner: Optional[dict]) -> str:
    if not owner:
        return "a process that did not say who it is"
    return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, "
            f"`{owner.get('command', '?')}`, since {owner.get('since', '?')}")


def why_free(owner: dict) -> str:
    """Why a lock file names an owner while its flock is free, saying only what is known: a pid
    means something only on its own host, and a live one may hold another run dir's lock (this
    file was copied with its run dir)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return "its lock is free (that process ended, or this lock file was copied from elsewhere)"
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return "that process is no longer running"
    except OSError:  # alive, but another user's
        pass
    return ("that pid is running but does not hold this folder's lock (this lock file was copied "
            "with the run dir, or the pid was reused)")


def command_line() -> str:
    """How this process was started, as a user would type it: `mt train --config c.yaml`."""
    args = sys.argv[1:]
    return " ".join(["mt", *args])
