"""The one exception type the CLI turns into a one-line error message."""


class EdgeskipError(Exception):
    """A user-facing error: bad input, missing file, invalid configuration."""
