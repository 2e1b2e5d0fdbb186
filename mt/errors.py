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


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint: resumable, but not finished.

    The CLI exits with the shell's status for the signal (130, 143), so that
    ``mt train ... && next-step`` does not go on as if the run were done.
    """

    def __init__(self, signal_name: str):
        super().__init__(f"training interrupted by {signal_name}")
        self.signal_name = signal_name
