# Copyright 2026 The hvit authors. Licensed under the Apache License, Version 2.0.
"""`UserError`: a mistake in what the user passed (a flag, a path, the data), not a bug in hvit.

The `hvit` entry point prints these as one line, ``hvit <command>: error: <message>``, and exits
with status 2 — before any traceback, also under ``accelerate launch`` — instead of a traceback
that hides the message. Messages name the flag, file or row that is wrong and what was expected.
"""

from __future__ import annotations

__all__ = ["UserError", "user_error_types"]


class UserError(Exception):
    """Bad input from the user: printed as one line by the command line, never as a traceback."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types the command line reports as user errors: `UserError`, malformed data
    (`data.DataError`), incomplete or corrupted checkpoints, Hub folder/push problems and missing
    files."""
    from .checkpoint import CheckpointError
    from .data.sources import DataError
    from .hub import HubFolderError, HubPushError

    return UserError, DataError, CheckpointError, HubFolderError, HubPushError, FileNotFoundError, NotADirectoryError
