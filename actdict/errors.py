"""The one base class of every error actdict raises on purpose (bad input, missing data, offline hub).

The command line prints these as one clear line (exit status 2) instead of a traceback; anything else is a
bug and keeps its traceback.
"""


class ActdictError(Exception):
    """An expected failure whose message says what went wrong and what to do."""


def print_error(prog: str, e: ActdictError) -> int:
    """Print ``e`` as the command line's one line on stderr ("PROG: config error: ..." for a bad config,
    "PROG: ErrorClass: ..." otherwise) and return the exit status, 2."""
    import sys

    kind = "config error" if type(e).__name__ == "ConfigError" else type(e).__name__
    print(f"{prog}: {kind}: {e}", file=sys.stderr)
    return 2
