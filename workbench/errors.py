"""User errors: what a person got wrong, answered by the CLI in one line and exit status 2.

Raise ``UserError`` (or a subclass) for a mistake the user can fix: a bad config, a missing
input, a path that is in the way. The message says what is wrong and what is valid or what
to do. Anything else that escapes a verb is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; ``workbench`` prints ``error: <message>`` and exits 2."""
