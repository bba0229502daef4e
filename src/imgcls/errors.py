"""Errors that are the user's to fix. The command line prints them as one line and exits with status 2."""


class UserError(Exception):
    """A mistake in the user's input (a path, a flag, a file): reported without a traceback.

    The message must be one line that names the offending thing and the reason, e.g.
    ``"data folder not found: /data/cats (check --data)"``.
    """

    exit_code = 2
