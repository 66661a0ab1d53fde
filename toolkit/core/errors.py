"""Errors that the CLI reports as one line with exit status 2 (bad input) instead of a traceback."""


class PrtkInputError(Exception):
    """Bad user input: an unknown model, a missing file, a value out of range, a corrupt image."""
