"""Worker processes for `mt prepare`'s per-line work: a function mapped over tasks in order,
in fresh Python processes, one a core (blocks.py says what the work is)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

from mt.errors import MtError

POOL_MIN_BYTES = 64 * 2**20  # less text than this is done here: starting processes would cost more
MAX_WORKERS = 8  # past this, the main process's reading is the bound
# a worker's program: the parent's import path (its arguments) set before any import (even json's)
_WORKER = "import sys; sys.path[:] = sys.argv[1:]; from mt.workers import _serve; _serve()"


class Workers:
    """Maps a function over tasks in order: in `processes` worker processes, or here when that
    is 1. Each worker is a fresh Python (`_serve`) reading pickles on its stdin (the function,
    once a map, then tasks) and answering on its stdout: not multiprocessing, whose spawned children import the
    caller's own script again (and fork is unsafe once torch's threads run). Worker k takes
    tasks k, k + processes, ...: one in flight each, so memory stays flat and the results come
    in order. An error in a worker (an MtError naming a line) is raised here at its block.
    One map at a time: each map's function is sent to the workers when the map starts, so a
    function object that loads something (a tokenizer) loads it once per worker."""

    def __init__(self, processes: int):
        self.processes = processes
        self._children: list[subprocess.Popen] = []  # started at the first map: a run found prepared needs none

    def map(self, work: Callable, tasks: Iterator) -> Iterator:
        if self.processes == 1:
            yield from map(work, tasks)
            return
        self._start()
        for child in self._children:
            _send(child, ("work", work))
        busy: collections.deque = collections.deque()  # children with a task in flight, oldest first
        tasks = iter(tasks)
        try:
            for k in itertools.count():
                try:
                    task = next(tasks)
                except StopIteration:
                    break
                except Exception:  # the tasks' own error (the files' line counts) comes after the tasks
                    while busy:    # before it, as in one process, whose errors (a bad line) come first
                        yield _receive(busy.popleft())
                    raise
                child = self._children[k % self.processes]
                if len(busy) == self.processes:
                    yield _receive(busy.popleft())
                _send(child, ("task", task))
                busy.append(child)
            while busy:
                yield _receive(busy.popleft())
        finally:
            if busy:  # cut short (an error, a consumer that stopped): answers still in the pipes
                self.close()  # would be taken for the next map's; the next map starts new workers

    def _start(self) -> None:
        if self._children:
            return
        # the parent's import path, this mt first: `python -c` would put the current directory
        # first, and an mt (or numpy, or json) found there would be imported instead of ours
        path = [str(Path(__file__).resolve().parent.parent), *(p for p in sys.path if isinstance(p, str))]
        self._children = [subprocess.Popen([sys.executable, "-c", _WORKER, *path], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE) for _ in range(self.processes)]

    def close(self) -> None:
        for child in self._children:
            child.kill()  # a task cut short by an error or a signal is not worth waiting for
            child.wait()
            for pipe in (child.stdin, child.stdout):
                with contextlib.suppress(OSError):  # a task half sent to a dead worker: nothing to flush it to
                    pipe.close()
        self._children = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _send(child: subprocess.Popen, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        child.stdin.write(len(data).to_bytes(8, "little") + data)
        child.stdin.flush()
    except BrokenPipeError:  # the worker is gone (killed for memory, say) since its last answer
        raise _ended(child) from None


def _receive(child: subprocess.Popen):
    header = child.stdout.read(8)
    size = int.from_bytes(header, "little")
    message = child.stdout.read(size) if len(header) == 8 else b""
    if len(header) < 8 or len(message) < size:  # it died before or while answering
        raise _ended(child)
    ok, value = pickle.loads(message)
    if not ok:
        raise value
    return value


def _ended(child: subprocess.Popen) -> MtError:
    status = child.wait()
    why = "killed by SIGKILL: out of memory?" if status == -signal.SIGKILL else f"exit status {status}"
    return MtError(f"a worker process of mt prepare ended unexpectedly ({why})")


def _serve() -> None:
    """A worker's life: take the function to apply, then answer each task on stdin, until it
    closes. Its stdout is kept for the answers (anything a library prints goes to stderr), and
    Ctrl-C is for the parent; a parent gone (its pipes closed) ends the worker quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tasks, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    work = None
    while len(header := tasks.read(8)) == 8:
        size = int.from_bytes(header, "little")
        message = tasks.read(size)
        if len(message) < size:
            return
        kind, value = pickle.loads(message)
        if kind == "work":
            work = value
            continue
        task = value
        try:
            answer = (True, work(task))
        except Exception as e:  # noqa: BLE001  (raised again in the parent)
            answer = (False, e if _pickles(e) else RuntimeError(repr(e)))
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            answers.write(len(data).to_bytes(8, "little") + data)
            answers.flush()
        except BrokenPipeError:
            return


def _pickles(value: object) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:  # noqa: BLE001
        return False


def processes_for(*paths: str | os.PathLike, requested: Optional[int] = None) -> int:
    """How many processes to prepare with: `requested`, else one a core (up to MAX_WORKERS) for
    plain files of POOL_MIN_BYTES or more. A .gz cannot be cut without reading it, so its blocks
    still come from here, but their work goes to the pool all the same."""
    if requested is not None:
        return max(1, requested)
    size = sum(os.path.getsize(path) for path in paths)
    if str(paths[0]).endswith(".gz"):
        size *= 4  # text compresses about 4:1
    return min(_cores(), MAX_WORKERS) if size >= POOL_MIN_BYTES else 1


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
