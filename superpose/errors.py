"""The exception for mistakes a user can make (bad config, bad data, missing file), and the one
for a run stopped cleanly by a signal.

The CLI catches `UserError`, prints its message on one line, and exits non-zero without a
traceback. Internal invariants use `assert`; anything else that escapes is a bug. `notice` says,
once, what a user should know that is not an error (a file of an older format opened unchecked).
"""

import sys

_SAID: set[str] = set()


def notice(message: str) -> None:
    """Print `message` as one `superpose: note:` line on stderr, once per process (a directory
    opened by every arm of a compare is said once)."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"superpose: note: {message}", file=sys.stderr, flush=True)


class UserError(ValueError):
    """A problem the user can fix. The message names the problem and the fix, on one line.

    A ValueError, so Python callers of the library (`TSTTrainer`, `load_model`, ...) can catch
    a bad argument the way they catch one from any other library. Code that catches ValueError
    around a call that may raise a UserError must let it through (`except UserError: raise`)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after it saved a checkpoint; `superpose train` exits with
    128 + signum. A KeyboardInterrupt, so no `except Exception` swallows it and callers that do
    not know it still treat it as an interruption."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def command(*words) -> str:
    """A command line that a message tells the user to run, each word shell-quoted (shlex.join):
    a path with a space, a quote or a `$` in it pastes back as the one argument it is."""
    import shlex

    return shlex.join(str(w) for w in words)
