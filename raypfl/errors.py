"""Errors the CLI reports as one line: invalid input (exit 2), a run that cannot go on (exit 1), SIGTERM (143)."""


class UserError(Exception):
    """Invalid input from the user: config, CLI arguments, missing data, unreachable cluster."""


class RunFailed(RuntimeError):
    """The run cannot go on (e.g. its workers keep dying); a checkpoint was written to continue it from."""


class Terminated(BaseException):
    """SIGTERM: stop like Ctrl+C does (checkpoint, MLflow run KILLED), exit 143."""
