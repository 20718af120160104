"""workers.py: a function mapped over tasks in worker processes, in order; a worker that fails or
dies is an error here (an MtError, not a traceback), and the workers stay usable after it."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from mt.errors import MtError
from mt.workers import Workers, _receive


def test_results_come_in_order_and_a_workers_error_is_raised_here():
    with Workers(2) as workers:
        assert list(workers.map(int, [str(n) for n in range(9)])) == list(range(9))
        with pytest.raises(ValueError, match="'x'"):
            list(workers.map(int, ["1", "x", "3"]))


def test_a_map_cut_short_leaves_nothing_in_flight_for_the_next_one():
    """An error, or a consumer that stops early, leaves answers in the pipes: the next map must
    not take them for its own."""
    with Workers(2) as workers:
        with pytest.raises(ValueError):
            list(workers.map(int, ["1", "x", "3", "4", "5"]))
        assert list(workers.map(int, ["6", "7", "8", "9"])) == [6, 7, 8, 9]
        first = workers.map(int, ["1", "2", "3", "4", "5"])
        assert next(first) == 1
        first.close()
        assert list(workers.map(int, ["6", "7", "8", "9"])) == [6, 7, 8, 9]


def test_a_worker_gone_before_its_next_task_is_an_error_not_a_broken_pipe():
    """os.close(0) in a worker: its answer comes back, then the task sent to it finds no reader
    (as when the OOM killer ends a worker between two tasks)."""
    with Workers(2) as workers, pytest.raises(MtError, match="worker process of mt prepare ended unexpectedly"):
        list(workers.map(os.close, [0, 0, 0, 0]))


def test_a_worker_that_dies_in_the_middle_of_its_answer_is_an_error_not_a_traceback():
    frame = pickle.dumps((True, list(range(1000))))
    cut = len(frame).to_bytes(8, "little") + frame[: len(frame) // 2]
    child = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stdout.buffer.write({cut!r})"],
                             stdout=subprocess.PIPE)
    with pytest.raises(MtError, match=r"ended unexpectedly \(exit status 0\)"):
        _receive(child)
    child.stdout.close()
