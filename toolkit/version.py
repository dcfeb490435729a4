"""The installed version of lcpress, in a module of its own.

Saved files record the version that wrote them; keeping it here lets the
file-writing modules read it without importing the package root (which
imports them).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lcpress")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
