"""Exception types.

Every error lcpress raises on purpose derives from :class:`LcpressError`, so a
caller can tell "lcpress refused this input" from a bug. Messages say what is
wrong *and* what to do about it.
"""

from __future__ import annotations


def listed(names, most: int = 4) -> str:
    """The first ``most`` names, comma-separated, with " …" when there are more: a message's short list."""
    names = list(names)
    return ", ".join(names[:most]) + (" …" if len(names) > most else "")


class LcpressError(Exception):
    """Base class of the errors lcpress raises deliberately."""


class ConfigError(LcpressError, ValueError):
    """A configuration value is missing, unknown or out of range.

    The message starts with the key path (``tasks[0].options.rank``) so the
    user can find the line in their YAML file.
    """


class PluginError(LcpressError):
    """A plugin failed to load, collided with another plugin, or raised."""


class CStepError(PluginError):
    """A scheme or cost model raised (or returned something unusable) inside a C step.

    The message names the plugin, the layer and the LC step; the last
    checkpoint holds only whole steps, so a fixed plugin resumes the run.
    """


class PluginContractError(PluginError):
    """lcpress's own check found a plugin's result or declaration unusable (a NaN price, a default out of range).

    Raised inside :func:`lcpress.core.guard.plugin_call`, which adds whose it is (plugin, package) and where
    (layer, LC step); the message itself says what is wrong and what to fix.
    """


class PartError(PluginError):
    """A part of a composite scheme (``additive``, ``sequential``) raised; names the part and its plugin."""


class CheckpointError(LcpressError):
    """A checkpoint or saved model file is missing, corrupted or incompatible."""


class RunDirectoryError(LcpressError):
    """A run directory holds work that would be overwritten, or another run holds it."""


class FileWriteError(LcpressError, OSError):
    """A file could not be written (a full disk, a file-size limit, a read-only folder); the old file is intact.

    Also an :class:`OSError`, so code that handles failed writes keeps handling it.
    """
