"""What every `python -m owf...` entry point shares: a user's mistake is one line, not a traceback."""
from __future__ import annotations

import functools
import sys

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def user_errors_exit(main):
    """Decorate an entry point's main(argv): a ValueError, FileNotFoundError or FileExistsError
    (bad options, a missing or unreadable run or checkpoint: their messages name the value) is
    printed as `error: ...` on stderr and main returns 2. Anything else is a bug and keeps its
    traceback."""
    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped
