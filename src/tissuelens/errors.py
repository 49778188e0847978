"""One exception type for bad input: its message names the file or key and the problem."""


class InputError(Exception):
    """Bad input (file, config value, checkpoint). Scripts print it as one line and exit 2."""


def why(exc: BaseException, limit: int = 200) -> str:
    """A library exception's message for an InputError: one line (its type when empty), at most `limit` chars."""
    return (" ".join(str(exc).split()) or type(exc).__name__)[:limit]
