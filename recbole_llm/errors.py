"""The one exception type for mistakes a user can fix (a name, a file, a config key or value).

Entry points print such an error as ``error: <message>`` and exit with status 2; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input: an unknown model or dataset, a bad config key or value, a
    missing file. The message says what was wrong and what to change."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (a config file, a dataset folder, a checkpoint) is absent."""
