"""Errors a user can cause. The CLI prints their message as one line on stderr and exits 2."""


class UserError(Exception):
    """Bad input from the user: wrong path, unknown name, corrupt file, too few images...

    The message must be one self-contained line that says what is wrong and how to fix it.
    """


class TrainingError(UserError):
    """Training cannot go on (non-finite loss, ...)."""
