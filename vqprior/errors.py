"""Errors a user can fix. The CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A mistake in the input (config, data, missing stage output). The message says what is wrong and what to do."""
