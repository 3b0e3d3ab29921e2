"""Errors that name what the user has to fix (a file and line, or an option)."""


class ManifestError(ValueError):
    """A manifest or label row is malformed or points to a file that cannot be read.

    The message starts with ``FILE:LINE:`` (1-based lines of the file named) wherever a row is at fault.
    """
