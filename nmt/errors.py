"""User-facing errors: the command-line tools print them as one line and exit non-zero."""


class NmtError(Exception):
    """An error caused by input the user gave (files, config, run directory)."""


class ConfigError(NmtError):
    """A config key is unknown, mistyped or inconsistent."""


class DataError(NmtError):
    """A corpus file is missing, empty, misaligned or not UTF-8."""


class CheckpointError(NmtError):
    """A run directory or checkpoint is missing or inconsistent."""
