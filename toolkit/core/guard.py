"""One guard around every call into plugin code.

A scheme or cost model is somebody else's code: when it raises, the user must
learn *which* plugin failed, on *which* layer, at *which* LC step, and what
to do — not read a traceback from deep inside lcpress. Every call the core
makes into a plugin goes through :func:`plugin_call`, which lets lcpress's
own deliberate errors through unchanged and turns anything else into a
:class:`~lcpress.PluginError` (or the subclass the caller names) saying so.

A composite scheme's part raises :class:`~lcpress.errors.PartError` (naming
the part and its plugin); the composite's own guard then adds the layer and
the step, so the message names both plugins.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from lcpress.core.registry import plugin_label
from lcpress.errors import LcpressError, PartError, PluginError


@contextlib.contextmanager
def plugin_call(plugin: Any, action: str, *, error: type[PluginError] = PluginError, hint: str = "",
                subject: str | None = None) -> Iterator[None]:
    """Run the block; an exception from ``plugin`` becomes ``error`` naming it.

    :param plugin: the scheme or cost model (instance or class) being called.
    :param action: what it was doing, e.g. ``"in compress() on layer 'fc1' at LC step 3"``.
    :param error: the :class:`PluginError` subclass to raise.
    :param hint: what the user can do, appended to the message.
    :param subject: who is named (default: the plugin's label, with its package).
    """
    try:
        yield
    except PartError as exc:  # a composite's part failed: add where it happened
        raise error(f"{subject or plugin_label(plugin)} raised {action}: {exc}.{hint}") from exc
    except LcpressError:
        raise
    except Exception as exc:
        raise error(f"{subject or plugin_label(plugin)} raised {action}: {type(exc).__name__}: {exc}.{hint}") from exc
