"""mt: a command-line trainer for neural machine translation."""

__version__ = "0.1.0"
