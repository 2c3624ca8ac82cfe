"""Errors that mean "the user asked for something wrong", not "the code is broken".

Binaries catch :class:`UserError` and print its message as one line, then exit
non-zero without a traceback. Library callers get an ordinary exception whose
message names the problem and the fix.
"""


class UserError(ValueError):
    """A user mistake: bad argument, missing dataset, corrupt input, wrong shape."""
