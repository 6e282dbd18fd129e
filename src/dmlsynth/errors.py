"""The one base of every error dmlsynth reports to its user.

A :class:`DmlsynthError` is a problem the user can fix — a bad config, a missing or damaged file, a
run that does not fit the table — and its message says what is wrong and how to fix it. The command
line (:func:`dmlsynth.cli.main`) prints it without a traceback and exits with status 2; anything
else is a bug and keeps its traceback. Each module's error derives from it and, where callers
expect one, from the matching built-in (``ValueError`` for bad input, ``RuntimeError`` for a state
of the world), so ``except ValueError`` keeps working.
"""


class DmlsynthError(Exception):
    """A problem the user can fix; the message says how."""
