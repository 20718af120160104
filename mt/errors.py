"""The one exception a user sees: raised for mistakes a user can make, printed as one line."""


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
