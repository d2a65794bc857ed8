"""The one exception type users see as a one-line message instead of a traceback."""


class GadmsError(Exception):
    """Bad input or state the user can fix: the message names the file, record or field and what was wrong.

    The CLI prints `gadms: error: <message>` and exits with status 2. Raise it (or a subclass) only with a
    message that stands on its own line.
    """
