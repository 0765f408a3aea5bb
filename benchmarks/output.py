"""The benchmarks' console: a table sent to a file or a pipe keeps every column (rich would cut it to 80)."""

import sys

from rich.console import Console


def wide_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 200)
