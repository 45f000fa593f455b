"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class RichKDError(Exception):
    """A problem with the user's input (path, config, cache, checkpoint) that the user can fix."""
