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
