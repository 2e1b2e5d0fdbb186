"""The one exception type that means "the user gave us something wrong".

The CLI prints it as a one-line ``error: ...`` and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class MTError(Exception):
    """A problem with the user's input: config, files, run directory."""
