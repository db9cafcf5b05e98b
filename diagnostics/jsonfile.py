"""Reading a JSON file the suite was handed (a snapshot, a benchmark's results), with every
problem turned into one line that names the file, raised as the caller's own error type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception], kind: str) -> Any:
    """Parse `path`; missing, a folder, unreadable or not JSON raises `error("<path>: ...")`."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a directory, not {kind}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{where}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
