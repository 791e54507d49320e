class UsageError(Exception):
    """Bad input from the user: the CLI prints one line and exits with status 2."""
