"""One guard around every call into plugin code.

A scheme or cost model is somebody else's code: when it raises, the user must
learn *which* plugin failed, on *which* layer, at *which* LC step, and what
to do — not read a traceback from deep inside lcpress. Every call the core
makes into a plugin goes through :func:`plugin_call`, which lets lcpress's
own deliberate errors through unchanged and turns anything else into a
:class:`~lcpress.PluginError` (or the subclass the caller names) saying so.

Two kinds of lcpress error get the guard's context added instead of passing
through: a :class:`~lcpress.errors.PluginContractError` (lcpress's own check
found the plugin's result or declaration unusable — a NaN price, an option
default outside its own range — and only the guard knows whose it is and
where), and a composite scheme's :class:`~lcpress.errors.PartError` (naming
the part and its plugin; the composite's guard adds the layer and the step,
so the message names both plugins).

Guards nest: a cost model guards its own ``costs()`` (so a caller that
forgot to is still covered), and the engine guards the same call knowing the
layer's name and the LC step. The outermost guard around a plugin names it;
the inner ones let the failure through to it.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

from lcpress.errors import LcpressError, PartError, PluginContractError, PluginError

#: ids of the plugin objects whose guard is active in this context (outermost first)
_guarded: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar("lcpress_plugin_calls", default=())


def _bare_label(plugin: Any) -> str:
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return repr(getattr(cls, "name", cls.__name__))


#: How errors name a plugin: :func:`lcpress.core.registry.plugin_label` ("scheme 'x' (plugin 'p', package 1.0)"),
#: installed by the registry module, which sits above the base classes that guard their own calls.
_labeller: Callable[[Any], str] = _bare_label


def use_labels(labeller: Callable[[Any], str]) -> None:
    """Name plugins in errors with ``labeller`` (the registry installs its :func:`plugin_label`)."""
    global _labeller
    _labeller = labeller


def plugin_label(plugin: Any) -> str:
    """``"scheme 'x' (plugin 'p', package 1.0)"`` for a scheme or cost model (instance or class)."""
    return _labeller(plugin)


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
    active = _guarded.get()
    token = _guarded.set(active + (id(plugin),))
    try:
        yield
    except PluginContractError as exc:
        if id(plugin) in active:  # an outer guard of this plugin knows more of where: it names it
            raise
        raise error(f"{subject or plugin_label(plugin)} {action}: {exc}.{hint}") from exc
    except PartError as exc:  # a composite's part failed: add where it happened
        raise error(f"{subject or plugin_label(plugin)} raised {action}: {exc}.{hint}") from exc
    except LcpressError:
        raise
    except Exception as exc:
        if id(plugin) in active:
            raise
        raise error(f"{subject or plugin_label(plugin)} raised {action}: {type(exc).__name__}: {exc}.{hint}") from exc
    finally:
        _guarded.reset(token)
