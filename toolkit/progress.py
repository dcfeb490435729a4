"""Progress bars that stay quiet where nobody is watching.

Bars show on an interactive terminal; they are off when output goes to a file
or a CI log, with ``--quiet``, or with ``LCPRESS_QUIET=1``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def bars_enabled(requested: bool = True) -> bool:
    if not requested or os.environ.get("LCPRESS_QUIET"):
        return False
    return sys.stderr.isatty()


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (a no-op one when disabled); use it as a context manager."""
    return tqdm(disable=not bars_enabled(enabled), leave=False, dynamic_ncols=True, **kwargs)
