"""The one exception type for mistakes a user can make (bad config, bad data, missing file).

The CLI catches `UserError`, prints its message on one line, and exits non-zero without a
traceback. Internal invariants use `assert`; anything else that escapes is a bug.
"""


class UserError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""
