"""The one exception type that the command line turns into a one-line message and exit status 2."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user: a missing or corrupt file, a wrong shape, an impossible value.

    The message names the file or value and what was expected, in one line. ``histodrl`` prints it
    as ``histodrl: error: <message>`` and exits with status 2 (``--debug`` shows the traceback).
    """
