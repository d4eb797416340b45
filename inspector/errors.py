"""Errors that the CLI reports as one clear line and exit status 2."""


class UsageError(Exception):
    """Bad input from the user: a missing folder, an out-of-range option, an unusable file."""
