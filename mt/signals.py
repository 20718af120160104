"""Ctrl-C and SIGTERM while training: one context manager that routes both to a handler of ours
and puts the previous handlers back after, whatever happens inside."""

from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handled(handler: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Inside the block, Ctrl-C and SIGTERM call `handler(the signal)` (between two Python
    instructions of the main thread; what it raises comes out where the program was)."""
    if signal.getsignal(signal.SIGINT) is None:  # None: not set from Python (embedded); leave it
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: handler(signal.Signals(signum)))
                for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
