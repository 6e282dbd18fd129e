"""The base of every error a dataset preparation reports to the user.

Its subclasses (missing or damaged files, failed downloads, unsafe or
corrupt archives, wrong layouts or counts) carry a message that says what is
wrong and what to do; the CLI prints it without a traceback.
"""

from dmlsynth.errors import DmlsynthError


class DataError(DmlsynthError, RuntimeError):
    """Preparing a dataset failed for a reason the user can fix; the message says how."""
