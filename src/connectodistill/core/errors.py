"""The one exception type the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message says what, where, and how to fix it.

    The CLI prints ``error: <message>`` and exits with code 2, without a traceback.
    Library callers (notebooks) get the exception itself.
    """
