"""The one exception type users see as a one-line message instead of a traceback."""


class GadmsError(Exception):
    """Bad input or state the user can fix: the message names the file, record or field and what was wrong.

    The CLI prints `error_line(command, exc)` and exits with status 2. Raise it (or a subclass) only with a
    message that stands on its own line.
    """

    def __init__(self, message: str = "") -> None:
        # torch re-raises an error from a DataLoader worker as type(error)("Caught <type> in DataLoader worker
        # process N.\nOriginal Traceback ...\n<module>.<type>: <message>"): keep the one line it was raised with.
        worker_error = f"Caught {type(self).__name__} in DataLoader worker"
        if isinstance(message, str) and message.startswith(worker_error):
            message = message.rstrip("\n").rsplit(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def check_range(name: str, value: float, low: float, high: float) -> None:
    """A command-line value bounded at the edge, before any work: `--port must lie in 0..65535, got 70000`."""
    if not low <= value <= high:
        raise GadmsError(f"{name} must lie in {low}..{high}, got {value}")


def error_line(command: str, exc: GadmsError) -> str:
    """What a user sees of an expected failure of `gadms <command>`, on the terminal and as a Prefect run's message."""
    return f"gadms {command}: error: {exc}"
