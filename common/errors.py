"""The suite's user-error classes. Every command line (through `common.cli.run_main`) turns a
`UserError` into one line on stderr and exit 2 (bad input); any other exception is a failure or a
bug (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: flags, a config, data, an inventory file, a checkpoint folder (one line, exit 2)."""


class UsageError(UserError):
    """Flags a command line cannot parse (`common.cli.Parser` raises it): one line, exit 2."""
