"""Errors that the CLI reports as one line and exit code 2 (invalid input)."""


class UserError(Exception):
    """Invalid input from the user: config, CLI arguments, missing data, unreachable cluster."""
