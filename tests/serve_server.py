"""`mt serve` started as a user starts it, for the API and browser tests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

STARTUP_DEADLINE_S = 120  # loading torch and the model on a busy machine; only a bound on a hang


class Server:
    """`mt serve` in a subprocess; its stderr is collected line by line as it comes."""

    def __init__(self, run_dir: Path, *options: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mt", "serve", "--run-dir", str(run_dir), "--port", "0", "--device", "cpu",
             *options], stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            for line in self.stderr:
                found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
                if found:
                    return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError("mt serve did not come up:\n" + "".join(self.stderr))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait()


def call(url: str, path: str, body=None, raw: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST of `body` as JSON (or of `raw` bytes)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": content_type} if data else {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        assert "Traceback" not in text
        return error.code, json.loads(text)
