"""The one exception type users see as a one-line message instead of a traceback."""
from __future__ import annotations

import re

# torch's weights-only unpickler names what it refused after this; its message around it advises retrying with
# weights_only=False, which would run whatever code the file carries.
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


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


def unpickling_reason(exc: BaseException) -> str:
    """Why `torch.load(..., weights_only=True)` refused a file, in one line and without torch's advice to load it
    with weights_only=False (unsafe: the file is untrusted input). torch is not imported: only the text is read."""
    text = str(exc).strip()
    if isinstance(exc, EOFError):
        return "the file ends early (EOFError)"
    if "Weights only load failed" not in text:
        return text.splitlines()[0] if text else type(exc).__name__
    found = _UNPICKLER_ERROR.search(text)
    reason = found.group(1).strip() if found else "refused by the weights-only unpickler"
    wanted = _UNSUPPORTED_GLOBAL.match(reason)
    if wanted:
        return f"it asks for {wanted.group(1)}, which a weights-only load never builds (loading it could run code)"
    if reason.startswith("Unsupported operand"):  # a byte that starts no pickle instruction: a YAML, a JPEG, ...
        return f"not a PyTorch file (unpickler: {reason})"
    return reason
