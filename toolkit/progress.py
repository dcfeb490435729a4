"""Progress bars and per-step lines that stay quiet where nobody is watching.

Bars show on an interactive terminal and in a Jupyter notebook (as widgets
where ipywidgets is installed); they are off when output goes to a file or a
CI log, with ``--quiet``, or with ``LCPRESS_QUIET=1``.

A long run still says how it is going when nobody watches a terminal: every
LC step writes one line (:func:`status_line`) to stderr — above the bars on a
terminal, plain lines in a log file. Only ``--quiet`` (``progress=False``) or
``LCPRESS_QUIET=1`` silence those lines. They go to stderr so that stdout
keeps only the results (the per-layer table) a script may parse.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def quiet_env() -> bool:
    """``LCPRESS_QUIET`` set to anything but empty, 0, false, no or off (so ``LCPRESS_QUIET=0`` means talk)."""
    return os.environ.get("LCPRESS_QUIET", "").strip().lower() not in ("", "0", "false", "no", "off")


def in_notebook() -> bool:
    """True inside a Jupyter kernel, whose stderr is no terminal but whose user watches the cell's output."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def bars_enabled(requested: bool = True) -> bool:
    if not requested or quiet_env():
        return False
    return sys.stderr.isatty() or in_notebook()


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (a no-op one when disabled); use it as a context manager."""
    return tqdm(disable=not bars_enabled(enabled), leave=False, dynamic_ncols=True, **kwargs)


def status_line(text: str, *, enabled: bool = True) -> None:
    """One line of progress on stderr (kept clear of any open bars), unless quiet."""
    if enabled and not quiet_env():
        tqdm.write(text, file=sys.stderr)
