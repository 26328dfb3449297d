"""The one exception type users see.

Anything a user can get wrong (a path, a file format, a shape, a config) raises `UserError` with a
message that names the file and says what to do. The command line prints it as one line and exits
non-zero; library callers can catch it. Bugs stay ordinary exceptions with tracebacks.
"""


class UserError(Exception):
    """A mistake in what the user gave us, explained in one line."""


class UnsafeFileError(UserError):
    """A file would run code (or do something else we refuse) if loaded."""
