"""The one exception a user sees (MtError: a mistake a user can make, printed as one line), and
`Interrupted`, how training says a signal stopped it."""

import signal


class MtError(Exception):
    """A user-facing error: the message says where (file, line, key) and what was expected.

    `exit_code` is 2 for configuration mistakes and 1 for everything else, so scripts can
    tell a bad config from a failed run.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(MtError):
    """A mistake in the YAML file or a --set override (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class Interrupted(Exception):
    """Training stopped by a signal (Ctrl-C, SIGTERM) after saving its step: not a failure to
    report, but the exit status a signal-stopped program has (128 + the signal's number)."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name
        self.exit_code = 128 + signal.Signals[signal_name].value


# what a damaged record of prepare's asks for; prepare --force is refused once checkpoints exist
# (they need the tokenizer they were trained with)
REDO_PREPARE = ("run mt prepare --force (a run that holds checkpoints cannot be prepared again: "
                "restore the file, or train in a new run_dir)")
