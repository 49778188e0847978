"""One exception type for bad input: its message names the file or key and the problem."""


class InputError(Exception):
    """Bad input (file, config value, checkpoint). Scripts print it as one line and exit 2."""
