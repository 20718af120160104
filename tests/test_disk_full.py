"""A disk that fills up (issue 16): the error names the file it could not write, on a line of
its own, exit 1, no traceback, nothing half-written left, and the run dir still usable.

The disk is made "full" for real, without root: the child's file-size limit (`ulimit -f`,
RLIMIT_FSIZE) makes any write past it fail with EFBIG, as ENOSPC would on a full disk (Python
ignores SIGXFSZ, so the write fails instead of killing the process). mt handles both errnos
(and EDQUOT) alike: files.NO_ROOM. ENOSPC itself is tested where the kernel lets a user mount
a small tmpfs in namespaces of its own.
"""

from __future__ import annotations

import fcntl
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import error_line, make_toy_data, run_mt, toy_config

TINY = {"model__d_model": 32, "model__heads": 2, "model__encoder_layers": 1, "model__decoder_layers": 1,
        "model__ff_dim": 64, "training__log_every": 1, "decoding__batch_tokens": 2000}
LIMIT = 100_000  # bytes per file: config, manifest, caches, logs fit; a tokenizer (240 kB) or a step checkpoint does not


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def mt_on_a_terminal(*args: str) -> tuple[int, str]:
    """`mt ARGS` with the file-size limit and stderr on a pseudo-terminal (so progress bars are
    drawn as a user sees them); returns the exit status and what the terminal showed."""
    main, side = os.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "mt", *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=side, preexec_fn=limit_file_size)
    os.close(side)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    return process.wait(), shown.decode("utf-8", "replace")


def temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def test_a_checkpoint_that_does_not_fit_names_its_path_on_a_line_of_its_own(tmp_path):
    data = make_toy_data(tmp_path / "data", train=600, dev=20, test=20)
    config = toy_config(tmp_path / "a.yaml", data, tmp_path / "run", training__max_steps=20,
                        training__save_every=3, training__validate_every=1000, **TINY)
    run_mt("prepare", "--config", str(config))  # the tokenizer is bigger than the limit: written before it
    status, shown = mt_on_a_terminal("train", "--config", str(config))
    path = tmp_path / "run/checkpoints/step_0000003.pt"
    assert status == 1, shown
    assert "Traceback" not in shown
    # after the progress bar's line has ended, not glued to it
    assert re.search(rf"(^|\n)error: {re.escape(str(path))}: cannot write: File too large\r?\n", shown), shown
    assert list((tmp_path / "run/checkpoints").iterdir()) == []  # no half-written step_0000003.pt or temporary file
    run_mt("train", "--config", str(config))  # with room again, training goes on from the start


def test_a_tokenizer_that_does_not_fit_names_its_path_and_the_run_dir_stays_usable(tmp_path):
    data = make_toy_data(tmp_path / "data", train=600, dev=20, test=20)
    config = toy_config(tmp_path / "a.yaml", data, tmp_path / "run", **TINY)
    result = run_mt("prepare", "--config", str(config), check=False, preexec_fn=limit_file_size)
    assert result.returncode == 1
    assert error_line(result) == f"{tmp_path / 'run/tokenizer/joint.model'}: cannot write: File too large"
    assert temporary_files(tmp_path / "run") == []
    run_mt("prepare", "--config", str(config))  # the run dir is still mt's: with room again, prepare works


def test_a_checkpoint_on_a_full_filesystem_names_its_path(tmp_path):
    """ENOSPC itself: checkpoints/ a 200 kB tmpfs, mounted in a user and mount namespace of the
    child's own (`unshare -r -m`, no root needed where the kernel allows it; skipped elsewhere)."""
    probe = subprocess.run(["unshare", "-r", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path)],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no unprivileged user and mount namespaces here (unshare -r -m)")
    data = make_toy_data(tmp_path / "data", train=600, dev=20, test=20)
    config = toy_config(tmp_path / "a.yaml", data, tmp_path / "run", training__max_steps=20,
                        training__save_every=3, training__validate_every=1000, **TINY)
    run_mt("prepare", "--config", str(config))
    folder = tmp_path / "run/checkpoints"
    folder.mkdir()
    # the tmpfs lives as long as the namespace: list what the failed command left before leaving it
    script = ('mount -t tmpfs -o size=200k tmpfs "$0" && "$@"; status=$?; echo left: $(ls -A "$0"); '
              'exit $status')
    result = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script, str(folder), sys.executable, "-m", "mt",
                             "train", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert error_line(result) == f"{folder / 'step_0000003.pt'}: cannot write: No space left on device"
    assert result.stdout.strip() == "left:"  # nothing half-written in the full filesystem
