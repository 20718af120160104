"""One writer per run dir: a second one is refused naming the first; a dead owner's lock is taken over."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mt.errors import MtError
from mt.lock import hold

HOLDER = """
import sys
from pathlib import Path
from mt.lock import hold
with hold(Path(sys.argv[1]), "mt train --config holder.yaml"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run, until the test ends or kills it."""
    lock = tmp_path / "run" / ".mt-lock"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert process.stdout.readline().strip() == "held"
    yield process, lock
    if process.poll() is None:
        process.stdin.close()
        process.wait()


def test_a_second_writer_is_refused_with_the_owner_named(holder):
    process, lock = holder
    with pytest.raises(MtError) as caught:
        with hold(lock, "mt prepare --config other.yaml"):
            pass
    message = str(caught.value)
    assert f"pid {process.pid}" in message and "`mt train --config holder.yaml`" in message
    assert "in use by another mt command" in message


def test_the_lock_of_a_killed_process_is_taken_over_with_a_note(holder, caplog):
    process, lock = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    with caplog.at_level(logging.INFO, logger="mt.lock"):
        with hold(lock, "mt train --config c.yaml"):
            assert f"\"pid\": {os.getpid()}" in lock.read_text()
    assert f"lock left by pid {process.pid}" in caplog.text
    assert "that process is no longer running" in caplog.text
    assert lock.read_text() == ""  # released: empty means nobody holds it


def test_a_copied_lock_file_of_a_running_owner_is_not_called_dead(holder, tmp_path, caplog):
    process, lock = holder  # still running, holding tmp_path/run
    copy = tmp_path / "copy" / ".mt-lock"
    copy.parent.mkdir()
    copy.write_text(lock.read_text())  # cp -r of a run dir being trained
    with caplog.at_level(logging.INFO, logger="mt.lock"):
        with hold(copy, "mt prepare --config c.yaml"):
            pass
    assert f"lock left by pid {process.pid}" in caplog.text
    assert "no longer running" not in caplog.text and "copied" in caplog.text


def test_released_after_the_body_even_when_it_raises(tmp_path):
    lock = tmp_path / ".mt-lock"
    with pytest.raises(ValueError):
        with hold(lock, "mt train"):
            raise ValueError("boom")
    with hold(lock, "mt train"):  # taken again at once: nothing was left behind
        pass
