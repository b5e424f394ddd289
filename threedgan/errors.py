"""Errors a user can cause and fix: each message is one line that names the file or argument at fault.

Scripts print `error: <message>` and exit with status 2 for these; anything else is a bug and keeps its traceback.
"""


class ThreedganError(Exception):
    """Base class for problems with the user's input, as opposed to bugs."""


class ConfigError(ThreedganError, ValueError):
    """An invalid configuration value, preset or config file."""


class DataError(ThreedganError, ValueError):
    """Missing, unreadable or malformed training data."""


class WeightsError(ThreedganError, ValueError):
    """A weights or checkpoint file that is missing, corrupt or of another architecture."""


class TrainingError(ThreedganError, RuntimeError):
    """Training cannot go on (for example, a non-finite loss)."""
