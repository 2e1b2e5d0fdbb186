"""The exception type that means "the user gave us something wrong" (or must fix something).

The CLI prints it as a one-line ``error: ...`` and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class MTError(Exception):
    """A problem with the user's input: config, files, run directory."""


class WriteError(MTError):
    """A file could not be written: the disk is full or read-only, or we lack permission.

    Not the user's input, but the user's to fix: one line saying which file and what to do.
    """
