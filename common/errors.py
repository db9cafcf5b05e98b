"""The suite's one user-error base class. `gpudiag` and `python -m training` turn a `UserError` into
one line on stderr and exit 2 (bad input); any other exception is a failure or a bug (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: flags, a config, data, an inventory file, a checkpoint folder (one line, exit 2)."""
