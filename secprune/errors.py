"""Errors every module may raise, importable without torch (Flower client stages import only what they use)."""


class UsageError(ValueError):
    """Bad user input: the CLI prints it on one line and exits with code 2."""
