class CurateError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""
